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
import struct
import threading
import time
from collections import deque
from typing import Callable, Collection

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from appliance.connections.backoff import jittered_backoff
from appliance.connections.config import MqttBroker
from appliance.connections.mqtt import build_tls_context, configure_paho
from appliance.connectors.guard import Admission, ValueRange, dead_letter
from appliance.connectors.mqtt.config import MqttInputConfig
from appliance.connectors.mqtt.payload import TopicRoute, TopicRouter, parse_payload
from appliance.core import AckCallback, Counters, DeadLetter, DeadLetterCode, IngestSink, Input
from appliance.ingest_health import Gap, GapDetector, LogLimiter

log = logging.getLogger(__name__)

# After this many consecutive failed attempts the next failure is logged at
# WARNING again; the ones in between go to DEBUG so a long outage stays quiet.
_FAIL_LOG_EVERY = 10
_STOP_PUBLISH_TIMEOUT_S = 2.0
# A message callback slower than this is counted (and logged, rate-limited): paho's
# network thread runs it, and while it runs no keepalive goes out.
SLOW_CALLBACK_S = 1.0


class _Client(paho.Client):
    """paho's client, with three of its per-message costs taken out.

    Stock paho 2.x reads each packet with three ``recv`` calls after a ``select``
    of its own, matches every topic against filtered callbacks (this connector
    never registers one), and writes every PUBACK with its own ``send`` after
    waking its thread through a socket pair. At tens of thousands of messages a
    second those system calls are most of its cost. Here reads go through a
    64 KiB read-ahead buffer and every packet already received is handled before
    the next ``select``; ``on_message`` is called directly; acknowledgements
    queued with :meth:`queue_ack` leave in one packet per wake-up of the network
    thread. Private methods of paho 2.x are overridden (paho is pinned ``<3``);
    the connector tests exercise each path against a real broker.
    """

    READ_AHEAD = 65536
    # After this many packets read in a row, writes (acks, pings) get their turn.
    MAX_PACKETS_PER_READ = 1000

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._rsock = None
        self._rbuf = b""
        self._rpos = 0
        self._acks_out: list[int] = []
        self._acks_lock = threading.Lock()
        self.after_read: Callable[[], None] | None = None  # called after each burst of reads

    # -- reading
    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rsock is not self._sock:  # a new connection: nothing buffered belongs to it
            self._rsock, self._rbuf, self._rpos = self._sock, b"", 0
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            buf = super()._sock_recv(max(bufsize, self.READ_AHEAD))  # BlockingIOError when nothing came
            if len(buf) <= bufsize:
                self._rbuf, self._rpos = b"", 0
                return buf
            pos = 0
        out = buf[pos:pos + bufsize]
        self._rbuf, self._rpos = buf, pos + len(out)
        return out

    def _buffered(self) -> bool:
        return self._rsock is self._sock and self._rpos < len(self._rbuf)

    def loop_read(self, max_packets: int = 1) -> paho.MQTTErrorCode:
        # Every packet received so far, not one per select(): select() cannot see the buffer,
        # so the buffer is always emptied before returning (the cap only stops fresh reads).
        n = 0
        try:
            while True:
                if self._sock is None:
                    return paho.MQTTErrorCode.MQTT_ERR_NO_CONN
                if n >= self.MAX_PACKETS_PER_READ and not self._buffered():
                    return paho.MQTTErrorCode.MQTT_ERR_SUCCESS
                rc = self._packet_read()
                if rc > 0:
                    return self._loop_rc_handle(rc)
                if rc == paho.MQTTErrorCode.MQTT_ERR_AGAIN:
                    return paho.MQTTErrorCode.MQTT_ERR_SUCCESS
                n += 1
        finally:
            if self.after_read is not None:
                self.after_read()

    def _handle_on_message(self, message) -> None:
        on_message = self.on_message
        if on_message is None:
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(paho.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

    def message_callback_add(self, sub, callback) -> None:
        # The fast path dispatches every message to on_message without topic matching.
        raise TypeError("per-topic callbacks are not supported: this client calls on_message for every topic")

    # -- acknowledging
    def queue_acks(self, mids: list[int]) -> None:
        """PUBACK ``mids`` (QoS 1) with the acks queued around them, in one packet, from the network thread."""
        with self._acks_lock:
            woken = bool(self._acks_out)
            self._acks_out.extend(mids)
            if woken:
                return  # the network thread is already woken for the first ones
        sock = self._sockpairW
        if sock is not None:
            try:
                sock.send(b"0")
            except (BlockingIOError, OSError):
                pass

    def clear_acks(self) -> int:
        """Forget acks not yet handed to the socket (their connection is gone); how many."""
        with self._acks_lock:
            n = len(self._acks_out)
            self._acks_out = []
            return n

    def want_write(self) -> bool:
        return bool(self._acks_out) or super().want_write()

    def loop_write(self) -> paho.MQTTErrorCode:
        with self._acks_lock:
            mids, self._acks_out = self._acks_out, []
        if mids and self._sock is not None:
            packet = b"".join(struct.pack("!BBH", paho.PUBACK, 2, mid) for mid in mids)
            self._out_packet.append({"command": paho.PUBACK, "mid": 0, "qos": 1, "pos": 0,
                                     "to_process": len(packet), "packet": packet, "info": None})
        return super().loop_write()


class _AckSequencer:
    """Sends PUBACKs strictly in receive order, whatever order batches are stored in.

    MQTT requires QoS 1 acknowledgements in the order the PUBLISH packets arrived,
    and a PUBACK must never reach a later connection: packet ids are per
    connection, so a stale id could acknowledge a different, unstored message.
    Each connection is a new generation; callbacks from an older one are dropped
    (the broker redelivers those messages anyway). A ticket covers the messages
    of one burst, in order; the acks that become due together go out together.
    """

    def __init__(self, send: Callable[[list[int]], None]):
        self._send = send
        self.counters = Counters()  # guarded by the sequencer's own lock
        self._lock = threading.Lock()
        self._gen = 0
        self._pending: deque[list] = deque()  # [mids, stored] in receive order
        self._unacked = 0

    def generation(self) -> int:
        return self._gen

    def new_generation(self, clear: Callable[[], int] | None = None) -> int:
        with self._lock:
            self._gen += 1
            dropped = self._unacked
            self._pending.clear()
            self._unacked = 0
            if clear is not None:
                clear()  # acks queued for the old connection never reach the next one
            return dropped

    def pending(self) -> int:
        with self._lock:
            return self._unacked

    def ticket(self, mids: list[int], gen: int | None = None) -> AckCallback:
        """The callback that acknowledges ``mids`` once stored; ``gen``: the connection they came on."""
        entry = [mids, False]
        with self._lock:
            if gen is None:
                gen = self._gen
            if gen == self._gen:
                self._pending.append(entry)
                self._unacked += len(mids)

        def on_stored() -> None:
            self._stored(gen, entry)

        return on_stored

    def _stored(self, gen: int, entry: list) -> None:
        # Sending under the lock keeps two storing threads from reordering acks.
        with self._lock:
            if gen != self._gen:
                self.counters.inc("acks_stale", len(entry[0]))
                return
            if entry[1]:
                return
            entry[1] = True
            ready: list[int] = []
            pending = self._pending
            while pending and pending[0][1]:
                ready.extend(pending.popleft()[0])
            if not ready:
                return
            self._unacked -= len(ready)
            try:
                self._send(ready)
                self.counters.inc("acks", len(ready))
            except Exception:  # noqa: BLE001 - a failed ack only means a redelivery
                self.counters.inc("ack_errors", len(ready))


class _Burst:
    """Messages read in one go by the network thread, handed to the sink together."""

    __slots__ = ("gen", "messages", "readings", "dead", "mids", "now")

    def __init__(self, gen: int):
        self.gen = gen
        self.messages = 0
        self.readings: list = []
        self.dead: list = []
        self.mids: list[int] = []
        self.now = 0.0


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
        self._acks = _AckSequencer(self._send_acks)
        self._burst: _Burst | None = None
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
        # Hostile or broken publishers: bounded assets/sensors, physical ranges, few log lines.
        self.admission = Admission(cfg.assets, cfg.max_assets, cfg.max_sensors_per_asset)
        self.value_range = ValueRange(cfg.max_abs_value, cfg.ranges)
        self._logs = LogLimiter(log)
        g = cfg.gaps
        self.gaps = GapDetector(g.expected_period_s, g.periods, g.factor, g.min_gap_s,
                                max_series=cfg.max_assets * cfg.max_sensors_per_asset,
                                on_gap=self._on_gap) if g.enabled else None
        self._callback_max_s = 0.0

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
        pending = self._acks.pending()
        acks = self._acks.counters.values
        with self._lock:
            counters = dict(self._counters.values)
            counters.update(acks)
            dead = dict(self._dead_by_reason.values)
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
                "slow_callbacks": counters.get("slow_callbacks", 0),
                "callback_max_ms": round(self._callback_max_s * 1000, 1),
                "admission": self.admission.status(),
                "values_out_of_range": self.value_range.refused,
                "gaps": self.gaps.status() if self.gaps is not None else None,
                "last_message_at": self._last_message_at,
                "last_error": self._last_error,
                "last_error_at": self._last_error_at,
            }

    # -- paho client --------------------------------------------------------

    def _make_client(self) -> paho.Client:
        cfg = self.cfg
        client = _Client(
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
        client.after_read = self._flush
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

    def _send_acks(self, mids: list[int]) -> None:
        client = self._client
        if client is not None:
            client.queue_acks(mids)

    def _clear_acks(self) -> int:
        client = self._client
        return client.clear_acks() if client is not None else 0

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
            self._acks.new_generation(self._clear_acks)
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
        self._acks.new_generation(self._clear_acks)

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
        dropped = self._acks.new_generation(self._clear_acks)
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
        started = time.monotonic()
        now = time.time()
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = None
        try:
            readings, dead = self._parse(topic, msg, now)
        except Exception as e:  # noqa: BLE001 - e.g. a known_sensors callback failing
            self._logs.log(logging.ERROR, ("message_failed", type(e)), "mqtt message_failed name=%s topic=%r: %r",
                           self.name, topic, e, exc_info=True)
            self._inc("internal_errors")
            self._error(f"message handling failed on {topic!r}: {e!r}")
            # Kept as a dead letter (and acknowledged once stored) rather than
            # left unacknowledged, which would stall every ack behind it.
            readings, dead = [], [self._dead(topic, msg, now, DeadLetterCode.INTERNAL_ERROR, repr(e))]
        gaps = self.gaps
        if gaps is not None:
            for r in readings:
                if not r.historical:
                    gaps.observe(r.asset, r.sensor, r.ts)
        burst = self._burst
        if burst is None:
            # The connection the burst arrived on: a burst read before a disconnect is never
            # acknowledged on the next connection, even if it is stored after it.
            burst = self._burst = _Burst(self._acks.generation())
        burst.messages += 1
        if readings:
            burst.readings.extend(readings)
        if dead:
            burst.dead.extend(dead)
        if msg.qos > 0:
            burst.mids.append(msg.mid)
        burst.now = now
        self._took(time.monotonic() - started, topic)

    def _flush(self) -> None:
        """Hand the burst just read to the sink (the network thread calls this after each read)."""
        burst, self._burst = self._burst, None
        if burst is None:
            return
        started = time.monotonic()
        on_stored = self._acks.ticket(burst.mids, burst.gen) if burst.mids else None
        with self._lock:
            c = self._counters
            c.inc("messages", burst.messages)
            c.inc("readings", len(burst.readings))
            for d in burst.dead:
                self._dead_by_reason.inc(d.code.value, d.count)
            self._last_message_at = burst.now
        try:
            self._sink.submit(burst.readings, burst.dead, on_stored=on_stored)
        except Exception as e:  # noqa: BLE001
            # The messages stay unacknowledged and block the acks behind them, so
            # reconnect: the broker then delivers everything unacked again.
            self._inc("sink_errors")
            self._error(f"sink refused a batch: {e!r}")
            log.error("mqtt sink_failed name=%s messages=%d error=%r; reconnecting for redelivery",
                      self.name, burst.messages, e)
            self._requested_disconnect = "sink failure, reconnecting for redelivery"
            client = self._client
            if client is not None:
                client.disconnect()
        self._took(time.monotonic() - started, None)

    def _took(self, seconds: float, topic: str | None) -> None:
        if seconds > self._callback_max_s:
            self._callback_max_s = seconds
        if seconds > SLOW_CALLBACK_S:
            self._inc("slow_callbacks")
            self._logs.log(logging.WARNING, "slow_callback", "mqtt slow_callback name=%s took_s=%.2f topic=%r "
                           "(the network thread sends no keepalive meanwhile; the store may be falling behind)",
                           self.name, seconds, topic)

    def _on_gap(self, gap: Gap) -> None:
        # Alarm-grade: readings that should be here are not, and nothing else will say so.
        self._logs.log(logging.WARNING, ("gap", gap.asset, gap.sensor),
                       "mqtt DATA GAP name=%s asset=%s sensor=%s gap_s=%.3f expected_period_s=%.6g%s "
                       "missing_estimate=%d from=%.3f to=%.3f (readings lost upstream: broker queue limit, "
                       "publisher buffer or link; see the connector README)", self.name, gap.asset, gap.sensor,
                       gap.span_s, gap.period_s, "" if gap.learned else " (configured)", gap.missing,
                       gap.start, gap.end)

    def _dead(self, topic: str | None, msg, now: float, code: DeadLetterCode, detail: str) -> DeadLetter:
        source = topic if topic is not None else repr(msg._topic)
        return dead_letter(source, msg.payload, code, detail, now)

    def _parse(self, topic: str | None, msg, now: float):
        if topic is None:
            return [], [self._dead(topic, msg, now, DeadLetterCode.BAD_TOPIC, "topic is not valid UTF-8")]
        route = self.router.route(topic)
        if route is None:
            # Reachable through a retained message or broker-side topic mapping;
            # kept, not silently dropped.
            return [], [self._dead(topic, msg, now, DeadLetterCode.BAD_TOPIC, f"{topic!r} matches no configured pattern")]
        asset = route.asset
        if asset:
            why = self.admission.asset(asset)
            if why is not None:
                return [], [self._dead(topic, msg, now, DeadLetterCode.UNKNOWN_ASSET, why)]
            known = (self._known_sensors(asset) if self._known_sensors is not None
                     else self.admission.sensors(asset))
        else:
            known = None  # refused by parse_payload as an empty asset level
        cfg = self.cfg
        return parse_payload(route, msg.payload, now, topic=topic, source=self.name, known_sensors=known,
                             min_timestamp=cfg.min_timestamp, max_future_skew_s=cfg.max_future_skew_s,
                             max_payload_bytes=cfg.max_payload_bytes, ts_unit=cfg.ts_unit,
                             value_range=self.value_range)
