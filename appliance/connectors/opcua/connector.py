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

Sessions, security and certificates: :mod:`appliance.connections.opcua`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from asyncua import Client, ua
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent

from appliance.connections.backoff import jittered_backoff, sleep_backoff
from appliance.connections.opcua import (OpcuaSecurityError, UntrustedServerCertificate, close_client, open_client,
                                         quality_of, quiet_asyncua, status_name, to_unix)
from appliance.connections.config import OpcuaEndpointConfig
from appliance.connectors.guard import ValueRange, dead_letter
from appliance.connectors.opcua.config import OpcuaInputConfig, OpcuaNode
from appliance.core import Counters, DeadLetter, DeadLetterCode, IngestSink, Input, Quality, Reading
from appliance.core.compat import StrEnum
from appliance.core.timebase import GatewayClock

logger = logging.getLogger(__name__)


class SessionEnd(StrEnum):
    """Why a session stopped delivering: a stable code for the ``rebuild_<code>`` counters."""

    STOP = "stop"
    WATCHDOG = "watchdog"
    CONNECTION = "connection"
    SUBSCRIPTION = "subscription"


@dataclass(frozen=True, slots=True)
class _Ended:
    code: SessionEnd
    detail: str = ""

    def __str__(self) -> str:
        """``code: detail``, for people reading the log or the status API."""
        return f"{self.code.value}: {self.detail}" if self.detail else self.code.value


