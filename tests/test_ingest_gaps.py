"""Gap detection per sensor: loss upstream (broker queue limits, publisher buffers) made visible (issue 13)."""

from __future__ import annotations

import random

import pytest

from appliance.connectors.mqtt.config import GapConfig, MqttInputConfig
from appliance.ingest_health import GapDetector


def feed(gd, times, asset="pump1", sensor="Current"):
    return [g for g in (gd.observe(asset, sensor, t) for t in times) if g is not None]


def test_learned_period_finds_a_gap_and_estimates_what_is_missing():
    gd = GapDetector()
    times = [1000 + 0.1 * i for i in range(100)] + [1000 + 0.1 * i for i in range(500, 600)]
    (gap,) = feed(gd, times)
    assert gap.period_s == pytest.approx(0.1) and gap.learned
    assert gap.missing == 400 and gap.span_s == pytest.approx(40.1)
    st = gd.status()
    assert (st["gaps"], st["missing_estimate"], st["series"]) == (1, 400, 1)
    assert st["last_gap"]["missing"] == 400 and st["by_sensor"][0]["gaps"] == 1


def test_jitter_is_not_a_gap():
    rnd = random.Random(1)
    gd = GapDetector()
    t, times = 0.0, []
    for _ in range(10_000):
        t += 1.0 * rnd.uniform(0.5, 1.8)  # irregular, but never three periods apart
        times.append(t)
    assert feed(gd, times) == []


def test_nothing_is_judged_before_the_period_is_known():
    gd = GapDetector(min_samples=8)
    assert feed(gd, [0, 1, 2, 100, 101, 102, 103, 104, 105, 106, 107, 108, 200]) != []
    gd = GapDetector(min_samples=8)
    assert feed(gd, [0, 1, 2, 100]) == []  # three intervals: too few to know the period


def test_configured_period_judges_from_the_second_reading():
    gd = GapDetector(expected_period_s=1.0)
    (gap,) = feed(gd, [0.0, 10.0])
    assert (gap.missing, gap.learned) == (9, False)


def test_period_per_sensor_and_per_asset_sensor():
    gd = GapDetector(expected_period_s=1.0, periods={"Slow": 60.0, "pump2/Slow": 600.0})
    assert feed(gd, [0, 100, 200], sensor="Slow") == []
    assert feed(gd, [0, 1000], asset="pump2", sensor="Slow") == []
    assert len(feed(gd, [0, 10], sensor="Fast")) == 1
    assert len(feed(gd, [0, 200], asset="pump3", sensor="Slow")) == 1


def test_min_gap_keeps_fast_sensors_from_flagging_a_stall_of_milliseconds():
    gd = GapDetector(expected_period_s=0.001, min_gap_s=1.0)
    assert feed(gd, [0.0, 0.001, 0.5, 0.501]) == []
    assert len(feed(gd, [2.0])) == 1


def test_duplicates_and_out_of_order_readings_are_not_gaps_nor_intervals():
    gd = GapDetector(min_samples=4)
    times = [0, 1, 2, 2, 1, 3, 4, 0.5, 5, 6, 7]  # redelivered QoS 1 copies, a late reading
    assert feed(gd, times) == []
    (gap,) = feed(gd, [20])
    assert gap.period_s == 1.0 and gap.missing == 12


def test_the_gap_interval_does_not_skew_the_learned_period():
    gd = GapDetector(min_samples=4, history=8)
    feed(gd, [0, 1, 2, 3, 4, 5, 6, 7, 8])
    for k in range(5):  # a long outage every few readings
        base = 1000 * (k + 1)
        assert len(feed(gd, [base, base + 1, base + 2])) == 1
    assert gd.status()["by_sensor"][0]["period_s"] == 1.0


def test_memory_is_bounded_by_max_series():
    gd = GapDetector(max_series=100)
    for i in range(5000):
        gd.observe(f"asset{i}", "s", 1.0)
    assert gd.series() == 100 and gd.status()["untracked"] == 4900


def test_status_lists_the_worst_sensors_first():
    gd = GapDetector(expected_period_s=1.0, min_gap_s=0)
    feed(gd, [0, 10, 20, 30], sensor="a")
    feed(gd, [0, 10], sensor="b")
    st = gd.status(top=1)
    assert [x["sensor"] for x in st["by_sensor"]] == ["a"] and st["gaps"] == 4


def test_on_gap_callback():
    seen = []
    gd = GapDetector(expected_period_s=1.0, on_gap=seen.append)
    feed(gd, [0, 5])
    assert [(g.asset, g.sensor, g.missing) for g in seen] == [("pump1", "Current", 4)]


def test_gap_config():
    assert MqttInputConfig().gaps == GapConfig(enabled=True, expected_period_s=None, periods={}, factor=3.0,
                                               min_gap_s=1.0)
    assert MqttInputConfig(gaps={"periods": {"pump1/Current": 0.1}}).gaps.periods == {"pump1/Current": 0.1}
    for bad in ({"factor": 1.0}, {"expected_period_s": 0}, {"periods": {"a/b/c": 1.0}}, {"periods": {"a": -1}}):
        with pytest.raises(ValueError):
            GapConfig(**bad)
