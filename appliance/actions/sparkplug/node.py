"""The appliance as a Sparkplug B edge node, without the network: metrics, aliases, ``seq`` and payloads.

:class:`EdgeNode` holds what the node reports (its own metrics and one device per
asset), turns the runtime's records into the metric changes worth reporting
(report by exception: a value that did not change is not sent, the score ratio
only once it moved ``ratio_deadband``) and encodes births, data and the death
certificate. The output (:mod:`.output`) owns the MQTT session and decides when
each is published; keeping this part free of it lets the tests read every payload.

Aliases are declared in the births and are unique across the node (node metrics
first, then each asset's in the order assets appeared); DATA messages carry the
alias alone. ``seq`` is 0 in the NBIRTH and counts every later message of the
session modulo 256; the NDEATH carries none, only the ``bdSeq`` it shares with the
NBIRTH of its session.

>>> node = EdgeNode("plant", "gw1", appliance_version="1.0", model_version="m1")
>>> topic, birth = node.nbirth(bdseq=7, now_ms=1000)
>>> topic, [(m.name, m.alias) for m in Payload.FromString(birth).metrics][1:3]
('spBv1.0/plant/NBIRTH/gw1', [('Node Control/Rebirth', 1), ('Appliance/Version', 2)])
>>> Payload.FromString(birth).seq, node.dbirths(now_ms=1000)
(0, [])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from appliance.actions.sparkplug.config import check_sparkplug_id
from appliance.connections.sparkplug.metrics import DataType
from appliance.connections.sparkplug.schema import Metric, Payload
from appliance.connections.sparkplug.topics import MessageType, node_topic
from appliance.core import Alarm, AlarmState, ModeChange, PointMode, Score
from appliance.core.severity import severity

REBIRTH = "Node Control/Rebirth"
BDSEQ = "bdSeq"

# Node metrics, in alias order (bdSeq carries no alias: the NDEATH names it, and it has no birth to refer to).
NODE_METRICS: tuple[tuple[str, DataType], ...] = (
    (REBIRTH, DataType.Boolean),
    ("Appliance/Version", DataType.String),
    ("Appliance/State", DataType.String),   # "alarm" while any asset has an active alarm, else "normal"
    ("Alarms/Active", DataType.Int32),
    ("Model/Version", DataType.String),
    ("Model/Candidate", DataType.String),   # the model running in shadow, "" when none
)
# Each asset's device metrics, in alias order.
DEVICE_METRICS: tuple[tuple[str, DataType], ...] = (
    ("Score/Ratio", DataType.Double),        # the last window's score / threshold (1 = at the alarm threshold)
    ("Score/Severity", DataType.Int32),      # the same on the 0-100 scale (50 = threshold)
    ("Alarm/Active", DataType.Boolean),
    ("Alarm/State", DataType.String),        # ISA-18.2: normal, unacknowledged, acknowledged, shelved ...
    ("Alarm/Level", DataType.String),        # normal, anomaly, critical
    ("Alarm/Peak Ratio", DataType.Double),
    ("Alarm/Top Sensors", DataType.String),  # comma-separated, highest contribution first
    ("Alarm/Id", DataType.String),
    ("Point/Mode", DataType.String),         # in_service, shelved, suppressed, out_of_service
)
_DEVICE_TYPES = dict(DEVICE_METRICS)
_NODE_TYPES = dict(NODE_METRICS)
_ACTIVE_STATES = (AlarmState.UNACKED, AlarmState.ACKED)

_INT32 = (DataType.Int8, DataType.Int16, DataType.Int32, DataType.UInt8, DataType.UInt16, DataType.UInt32)
_INT64 = (DataType.Int64, DataType.UInt64, DataType.DateTime)
_STRINGS = (DataType.String, DataType.Text, DataType.UUID)


def set_value(metric, datatype: DataType, value: Any) -> None:
    """Put ``value`` in the field of ``metric`` its datatype uses (negative integers as two's complement).

    >>> m = Metric(); set_value(m, DataType.Int32, -2); m.int_value
    4294967294
    >>> m = Metric(); set_value(m, DataType.Double, None); m.is_null, m.datatype
    (True, 10)
    """
    metric.datatype = int(datatype)
    if value is None:
        metric.is_null = True
    elif datatype in _INT32:
        metric.int_value = int(value) & 0xFFFFFFFF
    elif datatype in _INT64:
        metric.long_value = int(value) & 0xFFFFFFFFFFFFFFFF
    elif datatype is DataType.Float:
        metric.float_value = float(value)
    elif datatype is DataType.Double:
        metric.double_value = float(value)
    elif datatype is DataType.Boolean:
        metric.boolean_value = bool(value)
    elif datatype in _STRINGS:
        metric.string_value = str(value)
    else:
        raise ValueError(f"the appliance does not publish {datatype.name} metrics")


def device_id_problem(asset: str) -> str | None:
    """Why ``asset`` cannot be a Sparkplug device id (one topic level), or None."""
    try:
        check_sparkplug_id(asset, "asset")
    except ValueError as e:
        return str(e)
    return None if asset else "an empty asset name"


@dataclass
class AssetMetrics:
    """One asset's device metrics as last set, and the ratio last reported (for the deadband)."""

    values: dict[str, Any] = field(default_factory=lambda: {
        "Score/Ratio": None, "Score/Severity": None, "Alarm/Active": False, "Alarm/State": AlarmState.NORMAL.value,
        "Alarm/Level": "normal", "Alarm/Peak Ratio": None, "Alarm/Top Sensors": "", "Alarm/Id": "",
        "Point/Mode": PointMode.IN_SERVICE.value})
    reported_ratio: float | None = None


class EdgeNode:
    """Metrics, aliases and ``seq`` of one edge node; not thread-safe (the output holds a lock around it)."""

    def __init__(self, group: str, node: str, *, appliance_version: str, model_version: str,
                 ratio_deadband: float = 0.05, top_sensors: int = 3):
        self.group, self.node = group, node
        self.ratio_deadband = ratio_deadband
        self.top_n = top_sensors
        self.node_values: dict[str, Any] = {REBIRTH: False, "Appliance/Version": appliance_version,
                                            "Appliance/State": "normal", "Alarms/Active": 0,
                                            "Model/Version": model_version, "Model/Candidate": ""}
        self.assets: dict[str, AssetMetrics] = {}
        self.aliases: dict[tuple[str | None, str], int] = {
            (None, name): i + 1 for i, (name, _) in enumerate(NODE_METRICS)}
        self._seq = 0

    # -- seq -------------------------------------------------------------------------------------------------
    def _next_seq(self) -> int:
        seq, self._seq = self._seq, (self._seq + 1) % 256
        return seq

    # -- assets ------------------------------------------------------------------------------------------------
    def add_asset(self, asset: str) -> bool:
        """Make ``asset`` a device (aliases allocated); False if it already was one."""
        if asset in self.assets:
            return False
        base = len(self.aliases) + 1
        for i, (name, _) in enumerate(DEVICE_METRICS):
            self.aliases[(asset, name)] = base + i
        self.assets[asset] = AssetMetrics()
        return True

    # -- what the runtime's records change (name -> new value; empty when nothing worth reporting) ------------
    def on_score(self, score: Score) -> dict[str, Any]:
        state = self.assets[score.asset]
        ratio = score.ratio if math.isfinite(score.ratio) else None
        last = state.reported_ratio
        moved = (ratio is None) != (last is None) or (ratio is not None and abs(ratio - last) >= self.ratio_deadband)
        if not moved and state.values["Score/Ratio"] is not None:
            return {}
        state.reported_ratio = ratio
        return self._set(score.asset, {"Score/Ratio": ratio,
                                       "Score/Severity": score.severity if ratio is not None else 100})

    def on_alarm(self, alarm: Alarm) -> dict[str, Any]:
        return self._set(alarm.asset, {
            "Alarm/Active": alarm.active, "Alarm/State": alarm.state.value,
            "Alarm/Level": alarm.level.name.lower(), "Alarm/Peak Ratio": alarm.peak_ratio,
            "Alarm/Top Sensors": ",".join(alarm.top_sensors[:self.top_n]), "Alarm/Id": alarm.id})

    def on_peak(self, alarm: Alarm) -> dict[str, Any]:
        return self._set(alarm.asset, {"Alarm/Peak Ratio": alarm.peak_ratio, "Alarm/Level": alarm.level.name.lower(),
                                       "Alarm/Top Sensors": ",".join(alarm.top_sensors[:self.top_n])})

    def on_mode(self, change: ModeChange) -> dict[str, Any]:
        changes = self.on_alarm(change.alarm) if change.alarm is not None else {}
        return changes | self._set(change.asset, {"Point/Mode": change.mode.value})

    def set_node(self, values: Mapping[str, Any]) -> dict[str, Any]:
        changed = {k: v for k, v in values.items() if self.node_values.get(k) != v}
        self.node_values.update(changed)
        return changed

    def node_summary(self) -> dict[str, Any]:
        """The node metrics that follow the assets' alarms (call after an alarm change)."""
        active = sum(1 for a in self.assets.values() if a.values["Alarm/Active"]
                     and a.values["Alarm/State"] in _ACTIVE_STATES)
        return self.set_node({"Alarms/Active": active, "Appliance/State": "alarm" if active else "normal"})

    def _set(self, asset: str, values: Mapping[str, Any]) -> dict[str, Any]:
        current = self.assets[asset].values
        changed = {k: v for k, v in values.items() if current.get(k) != v}
        current.update(changed)
        return changed

    # -- payloads ----------------------------------------------------------------------------------------------
    def nbirth(self, bdseq: int, now_ms: int) -> tuple[str, bytes]:
        """The NBIRTH of a new birth sequence: ``seq`` starts again at 0."""
        self._seq = 0
        p = Payload(timestamp=now_ms, seq=self._next_seq())
        set_value(p.metrics.add(name=BDSEQ, timestamp=now_ms), DataType.UInt64, bdseq)
        for name, kind in NODE_METRICS:
            value = False if name == REBIRTH else self.node_values[name]
            self._metric(p, None, name, kind, value, now_ms, named=True)
        return node_topic(self.group, MessageType.NBIRTH, self.node), p.SerializeToString()

    def dbirths(self, now_ms: int) -> list[tuple[str, bytes]]:
        return [self.dbirth(asset, now_ms) for asset in self.assets]

    def dbirth(self, asset: str, now_ms: int) -> tuple[str, bytes]:
        p = Payload(timestamp=now_ms, seq=self._next_seq())
        values = self.assets[asset].values
        for name, kind in DEVICE_METRICS:
            self._metric(p, asset, name, kind, values[name], now_ms, named=True)
        return node_topic(self.group, MessageType.DBIRTH, self.node, asset), p.SerializeToString()

    def ddata(self, asset: str, changes: Mapping[str, Any], ts_ms: int, now_ms: int) -> tuple[str, bytes]:
        p = Payload(timestamp=now_ms, seq=self._next_seq())
        for name, value in changes.items():
            self._metric(p, asset, name, _DEVICE_TYPES[name], value, ts_ms, named=False)
        return node_topic(self.group, MessageType.DDATA, self.node, asset), p.SerializeToString()

    def ndata(self, changes: Mapping[str, Any], now_ms: int) -> tuple[str, bytes]:
        p = Payload(timestamp=now_ms, seq=self._next_seq())
        for name, value in changes.items():
            self._metric(p, None, name, _NODE_TYPES[name], value, now_ms, named=False)
        return node_topic(self.group, MessageType.NDATA, self.node), p.SerializeToString()

    def ndeath(self, bdseq: int, now_ms: int) -> tuple[str, bytes]:
        """The death certificate: the ``bdSeq`` of its session's NBIRTH, no ``seq``."""
        p = Payload(timestamp=now_ms)
        set_value(p.metrics.add(name=BDSEQ, timestamp=now_ms), DataType.UInt64, bdseq)
        return node_topic(self.group, MessageType.NDEATH, self.node), p.SerializeToString()

    def _metric(self, p, device: str | None, name: str, kind: DataType, value: Any, ts_ms: int, *,
                named: bool) -> None:
        m = p.metrics.add(alias=self.aliases[(device, name)], timestamp=ts_ms)
        if named:  # births declare name and alias; data refers by alias alone
            m.name = name
        set_value(m, kind, value)

    def metric_by_alias(self, alias: int) -> tuple[str | None, str] | None:
        """``(device or None, name)`` of an alias this node declared."""
        for key, a in self.aliases.items():
            if a == alias:
                return key
        return None
