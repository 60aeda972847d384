"""MQTT input plugin: subscribe to sensor topics and turn messages into readings.

Delivery is at-least-once end to end. The session is persistent (MQTT 3.1.1,
``clean_session=False`` under a fixed client id) so the broker queues QoS 1
messages while the appliance is down, and every message is acknowledged
(PUBACK) only when the sink reports the batch durably stored. A crash before
that point, even ``kill -9``, leaves the message unacknowledged, and the broker
delivers it again on the next connection.

Threads: paho's network thread runs the callbacks (parsing and ``sink.submit``
happen there, so a sink applying backpressure simply slows the socket); a
supervisor thread owns connecting and reconnecting, because paho's own
reconnect backoff has no jitter and a fleet of gateways that lost the same
broker must not come back in lock-step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from typing import Callable, Collection

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from appliance.connections.backoff import jittered_backoff
from appliance.connections.config import MqttBroker
from appliance.connections.mqtt import build_tls_context, configure_paho
from appliance.connectors.mqtt.config import MqttInputConfig
from appliance.connectors.mqtt.payload import DEAD_LETTER_MAX_BYTES, TopicRoute, TopicRouter, parse_payload
from appliance.core import AckCallback, Counters, DeadLetter, DeadLetterCode, IngestSink, Input

log = logging.getLogger(__name__)

# After this many consecutive failed attempts the next failure is logged at
# WARNING again; the ones in between go to DEBUG so a long outage stays quiet.
_FAIL_LOG_EVERY = 10
_STOP_PUBLISH_TIMEOUT_S = 2.0


class _AckSequencer:
    """Sends PUBACKs strictly in receive order, whatever order batches are stored in.

    MQTT requires QoS 1 acknowledgements in the order the PUBLISH packets arrived,
    and a PUBACK must never reach a later connection: packet ids are per
    connection, so a stale id could acknowledge a different, unstored message.
    Each connection is a new generation; callbacks from an older one are dropped
    (the broker redelivers those messages anyway).
    """

    def __init__(self, send: Callable[[int], None], counters: Counters, lock: threading.Lock):
        self._send = send
        self._counters = counters
        self._lock = lock
        self._gen = 0
        self._pending: deque[list] = deque()  # [mid, stored] in receive order

    def new_generation(self) -> int:
        with self._lock:
            self._gen += 1
            dropped = len(self._pending)
            self._pending.clear()
            return dropped

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def ticket(self, mid: int) -> AckCallback:
        entry = [mid, False]
        with self._lock:
            gen = self._gen
            self._pending.append(entry)

        def on_stored() -> None:
            self._stored(gen, entry)

        return on_stored

    def _stored(self, gen: int, entry: list) -> None:
        # Sending under the lock keeps two storing threads from reordering acks.
        with self._lock:
            if gen != self._gen:
                self._counters.inc("acks_stale")
                return
            if entry[1]:
                return
            entry[1] = True
            while self._pending and self._pending[0][1]:
                mid = self._pending.popleft()[0]
                try:
                    self._send(mid)
                    self._counters.inc("acks")
                except Exception:  # noqa: BLE001 - a failed ack only means a redelivery
                    self._counters.inc("ack_errors")


class MqttConnector(Input):
    """Connector for JSON sensor payloads over MQTT (see the package README)."""

    def __init__(self, cfg: MqttInputConfig, broker: MqttBroker,
                 known_sensors: Callable[[str], Collection[str]] | None = None,
                 name: str = "mqtt"):
        self.name = name
        self.cfg = cfg
        self.broker = broker
        self._known_sensors = known_sensors
        self.router = TopicRouter([TopicRoute(t.pattern, t.asset, t.historical) for t in cfg.topics])
        self._tls_context = build_tls_context(broker.tls) if broker.tls.enabled else None
        self._lock = threading.Lock()
        self._counters = Counters()
        self._dead_by_reason = Counters()
        self._acks = _AckSequencer(self._send_ack, self._counters, self._lock)
        self._stop = threading.Event()
        self._disconnected = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: paho.Client | None = None
        self._sink: IngestSink | None = None
        self._connected = False
        self._pending_subacks: set[int] = set()
        self._ever_connected = False
        self._accepted = False
        self._connected_since: float | None = None
        self._last_message_at: float | None = None
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._fail_streak = 0
        self._requested_disconnect: str | None = None

    # -- Connector protocol -------------------------------------------------

    async def start(self, sink: IngestSink) -> None:
        if self._thread is not None:
            raise RuntimeError(f"connector {self.name!r} already started")
        self._sink = sink
        self._stop.clear()
        self._client = self._make_client()
        self._thread = threading.Thread(target=self._supervise, name=f"{self.name}-supervisor",
                                        daemon=True)
        self._thread.start()
        log.info("mqtt started name=%s broker=%s:%d client_id=%s subscriptions=%s", self.name,
                 self.broker.host, self.broker.port, self.cfg.client_id,
                 ",".join(self.router.subscriptions))

    async def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        await asyncio.to_thread(thread.join)
        self._thread = None
        log.info("mqtt stopped name=%s", self.name)

    def ready(self) -> bool:
        with self._lock:
            return self._connected and not self._pending_subacks

    def status(self) -> dict:
        with self._lock:
            counters = dict(self._counters.values)
            dead = dict(self._dead_by_reason.values)
            pending = len(self._acks._pending)
            return {
                "name": self.name,
                "kind": "mqtt",
                "broker": f"{self.broker.host}:{self.broker.port}",
                "client_id": self.cfg.client_id,
                "subscriptions": list(self.router.subscriptions),
                "connected": self._connected,
                # True once the broker acknowledged every subscription of this connection
                "subscribed": self._connected and not self._pending_subacks,
                "connected_since": self._connected_since,
                "messages": counters.get("messages", 0),
                "readings": counters.get("readings", 0),
                "dead_letters": dead,
                "dead_letters_total": sum(dead.values()),
                "connects": counters.get("connects", 0),
                "reconnects": counters.get("reconnects", 0),
                "disconnects": counters.get("disconnects", 0),
                "connect_failures": counters.get("connect_failures", 0),
                "acks": counters.get("acks", 0),
                "acks_pending": pending,
                "acks_stale": counters.get("acks_stale", 0),
                "ack_errors": counters.get("ack_errors", 0),
                "sink_errors": counters.get("sink_errors", 0),
                "internal_errors": counters.get("internal_errors", 0),
                "last_message_at": self._last_message_at,
                "last_error": self._last_error,
                "last_error_at": self._last_error_at,
            }

    # -- paho client --------------------------------------------------------

    def _make_client(self) -> paho.Client:
        cfg = self.cfg
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            clean_session=False,
            protocol=paho.MQTTv311,
            manual_ack=True,
            reconnect_on_failure=False,
        )
        configure_paho(client, self.broker, self._tls_context)
        # The broker sends the will long after it was registered, so it carries no ts.
        will = {"state": "offline", "reason": "connection lost", "client_id": cfg.client_id,
                "connector": self.name, "host": socket.gethostname()}
        client.will_set(cfg.status_topic, json.dumps(will), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [rc for rc in reason_codes if rc.is_failure]
        if failed:
            self._error(f"broker refused subscription: {failed[0]}")
        with self._lock:
            self._pending_subacks.discard(mid)

    def _status_payload(self, state: str, reason: str = "") -> str:
        doc = {"state": state, "client_id": self.cfg.client_id, "connector": self.name,
               "host": socket.gethostname(), "pid": os.getpid(), "ts": time.time()}
        if reason:
            doc["reason"] = reason
        return json.dumps(doc)

    def _send_ack(self, mid: int) -> None:
        client = self._client
        if client is not None:
            client.ack(mid, 1)

    def _error(self, text: str) -> None:
        with self._lock:
            self._last_error = text
            self._last_error_at = time.time()

    def _inc(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._counters.inc(name, by)

    # -- supervisor thread --------------------------------------------------

    def _supervise(self) -> None:
        b = self.broker
        delays = jittered_backoff(b.reconnect.initial_s, b.reconnect.max_s)
        client = self._client
        assert client is not None
        while not self._stop.is_set():
            self._disconnected.clear()
            self._accepted = False
            # Acks still arriving for the previous connection must not reach this one.
            self._acks.new_generation()
            try:
                client.connect(b.host, b.port, keepalive=b.keepalive_s)
            except Exception as e:  # noqa: BLE001 - DNS, refused, TLS, ...: all mean retry later
                self._connect_failed(f"connect to {b.host}:{b.port} failed: {e}")
                if self._wait_backoff(delays):
                    break
                continue
            client.loop_start()
            while not self._stop.is_set() and not self._disconnected.wait(0.25):
                pass
            if self._stop.is_set():
                self._shutdown(client)
                break
            client.loop_stop()
            if self._accepted:
                # The broker accepted us, so the outage that follows starts a fresh backoff.
                delays = jittered_backoff(b.reconnect.initial_s, b.reconnect.max_s)
            if self._wait_backoff(delays):
                break
        with self._lock:
            self._connected = False

    def _wait_backoff(self, delays) -> bool:
        delay = next(delays)
        log.debug("mqtt reconnect_wait name=%s delay_s=%.2f", self.name, delay)
        return self._stop.wait(delay)

    def _connect_failed(self, text: str) -> None:
        self._inc("connect_failures")
        self._error(text)
        self._fail_streak += 1
        level = logging.WARNING if self._fail_streak % _FAIL_LOG_EVERY == 1 else logging.DEBUG
        log.log(level, "mqtt connect_failed name=%s attempts=%d error=%s", self.name,
                self._fail_streak, text)

    def _shutdown(self, client: paho.Client) -> None:
        """Leave cleanly: a retained 'offline' (the broker does not send the will on
        a clean disconnect), then DISCONNECT, keeping the session for next start."""
        if self._connected:
            try:
                info = client.publish(self.cfg.status_topic, self._status_payload("offline", "stopped"),
                                      qos=1, retain=True)
                info.wait_for_publish(_STOP_PUBLISH_TIMEOUT_S)
            except (RuntimeError, ValueError) as e:
                log.debug("mqtt offline_status_not_sent name=%s error=%s", self.name, e)
            client.disconnect()
            self._disconnected.wait(_STOP_PUBLISH_TIMEOUT_S)
        client.loop_stop()
        self._acks.new_generation()

    # -- callbacks (paho network thread) ------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        b = self.broker
        if reason_code.is_failure:
            self._connect_failed(f"broker {b.host}:{b.port} refused the connection: {reason_code}")
            return
        self._accepted = True
        reconnect = self._ever_connected
        self._ever_connected = True
        self._fail_streak = 0
        with self._lock:
            self._connected = True
            self._connected_since = time.time()
            self._counters.inc("connects")
            if reconnect:
                self._counters.inc("reconnects")
        with self._lock:
            self._pending_subacks = set()
            for f in self.router.subscriptions:
                rc, mid = client.subscribe(f, qos=self.cfg.qos)
                if mid is not None:
                    self._pending_subacks.add(mid)
        client.publish(self.cfg.status_topic, self._status_payload("online"), qos=1, retain=True)
        log.info("mqtt %s name=%s broker=%s:%d client_id=%s session_present=%d",
                 "reconnected" if reconnect else "connected", self.name, b.host, b.port,
                 self.cfg.client_id, int(flags.session_present))
        if reconnect and not flags.session_present:
            # Our session is gone (broker restarted without persistence, or it
            # expired): what was published while we were away is lost upstream.
            log.warning("mqtt session_lost name=%s client_id=%s: the broker kept no session, "
                        "messages published while disconnected were not queued", self.name,
                        self.cfg.client_id)
            self._error("broker had no persistent session on reconnect")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        dropped = self._acks.new_generation()
        with self._lock:
            was_connected = self._connected
            self._connected = False
            if was_connected:
                self._counters.inc("disconnects")
        requested, self._requested_disconnect = self._requested_disconnect, None
        if was_connected:
            if self._stop.is_set():
                log.info("mqtt disconnected name=%s reason=stopped", self.name)
            elif requested:
                log.warning("mqtt disconnected name=%s reason=%r unacked=%d", self.name, requested, dropped)
            else:
                self._error(f"connection lost: {reason_code}")
                log.warning("mqtt disconnected name=%s reason=%r unacked=%d", self.name,
                            str(reason_code), dropped)
        self._disconnected.set()

    def _on_message(self, client, userdata, msg) -> None:
        # Nothing may raise into paho: an exception there would kill the network loop.
        now = time.time()
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = None
        try:
            readings, dead = self._parse(topic, msg, now)
        except Exception as e:  # noqa: BLE001 - e.g. a known_sensors callback failing
            log.exception("mqtt message_failed name=%s topic=%r", self.name, topic)
            self._inc("internal_errors")
            self._error(f"message handling failed on {topic!r}: {e!r}")
            # Kept as a dead letter (and acknowledged once stored) rather than
            # left unacknowledged, which would stall every ack behind it.
            readings, dead = [], [self._dead(topic, msg, now, DeadLetterCode.INTERNAL_ERROR, repr(e))]
        on_stored = self._acks.ticket(msg.mid) if msg.qos > 0 else None
        with self._lock:
            self._counters.inc("messages")
            self._counters.inc("readings", len(readings))
            for d in dead:
                self._dead_by_reason.inc(d.code.value)
            self._last_message_at = now
        try:
            self._sink.submit(readings, dead, on_stored=on_stored)
        except Exception as e:  # noqa: BLE001
            # The message stays unacknowledged and blocks the acks behind it, so
            # reconnect: the broker then delivers everything unacked again.
            self._inc("sink_errors")
            self._error(f"sink refused a batch: {e!r}")
            log.error("mqtt sink_failed name=%s topic=%s error=%r; reconnecting for redelivery",
                      self.name, topic, e)
            self._requested_disconnect = "sink failure, reconnecting for redelivery"
            client.disconnect()

    def _dead(self, topic: str | None, msg, now: float, code: DeadLetterCode, detail: str) -> DeadLetter:
        source = topic if topic is not None else repr(msg._topic)
        return DeadLetter(source=source, payload=bytes(msg.payload[:DEAD_LETTER_MAX_BYTES]),
                          code=code, detail=detail, received_at=now)

    def _parse(self, topic: str | None, msg, now: float):
        if topic is None:
            return [], [self._dead(topic, msg, now, DeadLetterCode.BAD_TOPIC, "topic is not valid UTF-8")]
        route = self.router.route(topic)
        if route is None:
            # Reachable through a retained message or broker-side topic mapping;
            # kept, not silently dropped.
            return [], [self._dead(topic, msg, now, DeadLetterCode.BAD_TOPIC, f"{topic!r} matches no configured pattern")]
        known = self._known_sensors(route.asset) if self._known_sensors is not None else None
        return parse_payload(route, msg.payload, now, topic=topic, source=self.name, known_sensors=known,
                             min_timestamp=self.cfg.min_timestamp,
                             max_future_skew_s=self.cfg.max_future_skew_s,
                             max_payload_bytes=self.cfg.max_payload_bytes)
