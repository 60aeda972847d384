"""The runtime: the only module that knows every part, and wires them together.

Concurrency model: one asyncio event loop runs the detection path (windows ->
detector -> decisions -> alarm events) on a single task, so no part needs locks.
Connectors may run their own threads (paho) and hand readings in through
:meth:`Appliance.submit`, which is thread-safe. Disk and network never sit on
the detection path: the store writes on its own thread, notifiers queue their
publishes, history has its own outbox.

Bound and drop rule: at most ``store.max_in_flight`` readings may be accepted
but not yet on disk. When that many are in flight, ``submit`` from a connector
thread waits (backpressure: MQTT keeps the unacknowledged QoS 1 messages at the
broker); nothing is dropped. Submissions from the event loop itself (asyncio
connectors such as OPC-UA) cannot wait there and are counted as ``overbooked``.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from appliance.actions.alarms import AlarmBook
from appliance.actions.decide import Decider
from appliance.core import AlarmEvent, Counters, DeadLetter, Quality, Reading
from appliance.detector.windowing import WindowBuilder
from appliance.store import Store
from appliance.watchdog import SensorWatchdog

log = logging.getLogger(__name__)

MODE_EVENTS = {"shelved", "unshelved", "suppressed", "removed_from_service", "returned_to_service"}


class InFlight:
    """Counts readings accepted but not yet stored; blocks producers at the bound."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, block: bool = True) -> bool:
        with self._cond:
            if block:
                # A batch larger than the bound is still admitted when nothing else waits.
                self._cond.wait_for(lambda: self.count == 0 or self.count + n <= self.limit)
            ok = self.count + n <= self.limit or self.count == 0
            self.count += n
            self.peak = max(self.peak, self.count)
            return ok

    def release(self, n: int) -> None:
        with self._cond:
            self.count -= n
            self._cond.notify_all()


@dataclass
class LatencyStats:
    """Reading-in to decision-out time on the detection path, in microseconds."""

    samples: deque = field(default_factory=lambda: deque(maxlen=10_000))

    def add(self, seconds: float) -> None:
        self.samples.append(seconds * 1e6)

    def summary(self) -> dict:
        if not self.samples:
            return {}
        s = sorted(self.samples)
        return {"n": len(s), "p50_us": round(statistics.median(s), 1),
                "p99_us": round(s[min(len(s) - 1, int(0.99 * len(s)))], 1), "max_us": round(s[-1], 1)}


