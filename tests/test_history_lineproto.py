"""Line protocol encoding: same bytes as influxdb-client's Point, stable, strict on bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from influxdb_client import Point, WritePrecision

from appliance.core import Alarm, AlarmEvent, AlarmState, Level, Quality, Reading, Score
from appliance.history.lineproto import EncodeError, Encoder, ts_ns


def point_line(measurement, tags, fields, ns) -> bytes:
    p = Point(measurement)
    for k, v in tags.items():
        p.tag(k, v)
    for k, v in fields.items():
        p.field(k, v)
    return p.time(ns, WritePrecision.NS).to_line_protocol().encode()


@pytest.mark.parametrize("asset,sensor", [
    ("pump-1", "current"),
    ("line 2,cell=3", "temp C"),          # space, comma, equals in tags
    ("a\\", "s"),                          # trailing backslash
    ("ünïcode", "Δp"),
])
def test_reading_matches_influxdb_client_point(asset, sensor):
    enc = Encoder({"site": "demo plant"})
    r = Reading(asset, sensor, 1_700_000_000.123456, 42.5, Quality.UNCERTAIN)
    want = point_line("reading", {"site": "demo plant", "asset": asset, "sensor": sensor},
                      {"value": 42.5, "quality": 1}, ts_ns(r.ts))
    assert enc.reading(r) == want


def test_score_and_alarm_match_influxdb_client_point():
    enc = Encoder()
    s = Score("pump-1", 1_700_000_001.5, 0.25, 0.5, {"current": 0.75, "vib x": 0.25}, "m-3", historical=True)
    assert enc.score(s) == point_line(
        "score", {"asset": "pump-1", "historical": "true"},
        {"value": 0.25, "threshold": 0.5, "ratio": 0.5, "contrib_current": 0.75, "contrib_vib x": 0.25,
         "model_version": "m-3"}, ts_ns(s.t_end))

    a = Alarm(id="abc123", asset="pump-1", level=Level.CRITICAL, state=AlarmState.ACKED, start=1_700_000_000.0,
              peak_ratio=3.5, top_sensors=("current", "temp"), end=None, acked_by="ana")
    e = AlarmEvent("acknowledged", a, 1_700_000_002.0, user="ana", note='said "ok"\\fine')
    assert enc.alarm_event(e) == point_line(
        "alarm_event", {"asset": "pump-1", "alarm_id": "abc123", "event": "acknowledged", "level": "critical"},
        {"active": True, "state": "acknowledged", "peak_ratio": 3.5, "start": 1_700_000_000.0,
         "top_sensors": "current,temp", "user": "ana", "note": 'said "ok"\\fine'}, ts_ns(e.ts))


def test_audit_record_tags_fields_and_nested_json():
    enc = Encoder()
    rec = {"ts": 1_700_000_003.0, "asset": "pump-1", "action": "write_setpoint", "ok": True, "seq": 7,
           "value": 12.5, "target": {"node": "ns=2;s=Speed", "old": 10}, "operator": None}
    line = enc.audit(rec, rec["ts"])
    assert line == point_line(
        "audit", {"asset": "pump-1", "action": "write_setpoint"},
        {"ok": True, "seq": 7, "value": 12.5, "target": '{"node": "ns=2;s=Speed", "old": 10}'},
        ts_ns(rec["ts"]))
    # A record with nothing to write still becomes a point: audit is never lost.
    assert enc.audit({"action": "arm"}, 5.0) == b"audit,action=arm logged=true 5000000000"


def test_non_finite_values_are_left_out_not_fatal():
    enc = Encoder()
    line = enc.reading(Reading("a", "s", 10.0, float("nan"), Quality.BAD))
    assert line == b"reading,asset=a,sensor=s quality=2i 10000000000"
    line = enc.score(Score("a", 10.0, 1.0, 0.0, {}))  # threshold 0: ratio is inf
    assert b"ratio" not in line and b"value=1" in line
    # numpy scalars are numbers like any other
    assert enc.reading(Reading("a", "s", 10.0, np.float32(1.5))) == \
        b"reading,asset=a,sensor=s quality=0i,value=1.5 10000000000"


def test_timestamps_are_stable_nanoseconds_at_microsecond_resolution():
    assert ts_ns(1.5) == 1_500_000_000
    assert ts_ns(1_700_000_000.1234567) == 1_700_000_000_123_457_000
    ts = 1_795_303_380.429123
    assert ts_ns(ts) == ts_ns(float(repr(ts)))  # same float, same id, every time
    for bad in (math.nan, math.inf, None, "1"):
        with pytest.raises(EncodeError):
            ts_ns(bad)


def test_bad_records_raise_a_clear_error():
    enc = Encoder()
    with pytest.raises(EncodeError, match="asset"):
        enc.reading(Reading("", "s", 1.0, 1.0))
    with pytest.raises(EncodeError, match="number"):
        enc.reading(Reading("a", "s", 1.0, "high"))
    with pytest.raises(EncodeError, match="mapping"):
        enc.audit(["not", "a", "dict"], 1.0)
    with pytest.raises(ValueError, match="asset"):
        Encoder({"asset": "x"})


def test_mitigation_audit_row_shape():
    """The row appliance.actions.audit writes: kind/status are tags, the rest fields."""
    row = {"ts": 1_700_000_004.25, "proposal_id": "p-1", "kind": "write", "status": "verified",
           "actor": "appliance", "rule": "slow-down", "asset": "pump1", "alarm_id": "a1", "node": "ns=2;s=Speed",
           "old_value": 50.0, "new_value": 40.0, "reason": "anomaly", "guard": None, "detail": "{}", "armed": 1}
    line = Encoder().audit(row, row["ts"])
    assert line.startswith(b"audit,asset=pump1,kind=write,status=verified ")
    assert b"proposal_id=\"p-1\"" in line and b"armed=1i" in line and b"new_value=40" in line
    assert line.endswith(b" 1700000004250000000")
