"""Payload and topic parsing of the MQTT input: every accepted shape and every refusal."""

from __future__ import annotations

import json
import math

import pytest

from appliance.connectors.mqtt.payload import (DEAD_LETTER_MAX_BYTES, RouteMatch, TopicRoute, TopicRouter,
                                               parse_payload, parse_timestamp)
from appliance.core import DeadLetterCode
from appliance.core import Quality

NOW = 1_700_000_000.0
SINGLE = RouteMatch("pump1", "Current", False, "plant/{asset}/{sensor}")
MULTI = RouteMatch("pump1", None, False, "plant/{asset}/telemetry")
KNOWN = {"Current", "Voltage", "Pressure"}


def parse(route, payload, **kw):
    if not isinstance(payload, bytes):
        payload = json.dumps(payload).encode() if not isinstance(payload, str) else payload.encode()
    kw.setdefault("known_sensors", KNOWN)
    return parse_payload(route, payload, NOW, topic="plant/t", source="mqtt", **kw)


def only_dead(route, payload, **kw):
    ok, dead = parse(route, payload, **kw)
    assert ok == [], ok
    assert len(dead) == 1, dead
    assert dead[0].source == "plant/t"
    assert dead[0].received_at == NOW
    assert isinstance(dead[0].code, DeadLetterCode) and dead[0].detail
    return dead[0]


def test_single_reading_fields():
    (r,), dead = parse(SINGLE, {"ts": NOW - 1, "value": 3, "quality": "uncertain"})
    assert dead == []
    assert (r.asset, r.sensor, r.ts, r.value, r.quality, r.source, r.historical) == \
        ("pump1", "Current", NOW - 1, 3.0, Quality.UNCERTAIN, "mqtt", False)
    assert isinstance(r.value, float)


def test_multi_reading_all_sensors_share_ts_and_quality():
    ok, dead = parse(MULTI, {"ts": "2023-11-14T22:13:19Z", "values": {"Current": 1.5, "Voltage": 230},
                             "quality": 2})
    assert dead == []
    assert sorted((r.sensor, r.value) for r in ok) == [("Current", 1.5), ("Voltage", 230.0)]
    assert {r.ts for r in ok} == {NOW - 1}
    assert {r.quality for r in ok} == {Quality.BAD}


def test_historical_from_payload_or_route():
    ok, _ = parse(MULTI, {"ts": NOW, "values": {"Current": 1}, "historical": True})
    assert ok[0].historical
    hist_route = RouteMatch("pump1", None, True, "replay/{asset}")
    ok, _ = parse(hist_route, {"ts": NOW, "values": {"Current": 1}})
    assert ok[0].historical
    assert only_dead(MULTI, {"ts": NOW, "values": {"Current": 1}, "historical": "yes"}).code == "bad_historical"


def test_unknown_extra_keys_are_ignored_and_any_sensor_when_unrestricted():
    ok, dead = parse(MULTI, {"ts": NOW, "seq": 17, "values": {"Anything": 1}}, known_sensors=None)
    assert [r.sensor for r in ok] == ["Anything"] and dead == []


@pytest.mark.parametrize("payload, code, words", [
    (b"\x00\xff garbage", "bad_json", "UTF-8"),
    (b"{not json", "bad_json", "Expecting"),
    (b"", "bad_json", "Expecting value"),
    (b"[1, 2]", "not_object", "list"),
    (b"42", "not_object", "int"),
    (b'"text"', "not_object", "str"),
    (b'{"value": 1}', "missing_ts", "no 'ts'"),
    (b'{"ts": null, "value": 1}', "bad_ts", "NoneType"),
    (b'{"ts": true, "value": 1}', "bad_ts", "bool"),
    (b'{"ts": "yesterday", "value": 1}', "bad_ts", "ISO-8601"),
    (b'{"ts": NaN, "value": 1}', "bad_ts", "nan"),
    (b'{"ts": 12, "value": 1}', "ts_too_old", "before min_timestamp"),
    (b'{"ts": "1999-12-31T23:59:59Z", "value": 1}', "ts_too_old", "1999-12-31"),
    (b'{"ts": 1700000400, "value": 1}', "ts_in_future", "400 s ahead"),
    (b'{"ts": 1700000000}', "missing_value", "neither"),
    (b'{"ts": 1700000000, "value": 1, "values": {}}', "ambiguous_value", "both"),
    (b'{"ts": 1700000000, "value": "1.5"}', "bad_value", "got str '1.5'"),
    (b'{"ts": 1700000000, "value": true}', "bad_value", "boolean"),
    (b'{"ts": 1700000000, "value": null}', "bad_value", "null"),
    (b'{"ts": 1700000000, "value": [1]}', "bad_value", "list"),
    (b'{"ts": 1700000000, "value": NaN}', "non_finite", "nan"),
    (b'{"ts": 1700000000, "value": Infinity}', "non_finite", "inf"),
    (b'{"ts": 1700000000, "value": -Infinity}', "non_finite", "-inf"),
    (b'{"ts": 1700000000, "value": 1e999}', "non_finite", "inf"),
    (b'{"ts": 1700000000, "value": ' + b"9" * 400 + b"}", "non_finite", "overflows"),
    (b'{"ts": 1700000000, "value": 1, "quality": "great"}', "bad_quality", "'great'"),
    (b'{"ts": 1700000000, "value": 1, "quality": 7}', "bad_quality", "7"),
    (b'{"ts": 1700000000, "value": 1, "quality": true}', "bad_quality", "True"),
    (b'{"ts": 1700000000, "values": {"Current": 1}}', "shape_mismatch", "per-sensor topic"),
])
def test_single_topic_refusals(payload, code, words):
    dl = only_dead(SINGLE, payload)
    assert dl.code == code, dl.reason
    assert words in dl.detail, dl.reason


