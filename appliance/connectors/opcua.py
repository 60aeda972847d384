"""OPC-UA input: subscriptions on a PLC's variables, turned into readings.

One asyncio task owns one connection at a time. Every connection is built from
scratch (new :class:`asyncua.Client`, new session, new subscription) and torn
down completely (CloseSession with DeleteSubscriptions, then the socket) before
the next one is opened, so a flapping PLC never accumulates orphaned sessions on
the server. asyncua's own auto-reconnect is deliberately off: it re-activates
sessions in place, which is the right thing for a network blip but leaves the
appliance blind to a PLC that kept the socket open while its data stopped. The
loop here reacts to four signals and answers all of them the same way (full
rebuild after a jittered backoff):

* the socket closes (PLC restart, cable pulled) - asyncua reports it at once;
* the periodic ``ServerStatus`` probe fails, e.g. ``BadSessionIdInvalid`` after
  the PLC dropped our session;
* the subscription reports a bad status (``BadTimeout``, ``BadShutdown``);
* no data change arrived for ``watchdog_s`` - the data watchdog, which catches a
  PLC whose transport is healthy but whose values stopped.

The OPC-UA status code travels with each value as :class:`~appliance.core.Quality`;
a bad or uncertain value is submitted with that quality (never as good), and a
non-numeric value becomes a dead letter.

Security (Basic256Sha256, Sign or SignAndEncrypt): the client key and certificate
are generated once into ``client_cert_dir`` and reused; the server certificate
must be in ``trusted_server_certs`` (or be issued by a CA listed there), else the
connection is refused before any session is created.

This module also provides :class:`AsyncuaPlcWriter`, the OPC-UA implementation of
the mitigation's ``PlcWriter`` protocol, with its own session.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from asyncua import Client, ua
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent
from asyncua.crypto import cert_gen, security_policies
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from appliance.config import OpcuaEndpointConfig, OpcuaInputConfig, OpcuaNode
from appliance.connectors.base import jittered_backoff, sleep_backoff
from appliance.core import Counters, DeadLetter, IngestSink, Quality, Reading

logger = logging.getLogger(__name__)

CLIENT_KEY_FILE = "client_key.pem"
CLIENT_CERT_FILE = "client_cert.der"


class OpcuaSecurityError(Exception):
    """The connection cannot be made securely (untrusted server, missing endpoint)."""


class UntrustedServerCertificate(OpcuaSecurityError):
    pass


class _TransportNoiseFilter(logging.Filter):
    """Drops asyncua's tracebacks and warnings about a connection that is already gone.

    A PLC restart otherwise fills the log with stack traces from asyncua's publish
    loop and teardown; the connector logs the loss itself, once, with the reason.
    """

    _MESSAGES = ("was called but connection is closed", "close_session but connection wasn't established")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], (ConnectionError, OSError, asyncio.TimeoutError)):
            return False
        msg = str(record.msg)
        return not any(m in msg for m in self._MESSAGES)


_NOISE_FILTER = _TransportNoiseFilter()
_NOISY_LOGGERS = ("asyncua.client.ua_session.UaSession", "asyncua.client.ua_client.UaClient",
                  "asyncua.client.ua_client.UASocketProtocol", "asyncua.client.client")


def _quiet_asyncua() -> None:
    # asyncua logs every publish at INFO; unless the operator configured its
    # logger explicitly, keep it to warnings so a gateway's log stays readable.
    lg = logging.getLogger("asyncua")
    if lg.level == logging.NOTSET:
        lg.setLevel(logging.WARNING)
    for name in _NOISY_LOGGERS:
        noisy = logging.getLogger(name)
        if _NOISE_FILTER not in noisy.filters:
            noisy.addFilter(_NOISE_FILTER)


def _resolve(base_dir: Path | None, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() or base_dir is None else base_dir / q


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def quality_of(status: ua.StatusCode | None) -> Quality:
    """OPC-UA status code severity to the appliance's coarse quality."""
    if status is None or status.is_good():
        return Quality.GOOD
    if status.is_uncertain():
        return Quality.UNCERTAIN
    return Quality.BAD


def _status_name(status: ua.StatusCode | None) -> str:
    if status is None:
        return "Good"
    try:
        return status.name
    except Exception:  # unknown vendor-specific code
        return f"0x{status.value:08X}"


