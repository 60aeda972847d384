"""Local history (real SQLite): one-minute rollups of readings, raw scores, retention, query validation."""

from __future__ import annotations

import math
import time

import pytest

from appliance.core import Quality, Reading, Score
from appliance.history.local import LocalHistory

T0 = 1_700_000_040.0  # a minute boundary (1_700_000_040 = 28_333_334 * 60)


@pytest.fixture
def local(tmp_path):
    lh = LocalHistory(tmp_path / "local.db", raw_retention_s=86400, rollup_retention_s=30 * 86400)
    yield lh
    lh.close()


def test_one_minute_rollups_of_readings(local):
    now = T0 + 200
    readings = [Reading("p1", "current", T0 + i, float(i)) for i in range(150)]
    readings.append(Reading("p1", "current", T0 + 150.5, math.nan, Quality.BAD))
    readings.append(Reading("p1", "temp", T0 + 1, 99.0))
    local.insert(readings[:70], [], now=now)
    local.insert(readings[70:], [], now=now)  # a later batch lands in an existing bucket

    agg = local.query_readings("p1", "current", T0, T0 + 179)
    assert [a["ts"] for a in agg] == [T0, T0 + 60, T0 + 120]
    assert agg[0] == {"ts": T0, "count": 60, "mean": 29.5, "min": 0.0, "max": 59.0, "bad": 0}
    assert agg[1]["count"] == 60 and agg[1]["mean"] == 89.5
    assert agg[2] == {"ts": T0 + 120, "count": 30, "mean": 134.5, "min": 120.0, "max": 149.0, "bad": 1}
    assert local.query_readings("p1", "temp", T0, T0 + 100) == [
        {"ts": T0, "count": 1, "mean": 99.0, "min": 99.0, "max": 99.0, "bad": 0}]
    assert local.query_readings("p1", "nope", T0, T0 + 100) == []