@pytest.mark.parametrize("payload, code, words", [
    (b'{"ts": 1700000000, "value": 1}', "shape_mismatch", "without a {sensor} level"),
    (b'{"ts": 1700000000, "values": {}}', "empty_values", "no sensors"),
    (b'{"ts": 1700000000, "values": [1, 2]}', "bad_value", "got list"),
    (b'{"ts": 1700000000, "values": {"Torque": 1}}', "unknown_sensor", "'Torque' is not known for asset 'pump1'"),
    (b'{"ts": 1700000000, "values": {"": 1}}', "bad_sensor_name", "1..128"),
])
def test_multi_topic_refusals(payload, code, words):
    dl = only_dead(MULTI, payload)
    assert dl.code == code, dl.reason
    assert words in dl.detail, dl.reason


def test_unknown_sensor_on_single_topic():
    route = RouteMatch("pump1", "Torque", False, "plant/{asset}/{sensor}")
    assert only_dead(route, {"ts": NOW, "value": 1}).code == "unknown_sensor"


def test_multi_value_good_sensors_pass_and_each_bad_one_is_a_dead_letter():
    ok, dead = parse(MULTI, b'{"ts": 1700000000, "values": {"Current": 1.2, "Voltage": NaN, '
                            b'"Pressure": "high", "Torque": 3}}')
    assert [(r.sensor, r.value) for r in ok] == [("Current", 1.2)]
    assert sorted(d.code for d in dead) == ["bad_value", "non_finite", "unknown_sensor"]
    assert all(d.payload.startswith(b'{"ts": 1700000000') for d in dead)


def test_empty_topic_levels_and_size_limit():
    assert only_dead(RouteMatch("", "Current", False, "p"), {"ts": NOW, "value": 1}).code == "bad_topic"
    assert only_dead(RouteMatch("a", "", False, "p"), {"ts": NOW, "value": 1}).code == "bad_topic"
    big = json.dumps({"ts": NOW, "value": 1, "pad": "x" * 100_000}).encode()
    assert only_dead(SINGLE, big, max_payload_bytes=65536).code == DeadLetterCode.TOO_LARGE
    _, (d,) = parse(SINGLE, big, max_payload_bytes=65536)
    assert len(d.payload) == DEAD_LETTER_MAX_BYTES and big.startswith(d.payload)


def test_limits_are_configurable():
    assert parse(SINGLE, {"ts": 1.0, "value": 1}, min_timestamp=0)[0]
    assert parse(SINGLE, {"ts": NOW + 3600, "value": 1}, max_future_skew_s=7200)[0]
    assert only_dead(SINGLE, {"ts": NOW + 1, "value": 1}, max_future_skew_s=0).code == "ts_in_future"


def test_milliseconds_under_a_seconds_unit_are_refused_with_a_hint():
    dl = only_dead(SINGLE, b'{"ts": 1700000000000, "value": 1}', ts_unit="s")
    assert dl.code == "ts_in_future" and "looks like ms" in dl.detail, dl.reason


def test_deeply_nested_json_is_a_dead_letter():
    assert only_dead(SINGLE, b"[" * 100_000 + b"]" * 100_000).code == "bad_json"


def test_parse_timestamp_forms():
    assert parse_timestamp(1_700_000_000.25) == 1_700_000_000.25
    assert parse_timestamp("2023-11-14T22:13:20") == NOW  # naive means UTC
    assert parse_timestamp("2023-11-14T22:13:20.000+00:00") == NOW
    for bad in ("", "12:00", [], {}, math.inf):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_router_collapses_overlapping_filters_and_prefers_literal_levels():
    r = TopicRouter([TopicRoute("plant/{asset}/telemetry"), TopicRoute("plant/{asset}/{sensor}"),
                     TopicRoute("line/{sensor}", fixed_asset="press7", historical=True),
                     TopicRoute("line/{sensor}", fixed_asset="dup")])
    assert r.subscriptions == ("plant/+/+", "line/+")
    assert r.route("plant/p1/telemetry").sensor is None
    assert r.route("plant/p1/Voltage").sensor == "Voltage"
    m = r.route("line/Pressure")
    assert (m.asset, m.sensor, m.historical) == ("press7", "Pressure", True)  # first configured wins ties
    assert r.route("plant/p1") is None and r.route("plant/p1/a/b") is None
    with pytest.raises(ValueError):
        TopicRouter([])


def test_router_keeps_disjoint_filters():
    r = TopicRouter([TopicRoute("a/{asset}/x"), TopicRoute("a/{asset}/y"), TopicRoute("b/{asset}/{sensor}")])
    assert r.subscriptions == ("a/+/x", "a/+/y", "b/+/+")
