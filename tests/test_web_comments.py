"""Alarm comments move from the accounts file of an earlier release to the store when the dashboard starts.

Copied once (a second start, or a start after one interrupted half way, adds
nothing), then gone from the accounts file; the journal reads them from the store.
"""

from __future__ import annotations

import sqlite3

import pytest

from appliance.accounts import Accounts
from appliance.core import EventKind
from tests.support.web import FAST_HASHER, signed_in
from web.app import create_app

T0 = 1_700_000_000.0

# The comments table as the accounts file held it until store schema version 4.
OLD_COMMENTS = """
CREATE TABLE comments(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    alarm_id TEXT NOT NULL,
    asset TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX comments_alarm ON comments(alarm_id, seq);
"""


def has_comments_table(path) -> bool:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'comments'").fetchone() is not None
    finally:
        conn.close()


def store_comments(store) -> list[tuple]:
    conn = sqlite3.connect(store.path)
    try:
        return conn.execute("SELECT seq, alarm_id, asset, ts, user, text FROM alarm_comments ORDER BY seq").fetchall()
    finally:
        conn.close()


@pytest.fixture
def alarm_id(book_appliance):
    (event,) = book_appliance.score("pump1", T0, 3.0)
    assert event.kind is EventKind.RAISED
    book_appliance.flush()
    return event.alarm.id


@pytest.fixture
def old_accounts(tmp_path, alarm_id):
    """An accounts file of the earlier release: its comments table with two comments on the alarm."""
    path = tmp_path / "accounts.db"
    conn = sqlite3.connect(path)
    conn.executescript(OLD_COMMENTS)
    conn.executemany("INSERT INTO comments(ts, alarm_id, asset, name, text) VALUES (?, ?, ?, ?, ?)",
                     [(T0 + 10.5, alarm_id, "pump1", "ana", "bearing at 80 degC, greased"),
                      (T0 + 20.25, alarm_id, "pump1", "bo", "vibration back to normal")])
    conn.commit()
    conn.close()
    return path


def start(book_appliance, store, accounts_path):
    """The dashboard's start, as the runtime's start_web makes it."""
    return create_app(book_appliance, store.path, accounts=Accounts(accounts_path, hasher=FAST_HASHER))


def test_a_new_accounts_file_has_no_comments_table(tmp_path):
    acc = Accounts(tmp_path / "accounts.db", hasher=FAST_HASHER)
    assert not has_comments_table(acc.path)
    assert acc.legacy_comments() is None


def test_old_comments_move_to_the_store_once_and_leave_the_accounts_file(book_appliance, store, old_accounts,
                                                                        alarm_id):
    app = start(book_appliance, store, old_accounts)
    moved = store_comments(store)
    assert [row[1:] for row in moved] == [
        (alarm_id, "pump1", T0 + 10.5, "ana", "bearing at 80 degC, greased"),
        (alarm_id, "pump1", T0 + 20.25, "bo", "vibration back to normal")]
    assert not has_comments_table(old_accounts)
    # The journal shows them, with who wrote them and when, between the alarm's transitions.
    client = signed_in(app, "vic", "viewer")
    entries = client.get(f"/api/alarms/{alarm_id}/journal").get_json()["entries"]
    comments = [(e["ts"], e["user"], e["note"]) for e in entries if e["type"] == "comment"]
    assert comments == [(T0 + 10.5, "ana", "bearing at 80 degC, greased"),
                        (T0 + 20.25, "bo", "vibration back to normal")]
    # A second start changes nothing.
    start(book_appliance, store, old_accounts)
    assert store_comments(store) == moved
    assert not has_comments_table(old_accounts)


def test_a_start_stopped_between_copy_and_drop_copies_nothing_twice(book_appliance, store, old_accounts,
                                                                   monkeypatch):
    def stopped(self):
        raise KeyboardInterrupt  # the process stopped after the store's commit, before the accounts' drop

    monkeypatch.setattr(Accounts, "drop_legacy_comments", stopped)
    with pytest.raises(KeyboardInterrupt):
        start(book_appliance, store, old_accounts)
    copied = store_comments(store)
    assert len(copied) == 2 and has_comments_table(old_accounts)
    monkeypatch.undo()
    start(book_appliance, store, old_accounts)
    assert store_comments(store) == copied
    assert not has_comments_table(old_accounts)


def test_comments_stay_in_the_accounts_file_while_the_store_cannot_take_them(book_appliance, store, old_accounts,
                                                                            tmp_path):
    create_app(book_appliance, tmp_path / "not-yet.db", accounts=Accounts(old_accounts, hasher=FAST_HASHER))
    assert not (tmp_path / "not-yet.db").exists()
    assert len(Accounts(old_accounts, hasher=FAST_HASHER).legacy_comments()) == 2
    start(book_appliance, store, old_accounts)
    assert len(store_comments(store)) == 2 and not has_comments_table(old_accounts)


def test_a_comment_posted_after_the_move_joins_the_moved_ones(book_appliance, store, old_accounts, alarm_id):
    client = signed_in(start(book_appliance, store, old_accounts), "tess", "technician")
    r = client.post(f"/api/alarms/{alarm_id}/comments", json={"text": "  replaced the seal  "})
    assert r.status_code == 200
    (record,) = r.get_json()["records"]
    assert (record["user"], record["text"], record["alarm_id"], record["asset"]) == (
        "tess", "replaced the seal", alarm_id, "pump1")
    assert [c["user"] for c in store.reader.alarm_comments(alarm_id)] == ["ana", "bo", "tess"]
    assert book_appliance.commands[-1] == ("add_comment", {"alarm_id": alarm_id, "asset": "pump1",
                                                           "text": "replaced the seal", "user": "tess"})
    assert not has_comments_table(old_accounts)  # nothing is written to the accounts file any more