def test_raw_readings_are_left_to_the_store(local):
    local.insert([Reading("p1", "s", T0 + i, 1.0) for i in range(10)], [], now=T0 + 30)
    with pytest.raises(ValueError, match="store"):
        local.query_readings("p1", "s", T0, T0 + 60, "raw")
    tables = {r[0] for r in local._w.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert "raw" not in tables and local.query_readings("p1", "s", T0, T0 + 60)[0]["count"] == 10


def test_readings_wait_as_minute_aggregates_until_their_commit(tmp_path):
    lh = LocalHistory(tmp_path / "local.db", 86400, 30 * 86400, commit_interval_s=3600)
    lh.insert([Reading("p1", "s", T0 + i, float(i)) for i in range(10)], [], now=T0 + 30)
    lh.insert([Reading("p1", "s", T0 + 60 + i, 1.0) for i in range(5)], [], now=T0 + 90)
    assert lh.query_readings("p1", "s", T0, T0 + 120) == [] and len(lh._minutes) == 2
    lh.insert([], [], now=T0 + 90, force=True)
    assert lh.query_readings("p1", "s", T0, T0 + 120) == [
        {"ts": T0, "count": 10, "mean": 4.5, "min": 0.0, "max": 9.0, "bad": 0},
        {"ts": T0 + 60, "count": 5, "mean": 1.0, "min": 1.0, "max": 1.0, "bad": 0}]
    lh.close()


def test_a_minute_written_in_two_commits_merges(local):
    local.insert([Reading("p1", "s", T0 + 1, 5.0), Reading("p1", "s", T0 + 2, math.nan, Quality.BAD)], [],
                 now=T0 + 30)
    local.insert([Reading("p1", "s", T0 + 3, 1.0), Reading("p1", "s", T0 + 4, 9.0)], [], now=T0 + 30)
    assert local.query_readings("p1", "s", T0, T0 + 60) == [
        {"ts": T0, "count": 3, "mean": 5.0, "min": 1.0, "max": 9.0, "bad": 1}]


def test_a_file_from_before_keeps_its_rollups_and_loses_its_raw_readings(tmp_path):
    import sqlite3

    old = LocalHistory(tmp_path / "local.db", 86400, 30 * 86400)
    old.insert([Reading("p1", "s", T0 + 1, 5.0)], [], now=T0 + 30)
    old.close()
    with sqlite3.connect(tmp_path / "local.db") as db:
        db.execute("CREATE TABLE raw(series INTEGER NOT NULL, ts REAL NOT NULL, value REAL, "
                   "quality INTEGER NOT NULL, PRIMARY KEY(series, ts)) WITHOUT ROWID")
        db.execute("INSERT INTO raw VALUES (1, ?, 5.0, 0)", (T0 + 1,))
    lh = LocalHistory(tmp_path / "local.db", 86400, 30 * 86400)
    tables = {r[0] for r in lh._w.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert "raw" not in tables and lh.query_readings("p1", "s", T0, T0 + 60)[0]["count"] == 1
    lh.close()


def test_historical_and_too_old_data_stay_out(local):
    now = T0 + 40 * 86400
    local.insert([Reading("p1", "s", now - 5, 1.0, historical=True),
                  Reading("p1", "s", now - 30 * 86400 - 10, 2.0),
                  Reading("p1", "s", now - 5, 3.0)],
                 [Score("p1", now - 86400 - 10, 1.0, 2.0, {}), Score("p1", now - 5, 1.0, 2.0, {})], now=now)
    assert [r["mean"] for r in local.query_readings("p1", "s", 0, now)] == [3.0]
    assert [s["ts"] for s in local.query_scores("p1", 0, now)] == [now - 5]
    assert local.stats()["skipped_old"] == 2


def test_scores_raw_and_rollup(local):
    scores = [Score("p1", T0 + i, 0.1 * (i % 10), 0.5, {"a": 0.75, "b": 0.25}, "m1") for i in range(120)]
    local.insert([], scores, now=T0 + 200)
    raw = local.query_scores("p1", T0, T0 + 1)
    assert raw[1] == {"ts": T0 + 1, "value": pytest.approx(0.1), "threshold": 0.5, "ratio": pytest.approx(0.2),
                      "contributions": {"a": 0.75, "b": 0.25}, "model_version": "m1"}
    agg = local.query_scores("p1", T0, T0 + 119, resolution="1m")
    assert len(agg) == 2
    assert agg[0]["count"] == 60 and agg[0]["over"] == 24  # 0.6 .. 0.9 of every ten are over 0.5
    assert agg[0]["max"] == pytest.approx(0.9) and agg[0]["max_ratio"] == pytest.approx(1.8)


def _live_until(local, t: float) -> None:
    """Data of another asset and sensor up to ``t``: the data's own clock moves on with the wall clock."""
    local.insert([Reading("p9", "s", t, 1.0)], [Score("p9", t, 1.0, 2.0, {})], now=t, force=True)


def test_retention_purges_raw_scores_after_a_day_and_rollups_after_a_month(local):
    local.insert([Reading("p1", "s", T0 + i, 1.0) for i in range(0, 120, 10)],
                 [Score("p1", T0, 1.0, 2.0, {})], now=T0 + 120)
    _live_until(local, T0 + 86400 + 300)
    local.purge(now=T0 + 86400 + 300)
    assert local.query_scores("p1", 0, 2e9) == []
    assert len(local.query_scores("p1", 0, 2e9, "1m")) == 1
    assert len(local.query_readings("p1", "s", 0, 2e9, "1m")) == 2
    assert local.stats()["raw_scores"] == 1 and local.stats()["rollup_rows"] == 3  # p9's newest stay
    _live_until(local, T0 + 31 * 86400)
    local.purge(now=T0 + 31 * 86400)
    assert local.query_readings("p1", "s", 0, 2e9, "1m") == []
    assert local.query_scores("p1", 0, 2e9, "1m") == []


def test_a_forward_step_of_the_wall_clock_purges_nothing_the_data_calls_recent(local):
    """An RTC-less board stepped forward by NTP, or a bad time source a year ahead: by the wall clock
    alone every row is old at once; by the data's own times (none newer came) they are not."""
    local.insert([Reading("p1", "s", T0 + i, float(i)) for i in range(0, 120, 10)],
                 [Score("p1", T0 + i, 1.0, 2.0, {}) for i in range(0, 120, 10)], now=T0 + 120, force=True)
    stepped = T0 + 365 * 86400
    assert local.purge(now=stepped) == 0
    assert len(local.query_readings("p1", "s", 0, 2e9)) == 2 and len(local.query_scores("p1", 0, 2e9)) == 12
    # Live data stamped by the plant's clocks is still taken after the step, not turned away as too old.
    local.insert([Reading("p1", "s", T0 + 180, 5.0)], [Score("p1", T0 + 180, 1.0, 2.0, {})], now=stepped, force=True)
    assert len(local.query_readings("p1", "s", 0, 2e9)) == 3 and len(local.query_scores("p1", 0, 2e9)) == 13
    assert local.stats()["skipped_old"] == 0


def test_a_file_reopened_after_a_forward_step_keeps_its_history(tmp_path):
    lh = LocalHistory(tmp_path / "local.db", raw_retention_s=86400, rollup_retention_s=30 * 86400)
    lh.insert([Reading("p1", "s", T0, 1.0)], [Score("p1", T0, 1.0, 2.0, {})], now=T0 + 1, force=True)
    lh.close()
    lh = LocalHistory(tmp_path / "local.db", raw_retention_s=86400, rollup_retention_s=30 * 86400)
    try:
        assert lh.purge(now=T0 + 10 * 365 * 86400) == 0  # the newest kept, read back from the file
        assert lh.query_readings("p1", "s", 0, 2e9)[0]["mean"] == 1.0 and len(lh.query_scores("p1", 0, 2e9)) == 1
    finally:
        lh.close()


def test_a_row_stamped_in_the_future_does_not_age_the_rest(local):
    """A device with a bad clock: its far-future row cannot purge the others, the wall clock holds them."""
    local.insert([Reading("p1", "s", T0, 1.0), Reading("p2", "s", T0 + 50 * 365 * 86400, 1.0)], [], now=T0,
                 force=True)
    local.purge(now=T0 + 60)
    assert len(local.query_readings("p1", "s", 0, 2e9)) == 1


def test_queries_validate_arguments(local):
    with pytest.raises(ValueError, match="resolution"):
        local.query_readings("p1", "s", 0, 1, resolution="5m")
    with pytest.raises(ValueError, match="until"):
        local.query_scores("p1", 10, 1)
    with pytest.raises(ValueError, match="since"):
        local.query_readings("p1", "s", math.nan, 1)
    with pytest.raises(ValueError, match="limit"):
        local.query_readings("p1", "s", 0, 1, limit=0)


def test_limit_caps_rows(local):
    local.insert([Reading("p1", "s", T0 + i, 1.0) for i in range(50)], [], now=T0 + 60)
    local.insert([Reading("p1", "s", T0 + 60 * i, 1.0) for i in range(1, 50)], [], now=T0 + 3000)
    assert len(local.query_readings("p1", "s", T0, T0 + 3000, limit=7)) == 7


def test_malformed_records_are_skipped_not_fatal(local):
    local.insert([Reading("p1", "s", math.nan, 1.0), Reading("", "s", T0, 1.0), object(),
                  Reading("p1", "s", T0, 5.0)], [object()], now=T0 + 10)
    assert [r["mean"] for r in local.query_readings("p1", "s", 0, 2e9)] == [5.0]


def test_rows_wait_for_the_commit_interval_then_go_in_one_commit(tmp_path):
    lh = LocalHistory(tmp_path / "local.db", 86400, 30 * 86400, commit_interval_s=3600, page_size=1024)
    now = time.time()
    T0 = now // 60 * 60 - 120  # recent: close() writes what waits as of the wall clock
    lh.insert([Reading("p1", "current", T0 + i, float(i)) for i in range(3)], [], now=now)
    lh.insert([], [Score("p1", T0 + 2, 0.5, 1.0, {"current": 1.0})], now=now)
    assert lh.query_readings("p1", "current", T0, T0 + 10) == []  # waiting in memory, not on disk
    lh.insert([], [], now=now, force=True)  # what HistorySink.flush() and stop() ask for
    assert [r["count"] for r in lh.query_readings("p1", "current", T0, T0 + 10)] == [3]
    assert len(lh.query_scores("p1", T0, T0 + 10)) == 1
    lh.insert([Reading("p1", "current", T0 + 3, 3.0)], [], now=now)
    lh.close()  # writes what waits
    reopened = LocalHistory(tmp_path / "local.db", 86400, 30 * 86400)
    assert reopened._w.execute("PRAGMA page_size").fetchone()[0] == 1024
    assert [r["max"] for r in reopened.query_readings("p1", "current", T0, T0 + 10)] == [3.0]
    reopened.close()


def test_a_file_with_other_pages_is_rewritten_once_keeping_its_rows(tmp_path):
    old = LocalHistory(tmp_path / "local.db", 86400, 30 * 86400)
    old.insert([Reading("p1", "current", T0 + i, float(i)) for i in range(5)], [], now=T0 + 200)
    assert old._w.execute("PRAGMA page_size").fetchone()[0] == 4096
    old.close()
    lh = LocalHistory(tmp_path / "local.db", 86400, 30 * 86400, page_size=1024)
    assert lh._w.execute("PRAGMA page_size").fetchone()[0] == 1024
    assert lh._w.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert lh.query_readings("p1", "current", T0, T0 + 10)[0]["count"] == 5
    lh.close()
