import math

import numpy as np
import pytest

from appliance.core import Quality, Reading
from appliance.detector.windowing import WindowBuilder, grid_rows, rows_as_readings

S = ("a", "b")


def wb(**kw):
    args = dict(period_s=1.0, window=3, stride=1, staleness_s=2.5, lateness_s=2.0) | kw
    return WindowBuilder(S, **args)


def feed(builder, readings):
    out = []
    for r in readings:
        out += builder.add(r)
    return out


def both(t, va=None, vb=None, asset="p"):
    return [Reading(asset, "a", t, float(t) if va is None else va),
            Reading(asset, "b", t, -float(t) if vb is None else vb)]


def test_decision_follows_the_last_sensor_of_a_row_at_once():
    b = wb()
    out = feed(b, both(100) + both(101) + [Reading("p", "a", 102, 102.0)])
    assert out == []  # row 102 waits for sensor b
    out = b.add(Reading("p", "b", 102, -102.0))
    assert [w.t_end for w in out] == [102.0]
    assert out[0].complete


def test_out_of_order_within_row_is_placed_where_it_belongs():
    b = wb()
    rs = both(100) + [Reading("p", "a", 101.5, 9.0), Reading("p", "a", 101, 1.0),
                      Reading("p", "b", 101, -101.0)]
    out = feed(b, rs + both(102) + both(103))
    # row 101 holds a@101 (1.0) not a@101.5, which belongs to row 102 and is then replaced by a@102
    first = out[0]
    assert first.t_end == 102.0
    assert first.values[:, 0].tolist() == [100.0, 1.0, 102.0]


def test_late_reading_does_not_rewrite_scored_rows_and_is_counted():
    b = wb()
    feed(b, both(100) + both(101) + both(102) + both(103))
    assert b.add(Reading("p", "a", 101.2, 5.0)) == []
    assert b.late == 1


def test_stale_sensor_is_masked_never_zero_filled():
    b = wb()
    rs = both(100) + both(101)
    for t in range(102, 108):  # b goes silent
        rs.append(Reading("p", "a", t, float(t)))
    out = feed(b, rs)
    assert out, "rows are finalised by lateness when a sensor is silent"
    last = out[-1]
    assert not last.complete and last.missing_sensors == ("b",)
    assert math.isnan(last.values[-1, 1]) and not last.mask[-1, 1]
    assert last.mask[:, 0].all()


def test_bad_quality_is_masked():
    b = wb()
    rs = both(100) + both(101) + [Reading("p", "a", 102, 1.0), Reading("p", "b", 102, 7.0, Quality.BAD)]
    out = feed(b, rs)
    assert out[-1].mask[-1].tolist() == [True, False]


def test_held_value_within_staleness_fills_a_row():
    b = wb(lateness_s=0.5)
    rs = both(100) + both(101) + [Reading("p", "a", 102, 102.0), Reading("p", "a", 103, 103.0)]
    out = feed(b, rs)
    w = out[0]
    assert w.t_end == 102.0 and w.complete and w.values[-1, 1] == -101.0


def test_stride_and_assets_are_independent():
    b = wb(stride=2)
    rs = []
    for t in range(100, 110):
        rs += both(t, asset="p1") + both(t, asset="p2")
    out = feed(b, rs)
    ends = {a: [w.t_end for w in out if w.asset == a] for a in ("p1", "p2")}
    assert ends["p1"] == ends["p2"] == [102.0, 104.0, 106.0, 108.0]


def test_long_gap_restarts_the_window():
    b = wb()
    out = feed(b, both(100) + both(101) + both(102) + both(500) + both(501) + both(502))
    assert [w.t_end for w in out] == [102.0, 502.0]
    assert all(w.complete for w in out)
    assert b.gaps == 1


def test_unknown_sensor_is_counted():
    b = wb()
    assert b.add(Reading("p", "zzz", 100, 1.0)) == []
    assert b.unknown_sensor == 1


def test_subsecond_period():
    b = WindowBuilder(S, period_s=0.1, window=5, stride=1, staleness_s=0.5, lateness_s=0.3)
    rs = []
    for i in range(20):
        rs += both(1000 + i * 0.1)
    out = feed(b, rs)
    assert len(out) == 16
    assert np.allclose(np.diff([w.t_end for w in out]), 0.1)


@pytest.mark.parametrize("kw", [dict(window=0), dict(stride=0), dict(period_s=0), dict(staleness_s=0)])
def test_invalid_parameters(kw):
    with pytest.raises(ValueError):
        wb(**kw)


# ---------------------------------------------------------------- grid_rows: the offline side of the same rule

def test_grid_rows_keeps_values_unrounded_and_live_windows_as_float32():
    value = 0.1 + 1e-12  # not representable in float32
    g = grid_rows(both(100, value, value) + both(101, value, value), S, period_s=1.0)
    assert g.values.dtype == np.float64 and g.values[0, 0] == value
    assert feed(wb(window=1), both(100, value, value) + both(101, value, value))[0].values.dtype == np.float32


