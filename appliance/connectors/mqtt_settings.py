"""Settings every input on its own MQTT session has (JSON and Sparkplug B): session, bounds, gaps.

Kept apart from :mod:`appliance.connectors.mqtt_session` so that loading the
configuration loads no paho.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator

from appliance.settings import DAY_S, MAX_PHYSICAL, Section


def range_key_ok(key: str) -> None:
    parts = key.split("/")
    if len(parts) > 2 or not all(parts):
        raise ValueError(f"{key!r}: a key is a sensor name or asset/sensor")


class GapConfig(Section):
    """``[inputs.<name>.gaps]``: when a pause in a sensor's readings counts as readings lost."""

    enabled: bool = True
    expected_period_s: float | None = Field(
        None, gt=0, le=DAY_S, description="every sensor's period; unset: learned per sensor (median interval)")
    periods: dict[str, float] = Field(default_factory=dict,
                                      description="period per 'sensor' or 'asset/sensor', overriding the rest")
    factor: float = Field(3.0, gt=1, le=1000, description="a gap is longer than factor x the period ...")
    min_gap_s: float = Field(1.0, ge=0, le=DAY_S, description="... and than the period plus this")

    @field_validator("periods")
    @classmethod
    def _periods_ok(cls, v: dict[str, float]) -> dict[str, float]:
        for key, period in v.items():
            range_key_ok(key)
            if not (0 < period <= DAY_S):
                raise ValueError(f"periods[{key!r}] must be > 0 and at most a day, got {period!r}")
        return v


class MqttSessionSettings(Section):
    """What :class:`~appliance.connectors.mqtt_session.MqttSession` reads of an input's section."""

    enabled: bool = True
    client_id: str = Field("appliance-ingest", min_length=1, max_length=128,
                           description="fixed: the broker keeps the persistent session under this id")
    qos: Literal[0, 1] = 1
    status_topic: str = Field("appliance/status", min_length=1, max_length=1024)
    max_payload_bytes: int = Field(262144, ge=64, le=256 * 1024 * 1024,
                                   description="larger messages are dead-lettered")
    assets: tuple[str, ...] = Field((), max_length=100_000,
                                    description="the assets accepted; empty: up to max_assets at a time")
    max_assets: int = Field(1000, ge=1, le=1_000_000, description="without a list, at most this many assets")
    asset_idle_s: float = Field(300.0, ge=1, le=DAY_S,
                                description="without a list, an asset that never produced a complete window (nor "
                                            "an alarm) and is silent this long gives its place to a new one")
    max_sensors_per_asset: int = Field(256, ge=1, le=100_000,
                                       description="when no model names the sensors, at most this many per asset")
    max_abs_value: float = Field(1e12, gt=0, le=MAX_PHYSICAL, description="a value with |v| above this is refused")
    ranges: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="physical [min, max] per 'sensor' or 'asset/sensor'; outside is refused")
    gaps: GapConfig = GapConfig()
    max_unstored: int = Field(10_000, ge=1, le=10_000_000,
                              description="readings (and dead letters) handed on and not yet stored; at this many "
                                          "the socket is not read until half are stored (keep it under "
                                          "[store] max_in_flight)")

    @field_validator("assets")
    @classmethod
    def _assets_ok(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if not name or "/" in name or "+" in name or "#" in name or len(name) > 128:
                raise ValueError(f"asset {name!r}: 1..128 characters, no '/', '+' or '#'")
        return v

    @field_validator("ranges")
    @classmethod
    def _ranges_ok(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for key, (lo, hi) in v.items():
            range_key_ok(key)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"ranges[{key!r}] must be [min, max] with finite min < max, got [{lo}, {hi}]")
            if max(abs(lo), abs(hi)) > MAX_PHYSICAL:
                raise ValueError(f"ranges[{key!r}]: [{lo:g}, {hi:g}] is beyond ±{MAX_PHYSICAL:g}, not a physical range")
        return v
