"""An input's own MQTT session, shared by the JSON input (``connectors/mqtt``) and the Sparkplug B input.

A subclass of :class:`MqttSession` names its subscriptions and turns one message
into readings and dead letters (``_parse``); the session does the rest, the same
for both: connecting, acknowledgements after storing, backpressure, bounds.

Delivery is at-least-once end to end. The session is persistent (MQTT 3.1.1,
``clean_session=False`` under a fixed client id) so the broker queues QoS 1
messages while the appliance is down, and every message is acknowledged
(PUBACK) only when the sink reports the batch durably stored. A crash before
that point, even ``kill -9``, leaves the message unacknowledged, and the broker
delivers it again on the next connection.

Threads: none of its own. paho runs in its external-loop mode on the asyncio
event loop that called :meth:`MqttSession.start`: the socket is watched with
``add_reader``/``add_writer``, a read hands the whole burst it parsed to the sink
on the same thread (no wake-up of another thread per message), and a 1 s timer
does paho's keepalive. Only the blocking part of connecting (TCP connect and the
TLS handshake) runs in a worker thread. The sink's ``on_stored`` callback may
come from any thread (the store's writer): the PUBACKs it releases are written
by the loop, woken once for all the acks that became due together.
Backpressure: while ``max_unstored`` readings are handed over and not yet
stored, the socket is not read (the broker holds the rest).
Reconnecting is a task on the loop, with a jittered backoff of its own, because
paho's has no jitter and a fleet of gateways that lost the same broker must not
come back in lock-step.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import os
import socket
import struct
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from appliance.connections.backoff import jittered_backoff
from appliance.connections.config import MqttBroker
from appliance.connections.mqtt import build_tls_context, configure_paho
from appliance.connectors.guard import Admission, ValueRange, dead_letter
from appliance.connectors.retained import RetainedRefusals, refusal_key
from appliance.core import AckCallback, Counters, DeadLetter, DeadLetterCode, IngestSink, Input
from appliance.core.timebase import GatewayClock
from appliance.ingest_health import Gap, GapDetector, LogLimiter

log = logging.getLogger(__name__)

# After this many consecutive failed attempts the next failure is logged at
# WARNING again; the ones in between go to DEBUG so a long outage stays quiet.
_FAIL_LOG_EVERY = 10
_STOP_PUBLISH_TIMEOUT_S = 2.0
# paho's keepalive bookkeeping (PINGREQ when quiet, a dead broker noticed) runs this often.
_MISC_INTERVAL_S = 1.0
# A read of the socket slower than this is counted (and logged, rate-limited): it runs
# on the event loop, and while it runs neither the detection path nor keepalives do.
SLOW_CALLBACK_S = 1.0


class _Client(paho.Client):
    """paho's client, run on an asyncio loop, with three of its per-message costs taken out.

    Stock paho 2.x reads each packet with three ``recv`` calls, matches every
    topic against filtered callbacks (this connector never registers one), and
    writes every PUBACK with its own ``send``. At tens of thousands of messages a
    second those system calls are most of its cost. Here reads go through a
    64 KiB read-ahead buffer and every packet already received is handled in one
    ``loop_read``; ``on_message`` is called directly; acknowledgements handed to
    :meth:`send_acks` leave in one packet. The socket is opened by paho's own
    code (proxy, TLS, hostname check) in a worker thread and adopted by
    ``reconnect`` on the loop (:meth:`open_socket`, :meth:`adopt`). A PUBLISH
    whose fixed header announces more than ``max_packet_bytes`` is refused from
    that header: only its topic and packet id are kept, the rest is read and
    dropped as it arrives (never buffered), and ``on_message`` gets it with an
    empty payload while ``oversize`` holds its announced length. Private
    methods of paho 2.x are overridden (paho is pinned to the minor releases
    tested, ``pyproject.toml``); ``tests/test_paho_internals.py`` checks each one
    paho must still have, and the connector tests exercise each path against a real broker.
    """

    READ_AHEAD = 65536
    # A PUBLISH's variable header (MQTT 3.1.1): topic length, topic (at most 65535 bytes), packet id.
    PUBLISH_HEAD_MAX = 2 + 65535 + 2
    # After this many packets read in a row, the loop's other work (and writes) get their turn.
    MAX_PACKETS_PER_READ = 1000

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._rsock = None
        self._rbuf = b""
        self._rpos = 0
        self._drained = False
        self._adopted = None
        self.after_read: Callable[[], None] | None = None  # called after each burst of reads
        self.max_packet_bytes: int | None = None  # a larger PUBLISH is refused from its header
        self.packet_peak = 0  # the most bytes of one packet paho was asked to hold (connection lifetime)
        self._skip = 0  # bytes of a refused PUBLISH still to drop
        self._oversize = 0  # the announced length of the refused PUBLISH being read
        self.oversize = 0  # while on_message runs: the announced length of a refused message, else 0

    # -- connecting
    def open_socket(self):
        """paho's connected (and TLS-wrapped) socket for the host set by ``connect_async``; blocks."""
        return super()._create_socket()

    def adopt(self, sock) -> None:
        """The socket the next ``reconnect`` uses instead of opening one."""
        self._adopted = sock

    def _create_socket(self):
        sock, self._adopted = self._adopted, None
        if sock is None:
            raise ConnectionError("no socket opened for this connection")
        return sock

    # -- reading
    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rsock is not self._sock:  # a new connection: nothing buffered belongs to it
            self._rsock, self._rbuf, self._rpos, self._drained = self._sock, b"", 0, False
            self._skip = self._oversize = 0
        if self._skip and self._in_packet["command"] == 0 and not self._drop_skipped():
            raise BlockingIOError  # the rest of a refused PUBLISH is still on its way
        if self._in_packet["have_remaining"] and not self._in_packet["packet"]:
            bufsize = self._packet_body_starts(bufsize)
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            if self._drained:
                # The last read took less than it asked for: the kernel had no more then, and the
                # selector (level-triggered) wakes the loop for whatever came since. Asking again
                # now would cost one more system call per wake-up only to hear "nothing".
                raise BlockingIOError
            ask = max(bufsize, self.READ_AHEAD)
            buf = super()._sock_recv(ask)  # BlockingIOError when nothing came
            self._drained = 0 < len(buf) < ask
            if len(buf) <= bufsize:
                self._rbuf, self._rpos = b"", 0
                return buf
            pos = 0
        out = buf[pos:pos + bufsize]
        self._rbuf, self._rpos = buf, pos + len(out)
        return out

    def _packet_body_starts(self, bufsize: int) -> int:
        """paho asks for a packet's body, whose length it has just read: refuse an oversized PUBLISH here.

        Only the variable header is left for paho to read (``to_process`` is
        shortened, so paho's packet ends there); the rest is dropped by
        :meth:`_drop_skipped` before the next packet's first byte.
        """
        packet = self._in_packet
        length = packet["remaining_length"]
        if (self.max_packet_bytes is not None and length > self.max_packet_bytes
                and packet["command"] & 0xF0 == paho.PUBLISH and packet["to_process"] == length):
            keep = min(length, self.PUBLISH_HEAD_MAX)
            packet["to_process"] = keep
            self._skip, self._oversize = length - keep, length
            bufsize = min(bufsize, keep)
        self.packet_peak = max(self.packet_peak, packet["to_process"])
        return bufsize

    def _drop_skipped(self) -> bool:
        """Read and drop what is left of a refused PUBLISH; True once all of it is gone."""
        while self._skip:
            buffered = len(self._rbuf) - self._rpos
            if buffered:
                n = min(buffered, self._skip)
                self._rpos += n
                self._skip -= n
                continue
            if self._drained:
                return False
            ask = self.READ_AHEAD
            chunk = super()._sock_recv(ask)  # BlockingIOError when nothing came; OSError: paho's to handle
            if not chunk:
                raise ConnectionResetError("connection closed in the middle of a refused message")
            self._drained = len(chunk) < ask
            self._rbuf, self._rpos = chunk, 0
        return True

    def _buffered(self) -> bool:
        return self._rsock is self._sock and self._rpos < len(self._rbuf)

    def loop_read(self, max_packets: int = 1) -> paho.MQTTErrorCode:
        # Every packet received so far, not one per wake-up: the loop's selector cannot see
        # the buffer, so it is always emptied before returning (the cap only stops fresh reads).
        n = 0
        self._drained = False  # a fresh wake-up: the selector says there is something to read
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
        self.oversize, self._oversize = self._oversize, 0
        if self.oversize:
            message.payload = b""  # the few payload bytes read with the header mean nothing alone
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
            finally:
                self.oversize = 0

    def message_callback_add(self, sub, callback) -> None:
        # The fast path dispatches every message to on_message without topic matching.
        raise TypeError("per-topic callbacks are not supported: this client calls on_message for every topic")

    # -- acknowledging (on the loop)
    def send_acks(self, mids: list[int]) -> None:
        """PUBACK ``mids`` (QoS 1) in one packet, written now if the socket takes it."""
        if self._sock is None or not mids:
            return
        packet = b"".join(struct.pack("!BBH", paho.PUBACK, 2, mid) for mid in mids)
        self._out_packet.append({"command": paho.PUBACK, "mid": 0, "qos": 1, "pos": 0,
                                 "to_process": len(packet), "packet": packet, "info": None})
        self.loop_write()  # what the socket does not take now waits for add_writer (paho registers it)


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
    """Messages read in one go from the socket, handed to the sink together."""

    __slots__ = ("gen", "messages", "readings", "dead", "mids", "now")

    def __init__(self, gen: int):
        self.gen = gen
        self.messages = 0
        self.readings: list = []
        self.dead: list = []
        self.mids: list[int] = []
        self.now = 0.0