def _to_unix(dt: datetime | None) -> float | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    ts = dt.timestamp()
    # OPC-UA encodes "no timestamp" as the FILETIME epoch (1601).
    return ts if ts > 0 else None


# --------------------------------------------------------------------------- security


async def ensure_client_certificate(cert_dir: Path, application_uri: str) -> tuple[Path, Path]:
    """Create the client key and certificate once; later calls reuse them.

    A new certificate is only made when the files are missing or the existing
    one is invalid (expired, other application URI or host name), because the
    PLC's trust list holds this exact certificate: regenerating it on every
    start would lock the appliance out.
    """
    cert_dir.mkdir(parents=True, exist_ok=True)
    key_file, cert_file = cert_dir / CLIENT_KEY_FILE, cert_dir / CLIENT_CERT_FILE
    before = cert_file.read_bytes() if cert_file.is_file() else None
    await cert_gen.setup_self_signed_certificate(
        key_file, cert_file, application_uri, socket.gethostname(),
        [ExtendedKeyUsageOID.CLIENT_AUTH], {"organizationName": "edge-anomaly-appliance"})
    os.chmod(key_file, 0o600)
    after = cert_file.read_bytes()
    if before != after:
        cert = x509.load_der_x509_certificate(after)
        logger.warning("opcua client certificate generated path=%s sha256=%s uri=%s "
                       "(add it to the PLC's trusted clients)", cert_file, fingerprint(cert), application_uri)
    return cert_file, key_file


def _load_cert_file(path: Path) -> list[x509.Certificate]:
    data = path.read_bytes()
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def load_trust_list(paths: Sequence[str], base_dir: Path | None = None) -> list[x509.Certificate]:
    """Certificates from files and directories (``*.der``, ``*.pem``, ``*.crt``)."""
    certs: list[x509.Certificate] = []
    for p in paths:
        path = _resolve(base_dir, p)
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.suffix.lower() in (".der", ".pem", ".crt"))
        elif path.is_file():
            files = [path]
        else:
            raise OpcuaSecurityError(f"trusted server certificate {path} does not exist")
        for f in files:
            try:
                certs.extend(_load_cert_file(f))
            except ValueError as e:
                raise OpcuaSecurityError(f"trusted server certificate {f} is not a DER/PEM certificate: {e}") \
                    from None
    return certs


def check_server_certificate(der: bytes | None, trusted: Sequence[x509.Certificate]) -> x509.Certificate:
    """Return the server certificate if it is trusted, else raise :class:`UntrustedServerCertificate`.

    Trusted means: byte-identical to a listed certificate (the usual self-signed
    PLC certificate), or directly issued by a listed CA certificate; and inside
    its validity period either way.
    """
    if not der:
        raise UntrustedServerCertificate("server presented no certificate")
    # Some servers send a chain; the leaf comes first.
    cert_len = int.from_bytes(der[2:4], "big") + 4
    cert = x509.load_der_x509_certificate(der[:cert_len])
    now = datetime.now(timezone.utc)
    if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
        raise UntrustedServerCertificate(
            f"server certificate sha256={fingerprint(cert)} is outside its validity period "
            f"({cert.not_valid_before_utc:%Y-%m-%d} .. {cert.not_valid_after_utc:%Y-%m-%d})")
    for t in trusted:
        if t == cert:
            return cert
    for ca in trusted:
        try:
            cert.verify_directly_issued_by(ca)
        except Exception:  # noqa: BLE001 - wrong issuer name, key type or signature: not this CA
            continue
        return cert
    raise UntrustedServerCertificate(
        f"server certificate sha256={fingerprint(cert)} subject={cert.subject.rfc4514_string()} is not "
        "trusted; after checking it on the PLC, add it to trusted_server_certs")