class Appliance:
    def __init__(self, cfg, detector, store: Store, connectors: Sequence = (), notifiers: Sequence = (),
                 history=None, mitigator=None):
        self.cfg = cfg
        self.detector = detector
        self.store = store
        self.connectors = list(connectors)
        self.notifiers = list(notifiers)
        self.history = history
        self.mitigator = mitigator
        w = cfg.windows
        self.windows = WindowBuilder(detector.sensors, w.period_s or detector.period_s, detector.window,
                                     w.stride or detector.stride, w.staleness_s, w.lateness_s)
        self.alarms = AlarmBook(lambda: Decider.from_config(cfg.decision))
        self.watchdog = SensorWatchdog(detector.sensors, cfg.watchdog.silence_s)
        self.counters = Counters()
        self.dead_by_reason = Counters()
        self.latency = LatencyStats()
        self.in_flight = InFlight(cfg.store.max_in_flight)
        self.started_at = time.time()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: asyncio.Queue | None = None
        self._event_listeners: list[Callable[[AlarmEvent], None]] = []
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self._incomplete_logged: set[str] = set()
        self._peaks_stored: dict[str, tuple[float | None, float]] = {}
        self._loop_thread: int | None = None

    # -- IngestSink -------------------------------------------------------------
    def submit(self, readings: Sequence[Reading], dead_letters: Sequence[DeadLetter] = (),
               on_stored: Callable[[], None] | None = None) -> None:
        loop = self._loop
        if loop is None:
            raise RuntimeError("appliance is not running")
        n = max(1, len(readings) + len(dead_letters))
        on_loop = threading.get_ident() == self._loop_thread
        if not self.in_flight.acquire(n, block=not on_loop):
            self.counters.inc("overbooked", n)
        item = (readings, dead_letters, on_stored, n)
        if on_loop:
            self._inbox.put_nowait(item)
        else:
            loop.call_soon_threadsafe(self._inbox.put_nowait, item)

    def add_event_listener(self, fn: Callable[[AlarmEvent], None]) -> None:
        """Called on the event loop for each alarm event (dashboard live view, tests)."""
        self._event_listeners.append(fn)

    # -- lifecycle --------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.shutdown()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._inbox = asyncio.Queue()
        self.store.start()
        open_ids = set()
        for alarm, mode, until in self.store.open_alarms():
            self.alarms.restore(alarm, mode, until)
            open_ids.add(alarm.id)
        if self.history is not None:
            self.history.start()
        for n in self.notifiers:
            n.start()
        self._tasks = [asyncio.create_task(self._pipeline(), name="pipeline"),
                       asyncio.create_task(self._housekeeping(), name="housekeeping")]
        if self.mitigator is not None:
            # Reverts owed from before a restart; off the start path, the PLC may be slow or away.
            self._spawn(self._audited(self.mitigator.resume(open_ids), "resuming owed reverts"))
        for c in self.connectors:
            await c.start(self)
        log.info("appliance started model=%s sensors=%d window=%d stride=%d connectors=%s",
                 self.detector.version, len(self.detector.sensors), self.detector.window,
                 self.windows.stride, ",".join(c.name for c in self.connectors))

    async def wait_inputs_ready(self, timeout: float = 60.0) -> bool:
        """Wait until every connector is connected (MQTT: every subscription acknowledged)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [c.status() for c in self.connectors]
            if all(st.get("subscribed", st.get("connected", True)) for st in states):
                return True
            await asyncio.sleep(0.05)
        return False

    async def shutdown(self) -> None:
        for c in self.connectors:
            try:
                await c.stop()
            except Exception:
                log.exception("connector %s failed to stop cleanly", c.name)
        await self.drain()
        if self._background:
            await asyncio.wait(self._background, timeout=10)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.mitigator is not None and hasattr(self.mitigator, "close"):
            await _maybe_await(self.mitigator.close())
        for n in self.notifiers:
            n.stop()
        if self.history is not None:
            await asyncio.to_thread(self.history.stop)  # may wait for a write in flight
        self.store.close()
        log.info("appliance stopped %s", self.summary())

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until everything submitted so far went through the detection path."""
        deadline = time.monotonic() + timeout
        while self._inbox is not None and not self._inbox.empty() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)

    # -- detection path ---------------------------------------------------------
    async def _pipeline(self) -> None:
        while True:
            readings, dead, on_stored, n = await self._inbox.get()
            for d in dead:
                self.counters.inc("dead_letters")
                self.dead_by_reason.inc(d.reason.split(":")[0])
                self.store.put_dead_letter(d)
            for r in readings:
                try:
                    self._on_reading(r)
                except Exception:
                    # One bad reading must not stop the pipeline nor cost its neighbours.
                    self.counters.inc("pipeline_errors")
                    log.exception("pipeline: error on reading asset=%s sensor=%s", r.asset, r.sensor)
            self.store.after_commit(_stored_callback(self.in_flight, n, on_stored))

    def _on_reading(self, r: Reading) -> None:
        t0 = time.perf_counter()
        self.counters.inc("readings")
        self.store.put_reading(r)
        if self.history is not None:
            self.history.add_reading(r)
        self.watchdog.seen(r.asset, r.sensor)
        if r.quality != Quality.GOOD:
            self.counters.inc("bad_quality")
        windows = self.windows.add(r)
        for w in windows:
            if not w.complete:
                self.counters.inc("windows_incomplete")
                if w.asset not in self._incomplete_logged:
                    self._incomplete_logged.add(w.asset)
                    log.warning("window not scored: missing data asset=%s sensors=%s",
                                w.asset, ",".join(w.missing_sensors))
                continue
            self._incomplete_logged.discard(w.asset)
            score = self.detector.score_one(w)
            self.counters.inc("windows_scored")
            self.store.put_score(score)
            if self.history is not None:
                self.history.add_score(score)
            self._emit(self.alarms.on_score(score))
            self._persist_peak(score.asset)
        if windows:
            self.latency.add(time.perf_counter() - t0)

    def _emit(self, events: list[AlarmEvent]) -> None:
        for e in events:
            self.counters.inc(f"alarm_{e.kind}")
            if e.kind == "raised":
                log.warning("alarm raised asset=%s level=%s score=%.2f top=%s id=%s", e.alarm.asset,
                            e.alarm.level.name.lower(), e.alarm.peak_score, ",".join(e.alarm.top_sensors),
                            e.alarm.id)
            elif e.kind != "escalated":
                log.info("alarm %s asset=%s id=%s user=%s", e.kind, e.alarm.asset, e.alarm.id, e.user)
            self.store.put_alarm_event(e)
            if e.kind in ("cleared", "superseded"):
                self._peaks_stored.pop(e.alarm.id, None)  # keeps the map to open alarms only
            if e.kind in MODE_EVENTS:
                self.store.put_point_mode(e.alarm.asset, self.alarms.modes().get(e.alarm.asset, "in_service"),
                                          e.alarm.shelved_until)
            for n in self.notifiers:
                try:
                    n.notify(e)
                except Exception:
                    log.exception("notifier %s failed", n.name)
            if self.history is not None:
                self.history.add_alarm_event(e)
            if self.mitigator is not None:
                self._spawn(self._audited(self.mitigator.on_alarm_event(e), f"mitigation for alarm {e.alarm.id}"))
            for fn in self._event_listeners:
                fn(e)

    def _persist_peak(self, asset: str) -> None:
        """Keep the stored alarm's peak close to the live one (at most once a second)."""
        alarm = self.alarms.current(asset)
        if alarm is None or not alarm.active:
            return
        last_peak, last_t = self._peaks_stored.get(alarm.id, (None, 0.0))
        now = time.monotonic()
        if alarm.peak_score != last_peak and now - last_t >= 1.0:
            self._peaks_stored[alarm.id] = (alarm.peak_score, now)
            self.store.put_alarm(alarm)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _audited(self, records_coro, what: str) -> None:
        """Await a mitigator call; its audit records also go to the history."""
        try:
            records = await records_coro
            if self.history is not None:
                for rec in records or ():
                    self.history.add_audit(rec.to_dict())
        except Exception:
            log.exception("%s failed", what)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._emit(self.alarms.tick())
            for h in self.watchdog.check():
                if h.silent:
                    log.warning("sensor silent asset=%s sensor=%s", h.asset, h.sensor)
                else:
                    log.info("sensor resumed asset=%s sensor=%s", h.asset, h.sensor)

    # -- operator commands (call from any thread) -------------------------------
    def command(self, name: str, timeout: float = 10.0, **kwargs) -> Any:
        """Run an operator command on the event loop, from any thread.

        Alarm commands: ``acknowledge``, ``shelve``, ``set_mode`` (return alarm events).
        Mitigation: ``approve_action``, ``reject_action`` with ``proposal_id`` (return records).
        """
        if name in ("acknowledge", "shelve", "set_mode"):
            async def run():
                events = getattr(self.alarms, name)(**kwargs)
                self._emit(events)
                return events
        elif name in ("approve_action", "reject_action"):
            if self.mitigator is None:
                from appliance.actions.alarms import AlarmCommandError
                raise AlarmCommandError("mitigation is not enabled")

            async def run():
                fn = self.mitigator.approve if name == "approve_action" else self.mitigator.reject
                record = await fn(**kwargs)
                if self.history is not None:
                    self.history.add_audit(record.to_dict())
                return [record]
        else:
            raise ValueError(f"unknown command {name!r}")
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    # -- views ------------------------------------------------------------------
    def summary(self) -> str:
        c = self.counters
        return (f"readings={c.get('readings')} windows={c.get('windows_scored')} "
                f"alarms={c.get('alarm_raised')} dead_letters={c.get('dead_letters')}")

    def status(self) -> dict:
        """A consistent snapshot; from another thread it is taken on the event loop."""
        loop = self._loop
        if loop is not None and loop.is_running() and threading.get_ident() != self._loop_thread:
            async def snap():
                return self._status()
            return asyncio.run_coroutine_threadsafe(snap(), loop).result(5)
        return self._status()

    def _status(self) -> dict:
        return {
            "site": self.cfg.site,
            "uptime_s": round(time.time() - self.started_at, 1),
            "model": {"version": self.detector.version, "sensors": list(self.detector.sensors),
                      "window": self.detector.window, "threshold": self.detector.threshold},
            "counters": dict(self.counters.values),
            "dead_letters_by_reason": dict(self.dead_by_reason.values),
            "windows": self.windows.status(),
            "latency": self.latency.summary(),
            "in_flight": {"now": self.in_flight.count, "peak": self.in_flight.peak,
                          "limit": self.in_flight.limit, "store_queue": self.store.queued()},
            "silent_sensors": self.watchdog.silent(),
            "alarms": [a.to_dict() for a in self.alarms.alarms()],
            "point_modes": self.alarms.modes(),
            "connectors": {c.name: c.status() for c in self.connectors},
            "notifiers": {n.name: n.status() for n in self.notifiers},
            "history": self.history.status() if self.history is not None else None,
            "mitigation": self.mitigator.status() if self.mitigator is not None else None,
        }


