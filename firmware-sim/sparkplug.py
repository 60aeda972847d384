"""The pump as a Sparkplug B edge node (Eclipse Sparkplug 3.0), as a plant's gateway firmware would publish it.

:class:`SparkplugEdgeNode` rides on a :class:`~.publisher.MqttPublisher`: before it
connects it registers the NDEATH as the MQTT will (QoS 1) with the session's
``bdSeq``; on the first sample of every session it publishes the NBIRTH (``bdSeq``,
``Node Control/Rebirth``) and one DBIRTH for the asset (the device) declaring each
sensor as a Double metric with its alias, carrying that sample; every later sample
is one DDATA holding the eight values by alias. ``seq`` is 0 in the NBIRTH and +1
(modulo 256) after. An NCMD ``Node Control/Rebirth`` makes the next sample a birth
again; a lost connection makes the next session take ``bdSeq`` + 1 (in memory: each
run of the simulator starts at 0). Births and data go at QoS 0, as Sparkplug has it.

The payload schema is the appliance's (``appliance.connections.sparkplug``); the
tests read what this publishes with Eclipse Tahu's decoder, so both are held to Tahu.

    spBv1.0/<group>/NBIRTH/<edge node>            bdSeq, Node Control/Rebirth
    spBv1.0/<group>/DBIRTH/<edge node>/<asset>    one Double metric per sensor: name, alias, value
    spBv1.0/<group>/DDATA/<edge node>/<asset>     the sample's values by alias, stamped with its time
    spBv1.0/<group>/NDEATH/<edge node>            the will (and a clean stop's last word): bdSeq
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Protocol, Sequence

from appliance.connections.sparkplug.metrics import DataType
from appliance.connections.sparkplug.schema import Payload
from appliance.connections.sparkplug.topics import MessageType, node_topic


class Publisher(Protocol):
    """What the edge node needs of :class:`~.publisher.MqttPublisher` (which starts it: no import back)."""

    client: Any  # the paho client: the will, the NCMD subscription, the death's own publish
    on_connected: list[Callable[[], None]]
    on_lost: list[Callable[[], None]]

    def publish(self, topic: str, payload: bytes) -> Any: ...

log = logging.getLogger(__name__)

REBIRTH = "Node Control/Rebirth"
NDEATH_WAIT_S = 5.0


class SparkplugEdgeNode:
    """Publishes samples of one asset as a Sparkplug B edge node through ``pub`` (built, not yet connected)."""

    def __init__(self, pub: Publisher, group: str, edge_node: str, device: str, sensors: Sequence[str]):
        for what, name in (("group", group), ("edge node", edge_node), ("asset", device)):
            if not name or any(c in name for c in "/+#"):
                raise ValueError(f"Sparkplug {what} {name!r} must be one topic level (no '/', '+' or '#')")
        self.pub, self.group, self.edge_node, self.device = pub, group, edge_node, device
        self.sensors = tuple(sensors)
        self.aliases = {s: i + 2 for i, s in enumerate(self.sensors)}  # 1 is Node Control/Rebirth
        self.bdseq = 0
        self.births = 0
        self.rebirth_requests = 0
        self._seq = 0
        self._born = False
        self._live = False
        self._lock = threading.Lock()
        self._arm_will()
        pub.on_connected.append(self._connected)
        pub.on_lost.append(self._lost)
        pub.client.message_callback_add(self._topic(MessageType.NCMD), self._on_ncmd)

    def _topic(self, kind: MessageType, device: str | None = None) -> str:
        return node_topic(self.group, kind, self.edge_node, device)

    def _ndeath(self) -> bytes:
        p = Payload(timestamp=int(time.time() * 1000))
        p.metrics.add(name="bdSeq", datatype=DataType.UInt64, long_value=self.bdseq)
        return p.SerializeToString()

    def _arm_will(self) -> None:
        self.pub.client.will_set(self._topic(MessageType.NDEATH), self._ndeath(), qos=1, retain=False)

    # -- the session (paho's thread) ------------------------------------------------------------------------------
    def _connected(self) -> None:
        with self._lock:
            self._live, self._born = True, False  # the next sample births this session
        self.pub.client.subscribe(self._topic(MessageType.NCMD), qos=1)

    def _lost(self) -> None:
        with self._lock:
            if not self._live:
                return
            self._live, self._born = False, False
            self.bdseq = (self.bdseq + 1) % 256
            self._arm_will()  # paho reconnects with this will: the next session's NDEATH

    def _on_ncmd(self, client, userdata, msg) -> None:
        try:
            payload = Payload.FromString(msg.payload)
        except Exception as e:  # a hostile or broken command must not stop the pump
            log.warning("sim sparkplug NCMD not decodable: %s", e)
            return
        for m in payload.metrics:
            if (m.name == REBIRTH or m.alias == 1) and m.WhichOneof("value") == "boolean_value" and m.boolean_value:
                with self._lock:
                    self._born = False
                    self.rebirth_requests += 1
                log.info("sim sparkplug rebirth requested")
            else:
                log.warning("sim sparkplug NCMD metric %r ignored (the simulator takes no writes)", m.name)

    # -- samples (the pump's thread) -------------------------------------------------------------------------------
    def _next_seq(self) -> int:
        seq, self._seq = self._seq, (self._seq + 1) % 256
        return seq

    def publish_sample(self, ts: float, values: dict[str, float]) -> int:
        """One sample: the births it takes (first of a session, after a rebirth request), else a DDATA."""
        ts_ms = int(ts * 1000)
        with self._lock:
            if not self._born:
                self._publish_births(ts_ms, values)
                return 2
            p = Payload(timestamp=ts_ms, seq=self._next_seq())
            for sensor, value in values.items():
                p.metrics.add(alias=self.aliases[sensor], timestamp=ts_ms, datatype=DataType.Double,
                              double_value=value)
            self.pub.publish(self._topic(MessageType.DDATA, self.device), p.SerializeToString())
            return 1

    def _publish_births(self, ts_ms: int, values: dict[str, float]) -> None:
        self._seq = 0
        node = Payload(timestamp=ts_ms, seq=self._next_seq())
        node.metrics.add(name="bdSeq", timestamp=ts_ms, datatype=DataType.UInt64, long_value=self.bdseq)
        node.metrics.add(name=REBIRTH, alias=1, timestamp=ts_ms, datatype=DataType.Boolean, boolean_value=False)
        self.pub.publish(self._topic(MessageType.NBIRTH), node.SerializeToString())
        device = Payload(timestamp=ts_ms, seq=self._next_seq())
        for sensor in self.sensors:
            device.metrics.add(name=sensor, alias=self.aliases[sensor], timestamp=ts_ms, datatype=DataType.Double,
                               double_value=values[sensor])
        self.pub.publish(self._topic(MessageType.DBIRTH, self.device), device.SerializeToString())
        self._born = True
        self.births += 1
        log.info("sim sparkplug births bdSeq=%d device=%s", self.bdseq, self.device)

    def close(self) -> None:
        """A clean stop's NDEATH (a clean disconnect discards the will), waited for up to a few seconds."""
        with self._lock:
            live, self._live = self._live, False
        if not live:
            return
        info = self.pub.client.publish(self._topic(MessageType.NDEATH), self._ndeath(), qos=1)
        try:
            info.wait_for_publish(NDEATH_WAIT_S)
        except (RuntimeError, ValueError):
            log.warning("sim sparkplug NDEATH not delivered; the broker's will says it")