async def open_client(cfg: OpcuaEndpointConfig, base_dir: Path | None = None, *,
                      probe_interval_s: float = 5.0, on_lost=None) -> Client:
    """A connected, activated asyncua client for ``cfg``; the caller must ``disconnect()`` it.

    With security on, the server certificate is fetched over an unsecured
    discovery channel, checked against the trust list, and pinned: asyncua then
    refuses a secure channel or session whose certificate differs from it.
    """
    client = Client(cfg.endpoint, timeout=cfg.request_timeout_s, watchdog_intervall=probe_interval_s,
                    auto_reconnect=False)
    client.name = client.description = "edge-anomaly-appliance"
    client.application_uri = cfg.application_uri
    client.product_uri = "urn:edge-anomaly-appliance"
    client.session_timeout = int(cfg.session_timeout_s * 1000)
    if cfg.username is not None:
        client.set_user(cfg.username)
        client.set_password(cfg.password or "")
    if on_lost is not None:
        client.connection_lost_callback = on_lost
    if cfg.security_policy != "None":
        policy = getattr(security_policies, f"SecurityPolicy{cfg.security_policy}")
        mode = getattr(ua.MessageSecurityMode, cfg.security_mode)
        cert_file, key_file = await ensure_client_certificate(
            _resolve(base_dir, cfg.client_cert_dir), cfg.application_uri)
        trusted = load_trust_list(cfg.trusted_server_certs, base_dir)
        endpoints = await client.connect_and_get_server_endpoints()
        try:
            endpoint = Client.find_endpoint(endpoints, mode, policy.URI)
        except ua.UaError:
            raise OpcuaSecurityError(f"server {cfg.endpoint} offers no {cfg.security_policy}/"
                                     f"{cfg.security_mode} endpoint") from None
        server_cert = check_server_certificate(endpoint.ServerCertificate, trusted)
        await client.set_security(policy, str(cert_file), str(key_file),
                                  server_certificate=server_cert.public_bytes(Encoding.DER), mode=mode)
    try:
        await client.connect()
    except BaseException:
        await close_client(client, timeout=cfg.request_timeout_s)
        raise
    return client


async def close_client(client: Client, timeout: float = 4.0) -> None:
    """CloseSession (deleting its subscriptions), then the channel and socket; never raises.

    The session is closed first so the server frees it now rather than after
    the session timeout: this is what keeps sessions from piling up.
    """
    try:
        await asyncio.wait_for(client.disconnect(), timeout)
    except (Exception, asyncio.TimeoutError) as e:  # noqa: BLE001 - teardown of a dead peer may fail any way
        logger.debug("opcua close_client error=%r", e)
        try:
            client.disconnect_socket()
        except Exception:  # noqa: BLE001
            pass


# --------------------------------------------------------------------------- connector


