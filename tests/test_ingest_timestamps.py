"""Timestamps in every unit a device sends: epoch s / ms / us / ns, and ISO 8601 (issue 13)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from appliance.connectors.mqtt.config import MqttInputConfig
from appliance.connectors.mqtt.payload import RouteMatch, parse_payload, parse_timestamp, ts_unit_of

T = 1_700_000_000.25  # 2023-11-14T22:13:20.25Z
NOW = T + 1
SINGLE = RouteMatch("pump1", "Current", False, "plant/{asset}/{sensor}")

# What each unit looks like on the wire for T (ints where a device would send ints).
WIRE = {
    "s": T,
    "ms": 1_700_000_000_250,
    "us": 1_700_000_000_250_000,
    "ns": 1_700_000_000_250_000_000,
}


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_every_unit_when_configured(unit):
    assert parse_timestamp(WIRE[unit], unit) == T


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_every_unit_recognised_by_auto(unit):
    assert ts_unit_of(WIRE[unit]) == unit
    assert parse_timestamp(WIRE[unit]) == T
    assert parse_timestamp(WIRE[unit], "auto") == T


@pytest.mark.parametrize("unit", ["ms", "us", "ns"])
def test_fractional_numbers_in_finer_units(unit):
    per_s = {"ms": 1e3, "us": 1e6, "ns": 1e9}[unit]
    assert parse_timestamp(T * per_s, unit) == pytest.approx(T, abs=1e-6)
    assert parse_timestamp(T * per_s) == pytest.approx(T, abs=1e-6)


def test_nanoseconds_keep_every_bit_a_float_holds():
    ns = 1_700_000_000_123_456_789
    assert parse_timestamp(ns, "ns") == ns / 10**9  # one rounding: the nearest float
    assert parse_timestamp(ns) == 1700000000.1234567


def test_auto_boundaries_over_every_plausible_date():
    # 2000-01-01 .. 2100-01-01 in each unit stays inside that unit's band.
    for unit, per_s in (("s", 1), ("ms", 10**3), ("us", 10**6), ("ns", 10**9)):
        for epoch_s in (946_684_800, 1_700_000_000, 4_102_444_800):
            assert ts_unit_of(epoch_s * per_s) == unit
            assert parse_timestamp(epoch_s * per_s) == epoch_s


@pytest.mark.parametrize("text", [
    "2023-11-14T22:13:20.25Z",
    "2023-11-14T22:13:20.250+00:00",
    "2023-11-14T23:13:20.25+01:00",
    "2023-11-14T17:13:20.25-05:00",
    "2023-11-14 22:13:20.250",        # no offset: UTC
    "2023-11-14T22:13:20.250000Z",
    "20231114T221320.25Z",            # basic format
    "  2023-11-14T22:13:20.25Z  ",
])
def test_iso_8601_forms(text):
    assert parse_timestamp(text) == T
    assert parse_timestamp(text, "ms") == T  # the unit is for numbers only


def test_iso_date_only_is_midnight_utc():
    assert parse_timestamp("2023-11-14") == datetime(2023, 11, 14, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("raw, words", [
    (True, "bool"), (None, "NoneType"), ("soon", "ISO-8601"), ("", "ISO-8601"), (float("nan"), "nan"),
    (float("inf"), "inf"), (10**400, "out of range"), ([1], "list"),
])
def test_bad_timestamps(raw, words):
    with pytest.raises(ValueError, match=words):
        parse_timestamp(raw)


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_payloads_in_every_unit(unit):
    payload = json.dumps({"ts": WIRE[unit], "value": 1.5}).encode()
    (r,), dead = parse_payload(SINGLE, payload, NOW)
    assert dead == [] and r.ts == T
    (r,), dead = parse_payload(SINGLE, payload, NOW, ts_unit=unit)
    assert dead == [] and r.ts == T


def test_a_wrong_unit_setting_is_refused_with_the_unit_it_looks_like():
    payload = json.dumps({"ts": WIRE["ns"], "value": 1.5}).encode()
    _, (d,) = parse_payload(SINGLE, payload, NOW, ts_unit="ms")
    assert d.code == "ts_in_future" and "looks like ns, but ts_unit is 'ms'" in d.detail
    payload = json.dumps({"ts": WIRE["s"], "value": 1.5}).encode()
    _, (d,) = parse_payload(SINGLE, payload, NOW, ts_unit="us")
    assert d.code == "ts_too_old"


def test_unit_in_config():
    assert MqttInputConfig().ts_unit == "auto"
    assert MqttInputConfig(ts_unit="ns").ts_unit == "ns"
    with pytest.raises(ValueError):
        MqttInputConfig(ts_unit="minutes")
