"""``[inputs.mqtt]``: what to subscribe to and what to accept (the broker is ``[connections.mqtt]``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from appliance.connectors.mqtt_settings import GapConfig, MqttSessionSettings
from appliance.settings import DAY_S, Section

__all__ = ["GapConfig", "MqttInputConfig", "MqttTopic"]


class MqttTopic(Section):
    """Maps an MQTT topic pattern to asset and sensor.

    ``pattern`` uses ``{asset}`` and ``{sensor}`` placeholders for whole topic
    levels, e.g. ``plant/{asset}/{sensor}`` (one reading per message) or
    ``plant/{asset}/telemetry`` (a ``values`` object with several sensors). A
    fixed ``asset`` may be given instead of the placeholder.
    """

    pattern: str = Field(min_length=1, max_length=1024)
    asset: str | None = Field(None, min_length=1, max_length=256)
    historical: bool = False

    @field_validator("pattern")
    @classmethod
    def _pattern_ok(cls, v: str) -> str:
        for level in v.split("/"):
            if "{" in level and level not in ("{asset}", "{sensor}"):
                raise ValueError(f"level {level!r}: placeholders must fill a whole level "
                                 "and be {asset} or {sensor}")
            if level in ("+", "#"):
                raise ValueError("use {asset}/{sensor} placeholders instead of MQTT wildcards")
        return v

    @model_validator(mode="after")
    def _asset_known(self):
        if "{asset}" not in self.pattern and not self.asset:
            raise ValueError("pattern has no {asset} level, so 'asset' must be set")
        return self


class MqttInputConfig(MqttSessionSettings):
    """``[inputs.mqtt]``; the session, bounds and gaps are :class:`MqttSessionSettings`'."""

    topics: tuple[MqttTopic, ...] = Field((
        MqttTopic(pattern="plant/{asset}/{sensor}"),
        MqttTopic(pattern="plant/{asset}/telemetry"),
    ), min_length=1, max_length=1000)
    max_future_skew_s: float = Field(300.0, ge=0, le=DAY_S)
    min_timestamp: float = Field(946684800.0, ge=0, le=4102444800.0,
                                 description="2000-01-01; older is absurd (at most 2100-01-01)")
    ts_unit: Literal["auto", "s", "ms", "us", "ns"] = Field(
        "auto", description="unit of numeric 'ts': epoch s/ms/us/ns, or auto (from the magnitude)")