class MqttSession(Input):
    """An input on its own MQTT session; a subclass says what to subscribe to and how a message reads
    (:meth:`subscriptions`, :meth:`_parse`): the JSON input, the Sparkplug B input.

    Abstract (``Input`` is an ``abc.ABC``): a subclass missing either hook cannot be made."""

    kind = "mqtt"

    def __init__(self, cfg, broker: MqttBroker, name: str = "mqtt", clock: GatewayClock | None = None,
                 retained_refusals: Path | None = None):
        """``retained_refusals``: the file of retained messages refused before (None: remembered in memory)."""
        self.name = name
        # The gateway's clock: "now" for the future check, corrected by the data's time while
        # the wall clock is unsynchronised and behind (None: the wall clock as it is).
        self._now: Callable[[], float] = clock.now if clock is not None else time.time
        self._observe_ts = clock.observe if clock is not None else None
        self.retained = RetainedRefusals(retained_refusals)
        self.cfg = cfg
        self.broker = broker
        self._tls_context = build_tls_context(broker.tls) if broker.tls.enabled else None
        self._lock = threading.Lock()
        self._counters = Counters()
        self._dead_by_reason = Counters()
        self._acks = _AckSequencer(self._send_acks)
        self._burst: _Burst | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._task: asyncio.Task | None = None
        self._stop: asyncio.Event | None = None
        self._disconnected: asyncio.Event | None = None
        self._client: _Client | None = None
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
        self._misc_timer: asyncio.TimerHandle | None = None
        # What the sink's on_stored callbacks (any thread) leave for the loop, under _out_lock:
        # acks to write, and the count of readings handed over and not yet stored.
        self._out_lock = threading.Lock()
        self._ack_out: list[int] = []
        self._woken = False  # a _drain_out is scheduled on the loop
        self._unstored = 0
        self._unstored_peak = 0
        self._resume_at = cfg.max_unstored // 2
        self._paused = False  # the socket is not being read: the sink is behind
        self._reading = None  # the socket add_reader watches
        # Hostile or broken publishers: bounded assets/sensors, physical ranges, few log lines.
        self.admission = Admission(cfg.assets, cfg.max_assets, cfg.max_sensors_per_asset, cfg.asset_idle_s)
        self.value_range = ValueRange(cfg.max_abs_value, cfg.ranges)
        self._logs = LogLimiter(log)
        g = cfg.gaps
        self.gaps = GapDetector(g.expected_period_s, g.periods, g.factor, g.min_gap_s,
                                max_series=cfg.max_assets * cfg.max_sensors_per_asset,
                                on_gap=self._on_gap) if g.enabled else None
        self._callback_max_s = 0.0

    # -- core.Input -------------------------------------------------

    def asset_proven(self, asset: str) -> None:
        self.admission.prove(asset)

    def evicted_assets(self) -> list[str]:
        return self.admission.evicted()

    async def start(self, sink: IngestSink) -> None:
        """Run on the calling event loop until :meth:`stop` (the loop must outlive the connector)."""
        if self._task is not None:
            raise RuntimeError(f"connector {self.name!r} already started")
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._client = self._make_client()
        self._task = asyncio.create_task(self._supervise(), name=f"{self.name}-supervisor")
        log.info("mqtt started name=%s broker=%s:%d client_id=%s subscriptions=%s", self.name,
                 self.broker.host, self.broker.port, self.cfg.client_id,
                 ",".join(self.subscriptions()))

    async def stop(self) -> None:
        task, loop = self._task, self._loop
        if task is None or loop is None:
            return
        if asyncio.get_running_loop() is not loop:  # stopped from another loop (a test's, say)
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.stop(), loop))
            return
        await self._acknowledge_stored()
        self._stop.set()
        await task
        self._task = None
        log.info("mqtt stopped name=%s", self.name)

    async def _acknowledge_stored(self) -> None:
        """Before leaving, let what was handed over be stored and acknowledged (bounded): the store
        groups commits for up to [store] commit_linger_ms, and a message left unacknowledged is
        delivered again next time, taking a place in the broker's bounded queue meanwhile."""
        deadline = time.monotonic() + _STOP_PUBLISH_TIMEOUT_S
        while time.monotonic() < deadline:
            with self._out_lock:
                if self._unstored <= 0 and not self._ack_out:
                    return
            await asyncio.sleep(0.01)

    def ready(self) -> bool:
        with self._lock:
            return self._connected and not self._pending_subacks

    def status(self) -> dict:
        pending = self._acks.pending()
        acks = self._acks.counters.values
        with self._out_lock:
            unstored, unstored_peak = self._unstored, self._unstored_peak
        with self._lock:
            counters = dict(self._counters.values)
            counters.update(acks)
            dead = dict(self._dead_by_reason.values)
            return {
                "name": self.name,
                "kind": self.kind,
                "broker": f"{self.broker.host}:{self.broker.port}",
                "client_id": self.cfg.client_id,
                "subscriptions": list(self.subscriptions()),
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
                # messages over max_payload_bytes refused from their header, and the largest packet held
                "refused_from_header": counters.get("refused_from_header", 0),
                # retained messages refused before, sent again on a new subscription: not kept again
                "retained_refusals_repeated": counters.get("retained_refusals_repeated", 0),
                "largest_packet_bytes": self._client.packet_peak if self._client is not None else 0,
                "slow_callbacks": counters.get("slow_callbacks", 0),
                "callback_max_ms": round(self._callback_max_s * 1000, 1),
                # backpressure: readings handed to the sink and not yet stored; reading paused meanwhile
                "unstored": unstored,
                "unstored_peak": unstored_peak,
                "reading_paused": self._paused,
                "backpressure_pauses": counters.get("backpressure_pauses", 0),
                "admission": self.admission.status(),
                "values_out_of_range": self.value_range.refused,
                "gaps": self.gaps.status() if self.gaps is not None else None,
                "last_message_at": self._last_message_at,
                "last_error": self._last_error,
                "last_error_at": self._last_error_at,
            }

    # -- paho client --------------------------------------------------------

    def _make_client(self) -> _Client:
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
        client.max_packet_bytes = cfg.max_payload_bytes + _Client.PUBLISH_HEAD_MAX
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
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

    def _error(self, text: str) -> None:
        with self._lock:
            self._last_error = text
            self._last_error_at = time.time()

    def _inc(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._counters.inc(name, by)

    # -- the socket on the event loop ---------------------------------------

    def _on_socket_open(self, client, userdata, sock) -> None:
        if not self._paused:
            self._watch(sock)

    def _on_socket_close(self, client, userdata, sock) -> None:
        self._unwatch()
        self._loop.remove_writer(sock)

    def _on_register_write(self, client, userdata, sock) -> None:
        self._loop.add_writer(sock, self._on_writable)

    def _on_unregister_write(self, client, userdata, sock) -> None:
        self._loop.remove_writer(sock)

    def _watch(self, sock) -> None:
        self._unwatch()
        self._loop.add_reader(sock, self._on_readable)
        self._reading = sock

    def _unwatch(self) -> None:
        sock, self._reading = self._reading, None
        if sock is not None:
            self._loop.remove_reader(sock)

    def _on_readable(self) -> None:
        client = self._client
        client.loop_read()
        sock = client.socket()
        # TLS may hold decrypted bytes the selector cannot see; read them now, not on the next packet.
        if sock is not None and self._reading is sock and getattr(sock, "pending", None) and sock.pending():
            self._loop.call_soon(self._on_readable)

    def _on_writable(self) -> None:
        self._client.loop_write()  # unregisters the writer (our callback) once everything is out

    def _misc(self) -> None:
        self._misc_timer = None
        client = self._client
        if client is None or client.socket() is None:
            return
        client.loop_misc()  # PINGREQ when quiet; closes a connection whose broker stopped answering
        if client.socket() is not None:
            self._misc_timer = self._loop.call_later(_MISC_INTERVAL_S, self._misc)

    # -- acknowledgements and backpressure (on_stored comes from any thread) --

    def _send_acks(self, mids: list[int]) -> None:
        # Called by the ack sequencer, under its lock, on whatever thread stored the batch.
        with self._out_lock:
            self._ack_out.extend(mids)
            if self._woken:
                return  # the loop is already woken for the acks before these
            self._woken = True
        self._wake()

    def _clear_acks(self) -> int:
        with self._out_lock:
            n = len(self._ack_out)
            self._ack_out = []
            return n

    def _wake(self) -> None:
        loop = self._loop
        try:
            if threading.get_ident() == self._loop_thread:
                loop.call_soon(self._drain_out)
            else:
                loop.call_soon_threadsafe(self._drain_out)
        except RuntimeError:  # the loop is closed: no connection left to acknowledge on
            with self._out_lock:
                self._woken = False

    def _drain_out(self) -> None:
        with self._out_lock:
            mids, self._ack_out = self._ack_out, []
            self._woken = False
            unstored = self._unstored
        client = self._client
        if mids and client is not None:
            client.send_acks(mids)
        if self._paused and unstored <= self._resume_at:
            self._resume()

    def _stored_callback(self, on_ack: AckCallback | None, units: int) -> AckCallback:
        def on_stored() -> None:
            if on_ack is not None:
                on_ack()
            with self._out_lock:
                self._unstored -= units
                wake = self._paused and self._unstored <= self._resume_at and not self._woken
                if wake:
                    self._woken = True
            if wake:
                self._wake()
        return on_stored

    def _pause(self) -> None:
        self._paused = True
        self._unwatch()
        self._inc("backpressure_pauses")
        self._logs.log(logging.INFO, "backpressure", "mqtt reading_paused name=%s unstored=%d max_unstored=%d "
                       "(the store is behind; the broker holds the rest)", self.name, self._unstored,
                       self.cfg.max_unstored)

    def _resume(self) -> None:
        self._paused = False
        client = self._client
        sock = client.socket() if client is not None else None
        if sock is not None:
            self._watch(sock)
            self._loop.call_soon(self._on_readable)  # what arrived meanwhile, TLS-buffered bytes included

    # -- connecting and reconnecting (a task on the loop) -------------------

    async def _supervise(self) -> None:
        b = self.broker
        delays = jittered_backoff(b.reconnect.initial_s, b.reconnect.max_s)
        client = self._client
        assert client is not None
        try:
            while not self._stop.is_set():
                self._disconnected.clear()
                self._accepted = False
                # Acks still arriving for the previous connection must not reach this one.
                self._acks.new_generation(self._clear_acks)
                try:
                    await self._connect(client)
                except Exception as e:  # noqa: BLE001 - DNS, refused, TLS, ...: all mean retry later
                    self._connect_failed(f"connect to {b.host}:{b.port} failed: {e}")
                    if await self._wait_backoff(delays):
                        break
                    continue
                self._misc_timer = self._loop.call_later(_MISC_INTERVAL_S, self._misc)
                stop_wait = asyncio.ensure_future(self._stop.wait())
                lost_wait = asyncio.ensure_future(self._disconnected.wait())
                try:
                    await asyncio.wait((stop_wait, lost_wait), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stop_wait.cancel()
                    lost_wait.cancel()
                if self._stop.is_set():
                    await self._shutdown(client)
                    break
                self._close(client)
                if self._accepted:
                    # The broker accepted us, so the outage that follows starts a fresh backoff.
                    delays = jittered_backoff(b.reconnect.initial_s, b.reconnect.max_s)
                if await self._wait_backoff(delays):
                    break
        finally:
            self._close(client)
            self._acks.new_generation(self._clear_acks)
            with self._lock:
                self._connected = False

    async def _connect(self, client: _Client) -> None:
        b = self.broker
        client.connect_async(b.host, b.port, keepalive=b.keepalive_s)
        # TCP connect and TLS handshake block: a worker thread does them, with paho's own code.
        sock = await asyncio.to_thread(client.open_socket)
        if self._stop.is_set():
            sock.close()
            raise ConnectionError("stopping")
        client.adopt(sock)
        client.reconnect()  # adopts the socket, registers it (on_socket_open), queues CONNECT

    async def _wait_backoff(self, delays) -> bool:
        delay = next(delays)
        log.debug("mqtt reconnect_wait name=%s delay_s=%.2f", self.name, delay)
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
            return True
        except asyncio.TimeoutError:
            return False

    def _connect_failed(self, text: str) -> None:
        self._inc("connect_failures")
        self._error(text)
        self._fail_streak += 1
        level = logging.WARNING if self._fail_streak % _FAIL_LOG_EVERY == 1 else logging.DEBUG
        log.log(level, "mqtt connect_failed name=%s attempts=%d error=%s", self.name,
                self._fail_streak, text)

    def _close(self, client: _Client) -> None:
        """Whatever is left of a connection: the keepalive timer, the socket and its watchers."""
        timer, self._misc_timer = self._misc_timer, None
        if timer is not None:
            timer.cancel()
        client._sock_close()  # on_socket_close removes the watchers
        self._unwatch()

    async def _shutdown(self, client: _Client) -> None:
        """Leave cleanly: a retained 'offline' (the broker does not send the will on
        a clean disconnect), then DISCONNECT, keeping the session for next start."""
        if self._connected:
            deadline = time.monotonic() + _STOP_PUBLISH_TIMEOUT_S
            try:
                info = client.publish(self.cfg.status_topic, self._status_payload("offline", "stopped"),
                                      qos=1, retain=True)
                while not info.is_published() and client.socket() is not None and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            except (RuntimeError, ValueError) as e:
                log.debug("mqtt offline_status_not_sent name=%s error=%s", self.name, e)
            client.disconnect()
            try:
                await asyncio.wait_for(self._disconnected.wait(), _STOP_PUBLISH_TIMEOUT_S)
            except asyncio.TimeoutError:
                pass
        self._close(client)

    # -- callbacks (paho, on the loop) --------------------------------------

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
            for f in self.subscriptions():
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
        now = self._now()
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = None
        try:
            readings, dead = self._parse(topic, msg, now, self._oversize(client, msg))
        except Exception as e:  # noqa: BLE001 - e.g. a known_sensors callback failing
            self._logs.log(logging.ERROR, ("message_failed", type(e)), "mqtt message_failed name=%s topic=%r: %r",
                           self.name, topic, e, exc_info=True)
            self._inc("internal_errors")
            self._error(f"message handling failed on {topic!r}: {e!r}")
            # Kept as a dead letter (and acknowledged once stored) rather than
            # left unacknowledged, which would stall every ack behind it.
            readings, dead = [], [self._dead(topic, msg, now, DeadLetterCode.INTERNAL_ERROR, repr(e))]
        if dead and msg.retain and not self.retained.first_time(
                refusal_key(msg._topic, msg.payload, getattr(client, "oversize", 0))):
            # Sent again because we subscribed again: refused and kept once already.
            self._inc("retained_refusals_repeated")
            dead = []
        gaps = self.gaps
        if gaps is not None:
            observe = gaps.observe  # looked up once: a Sparkplug or multi-value message brings several readings
            for r in readings:
                if not r.historical and r.value == r.value:  # a valueless reading (NaN) is no sign of life
                    observe(r.asset, r.sensor, r.ts)
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
        """Hand the burst just read to the sink (after each read of the socket, on the loop)."""
        burst, self._burst = self._burst, None
        if burst is None:
            return
        self.retained.save()
        started = time.monotonic()
        units = max(1, len(burst.readings) + len(burst.dead))
        on_ack = self._acks.ticket(burst.mids, burst.gen) if burst.mids else None
        with self._lock:
            c = self._counters
            c.inc("messages", burst.messages)
            c.inc("readings", len(burst.readings))
            for d in burst.dead:
                self._dead_by_reason.inc(d.code.value, d.count)
            self._last_message_at = burst.now
        with self._out_lock:  # counted before submit: a sink may call on_stored inside it
            self._unstored += units
            if self._unstored > self._unstored_peak:
                self._unstored_peak = self._unstored
        try:
            self._sink.submit(burst.readings, burst.dead, on_stored=self._stored_callback(on_ack, units))
        except Exception as e:  # noqa: BLE001
            with self._out_lock:
                self._unstored -= units  # never to be stored: its callback will not come
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
        else:
            if not self._paused and self._unstored >= self.cfg.max_unstored:
                self._pause()
        self._took(time.monotonic() - started, None)

    def _took(self, seconds: float, topic: str | None) -> None:
        if seconds > self._callback_max_s:
            self._callback_max_s = seconds
        if seconds > SLOW_CALLBACK_S:
            self._inc("slow_callbacks")
            self._logs.log(logging.WARNING, "slow_callback", "mqtt slow_callback name=%s took_s=%.2f topic=%r "
                           "(the event loop did nothing else meanwhile, keepalives included)",
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

    def _oversize(self, client, msg) -> int:
        """A message's bytes if over ``max_payload_bytes``, else 0: every input refuses it (:meth:`_unreadable`).

        The header check (:class:`_Client`) must leave room for a topic of up to 64 KiB, whose
        length it cannot know yet, so a payload up to that much over the limit is read whole:
        refused here all the same, by its length, as one refused from its header is by the length
        the header announced."""
        refused = getattr(client, "oversize", 0)
        if refused:
            return refused
        size = len(msg.payload)
        return size if size > self.cfg.max_payload_bytes else 0

    def _unreadable(self, topic: str | None, msg, now: float, oversize: int) -> DeadLetter | None:
        """The dead letter of a message no subclass can read (too large, topic not UTF-8), else ``None``."""
        if oversize:
            if msg.payload:  # read whole (see _oversize); one refused from its header comes without its payload
                why = f"payload is {oversize} bytes, limit is {self.cfg.max_payload_bytes}"
            else:
                self._inc("refused_from_header")
                why = (f"the message is {oversize} bytes, limit is {self.cfg.max_payload_bytes} (refused from "
                       "its header, not read)")
            return self._dead(topic, msg, now, DeadLetterCode.TOO_LARGE, why)
        if topic is None:
            return self._dead(topic, msg, now, DeadLetterCode.BAD_TOPIC, "topic is not valid UTF-8")
        return None

    # -- what a subclass says ------------------------------------------------

    @abc.abstractmethod
    def subscriptions(self) -> tuple[str, ...]:
        """The topic filters subscribed to on every connection."""

    @abc.abstractmethod
    def _parse(self, topic: str | None, msg, now: float, oversize: int = 0) -> tuple[list, list]:
        """``(readings, dead letters)`` of one message (on the loop; must not block); ``oversize``: its bytes
        when over ``max_payload_bytes`` (:meth:`_oversize`), to be refused (:meth:`_unreadable`)."""