class OpcuaConnector:
    """Input plugin: OPC-UA subscriptions to :class:`~appliance.core.Reading` records.

    ``base_dir`` resolves relative certificate paths (the runtime passes ``data_dir``).
    """

    def __init__(self, cfg: OpcuaInputConfig, name: str = "opcua", base_dir: str | Path | None = None):
        _quiet_asyncua()
        self.cfg = cfg
        self.name = name
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.counters = Counters()
        self._sink: IngestSink | None = None
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self._state = "stopped"
        self._client: Client | None = None
        self._last_data_mono: float | None = None
        self._last_data_wall: float | None = None
        self._session_ended_mono: float | None = None
        self._last_resume_s: float | None = None
        self._last_error: str | None = None
        self._unresolved: dict[str, str] = {}
        self._subscribed = 0
        self._mapped: dict[int, OpcuaNode] = {}
        self._last_data_mono_session = 0.0
        self._last_ts: dict[tuple[str, str], float] = {}
        self._batch: list[Reading] = []
        self._dead: list[DeadLetter] = []
        self._flush_scheduled = False
        self._probe_interval = max(0.5, min(cfg.watchdog_s / 2, 5.0))

    # -- Connector protocol

    async def start(self, sink: IngestSink) -> None:
        if self._task is not None and not self._task.done():
            return
        self._sink = sink
        self._stop = asyncio.Event()
        self._state = "starting"
        self._task = asyncio.create_task(self._run(), name=f"opcua-{self.name}")

    async def stop(self) -> None:
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(task, self.cfg.request_timeout_s * 2 + 1)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                task.cancel()
            except Exception:  # noqa: BLE001 - already logged by the task
                pass
        if self._client is not None:
            await close_client(self._client, self.cfg.request_timeout_s)
            self._client = None
        self._flush()
        self._state = "stopped"

    def status(self) -> dict:
        now = time.monotonic()
        return {
            "name": self.name,
            "type": "opcua",
            "endpoint": self.cfg.endpoint,
            "security": f"{self.cfg.security_policy}/{self.cfg.security_mode}",
            "state": self._state,
            "connected": self._state == "connected",
            "subscribed_nodes": self._subscribed,
            "unresolved_nodes": dict(self._unresolved),
            "last_data_age_s": None if self._last_data_mono is None else round(now - self._last_data_mono, 3),
            "last_data_at": self._last_data_wall,
            "last_resume_s": self._last_resume_s,
            "last_error": self._last_error,
            "counters": dict(self.counters.values),
        }

    # -- connection loop

    async def _run(self) -> None:
        rc = self.cfg.reconnect
        delays = jittered_backoff(rc.initial_s, rc.max_s)
        while not self._stop.is_set():
            healthy = await self._one_session()
            if self._stop.is_set():
                break
            if healthy:
                # Start the backoff over only after a session that really worked; a
                # PLC whose values froze keeps backing off instead of being polled.
                delays = jittered_backoff(rc.initial_s, rc.max_s)
            self._state = "backoff"
            if await sleep_backoff(delays, self._stop):
                break
        self._state = "stopped"

    async def _one_session(self) -> bool:
        """Open, subscribe, deliver until something is wrong, close.

        True if data flowed and the session did not end by the data watchdog.
        """
        lost = asyncio.Event()
        lost_reason: list[str] = []

        async def on_lost(exc: Exception) -> None:
            lost_reason.append(repr(exc))
            lost.set()

        self._state = "connecting"
        got_data = False
        reason = ""
        client: Client | None = None
        self.counters.inc("connect_attempts")
        try:
            client = await asyncio.wait_for(
                open_client(self.cfg, self.base_dir, probe_interval_s=self._probe_interval, on_lost=on_lost),
                self.cfg.request_timeout_s * 3)
            self._client = client
            self.counters.inc("sessions_opened")
            sub = await self._subscribe(client)
            self._state = "connected"
            self._last_error = None
            logger.info("opcua connected name=%s endpoint=%s security=%s/%s nodes=%d",
                        self.name, self.cfg.endpoint, self.cfg.security_policy, self.cfg.security_mode,
                        self._subscribed)
            reason, got_data = await self._deliver(sub, lost, lost_reason)
            self.counters.inc(f"rebuild_{reason.split(':')[0]}")
            if reason != "stop":
                logger.warning("opcua connection lost name=%s reason=%s; rebuilding session", self.name, reason)
                self._last_error = reason
        except UntrustedServerCertificate as e:
            self.counters.inc("untrusted_server_cert")
            self._log_error(f"refused: {e}", level=logging.ERROR)
        except OpcuaSecurityError as e:
            self.counters.inc("security_errors")
            self._log_error(f"security: {e}", level=logging.ERROR)
        except (OSError, asyncio.TimeoutError, ConnectionError, ua.UaError) as e:
            self.counters.inc("connect_failures")
            self._log_error(f"connect failed: {e!r}")
        except Exception as e:  # noqa: BLE001 - never let one bad session kill the input
            self.counters.inc("connect_failures")
            logger.exception("opcua unexpected error name=%s", self.name)
            self._last_error = repr(e)
        finally:
            self._flush()
            if client is not None:
                await close_client(client, self.cfg.request_timeout_s)
                self.counters.inc("sessions_closed")
            self._client = None
            self._subscribed = 0
            if got_data:
                self._session_ended_mono = time.monotonic()
        return got_data and not reason.startswith("watchdog")

    def _log_error(self, msg: str, level: int = logging.WARNING) -> None:
        # Repeats of the same failure during a long outage go to DEBUG: one line per change.
        if msg != self._last_error:
            logger.log(level, "opcua name=%s endpoint=%s %s", self.name, self.cfg.endpoint, msg)
        else:
            logger.debug("opcua name=%s %s (again)", self.name, msg)
        self._last_error = msg

    async def _resolve_nodes(self, client: Client) -> list[tuple[OpcuaNode, ua.NodeId]]:
        resolved: list[tuple[OpcuaNode, ua.NodeId]] = []
        paths: list[OpcuaNode] = []
        self._unresolved = {}
        for n in self.cfg.nodes:
            if "/" in n.node and not n.node.startswith(("ns=", "nsu=", "i=", "s=", "g=", "b=")):
                paths.append(n)
                continue
            try:
                resolved.append((n, ua.NodeId.from_string(n.node)))
            except (ValueError, ua.UaError) as e:
                self._unresolved[n.node] = f"bad NodeId: {e}"
        if paths:
            seg_lists = [[s for s in n.node.strip("/").split("/")] for n in paths]
            results = await client.nodes.root.get_children_by_path(seg_lists, raise_on_partial_error=False)
            for n, targets in zip(paths, results):
                if not targets:
                    self._unresolved[n.node] = "browse path not found"
                else:
                    resolved.append((n, targets[0].nodeid))
        return resolved

    async def _subscribe(self, client: Client):
        resolved = await self._resolve_nodes(client)
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = self.cfg.publishing_interval_ms
        # Keep-alives at least every watchdog/3 so a quiet-but-alive subscription is visible.
        keepalive = max(1, int(self.cfg.watchdog_s * 1000 / 3 / self.cfg.publishing_interval_ms))
        params.RequestedMaxKeepAliveCount = keepalive
        params.RequestedLifetimeCount = keepalive * 3
        params.MaxNotificationsPerPublish = 10000
        params.PublishingEnabled = True
        params.Priority = 0
        sub = await client.create_subscription(params, handler=None, queue_maxsize=10000)
        requests, mapped = [], {}
        for handle, (n, nodeid) in enumerate(resolved, start=1):
            mp = ua.MonitoringParameters()
            mp.ClientHandle = handle
            mp.SamplingInterval = (n.sampling_interval_ms if n.sampling_interval_ms is not None
                                   else self.cfg.sampling_interval_ms)
            mp.QueueSize = self.cfg.queue_size
            mp.DiscardOldest = True
            if n.deadband > 0:
                flt = ua.DataChangeFilter()
                flt.Trigger = ua.DataChangeTrigger.StatusValue
                flt.DeadbandType = (ua.DeadbandType.Absolute if n.deadband_type == "absolute"
                                    else ua.DeadbandType.Percent)
                flt.DeadbandValue = n.deadband
                mp.Filter = flt
            rv = ua.ReadValueId()
            rv.NodeId = nodeid
            rv.AttributeId = ua.AttributeIds.Value
            req = ua.MonitoredItemCreateRequest()
            req.ItemToMonitor = rv
            req.MonitoringMode = ua.MonitoringMode.Reporting
            req.RequestedParameters = mp
            requests.append(req)
            mapped[handle] = n
        results = await sub.create_monitored_items(requests) if requests else []
        self._mapped = {}
        for req, res in zip(requests, results):
            n = mapped[req.RequestedParameters.ClientHandle]
            if isinstance(res, ua.StatusCode):
                self._unresolved[n.node] = _status_name(res)
            else:
                self._mapped[req.RequestedParameters.ClientHandle] = n
        self._subscribed = len(self._mapped)
        for node, why in self._unresolved.items():
            logger.warning("opcua node not subscribed name=%s node=%r reason=%s", self.name, node, why)
        if not self._mapped:
            raise ConnectionError("no configured node could be subscribed")
        return sub

    async def _deliver(self, sub, lost: asyncio.Event, lost_reason: list[str]) -> tuple[str, bool]:
        """Consume the subscription until the data watchdog, a loss or stop. Returns (reason, got_data)."""
        state = {"got": False, "status": None}
        session_start = time.monotonic()
        self._last_data_mono_session = session_start

        async def consume() -> None:
            async for ev in sub:
                if isinstance(ev, DataChangeEvent):
                    if self._on_datachange(ev):
                        if not state["got"]:
                            state["got"] = True
                            self._on_first_data()
                        self._last_data_mono_session = time.monotonic()
                elif isinstance(ev, StatusChangeEvent):
                    st = ev.notification.Status
                    if st is not None and not st.is_good():
                        state["status"] = _status_name(st)
                        return

        consumer = asyncio.create_task(consume())
        lost_w = asyncio.create_task(lost.wait())
        stop_w = asyncio.create_task(self._stop.wait())
        try:
            while True:
                remaining = self.cfg.watchdog_s - (time.monotonic() - self._last_data_mono_session)
                if remaining <= 0:
                    self.counters.inc("watchdog_trips")
                    return f"watchdog: no data for {self.cfg.watchdog_s:g}s", state["got"]
                done, _ = await asyncio.wait({consumer, lost_w, stop_w}, timeout=remaining,
                                             return_when=asyncio.FIRST_COMPLETED)
                if stop_w in done:
                    return "stop", state["got"]
                if lost_w in done:
                    return f"connection: {lost_reason[0] if lost_reason else 'lost'}", state["got"]
                if consumer in done:
                    exc = consumer.exception()
                    if exc is not None:
                        return f"subscription: {exc!r}", state["got"]
                    return f"subscription: {state['status'] or 'closed'}", state["got"]
        finally:
            for t in (consumer, lost_w, stop_w):
                t.cancel()
            await asyncio.gather(consumer, lost_w, stop_w, return_exceptions=True)

    def _on_first_data(self) -> None:
        if self._session_ended_mono is not None:
            self._last_resume_s = round(time.monotonic() - self._session_ended_mono, 3)
            self._session_ended_mono = None
            logger.info("opcua data resumed name=%s after_s=%.3f", self.name, self._last_resume_s)

    def _on_datachange(self, ev: DataChangeEvent) -> bool:
        """Queue one notification as a reading (or dead letter). True if it was new data of ours."""
        item = ev.data.monitored_item
        n = self._mapped.get(item.ClientHandle)
        if n is None:
            return False
        dv = item.Value
        now = time.time()
        status = dv.StatusCode if dv is not None else None
        quality = quality_of(status)
        ts = self._timestamp(dv, now)
        key = (n.asset, n.sensor)
        if self._last_ts.get(key) == ts:
            # The initial value of a rebuilt subscription repeats the last one delivered;
            # it is neither new data nor a sign of life for the watchdog.
            self.counters.inc("duplicates_dropped")
            return False
        self._last_ts[key] = ts
        self._last_data_mono = time.monotonic()
        self._last_data_wall = now
        raw = ev.value
        value: float
        if isinstance(raw, bool):
            value = 1.0 if raw else 0.0
        elif isinstance(raw, (int, float)):
            value = float(raw)
        elif raw is None and quality is not Quality.GOOD:
            value = math.nan
        else:
            self.counters.inc("dead_letters")
            self._queue_dead(DeadLetter(
                source=self.name, payload=repr(raw).encode()[:1024],
                reason=f"{n.node}: non-numeric value of type {type(raw).__name__} "
                       f"(status {_status_name(status)})", received_at=now))
            return True
        if quality is Quality.GOOD and not math.isfinite(value):
            # A PLC reporting NaN/inf with a good status is broken; never feed it to the model as good.
            quality = Quality.BAD
            self.counters.inc("nonfinite_values")
        if quality is not Quality.GOOD:
            self.counters.inc("bad_quality" if quality is Quality.BAD else "uncertain_quality")
        self.counters.inc("readings")
        self._batch.append(Reading(asset=n.asset, sensor=n.sensor, ts=ts, value=value, quality=quality,
                                   source=self.name))
        self._schedule_flush()
        return True

    def _timestamp(self, dv: ua.DataValue | None, now: float) -> float:
        if dv is not None:
            if self.cfg.timestamp == "source":
                ts = _to_unix(dv.SourceTimestamp) or _to_unix(dv.ServerTimestamp)
            elif self.cfg.timestamp == "server":
                ts = _to_unix(dv.ServerTimestamp) or _to_unix(dv.SourceTimestamp)
            else:
                ts = None
            if ts is not None:
                return ts
        return now

    def _queue_dead(self, dl: DeadLetter) -> None:
        self._dead.append(dl)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        # All notifications of one Publish response are queued before the loop
        # runs callbacks again, so one flush per response batches naturally.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._batch and not self._dead:
            return
        readings, dead = self._batch, self._dead
        self._batch, self._dead = [], []
        if self._sink is None:
            return
        try:
            self._sink.submit(readings, dead, on_stored=None)
        except Exception:  # noqa: BLE001 - a failing sink must not take the connection down
            self.counters.inc("sink_errors")
            self.counters.inc("readings_lost", len(readings))
            logger.exception("opcua sink submit failed name=%s readings=%d", self.name, len(readings))


