"""Alarm comments in the store: written by the writer thread, read back per alarm, copied in once from elsewhere."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from appliance.config import parse_config
from appliance.runtime import build
from appliance.store import AlarmComment, CommentError, Store, StoreUnavailable, import_comments, open_reader
from appliance.store.comments import MAX_COMMENT
from appliance.store.output import StoreOutput
from appliance.store.store import SCHEMA_VERSION
from tests.support.detector import StandIn


def comment(alarm_id: str = "a1", ts: float = 100.0, user: str = "ana", text: str = "greased") -> AlarmComment:
    return AlarmComment(alarm_id, "pump1", ts, user, text)


def test_comments_are_read_back_per_alarm_oldest_first_with_author_and_time(store):
    store.put_comment(comment("a1", 102.0, "bo", "second"))
    store.put_comment(comment("a1", 101.0, "ana", "first"))
    store.put_comment(comment("a2", 100.0, "ana", "other alarm"))
    assert store.flush()
    rows = store.reader.alarm_comments("a1")
    assert [(r["ts"], r["user"], r["text"], r["asset"], r["alarm_id"]) for r in rows] == [
        (101.0, "ana", "first", "pump1", "a1"), (102.0, "bo", "second", "pump1", "a1")]
    assert all(isinstance(r["seq"], int) for r in rows)
    assert [r["text"] for r in store.reader.alarm_comments("a2")] == ["other alarm"]
    assert store.reader.alarm_comments("nope") == []
    assert [r["text"] for r in store.reader.alarm_comments("a1", limit=1)] == ["first"]


def test_the_same_comment_written_twice_is_stored_once(store):
    store.put_comment(comment())
    store.put_comment(comment())  # same alarm, author and instant
    store.put_comment(comment(user="bo"))  # another author at that instant is another comment
    assert store.flush()
    assert [r["user"] for r in store.reader.alarm_comments("a1")] == ["ana", "bo"]


def test_a_comment_is_checked_before_it_is_queued():
    c = AlarmComment.new("a1", "pump1", "ana", "  bearing at 80 degC \n")
    assert c.text == "bearing at 80 degC" and c.user == "ana" and c.ts > 0
    assert AlarmComment.new("a1", "", "ana", "x" * MAX_COMMENT).text == "x" * MAX_COMMENT
    for bad in ("", "   ", "x" * (MAX_COMMENT + 1), None):
        with pytest.raises(CommentError, match="1 to 1000 characters"):
            AlarmComment.new("a1", "pump1", "ana", bad)
    with pytest.raises(CommentError, match="author"):
        AlarmComment.new("a1", "pump1", "", "text")


def test_the_store_outputs_add_comment_answers_once_the_comment_is_committed(tmp_path):
    # A long group-commit wait: the answer must still wait for the commit, not for the queue.
    st = Store(tmp_path / "s.db", commit_linger_s=0.05, commit_linger_items=1000)
    st.start()
    try:
        add = StoreOutput(st).commands()["add_comment"]
        (record,) = asyncio.run(add(alarm_id="a1", asset="pump1", user="ana", text=" seen it "))
        assert record.to_dict() == {"ts": record.ts, "alarm_id": "a1", "asset": "pump1", "user": "ana",
                                    "text": "seen it"}
        (row,) = st.reader.alarm_comments("a1")  # no flush: it is on disk already
        assert (row["ts"], row["user"], row["text"]) == (record.ts, "ana", "seen it")
        with pytest.raises(CommentError):
            asyncio.run(add(alarm_id="a1", asset="pump1", user="ana", text="  "))
        assert st.flush() and len(st.reader.alarm_comments("a1")) == 1
    finally:
        st.close()


def test_import_comments_adds_only_what_the_store_lacks(store):
    store.put_comment(comment("a1", 100.0, "ana", "already here"))
    assert store.flush()
    incoming = [comment("a1", 100.0, "ana", "already here"), comment("a1", 101.0, "bo", "new"),
                comment("a2", 50.0, "ana", "older, other alarm")]
    assert import_comments(store.path, incoming) == 2
    assert import_comments(store.path, incoming) == 0  # again: nothing new, nothing doubled
    assert [r["text"] for r in store.reader.alarm_comments("a1")] == ["already here", "new"]
    assert [r["ts"] for r in store.reader.alarm_comments("a2")] == [50.0]
    # The writer thread goes on writing after the import's own transaction.
    store.put_comment(comment("a2", 60.0, "bo", "after"))
    assert store.flush() and len(store.reader.alarm_comments("a2")) == 2


def test_import_comments_never_makes_a_store_nor_writes_another_schema(tmp_path):
    missing = tmp_path / "none.db"
    with pytest.raises(StoreUnavailable, match="does not exist"):
        import_comments(missing, [comment()])
    assert not missing.exists()
    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).execute("CREATE TABLE unrelated (x)").connection.commit()
    with pytest.raises(StoreUnavailable, match="schema version 0"):
        import_comments(foreign, [comment()])
    assert [r[0] for r in sqlite3.connect(foreign).execute("SELECT name FROM sqlite_master")] == ["unrelated"]


def test_a_version_3_store_gains_the_comments_table(tmp_path):
    db = tmp_path / "v3.db"
    Store(db)
    conn = sqlite3.connect(db)
    conn.executescript("DROP TABLE alarm_comments; PRAGMA user_version = 3;")
    conn.close()
    st = Store(db)
    assert open_reader(db).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    st.start()
    st.put_comment(comment())
    assert st.flush()
    st.close()
    assert [r["text"] for r in st.reader.alarm_comments("a1")] == ["greased"]


class QuietDetector(StandIn):
    """Enough of a detector for the runtime to start; nothing is scored in this test."""

    version = "quiet-1"


def test_the_runtime_answers_add_comment_from_a_web_thread(tmp_path):
    cfg = parse_config({"data_dir": str(tmp_path), "log_level": "WARNING", "web": {"enabled": False},
                        "inputs": {"mqtt": {"enabled": False}},
                        "outputs": {"mqtt_alarm": {"enabled": False}, "history": {"enabled": False}}})
    app = build(cfg, detector=QuietDetector())

    async def go():
        await app.start()
        try:
            # As a dashboard worker thread calls it: blocking, off the loop.
            return await asyncio.to_thread(app.command, "add_comment", alarm_id="a1", asset="pump1", user="ana",
                                           text="checked the coupling")
        finally:
            await app.shutdown()

    (record,) = asyncio.run(go())
    assert (record.user, record.text) == ("ana", "checked the coupling")
    (row,) = app.store.reader.alarm_comments("a1")
    assert (row["ts"], row["user"], row["asset"]) == (record.ts, "ana", "pump1")
