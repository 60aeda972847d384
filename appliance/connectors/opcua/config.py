"""``[inputs.opcua]``: which PLC variables to subscribe to (the PLC is ``[connections.opcua]``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from appliance.connections.config import check_node_ref
from appliance.settings import BackoffConfig, DAY_S, MAX_PHYSICAL, Section


class OpcuaNode(Section):
    """One monitored item: a PLC variable mapped to one sensor of one asset."""

    node: str = Field(description="NodeId string (ns=2;s=...) or browse path (0:Objects/2:Pump/2:Current)")
    asset: str = Field(min_length=1, max_length=256)
    sensor: str = Field(min_length=1, max_length=256)
    deadband: float = Field(0.0, ge=0, le=MAX_PHYSICAL, description="0 = every change; absolute units or percent of EURange")
    deadband_type: Literal["absolute", "percent"] = "absolute"
    sampling_interval_ms: float | None = Field(None, ge=0, le=DAY_S * 1000, description="default: the connector's")
    min_value: float | None = Field(None, ge=-MAX_PHYSICAL, le=MAX_PHYSICAL,
                                    description="physical range: a value below is refused (dead letter)")
    max_value: float | None = Field(None, ge=-MAX_PHYSICAL, le=MAX_PHYSICAL,
                                    description="physical range: a value above is refused (dead letter)")

    @model_validator(mode="after")
    def _range_ok(self):
        if self.min_value is not None and self.max_value is not None and self.min_value >= self.max_value:
            raise ValueError(f"min_value {self.min_value} must be below max_value {self.max_value}")
        return self

    @field_validator("node")
    @classmethod
    def _node_ok(cls, v: str) -> str:
        return check_node_ref(v)


class OpcuaInputConfig(Section):
    enabled: bool = False
    sampling_interval_ms: float = Field(1000.0, ge=0, le=DAY_S * 1000)
    publishing_interval_ms: float = Field(1000.0, gt=0, le=DAY_S * 1000)
    queue_size: int = Field(10, ge=1, le=10000, description="samples the server buffers between publishes")
    timestamp: Literal["source", "server", "receive"] = Field(
        "source", description="which clock stamps readings (falls back to the next one when absent)")
    watchdog_s: float = Field(10.0, gt=0, le=DAY_S, description="no data for this long forces a full reconnect")
    reconnect: BackoffConfig = BackoffConfig()
    max_abs_value: float = Field(1e12, gt=0, le=MAX_PHYSICAL,
                                 description="a value with |v| above this is refused, unless the node sets a range")
    # Default: the PLC simulator's pump (firmware-sim/plc.py), so the demo switches to
    # OPC-UA with ``inputs.opcua.enabled = true`` alone.
    nodes: tuple[OpcuaNode, ...] = Field(tuple(
        OpcuaNode(node=f"ns=2;s=Pump1.{s}", asset="pump1", sensor=s)
        for s in ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
                  "Thermocouple", "Voltage", "Volume Flow RateRMS")), max_length=10000)

    @model_validator(mode="after")
    def _nodes_ok(self):
        seen: dict[tuple[str, str], str] = {}
        for n in self.nodes:
            key = (n.asset, n.sensor)
            if key in seen:
                raise ValueError(f"nodes: {n.asset}/{n.sensor} is mapped twice ({seen[key]!r} and {n.node!r})")
            seen[key] = n.node
        if self.watchdog_s * 1000 <= self.publishing_interval_ms:
            raise ValueError("watchdog_s must be longer than publishing_interval_ms")
        return self
