"""The runtime: wires the parts together; it names no plugin and leaves the model's life to the lifecycle.

Concurrency model: one asyncio event loop runs the detection path (windows ->
detector -> decisions -> alarm events) on a single task, so no part needs locks.
Inputs hand readings in through :meth:`Appliance.submit`, from the loop (MQTT
and OPC-UA both run on it) or from a thread of their own (it is thread-safe).
Disk and network never sit on
the detection path: every output queues its own work (the store writes on its
own thread, notifiers queue their publishes, history has its own outbox,
mitigation runs as background tasks).

What the path produces goes to every enabled output through the hooks of
:class:`~appliance.core.Output`; the store is always the first output, so
everything is on its queue before any other output sees it. Scored windows and
live raises also go to the model's lifecycle (:mod:`appliance.lifecycle`), which
decides on shadow runs, promotions and rollbacks and hands the runtime the
detector to swap in.

Bound and drop rule: at most ``store.max_in_flight`` readings may be accepted
but not yet on disk. When that many are in flight, ``submit`` from an input
thread waits; nothing is dropped. Submissions from the event loop itself cannot
wait there: an input on the loop bounds what it has handed on and not yet seen
stored (MQTT stops reading its socket at ``max_unstored`` and leaves the
unacknowledged QoS 1 messages at the broker), and what still goes beyond the
bound is counted as ``overbooked``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from appliance.actions.alarms import AlarmBook, AlarmCommandError
from appliance.actions.decide import Decider
from appliance.actions.operating_point import OperatingPoints
from appliance.core.timebase import GatewayClock
from appliance.core import (HOOKS, Alarm, AlarmEvent, Counters, DeadLetter, Detector, EventKind, Input,
                            MitigationAction, ModeChange, ModelChange, OperatingPointChange, Output, OutputContext,
                            PluginEnv, Quality, Reading, Score, overrides)
from appliance.detector.frozen import held_rows
from appliance.detector.windowing import WindowBuilder
from appliance.ingest_health import log_sensor_changes
from appliance.store import Store
from appliance.store.output import StoreOutput
from appliance.lifecycle.active import bundle_to_load
from appliance.lifecycle.backtest import Grid, HistoryJudge
from appliance.lifecycle.life import MODEL_COMMANDS, ModelLifecycle
from appliance.watchdog import SensorWatchdog

log = logging.getLogger(__name__)

ALARM_COMMANDS = ("acknowledge", "shelve", "set_mode")

class InFlight:
    """Counts readings accepted but not yet stored; blocks producers at the bound."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0
        self.peak = 0
        self._cond = threading.Condition(threading.Lock())  # not reentrant: cheaper on every message

    def acquire(self, n: int, block: bool = True) -> bool:
        with self._cond:
            if block and self.count and self.count + n > self.limit:
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


def grid_limits(windows, detector: Detector) -> tuple[float, float]:
    """``(staleness_s, lateness_s)`` of the live grid.

    Staleness: what ``[windows]`` sets, else the longer of its default and the
    model's own (a model trained at a 3-minute period holds values for minutes; a
    default of seconds would make every cell of its live grid missing). Lateness is
    about the network, not the process: always ``[windows]``.
    """
    trained = detector.bundle.staleness_s if detector.bundle is not None else None
    staleness = windows.staleness_s
    if "staleness_s" not in windows.model_fields_set and trained is not None:
        staleness = max(staleness, float(trained))
    return staleness, windows.lateness_s


