"""The store's read side (:class:`StoreReader`): what the dashboard and the CLI see of the store."""

from __future__ import annotations

import sqlite3
import time

import pytest

from appliance.actions.alarms import AlarmBook
from appliance.actions.decide import Decider
from appliance.core import DeadLetter, DeadLetterCode, Reading, Score
from appliance.store.store import StoreReader, StoreUnavailable


def test_a_missing_file_is_named_and_not_created(tmp_path):
    path = tmp_path / "none.db"
    reader = StoreReader(path)
    with pytest.raises(StoreUnavailable, match="none.db does not exist"):
        reader.alarms()
    with pytest.raises(StoreUnavailable):
        reader.ping()
    assert not path.exists()  # a reader never makes a store


def test_foreign_and_damaged_files_are_unavailable_not_crashes(tmp_path):
    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).execute("CREATE TABLE unrelated (x)").connection.commit()
    with pytest.raises(StoreUnavailable, match="schema version 0"):
        StoreReader(foreign).ping()
    with pytest.raises(StoreUnavailable, match="no such table"):
        StoreReader(foreign).scores()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreUnavailable, match="not a database"):
        StoreReader(garbage).ping()


def test_reads_do_not_wait_for_the_writer(store):
    store.put_reading(Reading("p", "a", 1.0, 1.0))
    assert store.flush()
    # Another connection holds the write lock with an uncommitted row, as the writer
    # thread does mid-batch: the reader answers at once with what is committed.
    writer = sqlite3.connect(store.path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO readings (asset, sensor, ts, value, quality, historical, received)"
                   " VALUES ('p', 'a', 2.0, 2.0, 0, 0, 0)")
    try:
        assert [r["ts"] for r in store.reader.readings(asset="p", sensor="a")] == [1.0]
        store.reader.ping()
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_series_newest_first_with_since_and_limit(store):
    for i in range(5):
        store.put_score(Score("p1", 10.0 + i, 0.5 * i, 2.0, {"a": 0.75, "b": 0.25}, "m1"))
        store.put_score(Score("p2", 10.0 + i, 1.0, 0.0, {"a": 1.0}, "m1"))
        for sensor in ("a", "b"):
            store.put_reading(Reading("p1", sensor, 10.0 + i, float(i)))
    assert store.flush()
    reader = store.reader
    rows = reader.scores(asset="p1", since=11.0, limit=2)
    assert [(r["t_end"], r["ratio"]) for r in rows] == [(14.0, 1.0), (13.0, 0.75)]
    assert rows[0]["contributions"] == {"a": 0.75, "b": 0.25} and rows[0]["model_version"] == "m1"
    assert {r["ratio"] for r in reader.scores(asset="p2")} == {None}  # no threshold, no ratio
    assert [r["asset"] for r in reader.scores(limit=2)] == ["p2", "p1"]  # by arrival without an asset
    assert [(r["sensor"], r["ts"]) for r in reader.readings(asset="p1", sensor="b", limit=2)] == [
        ("b", 14.0), ("b", 13.0)]
    assert len(reader.readings(asset="p1", since=12.0)) == 4


def test_alarms_events_and_mode_changes(store):
    now = [100.0]
    book = AlarmBook(Decider(raise_k=1, raise_n=1, clear_n=1), clock=lambda: now[0])
    for e in book.on_score(Score("p", 5.0, 3.0, 1.0, {"a": 1.0})):
        store.put_alarm_event(e)
    for m in book.shelve("p", "ana", 600, note="cleaning"):
        store.put_mode_change(m)
    now[0] = 200.0
    for m in book.set_mode("p", "in_service", "bo"):
        store.put_mode_change(m)
    assert store.flush()
    reader = store.reader
    (alarm,) = reader.alarms()
    assert (alarm["asset"], alarm["peak_ratio"], alarm["state"]) == ("p", 3.0, "unacknowledged")
    assert reader.alarms(active=False) == []
    assert [e["kind"] for e in reader.alarm_events(alarm["id"])] == ["raised"]
    assert reader.alarm_events("0123456789abcdef") is None
    changes = reader.mode_changes("p")
    assert [(c["event"], c["previous"], c["user"], c["ts"], c["alarm_id"]) for c in changes] == [
        ("unshelved", "shelved", "bo", 200.0, alarm["id"]), ("shelved", "in_service", "ana", 100.0, alarm["id"])]
    assert (changes[1]["note"], changes[1]["shelved_until"]) == ("cleaning", 700.0)
    assert [c["event"] for c in reader.mode_changes("p", limit=1)] == ["unshelved"]
    assert reader.mode_changes("other") == []
    assert reader.counts() == {"readings": 0, "scores": 0, "alarms": 1, "alarm_events": 1, "mode_changes": 2,
                               "dead_letters": 0}


def test_a_damaged_event_snapshot_does_not_hide_the_history(store):
    book = AlarmBook(Decider(raise_k=1, raise_n=1, clear_n=1))
    for e in book.on_score(Score("p", 5.0, 3.0, 1.0, {"a": 1.0})) + book.acknowledge("p", "ana"):
        store.put_alarm_event(e)
    assert store.flush()
    conn = sqlite3.connect(store.path)
    conn.execute("UPDATE alarm_events SET snapshot = '{not json' WHERE kind = 'raised'")
    conn.commit()
    conn.close()
    (alarm,) = store.reader.alarms()
    events = store.reader.alarm_events(alarm["id"])
    assert [(e["kind"], e["alarm"] is None) for e in events] == [("raised", True), ("acknowledged", False)]
    assert events[1]["alarm"]["acked_by"] == "ana"


def test_dead_letters_by_code_with_a_bounded_payload(store):
    t0 = time.time()  # recent: retention drops dead letters older than retention_days
    store.put_dead_letter(DeadLetter("s", b"x" * 5000, DeadLetterCode.TOO_LARGE, "", t0 + 1))
    store.put_dead_letter(DeadLetter("s", b"{", DeadLetterCode.BAD_JSON, "eof", t0 + 2))
    store.put_dead_letter(DeadLetter("s", b"{}", DeadLetterCode.MISSING_TS, "no ts", t0 + 3))
    assert store.flush()
    conn = sqlite3.connect(store.path)  # as an older writer did: the payload as text
    conn.execute("INSERT INTO dead_letters (source, payload, code, detail, received_at)"
                 " VALUES ('s', 'é' || 'abc', 'bad_json', 'text', ?)", (t0 + 4,))
    conn.commit()
    conn.close()
    reader = store.reader
    rows = reader.dead_letters(payload_bytes=2)
    assert [(r["code"], r["detail"], r["size"], r["payload"]) for r in rows] == [
        ("bad_json", "text", 5, "é".encode()), ("missing_ts", "no ts", 2, b"{}"), ("bad_json", "eof", 1, b"{"),
        ("too_large", "", 5000, b"xx")]
    assert [r["detail"] for r in reader.dead_letters(code=DeadLetterCode.BAD_JSON, limit=1)] == ["text"]
    assert [r["received_at"] for r in reader.dead_letters(since=t0 + 2, code="bad_json")] == [t0 + 4]
    assert reader.dead_letters(code="too_large")[0]["payload"] == b"x" * 5000  # whole payload unless bounded
