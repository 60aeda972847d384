"""The gateway's clock without a real-time clock (issue 22, item 8): the offset estimator, the
clock that takes the data's time while the wall clock is unsynchronised and behind, and what
reads it (the MQTT payload's future check, /metrics)."""

from __future__ import annotations

import json

import pytest

from appliance.connectors.mqtt.payload import RouteMatch, parse_payload
from appliance.core import timebase
from appliance.core.timebase import GatewayClock, OffsetEstimator, format_offset, timesyncd_synchronised
from web.metrics import render, status_registry

DAY = 86400.0
TRUE_NOW = 1_800_000_000.0  # what the sensors' clocks say
SINGLE = RouteMatch("pump1", "Current", False, "plant/{asset}/{sensor}")


class FakeTime:
    """A wall clock set back a day, a monotonic clock, and the system's "synchronised" answer."""

    def __init__(self, behind_s: float = DAY, synced: bool | None = False):
        self.true = TRUE_NOW
        self.behind_s = behind_s
        self.mono = 1000.0
        self.synced = synced

    def wall(self) -> float:
        return self.true - self.behind_s

    def monotonic(self) -> float:
        return self.mono

    def advance(self, s: float) -> None:
        self.true += s
        self.mono += s

    def clock(self, **kw) -> GatewayClock:
        return GatewayClock(wall=self.wall, monotonic=self.monotonic, synchronised=lambda: self.synced, **kw)


# -- the estimator ------------------------------------------------------------------

def test_one_lying_source_among_three_moves_nothing_either_way():
    for liar in (3e7, -3e7):  # a device whose clock is a year ahead, or a year behind
        est = OffsetEstimator(window=8)
        for i in range(8):
            est.add("pump1", DAY + 0.2 * (i % 3))
            est.add("pump2", DAY - 0.1 * (i % 2))
            est.add("plc", liar)
        assert est.estimate() == pytest.approx(DAY, abs=0.5)
        assert est.sources() == 3 and est.readings() == 24


def test_of_two_sources_the_one_further_ahead_cannot_pull_time_forward():
    est = OffsetEstimator()
    est.add("pump1", DAY)
    est.add("liar", 3e7)
    assert est.estimate() == DAY


def test_a_burst_of_old_buffered_readings_does_not_move_a_source():
    est = OffsetEstimator(window=16)
    for _ in range(10):
        est.add("pump1", DAY)
    for _ in range(6):  # a device flushing its buffer: readings from an hour before
        est.add("pump1", DAY - 3600)
    assert est.estimate() == DAY


def test_estimator_bounds_its_memory():
    est = OffsetEstimator(window=4, max_sources=2)
    for i in range(10):
        est.add(f"s{i % 3}", float(i))
    assert est.sources() == 2 and est.readings() == 4 + 3 and est.untracked == 3
    est.clear()
    assert est.estimate() is None and est.sources() == 0


# -- the clock -------------------------------------------------------------------------

def test_synchronised_clock_is_the_wall_clock_and_learns_nothing():
    t = FakeTime(synced=True)
    clock = t.clock()
    assert clock.observe("pump1", TRUE_NOW) == t.wall()
    assert clock.now() == t.wall() and not clock.using_data_time
    st = clock.status()
    assert st["synchronised"] is True and st["readings"] == 0 and st["message"] is None


def test_unknown_state_is_trusted_as_before():
    t = FakeTime(synced=None)
    clock = t.clock()
    assert clock.observe("pump1", TRUE_NOW) == t.wall()
    assert clock.status()["synchronised"] is None and not clock.using_data_time


def test_unsynchronised_and_a_day_behind_takes_the_data_time_from_the_first_reading():
    t = FakeTime()
    clock = t.clock()
    assert clock.observe("pump1", TRUE_NOW) == pytest.approx(TRUE_NOW)  # judged by its own time
    for i in range(20):
        t.advance(1.0)
        for source in ("pump1", "pump2", "pump3"):
            clock.observe(source, t.true - 0.05)  # a little network delay
    assert clock.now() == pytest.approx(t.true, abs=0.1)
    st = clock.status()
    assert st["synchronised"] is False and st["data_time"] and st["sources"] == 3
    assert st["offset_s"] == pytest.approx(DAY, abs=0.1)
    assert st["message"] == "gateway clock unsynchronised; using time from data (offset +24.0 h)"


def test_data_behind_or_close_to_the_clock_is_no_evidence_against_it():
    t = FakeTime(behind_s=0.0)
    clock = t.clock()
    clock.observe("replayer", TRUE_NOW - 3 * 365 * DAY)  # old data, not marked historical
    clock.observe("pump1", TRUE_NOW + 60)  # a minute ahead: within the future tolerance
    assert clock.now() == t.wall() and not clock.using_data_time
    assert clock.status()["estimate_s"] is not None and clock.status()["message"] is None