# --------------------------------------------------------------------------- writer


_VARIANT_CAST: dict[ua.VariantType, Any] = {
    ua.VariantType.Boolean: lambda v: bool(v),
    ua.VariantType.Float: float,
    ua.VariantType.Double: float,
    **{t: (lambda v: int(round(v))) for t in (
        ua.VariantType.SByte, ua.VariantType.Byte, ua.VariantType.Int16, ua.VariantType.UInt16,
        ua.VariantType.Int32, ua.VariantType.UInt32, ua.VariantType.Int64, ua.VariantType.UInt64)},
}


class PlcError(Exception):
    """A PLC read or write failed (transport, session or a bad status code)."""


class AsyncuaPlcWriter:
    """The mitigation's ``PlcWriter`` over OPC-UA, with its own session.

    Separate from the ingest connection so a mitigation never waits behind (or
    disturbs) the subscription. Connects lazily; after a failure the session is
    closed and the next call reconnects once. Writes are absolute values, so
    that single retry cannot apply a change twice.
    """

    def __init__(self, cfg: OpcuaEndpointConfig, base_dir: str | Path | None = None):
        _quiet_asyncua()
        self.cfg = cfg
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self._client: Client | None = None
        self._lock = asyncio.Lock()
        self._vtypes: dict[str, ua.VariantType] = {}

    async def _connected(self) -> Client:
        if self._client is not None and self._client.uaclient.state.name == "CONNECTED":
            return self._client
        if self._client is not None:
            await close_client(self._client, self.cfg.request_timeout_s)
            self._client = None
        self._client = await asyncio.wait_for(open_client(self.cfg, self.base_dir),
                                              self.cfg.request_timeout_s * 3)
        return self._client

    async def _with_retry(self, op):
        async with self._lock:
            last: Exception | None = None
            for attempt in (1, 2):
                try:
                    return await op(await self._connected())
                except ua.UaStatusCodeError as e:
                    # A node-level refusal (BadOutOfRange, BadUserAccessDenied...) is an answer, not an outage.
                    if e.code in (ua.StatusCodes.BadSessionIdInvalid, ua.StatusCodes.BadSessionClosed,
                                  ua.StatusCodes.BadSessionNotActivated, ua.StatusCodes.BadSecureChannelClosed):
                        last = e
                    else:
                        raise PlcError(f"{type(e).__name__}: {e}") from None
                except (OSError, asyncio.TimeoutError, ConnectionError, ua.UaError) as e:
                    last = e
                if self._client is not None:
                    await close_client(self._client, self.cfg.request_timeout_s)
                    self._client = None
                logger.info("opcua writer retrying attempt=%d error=%r", attempt, last)
            raise PlcError(f"PLC unreachable at {self.cfg.endpoint}: {last!r}")

    async def read(self, nodes: Sequence[str]) -> list[tuple[float | None, Quality]]:
        """Current value and quality of each node, in one Read request."""
        async def op(client: Client):
            dvs = await client.read_attributes([client.get_node(n) for n in nodes])
            out: list[tuple[float | None, Quality]] = []
            for n, dv in zip(nodes, dvs):
                q = quality_of(dv.StatusCode)
                v = dv.Value.Value if dv.Value is not None else None
                if dv.Value is not None and dv.Value.VariantType in _VARIANT_CAST:
                    self._vtypes[n] = dv.Value.VariantType
                if isinstance(v, bool):
                    v = 1.0 if v else 0.0
                elif isinstance(v, (int, float)):
                    v = float(v)
                else:
                    v, q = None, Quality.BAD
                out.append((v, q))
            return out
        return await self._with_retry(op)

    async def write(self, node: str, value: float) -> None:
        """Write ``value`` with the node's own data type; raise :class:`PlcError` if refused."""
        async def op(client: Client):
            n = client.get_node(node)
            vtype = self._vtypes.get(node)
            if vtype is None:
                vtype = (await n.read_data_value()).Value.VariantType
                if vtype not in _VARIANT_CAST:
                    raise PlcError(f"{node} has data type {vtype.name}, not a number or boolean")
                self._vtypes[node] = vtype
            dv = ua.DataValue(ua.Variant(_VARIANT_CAST[vtype](value), vtype))
            await n.write_value(dv)
        await self._with_retry(op)

    async def close(self) -> None:
        async with self._lock:
            if self._client is not None:
                await close_client(self._client, self.cfg.request_timeout_s)
                self._client = None
