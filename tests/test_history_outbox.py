"""The outbox on its own (real SQLite files): order, acknowledgement, bounds and drop order."""

from __future__ import annotations

import sqlite3

import pytest

from appliance.history.lineproto import Kind
from appliance.history.outbox import ROW_OVERHEAD, Outbox


def line(kind: Kind, i: int, pad: int = 40) -> bytes:
    return f"{kind.label.ljust(7, '_')},asset=a{'x' * pad} v={i:06d}i {1_700_000_000_000_000_000 + i * 1000}".encode()


def test_append_peek_ack_keeps_acceptance_order(tmp_path):
    ob = Outbox(tmp_path / "o.db", max_bytes=10**9, max_age_s=1e9)
    ob.append([(Kind.READING, line(Kind.READING, i)) for i in range(10)])
    ob.append([(Kind.ALARM, line(Kind.ALARM, 10))])
    batch = ob.peek(4, 10**6)
    assert [r.line for r in batch] == [line(Kind.READING, i) for i in range(4)]
    ob.ack(batch)
    rest = ob.peek(100, 10**6)
    assert [r.line for r in rest] == [line(Kind.READING, i) for i in range(4, 10)] + [line(Kind.ALARM, 10)]
    points, nbytes, oldest = ob.totals()
    assert points[Kind.READING] == 6 and points[Kind.ALARM] == 1
    assert sum(nbytes.values()) == sum(len(r.line) + ROW_OVERHEAD for r in rest)
    assert oldest is not None
    ob.close()

    # Reopening (a restart) sees exactly what was not acknowledged, totals included.
    ob2 = Outbox(tmp_path / "o.db", max_bytes=10**9, max_age_s=1e9)
    assert [r.line for r in ob2.peek(100, 10**6)] == [r.line for r in rest]
    assert ob2.totals()[0] == points
    ob2.close()


def test_peek_respects_byte_limit_but_always_makes_progress(tmp_path):
    ob = Outbox(tmp_path / "o.db", max_bytes=10**9, max_age_s=1e9)
    ob.append([(Kind.AUDIT, b"x" * 5000), (Kind.AUDIT, b"y" * 10)])
    assert len(ob.peek(10, 1000)) == 1  # one oversized point still goes alone
    ob.close()


def test_byte_bound_drops_oldest_readings_first_then_scores_never_alarms_or_audit(tmp_path):
    per_row = len(line(Kind.READING, 0)) + ROW_OVERHEAD
    ob = Outbox(tmp_path / "o.db", max_bytes=100 * per_row, max_age_s=1e9)
    events = [(Kind.ALARM, line(Kind.ALARM, i)) for i in range(5)] + \
             [(Kind.AUDIT, line(Kind.AUDIT, i)) for i in range(5)]
    ob.append(events)
    ob.append([(Kind.SCORE, line(Kind.SCORE, i)) for i in range(20)])
    for chunk in range(10):
        ob.append([(Kind.READING, line(Kind.READING, chunk * 50 + i)) for i in range(50)])
    points, nbytes, _ = ob.totals()
    # 10 events + 20 scores + 70 readings fill the bound exactly.
    assert points == {Kind.READING: 70, Kind.SCORE: 20, Kind.ALARM: 5, Kind.AUDIT: 5}
    assert sum(nbytes.values()) <= ob.max_bytes
    assert ob.drop_counts() == {(Kind.READING, "bytes_bound"): 430}
    kept = [r.line for r in ob.peek(1000, 10**7) if r.kind == Kind.READING]
    assert kept == [line(Kind.READING, i) for i in range(430, 500)]  # the newest survive

    # More alarms than fit: readings go, then scores, and alarms stay even over the bound.
    ob.release()
    ob.append([(Kind.ALARM, line(Kind.ALARM, 100 + i)) for i in range(120)])
    points, nbytes, _ = ob.totals()
    assert points[Kind.READING] == 0 and points[Kind.SCORE] == 0
    assert points[Kind.ALARM] == 125 and points[Kind.AUDIT] == 5
    assert sum(nbytes.values()) > ob.max_bytes
    assert ob.drop_counts() == {(Kind.READING, "bytes_bound"): 500, (Kind.SCORE, "bytes_bound"): 20}
    ob.close()
    # Drop counts are on disk, not only in memory.
    assert Outbox(tmp_path / "o.db", max_bytes=10**9, max_age_s=1e9).drop_counts() == \
        {(Kind.READING, "bytes_bound"): 500, (Kind.SCORE, "bytes_bound"): 20}


def test_rows_in_flight_are_never_dropped(tmp_path):
    per_row = len(line(Kind.READING, 0)) + ROW_OVERHEAD
    ob = Outbox(tmp_path / "o.db", max_bytes=20 * per_row, max_age_s=1e9)
    ob.append([(Kind.READING, line(Kind.READING, i)) for i in range(20)])
    inflight = ob.peek(5, 10**6)
    ob.append([(Kind.READING, line(Kind.READING, 20 + i)) for i in range(10)])
    left = [r.line for r in ob.peek(100, 10**7)]
    # The 5 being sent stay (so a drop count never includes a delivered point);
    # the next-oldest 10 made room.
    assert left[:5] == [r.line for r in inflight]
    assert left[5:] == [line(Kind.READING, i) for i in range(15, 30)]
    assert ob.drop_counts() == {(Kind.READING, "bytes_bound"): 10}
    ob.close()


