"""The Sparkplug B output: the appliance as an edge node on an MQTT session of its own.

The session's NDEATH is registered as the MQTT will (QoS 1) carrying the ``bdSeq``
of the NBIRTH it will publish, taken from :class:`~.bdseq.BdSeqFile` so it goes on
across restarts. Once connected (and, with a ``primary_host_id``, once that host's
``spBv1.0/STATE/<host>`` says ``{"online": true}``) it publishes its NBIRTH and one
DBIRTH per asset, then DDATA/NDATA as the runtime's records change what it reports.
A lost connection ends the birth sequence: the next session takes the next
``bdSeq`` (a new will) and births again. An NCMD ``Node Control/Rebirth`` births
again on the same session (requests closer than ``rebirth_min_interval_s`` are
answered by one birth); every other NCMD or DCMD is a write, refused, counted and
logged: control of the plant stays with the guarded PLC path (``[outputs.mitigation]``).
The host's STATE going offline makes the node publish its NDEATH, disconnect and
start over, as Sparkplug 3.0 has it.

The hooks run on the event loop and only queue QoS 0 messages in paho (never
blocking); paho's own thread runs the session. One lock keeps births and data in
``seq`` order whichever thread publishes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import paho.mqtt.client as mqtt

from appliance.actions.sparkplug.bdseq import BdSeqFile
from appliance.actions.sparkplug.config import SparkplugOutputConfig
from appliance.actions.sparkplug.node import REBIRTH, EdgeNode, device_id_problem
from appliance.connections.config import MqttBroker
from appliance.connections.mqtt import configure_paho
from appliance.connections.sparkplug.schema import Payload
from appliance.connections.sparkplug.topics import MessageType, TopicError, node_topic, parse_topic, state_topic
from appliance.core import Alarm, AlarmEvent, Counters, ModeChange, ModelChange, Output, OutputContext, Score

log = logging.getLogger(__name__)

NDEATH_WAIT_S = 5.0  # how long a clean stop waits for the broker to take its NDEATH


def now_ms() -> int:
    return int(time.time() * 1000)


class SparkplugOutput(Output):
    name = "sparkplug"

    def __init__(self, cfg: SparkplugOutputConfig, broker: MqttBroker, *, bdseq_path: Path,
                 store_path: Path | None = None, appliance_version: str = "", model_version: str = ""):
        self.cfg = cfg
        self.broker = broker
        self.store_path = store_path
        self.bdseq = BdSeqFile(bdseq_path)
        self.node = EdgeNode(cfg.group_id, cfg.edge_node_id, appliance_version=appliance_version,
                             model_version=model_version, ratio_deadband=cfg.ratio_deadband,
                             top_sensors=cfg.top_sensors)
        self.counters = Counters()
        self._lock = threading.RLock()
        self.session_bdseq: int | None = None
        self.connected = False
        self.born = False
        self.host_online = cfg.primary_host_id is None
        self._host_ts = -1
        self._stopping = False
        self._last_birth = -float("inf")
        self._rebirth_timer: threading.Timer | None = None
        self._refused_assets: set[str] = set()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id, clean_session=True)
        configure_paho(self.client, broker)
        self.client.reconnect_delay_set(broker.reconnect.initial_s, broker.reconnect.max_s)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # -- life ------------------------------------------------------------------------------------------------
    async def start(self, ctx: OutputContext | None = None) -> None:
        await asyncio.to_thread(self._seed_from_store)
        self._arm_will(await asyncio.to_thread(self.bdseq.take_next))
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
        self.client.loop_start()

    async def stop(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            self._stopping = True
            self._cancel_rebirth_timer()
            info = self._publish_ndeath() if self.connected else None
        if info is not None:
            try:
                info.wait_for_publish(NDEATH_WAIT_S)
            except (RuntimeError, ValueError):  # the connection went meanwhile: the will says it instead
                pass
        self.client.disconnect()
        self.client.loop_stop()

    def _publish_ndeath(self):
        """An NDEATH published by hand (a clean disconnect discards the will), QoS 1 as the will's."""
        topic, payload = self.node.ndeath(self.session_bdseq, now_ms())
        log.info("sparkplug: NDEATH bdSeq=%s", self.session_bdseq)
        return self.client.publish(topic, payload, qos=1)

    def _arm_will(self, bdseq: int) -> None:
        """The next session's will: the NDEATH with the bdSeq its NBIRTH will carry."""
        with self._lock:
            self.session_bdseq = bdseq
            topic, payload = self.node.ndeath(bdseq, now_ms())
            self.client.will_set(topic, payload, qos=1, retain=False)

    def _seed_from_store(self) -> None:
        """Open alarms and point modes from before a restart, so the first DBIRTHs carry them."""
        if self.store_path is None:
            return
        from appliance.store import StoreReader, StoreUnavailable

        reader = StoreReader(self.store_path)
        try:
            alarms, modes = reader.open_alarms(), reader.point_modes()
        except StoreUnavailable as e:
            log.warning("sparkplug: store unreadable at start (%s); assets are born as they are scored", e)
            return
        with self._lock:
            for asset, (mode, _until) in modes.items():
                if self._admit(asset):
                    self.node.assets[asset].values["Point/Mode"] = mode.value
            for alarm in alarms:
                if self._admit(alarm.asset):
                    self.node.on_alarm(alarm)
            self.node.node_summary()

    # -- the session (paho's thread) ---------------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("sparkplug: connect refused reason=%s", reason_code)
            return
        g, n = self.cfg.group_id, self.cfg.edge_node_id
        topics = [(node_topic(g, MessageType.NCMD, n), 1), (node_topic(g, MessageType.DCMD, n, "+"), 1)]
        if self.cfg.primary_host_id is not None:
            topics.append((state_topic(self.cfg.primary_host_id), 1))
        with self._lock:
            self.connected = True
            self.counters.inc("sessions")
            # Subscriptions go first: the broker handles them before the births that follow them.
            client.subscribe(topics)
            log.info("sparkplug: connected host=%s port=%s bdSeq=%s", self.broker.host, self.broker.port,
                     self.session_bdseq)
            if self.host_online:
                self._births()
            else:
                log.info("sparkplug: waiting for primary host %s to be online", self.cfg.primary_host_id)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            was, self.connected, self.born = self.connected, False, False
            if self.cfg.primary_host_id is not None:
                self.host_online = False  # the next session reads the host's STATE again
            if not was or self._stopping:
                return
            self.counters.inc("disconnects")
        log.warning("sparkplug: disconnected reason=%s; the next session births with a new bdSeq", reason_code)
        # paho reconnects with the will as set now: the next session's NDEATH, bdSeq + 1 (written, and fsynced,
        # outside the lock: the event loop's hooks never wait on the disk).
        self._arm_will(self.bdseq.take_next())

    def _on_message(self, client, userdata, msg) -> None:
        try:
            topic = parse_topic(msg.topic)
        except TopicError:
            self.counters.inc("messages_ignored")
            return
        if topic.kind is MessageType.STATE:
            self._on_state(msg.payload)
        elif topic.kind is MessageType.NCMD:
            self._on_command(msg.payload, None)
        elif topic.kind is MessageType.DCMD:
            self._on_command(msg.payload, topic.device)

    def _on_state(self, raw: bytes) -> None:
        """The primary host's STATE (Sparkplug 3.0: ``{"online": bool, "timestamp": ms}``, retained)."""
        try:
            doc = json.loads(raw)
            online, ts = doc["online"], doc["timestamp"]
            if not isinstance(online, bool) or not isinstance(ts, int) or isinstance(ts, bool):
                raise TypeError("online must be a boolean and timestamp an integer")
        except (ValueError, KeyError, TypeError) as e:
            self.counters.inc("state_malformed")
            log.warning("sparkplug: STATE of %s not understood (%s): %r", self.cfg.primary_host_id, e, raw[:200])
            return
        with self._lock:
            if ts < self._host_ts:  # an older STATE than one already seen: the host has moved on
                self.counters.inc("state_stale")
                return
            self._host_ts = ts
            was, self.host_online = self.host_online, online
            if online and not was and self.connected:
                log.info("sparkplug: primary host %s online", self.cfg.primary_host_id)
                self._births()
            elif not online and was and self.connected:
                log.warning("sparkplug: primary host %s offline; NDEATH, disconnect and start over",
                            self.cfg.primary_host_id)
                self.counters.inc("host_offline")
                self._publish_ndeath()
                self.born = False  # nothing more on this session after its death certificate
                threading.Thread(target=self._restart_session, name="sparkplug-restart", daemon=True).start()

    def _restart_session(self) -> None:
        """Disconnect (the NDEATH is out) and connect again: a new session, a new bdSeq, births once the host is back."""
        self.client.disconnect()
        self.client.loop_stop()
        with self._lock:
            if self._stopping:
                return
            if self.connected:  # paho did not report the session's end: the next one still needs its bdSeq
                self.connected = self.born = False
                self._arm_will(self.bdseq.take_next())
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
        self.client.loop_start()

    def _on_command(self, raw: bytes, device: str | None) -> None:
        try:
            payload = Payload.FromString(raw)
        except Exception as e:  # protobuf's DecodeError and what a hostile payload can make of it
            self.counters.inc("commands_malformed")
            log.warning("sparkplug: %s not decodable: %s", "DCMD" if device else "NCMD", e)
            return
        for metric in payload.metrics:
            name = metric.name if metric.HasField("name") else self._alias_name(metric.alias, device)
            if device is None and name == REBIRTH:
                if metric.WhichOneof("value") == "boolean_value" and metric.boolean_value:
                    self.request_rebirth()
                continue
            self.counters.inc("writes_refused")
            where = f"device={device} " if device is not None else ""
            log.warning("sparkplug: write refused %smetric=%r: the appliance takes no writes over Sparkplug; "
                        "control of the plant stays with the guarded PLC path", where, name)

    def _alias_name(self, alias: int, device: str | None) -> str:
        with self._lock:
            key = self.node.metric_by_alias(alias)
        return key[1] if key is not None and key[0] == device else f"alias {alias}"

    # -- births ------------------------------------------------------------------------------------------------
    def request_rebirth(self) -> None:
        """A host asked for a rebirth: births now, or once ``rebirth_min_interval_s`` has passed since the last."""
        with self._lock:
            self.counters.inc("rebirth_requests")
            if not (self.connected and self.host_online) or self._rebirth_timer is not None:
                return  # the coming birth answers it
            wait = self._last_birth + self.cfg.rebirth_min_interval_s - time.monotonic()
            if wait <= 0:
                self._births()
                return
            self._rebirth_timer = threading.Timer(wait, self._rebirth_due)
            self._rebirth_timer.daemon = True
            self._rebirth_timer.start()

    def _rebirth_due(self) -> None:
        with self._lock:
            self._rebirth_timer = None
            if self.connected and self.host_online and not self._stopping:
                self._births()

    def _cancel_rebirth_timer(self) -> None:
        if self._rebirth_timer is not None:
            self._rebirth_timer.cancel()
            self._rebirth_timer = None

    def _births(self) -> None:
        """NBIRTH (seq 0, this session's bdSeq) and a DBIRTH per asset; under the lock."""
        now = now_ms()
        topic, payload = self.node.nbirth(self.session_bdseq, now)
        self.client.publish(topic, payload, qos=0)
        for topic, payload in self.node.dbirths(now):
            self.client.publish(topic, payload, qos=0)
        self.born = True
        self._last_birth = time.monotonic()
        self.counters.inc("births")
        log.info("sparkplug: NBIRTH bdSeq=%s devices=%d", self.session_bdseq, len(self.node.assets))

    # -- the runtime's records (the event loop) ----------------------------------------------------------------
    def on_score(self, score: Score) -> None:
        if score.historical:  # a replay of the past does not move the live metrics
            return
        with self._lock:
            self._device_changed(score.asset, lambda: self.node.on_score(score), score.t_end)

    def on_alarm_event(self, event: AlarmEvent) -> None:
        self._alarm_changed(event.alarm, self.node.on_alarm, event.ts)

    def on_alarm_peak(self, alarm: Alarm) -> None:
        self._alarm_changed(alarm, self.node.on_peak, time.time())

    def on_mode_change(self, change: ModeChange) -> None:
        with self._lock:
            if self._device_changed(change.asset, lambda: self.node.on_mode(change), change.ts):
                self._node_data(self.node.node_summary())

    def on_model_change(self, change: ModelChange) -> None:
        with self._lock:
            values: dict[str, Any] = {}
            if change.event in ("promoted", "rolled_back"):
                values = {"Model/Version": change.version, "Model/Candidate": ""}
            elif change.event == "shadow_started":
                values = {"Model/Candidate": change.version}
            elif change.event == "rejected" and self.node.node_values["Model/Candidate"] == change.version:
                values = {"Model/Candidate": ""}
            self._node_data(self.node.set_node(values))

    def _alarm_changed(self, alarm: Alarm, apply: Callable[[Alarm], Mapping[str, Any]], ts: float) -> None:
        if alarm.historical:
            return
        with self._lock:
            if self._device_changed(alarm.asset, lambda: apply(alarm), ts):
                self._node_data(self.node.node_summary())

    def _device_changed(self, asset: str, apply: Callable[[], Mapping[str, Any]], ts: float) -> bool:
        """Apply a change to ``asset``'s metrics and report it: a DBIRTH for a new asset (it carries them),
        else DDATA of what changed. False if the asset cannot be a device. Under the lock."""
        new = asset not in self.node.assets
        if not self._admit(asset):
            return False
        changes = apply()
        if not self.born:
            return True  # the next birth carries it
        if new:
            topic, payload = self.node.dbirth(asset, now_ms())
            self.client.publish(topic, payload, qos=0)
        elif changes:
            topic, payload = self.node.ddata(asset, changes, int(ts * 1000), now_ms())
            self.client.publish(topic, payload, qos=0)
            self.counters.inc("ddata")
        return True

    def _admit(self, asset: str) -> bool:
        """Whether ``asset`` is (now) a device of the node: a name that is one topic level. Under the lock."""
        if asset in self.node.assets:
            return True
        problem = device_id_problem(asset)
        if problem is not None:
            if asset not in self._refused_assets and len(self._refused_assets) < 1000:
                self._refused_assets.add(asset)
                log.warning("sparkplug: asset %r not published: %s", asset, problem)
            self.counters.inc("assets_refused")
            return False
        self.node.add_asset(asset)
        return True

    def _node_data(self, changes: Mapping[str, Any]) -> None:
        if changes and self.born:
            topic, payload = self.node.ndata(changes, now_ms())
            self.client.publish(topic, payload, qos=0)
            self.counters.inc("ndata")

    def status(self) -> dict:
        with self._lock:
            return {"connected": self.connected, "born": self.born, "bdseq": self.session_bdseq,
                    "primary_host_online": self.host_online if self.cfg.primary_host_id else None,
                    "devices": len(self.node.assets), **self.counters.values}