class OpcuaConnector(Input):
    """Input plugin: OPC-UA subscriptions to :class:`~appliance.core.Reading` records.

    ``base_dir`` resolves relative certificate paths (the runtime passes ``data_dir``).
    """

    def __init__(self, cfg: OpcuaInputConfig, endpoint: OpcuaEndpointConfig, name: str = "opcua",
                 base_dir: str | Path | None = None, clock: GatewayClock | None = None):
        quiet_asyncua()
        self.cfg = cfg
        # The gateway's clock (None: the wall clock): the PLC's timestamps are one of the
        # sources it takes the time from while the wall clock is unsynchronised.
        self._clock = clock
        self._now = clock.now if clock is not None else time.time
        self.endpoint = endpoint
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
        self.value_range = ValueRange(cfg.max_abs_value, {
            f"{n.asset}/{n.sensor}": (-math.inf if n.min_value is None else n.min_value,
                                      math.inf if n.max_value is None else n.max_value)
            for n in cfg.nodes if n.min_value is not None or n.max_value is not None})

    # -- Input interface (appliance.core.Input)

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
                await asyncio.wait_for(task, self.endpoint.request_timeout_s * 2 + 1)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                task.cancel()
            except Exception:  # noqa: BLE001 - already logged by the task
                pass
        if self._client is not None:
            await close_client(self._client, self.endpoint.request_timeout_s)
            self._client = None
        self._flush()
        self._state = "stopped"

    def ready(self) -> bool:
        return self._state == "connected"

    def status(self) -> dict:
        now = time.monotonic()
        return {
            "name": self.name,
            "type": "opcua",
            "endpoint": self.endpoint.endpoint,
            "security": f"{self.endpoint.security_policy}/{self.endpoint.security_mode}",
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
        ended: _Ended | None = None
        client: Client | None = None
        self.counters.inc("connect_attempts")
        try:
            client = await asyncio.wait_for(
                open_client(self.endpoint, self.base_dir, probe_interval_s=self._probe_interval, on_lost=on_lost),
                self.endpoint.request_timeout_s * 3)
            self._client = client
            self.counters.inc("sessions_opened")
            sub = await self._subscribe(client)
            self._state = "connected"
            self._last_error = None
            logger.info("opcua connected name=%s endpoint=%s security=%s/%s nodes=%d",
                        self.name, self.endpoint.endpoint, self.endpoint.security_policy, self.endpoint.security_mode,
                        self._subscribed)
            ended, got_data = await self._deliver(sub, lost, lost_reason)
            self.counters.inc(f"rebuild_{ended.code.value}")
            if ended.code is not SessionEnd.STOP:
                logger.warning("opcua connection lost name=%s reason=%s; rebuilding session", self.name, ended)
                self._last_error = str(ended)
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
                await close_client(client, self.endpoint.request_timeout_s)
                self.counters.inc("sessions_closed")
            self._client = None
            self._subscribed = 0
            if got_data:
                self._session_ended_mono = time.monotonic()
        return got_data and (ended is None or ended.code is not SessionEnd.WATCHDOG)

    def _log_error(self, msg: str, level: int = logging.WARNING) -> None:
        # Repeats of the same failure during a long outage go to DEBUG: one line per change.
        if msg != self._last_error:
            logger.log(level, "opcua name=%s endpoint=%s %s", self.name, self.endpoint.endpoint, msg)
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
                self._unresolved[n.node] = status_name(res)
            else:
                self._mapped[req.RequestedParameters.ClientHandle] = n
        self._subscribed = len(self._mapped)
        for node, why in self._unresolved.items():
            logger.warning("opcua node not subscribed name=%s node=%r reason=%s", self.name, node, why)
        if not self._mapped:
            raise ConnectionError("no configured node could be subscribed")
        return sub

    async def _deliver(self, sub, lost: asyncio.Event, lost_reason: list[str]) -> tuple[_Ended, bool]:
        """Consume the subscription until the data watchdog, a loss or stop. Returns (why, got_data)."""
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
                        state["status"] = status_name(st)
                        return

        consumer = asyncio.create_task(consume())
        lost_w = asyncio.create_task(lost.wait())
        stop_w = asyncio.create_task(self._stop.wait())
        try:
            while True:
                remaining = self.cfg.watchdog_s - (time.monotonic() - self._last_data_mono_session)
                if remaining <= 0:
                    self.counters.inc("watchdog_trips")
                    return _Ended(SessionEnd.WATCHDOG, f"no data for {self.cfg.watchdog_s:g}s"), state["got"]
                done, _ = await asyncio.wait({consumer, lost_w, stop_w}, timeout=remaining,
                                             return_when=asyncio.FIRST_COMPLETED)
                if stop_w in done:
                    return _Ended(SessionEnd.STOP), state["got"]
                if lost_w in done:
                    return _Ended(SessionEnd.CONNECTION, lost_reason[0] if lost_reason else "lost"), state["got"]
                if consumer in done:
                    exc = consumer.exception()
                    if exc is not None:
                        return _Ended(SessionEnd.SUBSCRIPTION, repr(exc)), state["got"]
                    return _Ended(SessionEnd.SUBSCRIPTION, state["status"] or "closed"), state["got"]
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
        now = self._now()
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
        if self._clock is not None and ts != now:
            self._clock.observe(self.name, ts)  # the PLC's own time
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
            self._queue_dead(dead_letter(
                self.name, repr(raw).encode(), DeadLetterCode.BAD_VALUE,
                f"{n.node}: non-numeric value of type {type(raw).__name__} (status {status_name(status)})", now))
            return True
        if math.isfinite(value):
            out = self.value_range.check(n.asset, n.sensor, value)
            if out is not None:
                # A value no sensor can read (a PLC register misread, a unit mix-up) would
                # poison every window holding it: kept as a dead letter, never scored.
                self.counters.inc("dead_letters")
                self.counters.inc("out_of_range")
                self._queue_dead(dead_letter(self.name, repr(raw).encode(), DeadLetterCode.OUT_OF_RANGE,
                                             f"{n.node} ({n.asset}/{n.sensor}): {out}", now))
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
                ts = to_unix(dv.SourceTimestamp) or to_unix(dv.ServerTimestamp)
            elif self.cfg.timestamp == "server":
                ts = to_unix(dv.ServerTimestamp) or to_unix(dv.SourceTimestamp)
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
