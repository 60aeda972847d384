import math

import numpy as np
import pytest

from appliance.core import Quality, Reading
from appliance.detector.windowing import WindowBuilder

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