class Appliance:
    """One running appliance: inputs -> windows -> detector -> decisions -> outputs.

    ``outputs`` are the enabled output plugins; the store is put in front of them.
    ``not_enabled`` maps the commands of plugins that are not enabled to what to
    answer (the registry's declarations, :func:`appliance.registry.commands_not_enabled`).
    ``clock`` is the gateway's clock the inputs were given (:func:`gateway_clock`).
    """

    def __init__(self, cfg, detector: Detector, store: Store, inputs: Sequence[Input] = (),
                 outputs: Sequence[Output] = (), not_enabled: Mapping[str, str] | None = None,
                 clock: GatewayClock | None = None):
        self.cfg = cfg
        self.clock = clock if clock is not None else gateway_clock(cfg)
        self.detector = detector
        self.store = store
        self.inputs = list(inputs)
        self.outputs: list[Output] = [StoreOutput(store, verdict_causes=cfg.store.verdict_causes), *outputs]
        self._hooks: dict[str, list[Callable]] = {
            hook: [getattr(o, hook) for o in self.outputs if overrides(o, hook)] for hook in HOOKS}
        self._commands: dict[str, Callable] = {}
        for o in self.outputs:
            for name, fn in o.commands().items():
                if name in self._commands or name in ALARM_COMMANDS or name in MODEL_COMMANDS:
                    raise ValueError(f"output {o.name}: command {name!r} is already taken")
                self._commands[name] = fn
        self._not_enabled = {name: why for name, why in (not_enabled or {}).items() if name not in self._commands}
        w = cfg.windows
        self.windows = WindowBuilder(detector.sensors, w.period_s or detector.period_s, detector.window,
                                     w.stride or detector.stride, *grid_limits(w, detector))
        # Cells this grid may fill by holding a value over missing reports: never a frozen sensor.
        self._held_rows = held_rows(self.windows.staleness_s, self.windows.period_s)
        detector.allow_held(self._held_rows)
        # Alarm events and shelving run on the gateway's time, which is the data's while the clock is wrong.
        self.alarms = AlarmBook(lambda: Decider.from_config(cfg.decision), on_peak=self._on_peak,
                                clock=self.clock.now)
        # "Operating point not seen in training": a status of its own per asset, beside the alarm point.
        self.operating_points = OperatingPoints(cfg.decision)
        self.watchdog = SensorWatchdog(detector.sensors, cfg.watchdog.silence_s, wall=self.clock.now)
        self.counters = Counters()
        self.dead_by_reason = Counters()
        self.latency = LatencyStats()
        self.in_flight = InFlight(cfg.store.max_in_flight)
        self.started_at = time.time()
        self._started_mono = time.monotonic()  # uptime: not moved by the wall clock's steps
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = 0  # batches handed to the loop and not yet through the detection path
        # Submissions from input threads wait here for the loop, which is woken once per burst.
        self._handoff: list = []
        self._handoff_lock = threading.Lock()
        self._handoff_pending = False
        self._event_listeners: list[Callable[[AlarmEvent | ModeChange], None]] = []
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self._incomplete_logged: set[str] = set()
        self._proven_assets: set[str] = set()  # told to the inputs: real assets they keep admitting
        self._loop_thread: int | None = None
        # The model's life (shadow, promotion, rollback) is the lifecycle's; the runtime swaps when told.
        self.models = ModelLifecycle(current=lambda: self.detector, swap=self._swap_detector,
                                     publish=self._publish_model_change, spawn=self._spawn,
                                     new_decider=lambda: Decider.from_config(cfg.decision),
                                     held_rows=self._held_rows, data_dir=cfg.path("."),
                                     history=HistoryJudge(store.path, Grid.of(self.windows),
                                                          lambda: Decider.from_config(cfg.decision)),
                                     active_alarms=self._assets_in_alarm)

    def output(self, name: str) -> Output | None:
        """The enabled output called ``name`` (``store``, ``history``, ``mitigation`` ...), if any."""
        return next((o for o in self.outputs if o.name == name), None)

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
            # Right away, in the input's own callback: a call_soon would cost every message a
            # second turn of the loop (one more epoll_wait) before its decision.
            self._scheduled += 1
            self._process([item])
            return
        # From an input's thread: one wake-up of the loop per burst of messages, not one per message.
        with self._handoff_lock:
            self._handoff.append(item)
            if self._handoff_pending:
                return
            self._handoff_pending = True
        loop.call_soon_threadsafe(self._take_handoff)

    def _take_handoff(self) -> None:
        with self._handoff_lock:
            items, self._handoff = self._handoff, []
            self._handoff_pending = False
        self._scheduled += 1
        self._process(items)

    def add_event_listener(self, fn: Callable[[AlarmEvent | ModeChange], None]) -> None:
        """Called on the event loop for each alarm event and mode change (dashboard live view, tests)."""
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
        open_alarms = self.store.open_alarms()
        for asset, (mode, until) in self.store.point_modes().items():
            self.alarms.restore_mode(asset, mode, until)
        for alarm in open_alarms:
            self.alarms.restore(alarm)
        self._prove_stored_assets(open_alarms)
        ctx = OutputContext(open_alarm_ids=frozenset(a.id for a in open_alarms),
                            publish_action=self._publish_action, spawn=self._spawn, models=self.models)
        for o in self.outputs:
            await o.start(ctx)
        self._tasks = [asyncio.create_task(self._housekeeping(), name="housekeeping")]
        for c in self.inputs:
            await c.start(self)
        # What start-up built (modules, the ONNX session, config, plugins) lives as long as the
        # process: moved out of the collector's sight, full collections stop walking it on the hot
        # path (measured in benchmarks/peer.py at 1,000 msg/s: CPU 43.9 -> 34.6 % of a core, p99
        # 1.36 -> 0.79 ms).
        gc.freeze()
        log.info("appliance started model=%s sensors=%d window=%d stride=%d inputs=%s outputs=%s",
                 self.detector.version, len(self.detector.sensors), self.detector.window,
                 self.windows.stride, ",".join(c.name for c in self.inputs),
                 ",".join(o.name for o in self.outputs))

    async def wait_inputs_ready(self, timeout: float = 60.0) -> bool:
        """Wait until every input is ready (MQTT: every subscription acknowledged)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(c.ready() for c in self.inputs):
                return True
            await asyncio.sleep(0.05)
        return False

    async def shutdown(self) -> None:
        for c in self.inputs:
            try:
                await c.stop()
            except Exception:
                log.exception("input %s failed to stop cleanly", c.name)
        await self.drain()
        if self._background:
            await asyncio.wait(self._background, timeout=10)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # The store last: what the other outputs still record on their way out must reach it.
        for o in reversed(self.outputs):
            try:
                await o.stop()
            except Exception:
                log.exception("output %s failed to stop cleanly", o.name)
        log.info("appliance stopped %s", self.summary())

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until everything submitted so far went through the detection path."""
        deadline = time.monotonic() + timeout
        while (self._scheduled or self._handoff_pending) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)

    # -- detection path ---------------------------------------------------------
    def _process(self, batch: list) -> None:
        """Run a batch of submissions through the detection path (on the loop, in submission order).

        Called straight from the loop's wake-up for the batch: a queue and a task in
        between would cost a second loop iteration for every burst of messages."""
        self._scheduled -= 1  # nothing else runs on the loop until the batch is through
        on_dead = self._hooks["on_dead_letter"]
        total, acks = 0, []
        for readings, dead, on_stored, n in batch:
            for d in dead:
                self.counters.inc("dead_letters", d.count)
                self.dead_by_reason.inc(d.code.value, d.count)
                self._call(on_dead, d)
            for r in readings:
                try:
                    self._on_reading(r)
                except Exception:
                    # One bad reading must not stop the pipeline nor cost its neighbours.
                    self.counters.inc("pipeline_errors")
                    log.exception("pipeline: error on reading asset=%s sensor=%s", r.asset, r.sensor)
            total += n
            if on_stored is not None:
                acks.append(on_stored)
        # One store callback per batch: in-flight released, then each input's acks in arrival order.
        self.store.after_commit(_stored_callback(self.in_flight, total, acks))

    def _on_reading(self, r: Reading) -> None:
        t0 = time.perf_counter()
        self.counters.inc("readings")
        self._call(self._hooks["on_reading"], r)
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
            if w.asset not in self._proven_assets:
                self._prove_asset(w.asset)
            score = self.detector.score_one(w)
            self.counters.inc("windows_scored")
            self._call(self._hooks["on_score"], score)
            self._judge(score)
            self.models.observe(w, score)
        if windows:
            self.latency.add(time.perf_counter() - t0)

    def _judge(self, score: Score) -> None:
        """The operating point's status first, then the alarm point: while the point is unseen, the alarm
        point judges the score against the threshold in force then (appliance/actions/operating_point.py)."""
        change = self.operating_points.update(score)
        if change is not None:
            self._emit_operating_point(change)
        if self.cfg.decision.unseen_holds_alarms:
            judged = self.operating_points.alarm_score(score)
            if judged is not score and score.ratio >= 1.0 > judged.ratio:
                self.counters.inc("windows_held_unseen_operating_point")
            score = judged
        self._emit(self.alarms.on_score(score))

    def _emit_operating_point(self, change: OperatingPointChange) -> None:
        self.counters.inc(f"operating_point_{change.event}")
        if change.active:
            log.warning("operating point not seen in training asset=%s sensors=%s model=%s", change.asset,
                        ",".join(change.sensors), change.model_version)
        else:
            log.info("operating point back in training range asset=%s held_windows=%d", change.asset,
                     change.held_windows)
        self._call(self._hooks["on_operating_point"], change)

    def _call(self, hooks: list[Callable], record) -> None:
        for hook in hooks:
            try:
                hook(record)
            except Exception:
                # An output's failure is its own: the others and the detection path go on.
                self.counters.inc("output_errors")
                log.exception("output hook %s failed", getattr(hook, "__qualname__", hook))

    def _emit(self, changes: Sequence[AlarmEvent | ModeChange]) -> None:
        for c in changes:
            if isinstance(c, ModeChange):
                self.counters.inc(f"mode_{c.name}")
                log.info("alarm point %s asset=%s user=%s", c.name, c.asset, c.user)
                self._call(self._hooks["on_mode_change"], c)
            else:
                self.counters.inc(f"alarm_{c.kind.value}")
                a = c.alarm
                if c.kind is EventKind.RAISED and not a.historical:
                    self.models.on_raise()
                if c.kind is EventKind.RAISED:
                    log.warning("alarm raised asset=%s level=%s ratio=%.2f top=%s id=%s", a.asset,
                                a.level.name.lower(), a.peak_ratio, ",".join(a.top_sensors), a.id)
                elif c.kind is not EventKind.ESCALATED:
                    log.info("alarm %s asset=%s id=%s user=%s", c.kind.value, a.asset, a.id, c.user)
                self._call(self._hooks["on_alarm_event"], c)
            for fn in self._event_listeners:
                fn(c)

    # -- the model (the lifecycle decides, on the event loop) ----------------------------
    def _swap_detector(self, new: Detector) -> None:
        # One assignment on the loop thread, between two readings: no window is scored by
        # neither model, and partial windows stay in the window builder.
        self.detector = new

    def _publish_model_change(self, change: ModelChange) -> None:
        self.counters.inc(f"model_{change.event}")
        self._call(self._hooks["on_model_change"], change)

    def _assets_in_alarm(self) -> list[str]:
        return [a.asset for a in self.alarms.alarms() if a.active]

    def _on_peak(self, alarm: Alarm) -> None:
        self._call(self._hooks["on_alarm_peak"], alarm)

    def _publish_action(self, action: MitigationAction) -> None:
        self.counters.inc(f"action_{action.status}")
        self._call(self._hooks["on_action"], action)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._emit(self.alarms.tick())
            self._silence_declared()
            # A few lines per check, then a summary: thousands of sensors at once are one event.
            log_sensor_changes(log, self.watchdog.check())
            self._forget_evicted_assets()

    def _silence_declared(self) -> None:
        """Sensors an input's source declared gone (a Sparkplug death) are silent now, not ``silence_s`` later."""
        for c in self.inputs:
            for asset, sensor in c.silenced():
                self.watchdog.silence(asset, sensor)

    def _prove_stored_assets(self, open_alarms) -> None:
        """Assets with alarms, point modes or recent scores in the store are real: inputs keep them."""
        names = {a.asset for a in open_alarms} | set(self.store.point_modes())
        names |= {s["asset"] for s in self.store.reader.scores(limit=2000)}
        for name in names:
            self._prove_asset(name)

    def _prove_asset(self, asset: str) -> None:
        self._proven_assets.add(asset)
        for c in self.inputs:
            c.asset_proven(asset)

    def _forget_evicted_assets(self) -> None:
        """Names an input evicted (never a complete window) leave no state behind here."""
        for c in self.inputs:
            for asset in c.evicted_assets():
                self.windows.forget(asset)
                self.watchdog.forget(asset)
                self.operating_points.forget(asset)

    # -- operator commands (call from any thread) -------------------------------
    def command(self, name: str, timeout: float = 10.0, **kwargs) -> Any:
        """Run an operator command on the event loop, from any thread; returns the records it made.

        Alarm commands: ``acknowledge`` (alarm events), ``shelve``, ``set_mode``
        (mode changes); model commands (:data:`~appliance.lifecycle.life.MODEL_COMMANDS`)
        go to the lifecycle. Outputs add their own, e.g. mitigation's ``approve_action``
        and ``reject_action`` with ``proposal_id`` (mitigation actions); the command of a
        plugin that is not enabled is refused with what its registry entry says.
        """
        if name in ALARM_COMMANDS:
            async def run():
                changes = getattr(self.alarms, name)(**kwargs)
                self._emit(changes)
                return changes
        elif name in MODEL_COMMANDS:
            async def run():
                return self.models.command(name, **kwargs)
        elif name in self._commands:
            async def run():
                return await self._commands[name](**kwargs)
        elif name in self._not_enabled:
            raise AlarmCommandError(self._not_enabled[name])
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
            "uptime_s": round(time.monotonic() - self._started_mono, 1),
            "clock": self.clock.status(),
            "model": {"version": self.detector.version, "sensors": list(self.detector.sensors),
                      "window": self.detector.window, "horizon": self.detector.horizon,
                      "threshold": self.detector.threshold, **self.models.status()},
            "counters": dict(self.counters.values),
            "dead_letters_by_reason": dict(self.dead_by_reason.values),
            "windows": self.windows.status(),
            "latency": self.latency.summary(),
            "in_flight": {"now": self.in_flight.count, "peak": self.in_flight.peak,
                          "limit": self.in_flight.limit, "store_queue": self.store.queued()},
            "silent_sensors": self.watchdog.silent(),
            "alarms": [a.to_dict() for a in self.alarms.alarms()],
            "point_modes": {a: m.value for a, m in self.alarms.modes().items()},
            "operating_points": self.operating_points.status(),
            "inputs": {c.name: c.status() for c in self.inputs},
            "outputs": {o.name: o.status() for o in self.outputs},
        }


