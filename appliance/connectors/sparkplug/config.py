"""``[inputs.sparkplug]``: which Sparkplug B edge nodes to read and how their metrics become readings.

The broker is ``[connections.mqtt]``; the session, bounds and gaps are those of
every input on its own MQTT session (:class:`MqttSessionSettings`).
"""

from __future__ import annotations

import re
import string

from pydantic import Field, field_validator, model_validator

from appliance.connectors.mqtt_settings import MqttSessionSettings
from appliance.settings import DAY_S, Section

_PLACES = {"group", "node", "device"}
_SENSOR_PLACES = _PLACES | {"metric", "leaf"}
_ID = re.compile(r"^[^/+#]{1,128}$")


def _template_ok(v: str, allowed: set[str], what: str) -> str:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(v) if name is not None}
    except ValueError as e:
        raise ValueError(f"{what} {v!r}: {e}") from None
    unknown = names - allowed
    if unknown or "" in names:
        raise ValueError(f"{what} {v!r}: placeholders are {', '.join('{%s}' % p for p in sorted(allowed))}, "
                         f"got {', '.join(repr(n) for n in sorted(unknown or {''}))}")
    return v


class MappingRule(Section):
    """Where the metrics of matching edge nodes and devices go: the first rule that matches wins.

    ``group``, ``node``, ``device`` are shell-style patterns (``*``, ``?``, ``[ab]``);
    ``device = ""`` matches node-level metrics (NBIRTH/NDATA) only. ``asset`` and
    ``sensor`` are templates over ``{group}``, ``{node}``, ``{device}`` and (``sensor``)
    ``{metric}`` (the metric's whole name) and ``{leaf}`` (its last ``/`` level).
    """

    group: str = Field("*", min_length=1, max_length=256)
    node: str = Field("*", min_length=1, max_length=256)
    device: str = Field("*", max_length=256)
    asset: str = Field("{device}", min_length=1, max_length=256)
    sensor: str = Field("{metric}", min_length=1, max_length=256)

    @field_validator("asset")
    @classmethod
    def _asset_ok(cls, v: str) -> str:
        return _template_ok(v, _PLACES, "asset")

    @field_validator("sensor")
    @classmethod
    def _sensor_ok(cls, v: str) -> str:
        return _template_ok(v, _SENSOR_PLACES, "sensor")

    @model_validator(mode="after")
    def _device_level(self):
        if self.device == "" and "{device}" in self.asset + self.sensor:
            raise ValueError("a rule for node-level metrics (device = \"\") cannot use {device}")
        return self


class SparkplugInputConfig(MqttSessionSettings):
    enabled: bool = False
    client_id: str = Field("appliance-sparkplug-host", min_length=1, max_length=128,
                           description="fixed: the broker keeps the persistent session under this id")
    status_topic: str = Field("appliance/sparkplug-host/status", min_length=1, max_length=1024)
    groups: tuple[str, ...] = Field((), max_length=1000,
                                    description="Sparkplug group ids read; empty: every group (spBv1.0/#)")
    rules: tuple[MappingRule, ...] = Field((), max_length=1000,
                                           description="asset and sensor per node/device, first match wins; "
                                                       "after them: device = asset, node-level = node_asset")
    node_asset: str = Field("{node}", min_length=1, max_length=256,
                            description="the asset of node-level metrics (NBIRTH/NDATA) no rule maps")
    ignore_metrics: tuple[str, ...] = Field(
        ("bdSeq", "Node Control/*", "Device Control/*", "Node Info/*", "Device Info/*", "Properties/*"),
        max_length=1000, description="metric names (shell patterns) that are never readings")
    reorder_timeout_s: float = Field(2.0, ge=0, le=600,
                                     description="a missing seq may arrive this late before it counts as a gap")
    rebirth_interval_s: float = Field(10.0, ge=0.1, le=DAY_S,
                                      description="at most one rebirth request per edge node this often")
    max_rebirth_backoff_s: float = Field(3600.0, ge=0.1, le=DAY_S,
                                         description="a node whose birth is refused for its size is asked to "
                                                     "rebirth ever less often, down to once this often")
    max_rebirths_per_min: int = Field(60, ge=1, le=100_000,
                                      description="rebirth requests to all edge nodes together")
    max_births_per_min: int = Field(120, ge=1, le=100_000,
                                    description="an edge node rebirthing faster is not read until it calms down")
    max_metrics_per_birth: int = Field(10_000, ge=1, le=1_000_000,
                                       description="a larger birth is refused (dead-lettered)")
    max_cached_metrics: int = Field(1_000_000, ge=1, le=100_000_000,
                                    description="metrics held in the birth cache of all nodes and devices")
    max_nodes: int = Field(10_000, ge=1, le=1_000_000, description="edge nodes followed at a time")
    max_future_skew_s: float = Field(300.0, ge=0, le=DAY_S)
    min_timestamp: float = Field(946684800.0, ge=0, le=4102444800.0,
                                 description="2000-01-01; older is absurd (at most 2100-01-01)")

    @field_validator("groups")
    @classmethod
    def _groups_ok(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for g in v:
            if not _ID.match(g):
                raise ValueError(f"group {g!r}: 1..128 characters, no '/', '+' or '#'")
        return v

    @field_validator("node_asset")
    @classmethod
    def _node_asset_ok(cls, v: str) -> str:
        return _template_ok(v, {"group", "node"}, "node_asset")

    def subscriptions(self) -> tuple[str, ...]:
        return tuple(f"spBv1.0/{g}/#" for g in self.groups) or ("spBv1.0/#",)
