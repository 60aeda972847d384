"""Publish simulated sensor data over MQTT, as a device's firmware would.

:class:`MqttPublisher` is a QoS 1 publisher that counts broker acknowledgements
(PUBACK), rides out broker restarts (paho keeps unacknowledged messages and
sends them again after reconnecting) and can wait until everything it published
is acknowledged. :func:`run_pump` drives the pump model of :mod:`.pump` at a
fixed rate and publishes every sample, optionally injecting a fault after a
delay; it returns when ``seconds`` have passed or ``stop_event`` is set.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from .pump import SENSORS, PumpModel

log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    pass


@dataclass
class PublishStats:
    """What a publishing run did; ``complete`` means every message was acknowledged."""

    published: int = 0
    acked: int = 0
    samples: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    fault: str | None = None
    fault_injected_ts: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.acked >= self.published

    def summary(self) -> str:
        parts = [f"published={self.published}", f"acked={self.acked}", f"samples={self.samples}"]
        if self.fault:
            parts.append(f"fault={self.fault}")
            parts.append(f"fault_injected_ts={self.fault_injected_ts}")
        parts += [f"{k}={v}" for k, v in self.extra.items()]
        return " ".join(parts)


class MqttPublisher:
    """QoS 1 publisher with acknowledgement accounting; safe to publish from one thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, *, client_id: str | None = None,
                 username: str | None = None, password: str | None = None, tls_ca: str | None = None,
                 tls_insecure: bool = False, tls: bool = False, keepalive: int = 30, qos: int = 1,
                 max_inflight: int = 100):
        self.host, self.port, self.keepalive, self.qos = host, port, keepalive, qos
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"appliance-sim-{uuid.uuid4().hex[:8]}",
                                  clean_session=True)
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls or tls_ca or tls_insecure:
            ctx = ssl.create_default_context(cafile=tls_ca)
            if tls_insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self.client.tls_set_context(ctx)
        self.client.max_inflight_messages_set(max_inflight)
        self.client.reconnect_delay_set(0.1, 5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self._pending: set[int] = set()
        self._early: set[int] = set()  # PUBACKs that beat publish() returning the mid
        self.published = 0
        self.acked = 0
        self.last_error: str | None = None
        self._closing = False
        self.started = False  # connect() called: the network loop runs
        # Called on paho's thread: each new session, and a session lost (not a clean close).
        self.on_connected: list[Callable[[], None]] = []
        self.on_lost: list[Callable[[], None]] = []

    def connect(self, timeout: float = 10.0) -> None:
        """Start the network loop and wait for the first connection; paho reconnects after that."""
        self.started = True
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            self.close(flush_timeout=0)
            raise PublishError(f"could not connect to {self.host}:{self.port} within {timeout:g}s"
                               + (f": {self.last_error}" if self.last_error else ""))

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.last_error = f"connection refused: {reason_code}"
            log.warning("sim connect_refused broker=%s:%d reason=%s", self.host, self.port, reason_code)
            return
        log.info("sim connected broker=%s:%d", self.host, self.port)
        for fn in self.on_connected:
            fn()
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._closing:
            log.debug("sim disconnected broker=%s:%d reason=closed", self.host, self.port)
        elif self.connected.is_set():
            log.warning("sim disconnected broker=%s:%d reason=%s pending=%d", self.host, self.port,
                        reason_code, len(self._pending))
            for fn in self.on_lost:
                fn()
        self.connected.clear()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            self.acked += 1
            if mid in self._pending:
                self._pending.discard(mid)
            else:
                self._early.add(mid)

    def publish(self, topic: str, payload: dict | bytes | str, retain: bool = False) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload, separators=(",", ":"))
        info = self.client.publish(topic, payload, qos=self.qos, retain=retain)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            raise PublishError("paho outgoing queue is full")
        with self._lock:
            self.published += 1
            if self.qos == 0:
                self.acked += 1
            elif info.mid in self._early:
                self._early.discard(info.mid)
            else:
                self._pending.add(info.mid)

    @property
    def pending(self) -> int:
        with self._lock:
            return self.published - self.acked

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every published message is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.pending > 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, flush_timeout: float = 30.0) -> bool:
        ok = self.flush(flush_timeout) if flush_timeout > 0 else self.pending == 0
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()
        return ok


def _topic(template: str, asset: str, sensor: str | None = None) -> str:
    return template.replace("{asset}", asset).replace("{sensor}", sensor or "")


def publish_sample(pub: MqttPublisher, topic: str, asset: str, ts: float, values: dict[str, float],
                   historical: bool = False) -> int:
    """One sample: a multi-value message, or one message per sensor if ``topic`` has ``{sensor}``."""
    extra = {"historical": True} if historical else {}
    if "{sensor}" in topic:
        for sensor, value in values.items():
            pub.publish(_topic(topic, asset, sensor), {"ts": ts, "value": value, **extra})
        return len(values)
    pub.publish(_topic(topic, asset), {"ts": ts, "values": values, **extra})
    return 1


def _json_sender(pub: MqttPublisher, topic: str, asset: str) -> Callable[[float, dict[str, float]], int]:
    return lambda ts, values: publish_sample(pub, topic, asset, ts, values)