def _stored_callback(in_flight: InFlight, n: int, acks: list):
    def done():
        in_flight.release(n)
        for on_stored in acks:
            try:
                on_stored()
            except Exception:  # one input's failing ack must not hold back the others'
                log.exception("runtime: an input's on_stored callback failed")
    return done


def gateway_clock(cfg, **overrides) -> GatewayClock:
    """The gateway's clock as ``[clock]`` sets it; ``overrides`` (``wall``, ``synchronised``,
    ``check_every_s``...) replace the system's (tests set a clock a day back, unsynchronised)."""
    c = cfg.clock
    return GatewayClock(min_offset_s=c.min_offset_s, window=c.window, enabled=c.data_time, **overrides)


def build(cfg, detector=None, clock: GatewayClock | None = None) -> Appliance:
    """Assemble an appliance from a validated config (plugins imported only when enabled).

    ``clock`` replaces the gateway's clock built from ``[clock]`` (tests inject a wrong one)."""
    from appliance.detector.scorer import Detector as OnnxDetector
    from appliance.registry import build_inputs, build_outputs, commands_not_enabled

    data_dir = cfg.path(".")
    data_dir.mkdir(parents=True, exist_ok=True)
    if detector is None:
        bundle = bundle_to_load(cfg)
        if not (bundle / "bundle.json").exists():
            raise FileNotFoundError(f"no model bundle at {bundle} (detector.bundle); "
                                    "train one with: appliance train --data CSV... --out " + str(bundle))
        detector = OnnxDetector.load(bundle, precision=cfg.detector.precision, threads=cfg.detector.threads)
    store = Store.from_config(cfg.store, cfg.path(cfg.store.path))
    clock = clock if clock is not None else gateway_clock(cfg)
    env = PluginEnv(config=cfg, data_dir=data_dir, sensors=tuple(detector.sensors), clock=clock,
                    model_version=detector.version)
    outputs = build_outputs(cfg.outputs, env)
    return Appliance(cfg, detector, store, build_inputs(cfg.inputs, env), outputs, commands_not_enabled(),
                     clock=clock)


def start_web(app, host: str, port: int):
    """Serve the dashboard for a running appliance; /metrics joins its status and history metrics."""
    from web.app import create_app
    from web.server import serve
    from web.metrics import render, status_registry

    def metrics() -> bytes:
        # The status' metrics, then any an output keeps of its own (history's outbox).
        return render(status_registry(app.status)) + b"".join(o.metrics_text() for o in app.outputs)

    web_cfg = app.cfg.web
    flask_app = create_app(app, app.store.path, metrics_provider=metrics, config=web_cfg, data_dir=app.cfg.path("."))
    handle = serve(flask_app, host, port, web_cfg.threads, live_streams=web_cfg.live_streams,
                   trusted_proxy=web_cfg.trusted_proxy)
    log.info("dashboard on http://%s:%s/", host, handle.port)
    return handle