def test_age_bound_expires_readings_and_scores_only(tmp_path):
    ob = Outbox(tmp_path / "o.db", max_bytes=10**9, max_age_s=100)
    ob.append([(Kind.READING, line(Kind.READING, 0)), (Kind.SCORE, line(Kind.SCORE, 0)),
               (Kind.ALARM, line(Kind.ALARM, 0)), (Kind.AUDIT, line(Kind.AUDIT, 0))], now=1000.0)
    ob.append([(Kind.READING, line(Kind.READING, 1))], now=1050.0)
    assert ob.expire(now=1060.0) == {}
    assert ob.expire(now=1120.0) == {(Kind.READING, "age_bound"): 1, (Kind.SCORE, "age_bound"): 1}
    assert [r.kind for r in ob.peek(10, 10**6)] == [Kind.ALARM, Kind.AUDIT, Kind.READING]
    ob.close()


def test_refused_point_is_set_aside_and_counted(tmp_path):
    ob = Outbox(tmp_path / "o.db", max_bytes=10**9, max_age_s=1e9)
    ob.append([(Kind.AUDIT, b"bad line"), (Kind.READING, line(Kind.READING, 1))])
    head = ob.peek(1, 10**6)
    ob.reject(head[0], 400, "unable to parse")
    assert [r.kind for r in ob.peek(10, 10**6)] == [Kind.READING]
    assert ob.drop_counts() == {(Kind.AUDIT, "rejected"): 1}
    assert ob.rejected_rows()[0]["line"] == "bad line"
    ob.close()


def test_extra_drops_are_committed_with_the_rows(tmp_path):
    ob = Outbox(tmp_path / "o.db", max_bytes=10**9, max_age_s=1e9)
    ob.append([], {(Kind.READING, "invalid"): 3})
    ob.close()
    db = sqlite3.connect(tmp_path / "o.db")
    assert db.execute("SELECT kind, reason, count FROM drops").fetchall() == [(0, "invalid", 3)]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_fsync_policy_maps_to_sqlite_synchronous(tmp_path):
    for policy, level in (("commit", 2), ("interval", 1)):
        ob = Outbox(tmp_path / f"{policy}.db", max_bytes=10**9, max_age_s=1e9, fsync=policy)
        assert ob._db.execute("PRAGMA synchronous").fetchone()[0] == level
        ob.close()


@pytest.mark.parametrize("max_bytes", [16 * 1024, 64 * 1024])
def test_bound_holds_under_many_small_commits(tmp_path, max_bytes):
    ob = Outbox(tmp_path / "o.db", max_bytes=max_bytes, max_age_s=1e9)
    n = 0
    for _ in range(200):
        ob.append([(Kind.READING, line(Kind.READING, n + i, pad=i % 7)) for i in range(10)])
        n += 10
        assert sum(ob.totals()[1].values()) <= max_bytes
    points = ob.totals()[0][Kind.READING]
    assert points + ob.drop_counts()[(Kind.READING, "bytes_bound")] == n
    ob.close()


def test_compact_gives_space_back_after_a_backlog_drained(tmp_path):
    ob = Outbox(tmp_path / "o.db", max_bytes=10**9, max_age_s=1e9)
    for c in range(20):
        ob.append([(Kind.READING, line(Kind.READING, c * 1000 + i, pad=200)) for i in range(1000)])
    pages = ob._db.execute("PRAGMA page_count").fetchone()[0]
    while rows := ob.peek(5000, 10**8):
        ob.ack(rows)
    assert ob.compact() > 0
    assert ob._db.execute("PRAGMA page_count").fetchone()[0] < pages // 10
    assert ob.compact() == 0  # nothing left to give back
    ob.close()


def test_small_pages_on_a_new_file_and_on_an_old_one_only_once_it_is_empty(tmp_path):
    def pages(ob):
        return ob._db.execute("PRAGMA page_size").fetchone()[0]

    assert pages(new := Outbox(tmp_path / "new.db", 10**9, 1e9, page_size=1024)) == 1024
    assert new._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    new.close()
    old = Outbox(tmp_path / "o.db", max_bytes=10**9, max_age_s=1e9)
    old.append([(Kind.READING, line(Kind.READING, i)) for i in range(3)])
    old.close()
    backlog = Outbox(tmp_path / "o.db", 10**9, 1e9, page_size=1024)  # a backlog is never rewritten at start
    assert pages(backlog) == 4096 and len(backlog.peek(10, 10**6)) == 3
    backlog.ack(backlog.peek(10, 10**6))
    backlog.close()
    drained = Outbox(tmp_path / "o.db", 10**9, 1e9, page_size=1024)
    assert pages(drained) == 1024 and drained._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    drained.append([(Kind.READING, line(Kind.READING, 9))])
    assert [r.line for r in drained.peek(10, 10**6)] == [line(Kind.READING, 9)]
    drained.close()