def run_pump(host: str = "127.0.0.1", port: int = 1883, asset: str = "pump1", rate_hz: float = 1.0,
             seconds: float | None = None, fault: str | None = None, fault_at: float | None = None,
             severity: float = 1.0, fault_sensor: str | None = None, seed: int | None = None,
             speed: float = 1.0, valve: float = 1.0, topic: str = "plant/{asset}/telemetry",
             stop_event: threading.Event | None = None, sparkplug: tuple[str, str] | None = None,
             on_sample: Callable[[float, dict[str, float]], None] | None = None,
             on_started: Callable[[float], None] | None = None,
             on_fault: Callable[[float], None] | None = None,
             publisher: MqttPublisher | None = None, flush_timeout: float = 10.0,
             **publisher_kw) -> PublishStats:
    """Publish the pump model at ``rate_hz`` until ``seconds`` pass or ``stop_event`` is set.

    ``fault`` is injected ``fault_at`` seconds after the start (at once if
    ``fault_at`` is None). Each sample carries ``ts`` = the wall-clock time it
    was taken; the model advances ``1/rate_hz`` per sample, so simulated time
    tracks real time. ``on_sample(ts, values)`` sees every sample (tests);
    ``on_started(ts)`` is called once the first sample (taken at ``ts``) is
    published and ``on_fault(after_s)`` once the fault is injected, ``after_s``
    seconds into the run on the clock ``fault_at`` is measured with, so a
    supervising process can time its view of the run by what the simulator did.
    Extra keyword arguments go to :class:`MqttPublisher` (credentials, TLS).
    With ``sparkplug = (group, edge node)`` the pump publishes as a Sparkplug B edge
    node instead (:mod:`.sparkplug`: the asset is the device, each sensor a metric; QoS 0).
    """
    if not rate_hz > 0:
        raise ValueError(f"rate_hz must be > 0, got {rate_hz!r}")
    model = PumpModel(seed=seed, speed=speed, valve=valve)
    if fault is not None:
        # Validate now, not fault_at seconds into the run.
        PumpModel(seed=0).inject(fault, severity, fault_sensor)
    stop_event = stop_event or threading.Event()
    own = publisher is None
    pub = publisher or MqttPublisher(host, port, **({"qos": 0} if sparkplug else {}), **publisher_kw)
    send = _json_sender(pub, topic, asset)
    edge = None
    if sparkplug is not None:
        from .sparkplug import SparkplugEdgeNode

        edge = SparkplugEdgeNode(pub, *sparkplug, device=asset, sensors=SENSORS)  # its will: before connecting
        send = edge.publish_sample
    if not pub.started:  # a publisher handed over unconnected (a test's) connects here, after the will is set
        pub.connect()
    stats = PublishStats(fault=fault)
    period = 1.0 / rate_hz
    # ``began`` times the run (seconds, fault_at); ``start`` only paces samples and is reset after a stall,
    # so a stall never postpones the fault or the end.
    began = start = time.monotonic()
    published0 = pub.published
    log.info("sim pump_started asset=%s rate_hz=%g fault=%s fault_at=%s", asset, rate_hz, fault, fault_at)
    try:
        i = 0
        fault_now: float | None = None
        while not stop_event.is_set():
            elapsed = time.monotonic() - began
            if seconds is not None and elapsed >= seconds:
                break
            if fault is not None and stats.fault_injected_ts is None and (fault_at is None or elapsed >= fault_at):
                model.inject(fault, severity, fault_sensor)
                stats.fault_injected_ts = time.time()
                log.info("sim fault_injected asset=%s fault=%s severity=%g", asset, fault, severity)
                fault_now = elapsed
            values = model.step(period)
            ts = time.time()
            send(ts, values)
            stats.samples += 1
            stats.first_ts = stats.first_ts or ts
            stats.last_ts = ts
            if on_sample is not None:
                on_sample(ts, values)
            if stats.samples == 1 and on_started is not None:
                on_started(ts)
            if fault_now is not None and on_fault is not None:
                # After on_started: a fault injected at once is still reported after the start.
                on_fault(fault_now)
            fault_now = None
            i += 1
            next_at = start + i * period
            delay = next_at - time.monotonic()
            if delay < -1.0:
                # Fell behind by more than a second (host suspended, CPU starved):
                # continue from now instead of bursting to catch up.
                start, i = time.monotonic(), 0
                continue
            if delay > 0:
                stop_event.wait(delay)
    finally:
        if edge is not None:
            edge.close()
            stats.extra |= {"births": edge.births, "rebirth_requests": edge.rebirth_requests}
        finish_publishing(pub, stats, published0, own, flush_timeout, f"asset={asset}")
    log.info("sim pump_stopped asset=%s %s", asset, stats.summary())
    return stats


def finish_publishing(pub: "MqttPublisher", stats: PublishStats, published0: int, own: bool,
                      flush_timeout: float, what: str) -> None:
    """Wait for the broker's acknowledgements and fill in what was published and acked."""
    ok = pub.flush(flush_timeout)
    stats.published = pub.published - published0
    stats.acked = stats.published - pub.pending
    if own:
        pub.close(flush_timeout=0)
    if not ok:
        log.warning("sim unacknowledged %s pending=%d", what, pub.pending)