def test_synchronisation_drops_the_estimate_and_now_does_not_jump():
    t = FakeTime()
    clock = t.clock(check_every_s=5.0)
    for _ in range(10):
        t.advance(1.0)
        clock.observe("pump1", t.true)
    assert clock.now() == pytest.approx(t.true)
    # NTP (or someone) sets the clock to the true time and it is synchronised.
    t.behind_s, t.synced = 0.0, True
    t.advance(5.0)
    assert clock.observe("pump1", t.true) == t.true
    assert clock.now() == t.true and not clock.using_data_time
    st = clock.status()
    assert st["synchronised"] is True and st["readings"] == 0 and st["estimates_dropped"] == 1


def test_a_step_of_the_wall_clock_drops_the_estimate_even_while_unsynchronised():
    t = FakeTime()
    clock = t.clock(check_every_s=1.0)
    for _ in range(5):
        t.advance(1.0)
        clock.observe("pump1", t.true)
    assert clock.using_data_time
    t.behind_s = 0.0  # stepped to the true time, the kernel not (yet) told it is synchronised
    t.advance(1.0)
    assert clock.observe("pump1", t.true) == t.true
    assert not clock.using_data_time and clock.steps == 1 and clock.estimates_dropped == 1


def test_disabled_clock_is_the_wall_clock_whatever_the_data_says():
    t = FakeTime()
    clock = t.clock(enabled=False)
    assert clock.observe("pump1", TRUE_NOW) == t.wall() and not clock.using_data_time


def test_offsets_read_as_hours_or_minutes():
    assert format_offset(DAY) == "+24.0 h" and format_offset(-90.0) == "-2 min"


# -- where the system says whether it is synchronised -----------------------------------

def test_kernel_state_is_read_without_privilege():
    assert timebase.kernel_synchronised() in (True, False, None)


def test_timesyncd_flag(tmp_path):
    assert timesyncd_synchronised(tmp_path / "absent") is None  # timesyncd not running: says nothing
    assert timesyncd_synchronised(tmp_path) is False
    (tmp_path / "synchronized").touch()
    assert timesyncd_synchronised(tmp_path) is True


@pytest.mark.parametrize("timesyncd, kernel, expected", [
    (True, False, True), (False, True, True), (None, False, False), (False, None, False), (None, None, None)])
def test_system_state_combines_both(monkeypatch, timesyncd, kernel, expected):
    monkeypatch.setattr(timebase, "timesyncd_synchronised", lambda: timesyncd)
    monkeypatch.setattr(timebase, "kernel_synchronised", lambda: kernel)
    assert timebase.system_synchronised() is expected


# -- what reads it ------------------------------------------------------------------------

def payload(ts: float, **extra) -> bytes:
    return json.dumps({"ts": ts, "value": 1.5, **extra}).encode()


def test_the_future_check_judges_by_the_data_time_only_while_the_clock_is_known_behind():
    t = FakeTime()
    wrong = t.clock()
    ok, dead = parse_payload(SINGLE, payload(TRUE_NOW), wrong.now(), observe_ts=wrong.observe)
    assert dead == [] and ok[0].ts == TRUE_NOW  # kept with its own timestamp
    assert dead == []
    # The same reading against a clock that says it is synchronised is a day in the future.
    t2 = FakeTime(synced=True)
    right = t2.clock()
    _, (d,) = parse_payload(SINGLE, payload(TRUE_NOW), right.now(), observe_ts=right.observe)
    assert d.code == "ts_in_future" and "86400 s ahead" in d.detail


def test_a_lying_device_is_still_refused_once_the_others_set_the_time():
    t = FakeTime()
    clock = t.clock()
    for asset in ("pump1", "pump2", "pump3"):
        for _ in range(3):
            parse_payload(RouteMatch(asset, "Current", False, ""), payload(t.true), clock.now(),
                          observe_ts=clock.observe)
    t.advance(2.0)  # the estimate is refreshed at most once a second
    liar = RouteMatch("liar", "Current", False, "")
    _, (d,) = parse_payload(liar, payload(t.true + 365 * DAY), clock.now(), observe_ts=clock.observe)
    assert d.code == "ts_in_future" and clock.now() == pytest.approx(t.true)


def test_replayed_data_is_not_shown_to_the_clock():
    t = FakeTime(behind_s=0.0)
    clock = t.clock()
    seen = []
    parse_payload(SINGLE, payload(TRUE_NOW - DAY, historical=True), clock.now(),
                  observe_ts=lambda a, ts: seen.append(ts) or clock.now())
    parse_payload(RouteMatch("pump1", "Current", True, ""), payload(TRUE_NOW - DAY), clock.now(),
                  observe_ts=lambda a, ts: seen.append(ts) or clock.now())
    assert seen == []


def test_metrics_show_the_offset_and_the_synchronised_state():
    t = FakeTime()
    clock = t.clock()
    clock.observe("pump1", TRUE_NOW)
    text = render(status_registry(lambda: {"site": "s", "clock": clock.status()})).decode()
    assert "appliance_clock_data_offset_seconds 86400.0" in text
    assert "appliance_clock_synchronised 0.0" in text
