"""How the uplink's batches reach the cloud: :class:`MqttTransport` (QoS 1, persistent session) or
:class:`HttpsTransport` (a POST per batch).

A transport is made fresh for each connectivity window by the uplink's factory,
with a verified TLS context (:func:`appliance.connections.tls.client_context`)
and the credentials already read. :meth:`send` returns once the far side
acknowledged the batch (PUBACK, HTTP 2xx) and raises :class:`TransportError`
otherwise; ``wire_size`` and ``overhead`` are what the uplink's byte account
and the window's budget count.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Sequence

from appliance.sync.config import SyncHttpsConfig, SyncMqttConfig
from appliance.sync.queue import Queued

log = logging.getLogger(__name__)

# Room kept in every item for the transport's own framing (MQTT fixed and variable
# header with a topic of up to 1 KiB, or the HTTP request line and headers), so any
# single item fits one batch of max_message_bytes on the wire.
TRANSPORT_ALLOWANCE = 2048


class TransportError(Exception):
    """A connection or a send failed; the message says why, without credentials."""


class MqttTransport:
    """Batches as QoS 1 PUBLISHes on one topic, over TLS, in a persistent session.

    The session is persistent (MQTT 3.1.1 ``clean_session=False``, MQTT 5
    ``clean_start=False`` with a session expiry) under a fixed client id: a
    connection lost mid-window is re-established by paho, which sends the
    unacknowledged messages again; :meth:`send` returns only on the PUBACK.
    """

    kind = "mqtt"

    def __init__(self, cfg: SyncMqttConfig, client_id: str, topic: str, context: ssl.SSLContext,
                 password: str | None = None):
        self.cfg = cfg
        self.client_id = client_id
        self.topic = topic
        self._tls = context
        self._password = password
        self._client = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._wire: dict[int, int] = {}  # wire size of each unacknowledged PUBLISH, by mid
        self._connack: asyncio.Future | None = None
        self.connected = False
        self.session_present: bool | None = None
        self.disconnects = 0
        # Called on the loop with the bytes paho sends again after a reconnect, so the
        # window's budget and the byte account see what really went over the link.
        self.on_resend: Callable[[int], None] | None = None
        self._was_connected = False
        topic_len = len(topic.encode())
        v5 = 1 if cfg.protocol == "5" else 0
        # PUBLISH: type byte + remaining length (1-4 bytes) + topic (2 + n) + packet id (2) [+ properties length].
        self._header = 1 + 2 + topic_len + 2 + v5
        self.overhead = self._header + 4  # the most a PUBLISH adds to its payload
        self.max_inflight = cfg.max_inflight
        self.retry = cfg.reconnect
        self.connect_timeout_s = cfg.connect_timeout_s

    @property
    def active(self) -> bool:
        """A client exists (connected, or paho is reconnecting it)."""
        return self._client is not None

    def wire_size(self, payload_len: int) -> int:
        """Bytes of the PUBLISH packet carrying ``payload_len`` bytes (TLS and TCP framing not counted)."""
        remaining = self._header - 1 + payload_len
        varint = 1 if remaining < 128 else 2 if remaining < 16384 else 3 if remaining < 2097152 else 4
        return 1 + varint + remaining

    async def connect(self, timeout: float) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self._loop = asyncio.get_running_loop()
        v5 = self.cfg.protocol == "5"
        kwargs: dict[str, Any] = {"protocol": mqtt.MQTTv5} if v5 else {"protocol": mqtt.MQTTv311,
                                                                      "clean_session": False}
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, **kwargs)
        client.tls_set_context(self._tls)
        if self.cfg.username is not None:
            client.username_pw_set(self.cfg.username, self._password)
        client.reconnect_delay_set(self.cfg.reconnect.initial_s, self.cfg.reconnect.max_s)
        client.max_inflight_messages_set(max(20, self.cfg.max_inflight))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._connack = self._loop.create_future()
        connect_kw: dict[str, Any] = {"keepalive": self.cfg.keepalive_s}
        if v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.cfg.session_expiry_s
            connect_kw |= {"clean_start": False, "properties": props}
        deadline = time.monotonic() + timeout
        try:
            # The TCP and TLS handshakes block: a thread, so the loop goes on and a TLS
            # refusal comes back as its own exception (a clear reason), not a silent retry.
            await asyncio.wait_for(asyncio.to_thread(client.connect, self.cfg.host, self.cfg.port, **connect_kw),
                                   timeout)
        except asyncio.TimeoutError:
            raise TransportError(f"no connection to {self.cfg.host}:{self.cfg.port} within {timeout:.0f} s") from None
        except (OSError, ssl.SSLError, ValueError) as e:
            raise TransportError(f"cannot connect to {self.cfg.host}:{self.cfg.port}: {_reason(e)}") from None
        self._client = client
        client.loop_start()
        try:
            await asyncio.wait_for(asyncio.shield(self._connack), max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            await self.close()
            raise TransportError(f"{self.cfg.host}:{self.cfg.port} did not answer the CONNECT "
                                 f"within {timeout:.0f} s") from None
        except TransportError:
            await self.close()
            raise

    async def send(self, payload: bytes, batch: Sequence[Queued]) -> None:
        """Publish ``payload`` (QoS 1); return once the broker acknowledged it."""
        import paho.mqtt.client as mqtt

        client = self._client
        if client is None:
            raise TransportError("not connected")
        info = client.publish(self.topic, payload, qos=1)
        # NO_CONN: paho keeps the message and sends it when its reconnect succeeds.
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise TransportError(f"publish refused by the client: {mqtt.error_string(info.rc)}")
        fut = self._loop.create_future()
        self._pending[info.mid] = fut
        self._wire[info.mid] = self.wire_size(len(payload))
        try:
            await fut
        finally:
            self._pending.pop(info.mid, None)
            self._wire.pop(info.mid, None)

    async def close(self) -> None:
        client, self._client = self._client, None
        self.connected = False
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(TransportError("connection closed before the broker acknowledged"))
        if client is not None:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)

    def status(self) -> dict:
        return {"kind": self.kind, "host": self.cfg.host, "port": self.cfg.port, "client_id": self.client_id,
                "topic": self.topic, "connected": self.connected, "session_present": self.session_present,
                "disconnects": self.disconnects}

    # paho's thread -> the loop ------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self._loop.call_soon_threadsafe(self._connected, not reason_code.is_failure, str(reason_code),
                                        bool(getattr(flags, "session_present", False)))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._loop.call_soon_threadsafe(self._disconnected, str(reason_code))

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self._loop.call_soon_threadsafe(self._acked, mid, bool(getattr(reason_code, "is_failure", False)),
                                        str(reason_code))

    def _connected(self, ok: bool, reason: str, session_present: bool) -> None:
        if ok:
            if self._was_connected and self._wire and self.on_resend is not None:
                self.on_resend(sum(self._wire.values()))  # paho resends the unacknowledged PUBLISHes now
            self._was_connected = True
            self.connected = True
            self.session_present = session_present
            if self._connack is not None and not self._connack.done():
                self._connack.set_result(None)
            log.info("sync: connected to %s:%s session_present=%s", self.cfg.host, self.cfg.port, session_present)
        elif self._connack is not None and not self._connack.done():
            self._connack.set_exception(TransportError(f"broker refused the connection: {reason}"))

    def _disconnected(self, reason: str) -> None:
        if self._connack is not None and not self._connack.done():
            # Closed before CONNACK: with TLS 1.3 a refused client certificate shows up here.
            self._connack.set_exception(TransportError(
                f"connection closed by {self.cfg.host}:{self.cfg.port} before it was accepted ({reason}); "
                "is the client certificate trusted by the broker?"))
        if self.connected:
            self.disconnects += 1
            log.warning("sync: connection to %s:%s lost (%s); unacknowledged batches are resent on reconnect",
                        self.cfg.host, self.cfg.port, reason)
        self.connected = False

    def _acked(self, mid: int, failed: bool, reason: str) -> None:
        fut = self._pending.get(mid)
        if fut is None or fut.done():
            return
        if failed:  # MQTT 5 only: 3.1.1 has no way to refuse a QoS 1 message
            fut.set_exception(TransportError(f"broker refused the batch: {reason}"))
        else:
            fut.set_result(None)


class HttpsTransport:
    """Batches POSTed to a URL over HTTPS, each with an ``Idempotency-Key`` (the SHA-256 of its item keys).

    A 2xx answer is the acknowledgement; anything else leaves the batch queued.
    """

    kind = "https"
    HEADER_BUDGET = 512  # request line and headers, for the byte account
    overhead = HEADER_BUDGET

    # Requests in flight: a second one hides the round trip of the first; more buy little.
    max_inflight = 2

    def __init__(self, cfg: SyncHttpsConfig, context: ssl.SSLContext, token: str | None = None):
        self.cfg = cfg
        self.retry = cfg.retry
        self.connect_timeout_s = cfg.timeout_s
        self._ctx = context
        self._token = token
        self.connected = False
        self.session_present = None
        self.disconnects = 0
        self.last_status: int | None = None
        self.on_resend = None  # a resend is a new POST, made and counted by the uplink itself

    @property
    def active(self) -> bool:
        return self.connected

    def wire_size(self, payload_len: int) -> int:
        return payload_len + self.HEADER_BUDGET

    async def connect(self, timeout: float) -> None:
        # One request per batch: there is no session to open; the first POST tells.
        self.connected = True

    async def send(self, payload: bytes, batch: Sequence[Queued]) -> None:
        key = hashlib.sha256("\n".join(q.key for q in batch).encode()).hexdigest()
        headers = {"Content-Type": "application/vnd.appliance-uplink.v1", "Idempotency-Key": key}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        req = urllib.request.Request(self.cfg.url, data=payload, headers=headers, method="POST")
        try:
            status = await asyncio.to_thread(self._post, req)
        except urllib.error.HTTPError as e:
            self.last_status = e.code
            raise TransportError(f"HTTP {e.code} from {_host(self.cfg.url)}: {e.reason}") from None
        except (urllib.error.URLError, OSError, ssl.SSLError) as e:
            raise TransportError(f"POST to {_host(self.cfg.url)} failed: {_reason(e)}") from None
        self.last_status = status

    def _post(self, req) -> int:
        with urllib.request.urlopen(req, timeout=self.cfg.timeout_s, context=self._ctx) as resp:
            resp.read()
            return resp.status

    async def close(self) -> None:
        self.connected = False

    def status(self) -> dict:
        return {"kind": self.kind, "url_host": _host(self.cfg.url), "last_status": self.last_status}


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc.rpartition("@")[2]


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None)
    text = str(reason if reason is not None and not isinstance(reason, int) else e) or type(e).__name__
    return text if len(text) <= 300 else text[:300] + "..."