def test_grid_rows_runs_end_at_stale_or_bad_rows_and_at_skipped_gaps():
    rs = []
    for t in range(100, 110):
        rs += both(t)
    rs += [Reading("p", "a", 110, 1.0), Reading("p", "b", 110, 7.0, Quality.BAD)]  # row 110 incomplete
    for t in range(111, 115):
        rs += both(t)
    for t in range(122, 126):  # 8 s gap: rows 115-119 held (staleness 5), 120-121 stale
        rs += both(t)
    for t in range(500, 503):  # long gap: skipped
        rs += both(t)
    g = grid_rows(rs, S, period_s=1.0, staleness_s=5.0, lateness_s=2.0)
    spans = [(g.ts[a], g.ts[b - 1]) for a, b in g.runs]
    assert spans == [(100.0, 109.0), (111.0, 119.0), (122.0, 125.0), (500.0, 502.0)]
    assert np.isfinite(g.values).all() and g.values[g.ts.tolist().index(119.0), 0] == 114.0  # held


def test_grid_rows_windows_are_the_windows_the_live_builder_scores():
    """Windows cut from grid_rows' runs equal the complete windows of a live builder fed the same readings.

    (Gaps here are short or far longer than a window. A gap between the two ends a
    run a few held rows sooner offline, see grid_rows: a subset, never other rows.)
    """
    rng = np.random.default_rng(5)
    rs, t = [], 1000.0
    for _ in range(400):
        t += rng.choice([1.0, 1.0, 1.0, 2.0, 7.0, 300.0], p=[0.6, 0.2, 0.1, 0.07, 0.02, 0.01])
        va, vb = rng.normal(size=2)
        quality_b = Quality.BAD if rng.random() < 0.02 else Quality.GOOD
        rs += [Reading("p", "a", t, va), Reading("p", "b", t, vb, quality_b)]
    live = [w for w in feed(wb(window=4, staleness_s=5.0, lateness_s=2.0), rs) if w.complete]
    g = grid_rows(rs, S, period_s=1.0, staleness_s=5.0, lateness_s=2.0)
    offline = [(g.ts[i + 3], g.values[i:i + 4]) for a, b in g.runs for i in range(a, b - 3)]
    assert len(live) > 100 and [w.t_end for w in live] == [t for t, _ in offline]
    for w, (_, values) in zip(live, offline):
        np.testing.assert_array_equal(w.values, values.astype(np.float32))


def test_grid_rows_subsecond_period_at_epoch_timestamps_is_one_run():
    # At 1.7e9 s a float's step is 2.4e-7 s, more than a millionth of 0.1 s: rows must still chain.
    ts = 1_700_000_000.0 + np.arange(500) / 10.0
    rows = np.c_[np.arange(500.0), -np.arange(500.0)]
    g = grid_rows(rows_as_readings("p", S, ts, rows), S, period_s=0.1, staleness_s=0.5, lateness_s=0.2)
    assert g.runs == ((0, 500),) and np.array_equal(g.values, rows)


def test_grid_rows_takes_one_asset():
    with pytest.raises(ValueError, match="one asset"):
        grid_rows(both(100, asset="p1") + both(100, asset="p2"), S, period_s=1.0)


def test_rows_as_readings_sends_a_table_row_by_row():
    rs = list(rows_as_readings("pump", ["a", "b"], np.array([10.0, 11.0]), np.array([[1.0, 2.0], [3.0, 4.0]])))
    assert [(r.sensor, r.ts, r.value) for r in rs] == [("a", 10.0, 1.0), ("b", 10.0, 2.0), ("a", 11.0, 3.0),
                                                        ("b", 11.0, 4.0)]


def test_readiness_count_matches_checking_every_sensor_on_a_messy_stream():
    # The aligner counts the sensors that reached the next row instead of checking all of them
    # on every reading; on a stream with jitter, reordering, late and missing readings, gaps and
    # off-grid timestamps, it must emit exactly what the check over every sensor emits.
    from appliance.detector import windowing

    class EverySensor(windowing._AssetAligner):
        def _ready(self) -> bool:
            t = self.next_row
            if self.newest_ts >= t + self.b.lateness_s:
                return True
            return all(tr.newest_ts >= t - self.b._eps for tr in self.tracks.values())

    sensors = tuple(f"s{i}" for i in range(7))
    rng = np.random.default_rng(3)
    readings = []
    t = 1000.0
    for _ in range(600):
        t += 1.0 if rng.random() > 0.02 else float(rng.integers(5, 40))  # now and then a gap
        for s in sensors:
            if rng.random() < 0.08:
                continue  # a missing report
            ts = t + (0.0 if rng.random() < 0.7 else float(rng.uniform(-0.4, 0.4)))
            readings.append(Reading("p" if rng.random() < 0.9 else "q", s, ts, float(rng.normal())))
    order = np.arange(len(readings)) + rng.uniform(-6, 6, len(readings))  # reordered within a few readings
    readings = [readings[i] for i in np.argsort(order)]

    def run(aligner_cls):
        builder = WindowBuilder(sensors, period_s=1.0, window=4, stride=1, staleness_s=2.5, lateness_s=1.5)
        emitted = []
        for r in readings:
            if r.asset not in builder._assets:
                builder._assets[r.asset] = aligner_cls(builder, r.asset)
            emitted += [(w.asset, w.t_end, w.values.tobytes(), w.mask.tobytes()) for w in builder.add(r)]
        return emitted, builder.status()

    fast, fast_status = run(windowing._AssetAligner)
    slow, slow_status = run(EverySensor)
    assert len(fast) > 500
    assert fast == slow
    assert fast_status == slow_status
