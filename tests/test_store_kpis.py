"""The alarm KPI math (appliance/store/kpis.py) at its edges, and the store query that feeds it."""

from __future__ import annotations

import pytest

from appliance.core import Alarm, AlarmEvent, AlarmState, EventKind, Level
from appliance.store import Store, StoreReader
from appliance.store.kpis import (Episode, KpiThresholds, bursts, chatter_bursts, episodes_from_rows, floods,
                                  live_load, percentile, report, stale)
from appliance.store.verdicts import AlarmVerdict

T = KpiThresholds()
DAY = 86400.0


def ep(k: int, asset: str = "p1", start: float = 0.0, length: float | None = 30.0, **kw) -> Episode:
    return Episode(str(k), asset, start, None if length is None else start + length, **kw)


def test_a_flood_is_ten_raises_within_ten_minutes_inclusive():
    exactly = [ep(k, f"a{k}", 1000.0 + 600.0 * k / 9) for k in range(10)]  # the 10th exactly 600 s after the 1st
    assert floods(exactly, T) == [(1000.0, 1600.0, 10)]
    stretched = [ep(k, f"a{k}", 1000.0 + 601.0 * k / 9) for k in range(10)]
    assert floods(stretched, T) == []
    assert floods(exactly[:9], T) == []


def test_overlapping_bursts_merge_and_separate_ones_do_not():
    times = [0, 1, 2, 3, 4, 5000, 5001, 5002]
    assert bursts(times, 3, 10) == [(0, 4, 5), (5000, 5002, 3)]
    # Windows that share instants chain into one burst; a gap with no qualifying window splits them.
    assert bursts([0, 5, 20, 25, 40], 3, 20) == [(0, 40, 5)]
    assert bursts([0, 5, 10, 100, 105, 110], 3, 20) == [(0, 10, 3), (100, 110, 3)]


def test_chattering_needs_three_cleared_cycles_within_the_window():
    three = [ep(k, start=200.0 * k, length=30.0) for k in range(3)]  # last clear at 430 s
    assert chatter_bursts(three, T) == [(0.0, 430.0, 3)]
    still_active = three[:2] + [ep(2, start=400.0, length=None)]
    assert chatter_bursts(still_active, T) == []
    slow = [ep(k, start=290.0 * k, length=30.0) for k in range(3)]  # last clear at 610 s
    assert chatter_bursts(slow, T) == []
    assert chatter_bursts(slow, KpiThresholds(chatter_window_s=700.0)) == [(0.0, 610.0, 3)]


def test_stale_follows_its_configured_limit():
    eps = [ep(1, start=0.0, length=None), ep(2, start=0.0, length=10.0)]
    assert [e.id for e in stale(eps, 3600.0, KpiThresholds(stale_s=1800.0))] == ["1"]
    assert stale(eps, 3600.0, T) == []


def test_percentile_matches_linear_interpolation():
    np = pytest.importorskip("numpy")
    values = [3.0, 1.0, 10.0, 7.5, 2.0, 8.0]
    for q in (0, 10, 50, 90, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_the_spans_count_what_started_in_them_and_the_assets_add_up():
    now = 100 * DAY
    eps = [ep(1, "p1", now - 3600), ep(2, "p2", now - 2 * DAY), ep(3, "p1", now - 10 * DAY),
           ep(4, "p3", now - 40 * DAY), ep(5, "p2", now - 100.0, length=None)]
    rep = report(eps, now, T)
    assert {k: v["gateway"]["alarms"] for k, v in rep["spans"].items()} == {"24h": 2, "7d": 3, "30d": 4}
    for span in rep["spans"].values():
        assert sum(f["alarms"] for f in span["assets"].values()) == span["gateway"]["alarms"]
    assert rep["spans"]["30d"]["gateway"]["per_day"] == pytest.approx(4 / 30, abs=1e-3)
    assert rep["spans"]["24h"]["gateway"]["active"] == 1
    assert rep["spans"]["24h"]["gateway"]["time_in_alarm_s"] == pytest.approx(130.0)


def test_the_live_load_forgets_a_flood_once_its_window_has_passed():
    eps = [ep(k, f"a{k}", 1000.0 + k) for k in range(10)]
    assert live_load(eps, 1100.0, T)["flood"] is True
    assert live_load(eps, 1000.0 + 9 + 601.0, T)["flood"] is False


def _put(store: Store, alarm_id: str, asset: str, start: float, end: float | None, ack: float | None) -> None:
    a = Alarm(alarm_id, asset, Level.ANOMALY, AlarmState.UNACKED, start, 2.0, ("s",))
    store.put_alarm_event(AlarmEvent(EventKind.RAISED, a, start + 1))
    if ack is not None:
        a = Alarm(alarm_id, asset, Level.ANOMALY, AlarmState.ACKED, start, 2.0, ("s",), acked_by="ana")
        store.put_alarm_event(AlarmEvent(EventKind.ACKNOWLEDGED, a, ack, user="ana"))
        store.put_alarm_event(AlarmEvent(EventKind.ACKNOWLEDGED, a, ack + 50, user="bo"))  # a later one: not it
    if end is not None:
        a = Alarm(alarm_id, asset, Level.ANOMALY, AlarmState.NORMAL, start, 2.0, ("s",), end=end, active=False)
        store.put_alarm_event(AlarmEvent(EventKind.CLEARED, a, end))


def test_the_store_gives_first_raise_first_ack_latest_verdict_and_old_active_alarms(tmp_path):
    store = Store(tmp_path / "s.db")
    store.start()
    try:
        _put(store, "old-active", "p1", 100.0, None, None)
        _put(store, "old-done", "p1", 200.0, 300.0, None)
        _put(store, "new", "p2", 10_000.0, 10_100.0, 10_030.0)
        store.put_verdict(AlarmVerdict.new("new", "p2", "ana", "fault", cause="bearing", ts=10_200.0))
        store.put_verdict(AlarmVerdict.new("new", "p2", "bo", "false_alarm", ts=10_300.0))
        assert store.flush()
    finally:
        store.close()
    eps = episodes_from_rows(StoreReader(tmp_path / "s.db").kpi_episodes(5000.0))
    assert eps == [Episode("old-active", "p1", 100.0, None, 101.0, None, None),
                   Episode("new", "p2", 10_000.0, 10_100.0, 10_001.0, 10_030.0, "false_alarm")]