def _stored_callback(in_flight: InFlight, n: int, on_stored):
    def done():
        in_flight.release(n)
        if on_stored is not None:
            on_stored()
    return done


async def _maybe_await(x):
    if asyncio.iscoroutine(x):
        await x


def build(cfg, detector=None) -> Appliance:
    """Assemble an appliance from a validated config (plugins imported only when enabled)."""
    from appliance.detector.scorer import Detector

    data_dir = cfg.path(".")
    data_dir.mkdir(parents=True, exist_ok=True)
    if detector is None:
        bundle = cfg.path(cfg.detector.bundle)
        if not (bundle / "bundle.json").exists():
            raise FileNotFoundError(f"no model bundle at {bundle} (detector.bundle); "
                                    "train one with: appliance train --data CSV... --out " + str(bundle))
        detector = Detector.load(bundle, precision=cfg.detector.precision, threads=cfg.detector.threads)
    store = Store.from_config(cfg.store, cfg.path(cfg.store.path))
    connectors, notifiers = [], []
    sensors = set(detector.sensors)
    if cfg.inputs.mqtt.enabled:
        from appliance.connectors.mqtt import MqttConnector
        connectors.append(MqttConnector(cfg.inputs.mqtt, known_sensors=lambda asset: sensors))
    if cfg.inputs.opcua.enabled:
        from appliance.connectors.opcua import OpcuaConnector
        connectors.append(OpcuaConnector(cfg.inputs.opcua, base_dir=cfg.data_dir))
    if cfg.outputs.mqtt_alarm.enabled:
        from appliance.actions.notifiers import MqttAlarmNotifier
        notifiers.append(MqttAlarmNotifier(cfg.outputs.mqtt_alarm,
                                           cfg.outputs.mqtt_alarm.broker or cfg.inputs.mqtt.broker))
    history = None
    hcfg = getattr(cfg, "history", None)
    if hcfg is not None and hcfg.enabled:
        from appliance.history import History
        history = History(hcfg, data_dir)
    mitigator = None
    mcfg = getattr(cfg, "mitigation", None)
    if mcfg is not None and getattr(mcfg, "enabled", False):
        from appliance.actions.mitigation import build_mitigator
        mitigator = build_mitigator(mcfg, data_dir, cfg)
    return Appliance(cfg, detector, store, connectors, notifiers, history, mitigator)


def start_web(app, host: str, port: int):
    """Serve the dashboard for a running appliance; /metrics joins its status and history metrics."""
    from web import create_app, serve
    from web.metrics import render, status_registry

    def metrics() -> bytes:
        body = render(status_registry(app.status))
        if app.history is not None:
            body += app.history.metrics_text()
        return body

    handle = serve(create_app(app, app.store.path, metrics_provider=metrics), host, port)
    log.info("dashboard on http://%s:%s/", host, handle.port)
    return handle
