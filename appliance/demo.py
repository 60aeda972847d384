"""``appliance demo``: a private broker, the pump simulator and the appliance, end to end.

On first run it trains a model on simulated normal operation (offline, a few
seconds), then starts Mosquitto on a free loopback port, the appliance on it,
and the pump simulator publishing at 10 Hz. After ``fault_at`` seconds a fault
is injected; the alarm shows up on the console (and on the dashboard, and on the
MQTT alarm topic). With ``seconds`` it runs headless and ends with a one-line
summary; the exit code says whether the demo saw what it should (an alarm after
the fault and none before it).

The simulators are not part of the appliance: the demo runs them as child
processes (``python -m firmware_sim.cli ...``, the ``appliance-sim`` command)
and learns from their standard output when they publish. Each child gets its
own session, so Ctrl-C reaches only the demo, which stops the children in order;
each child's stdin is a pipe the demo never writes to, so a child also stops
if the demo is killed outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Awaitable, TypeVar

from appliance.broker import Mosquitto, free_port
from appliance.config import parse_config
from appliance.core import AlarmEvent, EventKind, ModeChange

log = logging.getLogger(__name__)

DEMO_RATE_HZ = 10.0
DEMO_ASSET = "pump1"
# The training data the demo model is trained on; changing any of these changes the model.
TRAINING_ROWS, TRAINING_SEED = 12_000, 7
PLC_SEED = 11
# With --sparkplug the pump publishes as this Sparkplug B edge node: spBv1.0/plant/DDATA/pump-sim/pump1.
SPARKPLUG_GROUP, SPARKPLUG_EDGE_NODE = "plant", "pump-sim"
SIM_COMMAND = (sys.executable, "-m", "firmware_sim.cli")
# What the simulators print once they publish (see firmware-sim/cli.py): the demo's clock starts there.
PUMP_READY = "appliance-sim pump: publishing "
PLC_READY = "PLC simulator listening on "
SIM_READY_TIMEOUT_S = 60.0
SIM_STOP_TIMEOUT_S = 15.0  # the pump waits up to 10 s for the broker to acknowledge what it sent

T = TypeVar("T")


class SimulatorFailed(RuntimeError):
    """A simulator child exited or never became ready."""


class _Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while the demo was starting up."""


class SimProcess:
    """One simulator run as a child process of the demo (``python -m firmware_sim.cli ARGS``).

    :meth:`start` returns once the child prints ``ready_prefix``; later lines are
    echoed to the console. :meth:`stop` asks it to stop (SIGTERM), kills it if it
    does not, and always reaps it.
    """

    def __init__(self, name: str, args: list[str], ready_prefix: str, clock: "DemoClock"):
        self.name = name
        self.args = [*args, "--stop-on-stdin-eof"]
        self.ready_prefix = ready_prefix
        self.clock = clock
        self.proc: asyncio.subprocess.Process | None = None
        self.ready_at: float | None = None
        self._reader: asyncio.Task | None = None

    async def start(self, timeout: float = SIM_READY_TIMEOUT_S) -> float:
        """Start the child and wait for its ready line; return ``time.monotonic()`` when it was seen."""
        self.proc = await asyncio.create_subprocess_exec(
            *SIM_COMMAND, *self.args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            start_new_session=True)
        try:
            await asyncio.wait_for(self._until_ready(), timeout)
        except asyncio.TimeoutError:
            raise SimulatorFailed(f"{self.name} not ready after {timeout:g}s") from None
        self._reader = asyncio.create_task(self._echo_rest(), name=f"{self.name}-stdout")
        return self.ready_at

    async def _until_ready(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                code = await self.proc.wait()
                raise SimulatorFailed(f"{self.name} exited with status {code} before it was ready "
                                      "(its error is above)")
            text = line.decode(errors="replace").rstrip()
            if text.startswith(self.ready_prefix):
                self.ready_at = time.monotonic()
                return
            self._echo(text)

    async def _echo_rest(self) -> None:
        # Reading to the end also keeps the pipe drained: a child never blocks on a full stdout.
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self._echo(line.decode(errors="replace").rstrip())

    def _echo(self, text: str) -> None:
        if text:
            print(f"demo: {self.clock.label()} {self.name}: {text}", flush=True)

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    async def stop(self, timeout: float = SIM_STOP_TIMEOUT_S) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except asyncio.TimeoutError:
                log.warning("demo: %s did not stop within %gs; killing it", self.name, timeout)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._reader is not None:
            # The child is gone, so its stdout ends; what it printed last (its summary) is shown.
            await asyncio.gather(self._reader, return_exceptions=True)
        if proc.stdin is not None:
            proc.stdin.close()
        if proc.returncode != 0:
            print(f"demo: {self.name} ended with status {proc.returncode}", flush=True)


class DemoClock:
    """Demo time: seconds since the simulator started publishing (since the demo started, until then)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.sim_started = False

    def simulator_started(self, at: float) -> None:
        self.t0, self.sim_started = at, True

    def since(self, t: float) -> float:
        return t - self.t0

    def label(self) -> str:
        return f"+{self.since(time.monotonic()):5.1f}s"


async def _unless_stopped(stop: asyncio.Event, aw: Awaitable[T]) -> T:
    """Await ``aw``, or cancel it and raise :class:`_Interrupted` if ``stop`` is set first."""
    task = asyncio.ensure_future(aw)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise _Interrupted()


def _normal_training_csv(path: Path, rows: int = TRAINING_ROWS, seed: int = TRAINING_SEED) -> Path:
    """Simulated normal operation at the rate the demo publishes, written by ``appliance-sim normal-csv``."""
    cmd = [*SIM_COMMAND, "normal-csv", "--out", str(path), "--rows", str(rows), "--rate", repr(DEMO_RATE_HZ),
           "--seed", str(seed)]
    # subprocess.run kills the child if the demo is interrupted meanwhile; its own session keeps Ctrl-C
    # from reaching it first and printing a traceback.
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, start_new_session=True)
    if proc.returncode != 0:
        raise SimulatorFailed(f"appliance-sim normal-csv failed with status {proc.returncode}: "
                              f"{proc.stderr.strip()[-2000:]}")
    return path


def ensure_demo_model(cfg) -> Path:
    bundle = cfg.path(cfg.detector.bundle)
    if (bundle / "bundle.json").exists():
        return bundle
    from appliance.detector.train import TrainSettings, train_from_csv

    print(f"demo: no model at {bundle}; training one on simulated normal operation ...", flush=True)
    t0 = time.monotonic()
    data = _normal_training_csv(cfg.path("demo-normal.csv"))
    train_from_csv([data], bundle, TrainSettings(period_s=1.0 / DEMO_RATE_HZ))
    print(f"demo: model trained in {time.monotonic() - t0:.1f}s -> {bundle}", flush=True)
    return bundle


def ensure_retrained_model(cfg) -> Path:
    """The engineer's next model for the demo's signed release: the same settings, another day's data."""
    bundle = cfg.path("demo-model-v2")
    if (bundle / "bundle.json").exists():
        return bundle
    from appliance.detector.train import TrainSettings, train_from_csv

    print("demo: training the model the engineer will publish as release 2 (another stretch of normal "
          "operation) ...", flush=True)
    data = _normal_training_csv(cfg.path("demo-normal-v2.csv"), seed=TRAINING_SEED + 1)
    train_from_csv([data], bundle, TrainSettings(period_s=1.0 / DEMO_RATE_HZ))
    return bundle


def _demo_config(cfg, port: int, plc_port: int | None, sync: dict | None = None, sparkplug: bool = False):
    data = cfg.model_dump(mode="json")
    data["connections"]["mqtt"]["host"] = "127.0.0.1"
    data["connections"]["mqtt"]["port"] = port
    data["outputs"]["mqtt_alarm"]["broker"] = None
    if plc_port is not None:
        # The PLC is the only source; it is sampled at the rate the demo model was trained on.
        data["connections"]["opcua"]["endpoint"] = f"opc.tcp://127.0.0.1:{plc_port}/appliance/plc"
        opcua = data["inputs"]["opcua"]
        opcua["sampling_interval_ms"] = opcua["publishing_interval_ms"] = 1000.0 / DEMO_RATE_HZ
        data["inputs"]["mqtt"]["enabled"] = False
    if sparkplug:
        # The pump as a Sparkplug edge node is the only source: the Sparkplug input reads it (device = asset,
        # metric = sensor, its defaults), the JSON input is off.
        data["inputs"]["mqtt"]["enabled"] = False
        data["inputs"].setdefault("sparkplug", {})["enabled"] = True
    data["outputs"]["history"]["enabled"] = False  # no InfluxDB in the demo; the local store has it all
    if sync is not None:
        data["outputs"]["sync"] = sync
    return parse_config(data, "demo")


DEMO_USER = "demo"
RUNS_DIR = "demo-runs"
RUNS_KEPT = 3


def _fresh_run(dcfg, cfg, run_id: str | None = None):
    """The demo's config with a store of its own for this run, so no earlier run's alarm looks current.

    Each run records into ``demo-runs/<run id>/store.db`` under the data dir (the
    last ``RUNS_KEPT`` runs are kept to look at); the accounts file stays where
    the configured store would have it, so the demo account carries over.
    """
    from appliance.accounts import default_path

    run_id = run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    runs = cfg.path(RUNS_DIR)
    runs.mkdir(parents=True, exist_ok=True)
    old = sorted(p for p in runs.iterdir() if p.is_dir() and p.name != run_id)
    for stale in old[:max(0, len(old) - (RUNS_KEPT - 1))]:
        shutil.rmtree(stale, ignore_errors=True)
    (runs / run_id).mkdir(exist_ok=True)
    data = dcfg.model_dump(mode="json")
    data["store"]["path"] = str(runs / run_id / "store.db")
    data["web"]["accounts"] = str(default_path(cfg))
    return parse_config(data, "demo")


def demo_account(cfg) -> tuple[str, str]:
    """The demo's engineer account, with a new random password each run: (name, password)."""
    import secrets

    from appliance.accounts import Accounts, default_path

    accounts = Accounts(default_path(cfg))
    password = secrets.token_urlsafe(9)
    if accounts.user(DEMO_USER) is None:
        accounts.add_user(DEMO_USER, "engineer", password, by="demo")
    else:
        accounts.set_role(DEMO_USER, "engineer", by="demo")
        accounts.set_password(DEMO_USER, password, by="demo")
    return DEMO_USER, password


def _announce_dashboard(dcfg, port: int, name: str, password: str) -> None:
    host = dcfg.web.host if dcfg.web.host not in ("0.0.0.0", "::") else "127.0.0.1"
    print(f"demo: dashboard on http://{host}:{port}/ - sign in as {name} / {password} (engineer; "
          f"a new password each run; more accounts: appliance user add NAME --role technician)", flush=True)


def _publish_bad_payloads(port: int, sparkplug: bool = False) -> int:
    """A few malformed messages, to show they are dead-lettered and change nothing."""
    import paho.mqtt.client as mqtt

    if sparkplug:  # protobuf that does not decode, on the simulator's own DDATA topic
        topic = f"spBv1.0/{SPARKPLUG_GROUP}/DDATA/{SPARKPLUG_EDGE_NODE}/{DEMO_ASSET}"
        bad = [b"not protobuf", b"\x12\x05abc", b"\x08"]
    else:
        topic = f"plant/{DEMO_ASSET}/Current"
        bad = [b"not json", b'{"ts": "yesterday", "value": 1}', b'{"ts": 1700000000, "value": NaN}']
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="demo-bad-payloads")
    c.connect("127.0.0.1", port)
    c.loop_start()
    for p in bad:
        c.publish(topic, p, qos=1).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()
    return len(bad)


def run_demo(cfg, seconds: float | None = None, fault_at: float | None = None,
             fault: str = "bearing_wear", cloud: bool = True, sparkplug: bool = False) -> int:
    if sparkplug and cfg.inputs.opcua.enabled:
        print("demo: ERROR: --sparkplug and [inputs.opcua] enabled exclude each other: the pump publishes "
              "either over MQTT as a Sparkplug edge node or through the PLC", flush=True)
        return 2
    return asyncio.run(_run(cfg, seconds, fault_at, fault, cloud, sparkplug))


def _pump_args(port: int, fault: str, fault_at: float, sparkplug: bool = False) -> list[str]:
    edge = ["--sparkplug", "--group", SPARKPLUG_GROUP, "--edge-node", SPARKPLUG_EDGE_NODE] if sparkplug else []
    return ["pump", "--host", "127.0.0.1", "--port", str(port), "--asset", DEMO_ASSET,
            "--rate", repr(DEMO_RATE_HZ), "--fault", fault, "--fault-at", repr(float(fault_at)),
            "--log-level", "WARNING", *edge]


def _plc_args(port: int, fault: str, fault_at: float) -> list[str]:
    return ["plc", "--host", "127.0.0.1", "--port", str(port), "--security", "none",
            "--period", repr(1.0 / DEMO_RATE_HZ), "--seed", str(PLC_SEED),
            "--fault", f"{fault}:1", "--fault-at", repr(float(fault_at)), "--log-level", "WARNING"]


async def _wait_for_end(stop: asyncio.Event, sims: list[SimProcess], timeout: float | None) -> SimProcess | None:
    """Wait for Ctrl-C/SIGTERM, the end of ``timeout``, or a simulator exiting; return the one that exited."""
    waits: dict[asyncio.Future, SimProcess | None] = {asyncio.ensure_future(stop.wait()): None}
    waits.update({asyncio.ensure_future(s.wait()): s for s in sims})
    try:
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    return next((waits[w] for w in done if waits[w] is not None), None)


async def _run(cfg, seconds, fault_at, fault, with_cloud=True, sparkplug=False) -> int:
    from appliance import demo_cloud
    from appliance.runtime import build, start_web

    cloud = None
    try:
        ensure_demo_model(cfg)
        if with_cloud:
            cloud = demo_cloud.prepare(cfg.path("demo-cloud"), ensure_retrained_model(cfg))
            demo_cloud.reset_gateway(cloud, cfg.path("."))
    except (SimulatorFailed, RuntimeError) as e:
        print(f"demo: ERROR: {e}", flush=True)
        return 1
    if fault_at is None:
        fault_at = 20.0 if seconds is None else min(20.0, max(8.0, seconds * 0.4))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    clock = DemoClock()
    events: list[tuple[float, object]] = []
    alarm_raised = asyncio.Event()
    sync_result: dict = {}

    def say(text: str) -> None:
        print(f"demo: {clock.label()} {text}", flush=True)

    def on_event(e: AlarmEvent | ModeChange) -> None:
        events.append((time.monotonic(), e))
        if not isinstance(e, AlarmEvent):  # a mode change: nothing the demo reports
            return
        if e.kind is EventKind.RAISED:
            alarm_raised.set()
        if e.kind in (EventKind.RAISED, EventKind.ESCALATED, EventKind.CLEARED):
            a = e.alarm
            print(f"demo: {clock.label()} ALARM {e.kind.upper()} asset={a.asset} "
                  f"level={a.level.name.lower()} peak={a.peak_ratio:.2f}x threshold "
                  f"top_sensors={','.join(a.top_sensors)}", flush=True)

    app = None
    problem: str | None = None
    try:
        # Unwinds in reverse: simulator, dashboard, appliance, PLC, broker - also when start-up fails.
        async with contextlib.AsyncExitStack() as stack:
            broker = Mosquitto(cfg.path("demo-broker"), port=free_port()).start()
            stack.callback(broker.stop)
            plc_port = free_port() if cfg.inputs.opcua.enabled else None
            sync = None
            if cloud is not None:
                cloud_broker = demo_cloud.cloud_broker(cloud, free_port()).start()
                stack.callback(cloud_broker.stop)
                intake = SimProcess("cloud-intake", demo_cloud.intake_args(cloud, cloud_broker.port),
                                    demo_cloud.INTAKE_READY, clock)
                stack.push_async_callback(intake.stop)
                await _unless_stopped(stop, intake.start())
                sync = demo_cloud.sync_section(cloud, cloud_broker.port)
                print(f"demo: cloud broker on 127.0.0.1:{cloud_broker.port} (TLS, client certificates); "
                      f"a sync window opens once the fault raises an alarm", flush=True)
            dcfg = _demo_config(cfg, broker.port, plc_port, sync, sparkplug)
            dcfg = _fresh_run(dcfg, cfg)
            app = build(dcfg)  # before the PLC starts: loading the model does not eat into fault_at
            app.add_event_listener(on_event)
            sim: SimProcess
            if plc_port is not None:
                # The PLC is the appliance's only input, so it runs before the appliance starts.
                sim = SimProcess("plc-sim", _plc_args(plc_port, fault, fault_at), PLC_READY, clock)
                stack.push_async_callback(sim.stop)
                clock.simulator_started(await _unless_stopped(stop, sim.start()))
            stack.push_async_callback(app.shutdown)
            await app.start()
            # Sources start once the appliance listens, so the demo counts every reading.
            if not await _unless_stopped(stop, app.wait_inputs_ready(60)):
                print("demo: WARNING: inputs not ready after 60 s; starting the simulator anyway", flush=True)
            if dcfg.web.enabled:
                # The account first: a dashboard that starts with none warns that nobody can sign in.
                name, password = demo_account(dcfg)
                try:
                    web = start_web(app, dcfg.web.host, dcfg.web.port)
                except OSError:  # the usual port is taken: any free one will do for a demo
                    web = start_web(app, dcfg.web.host, 0)
                stack.callback(web.stop)
                _announce_dashboard(dcfg, web.port, name, password)
            if plc_port is None:
                sim = SimProcess("pump-sim", _pump_args(broker.port, fault, fault_at, sparkplug), PUMP_READY, clock)
                # Registered last, so stopped first; the pause lets its last readings reach the appliance.
                stack.push_async_callback(asyncio.sleep, 0.3)
                stack.push_async_callback(sim.stop)
                clock.simulator_started(await _unless_stopped(stop, sim.start()))
                bad = await asyncio.to_thread(_publish_bad_payloads, broker.port, sparkplug)
                how = (f"as Sparkplug B edge node {SPARKPLUG_GROUP}/{SPARKPLUG_EDGE_NODE} (device {DEMO_ASSET})"
                       if sparkplug else "over MQTT")
                print(f"demo: broker on 127.0.0.1:{broker.port}, simulator publishing {DEMO_RATE_HZ:g} Hz {how}; "
                      f"fault '{fault}' at +{fault_at:g}s; {bad} malformed payloads sent", flush=True)
            else:
                print(f"demo: PLC simulator on opc.tcp://127.0.0.1:{plc_port}/appliance/plc, read over OPC-UA "
                      f"at {DEMO_RATE_HZ:g} Hz; alarms on MQTT 127.0.0.1:{broker.port}; "
                      f"fault '{fault}' at +{fault_at:g}s", flush=True)
            watcher = None
            if cloud is not None:
                watcher = asyncio.ensure_future(demo_cloud.watch_window(app, cloud, alarm_raised, say))
            remaining = None if seconds is None else max(0.0, clock.t0 + seconds - time.monotonic())
            exited = await _wait_for_end(stop, [sim], remaining)
            if exited is not None:
                problem = f"{exited.name} exited with status {exited.proc.returncode}"
            if watcher is not None:
                if seconds is not None and exited is None and not stop.is_set() and alarm_raised.is_set():
                    # Headless: let the window and the shadow run finish (bounded inside watch_window).
                    with contextlib.suppress(_Interrupted):
                        await _unless_stopped(stop, asyncio.shield(watcher))
                if watcher.done() and not watcher.cancelled() and watcher.exception() is None:
                    sync_result = watcher.result()
                else:
                    watcher.cancel()
                    await asyncio.gather(watcher, return_exceptions=True)
    except _Interrupted:
        print("demo: interrupted while starting", flush=True)
    except SimulatorFailed as e:
        problem = str(e)
    if app is None:  # the appliance never existed: there is nothing to summarise
        print(f"demo: ERROR: {problem or 'stopped before the appliance was built'}", flush=True)
        return 1

    raised = [clock.since(t) for t, e in events if isinstance(e, AlarmEvent) and e.kind is EventKind.RAISED]
    before = [t for t in raised if t < fault_at]
    after = [t for t in raised if t >= fault_at]
    c = app.counters
    lat = app.latency.summary()
    summary = {
        "readings": c.get("readings"), "windows": c.get("windows_scored"),
        "alarms": len(raised), "alarms_before_fault": len(before), "alarms_after_fault": len(after),
        "first_alarm_after_fault_s": round(after[0] - fault_at, 1) if after else None,
        "dead_letters": c.get("dead_letters"), "decision_p50_us": lat.get("p50_us"),
        "decision_p99_us": lat.get("p99_us"),
    }
    if cloud is not None:
        summary |= {"sync_uploaded_bytes": sync_result.get("uploaded_bytes"),
                    "cloud_items": sync_result.get("cloud_items"),
                    "model_update": (sync_result.get("model") or "none").replace(" ", ":")}
    print("demo summary: " + " ".join(f"{k}={v}" for k, v in summary.items()), flush=True)
    if os.environ.get("APPLIANCE_DEMO_JSON"):
        Path(os.environ["APPLIANCE_DEMO_JSON"]).write_text(json.dumps(summary))
    if problem is not None:
        print(f"demo: UNEXPECTED: {problem}", flush=True)
        return 1
    if seconds is not None and (before or not after):
        print("demo: UNEXPECTED: wanted at least one alarm after the fault and none before it", flush=True)
        return 1
    if seconds is not None and cloud is not None and not (sync_result.get("cloud_items") and sync_result.get("model")):
        print("demo: UNEXPECTED: wanted the alarm stored by the cloud intake and a verdict on the model update",
              flush=True)
        return 1
    return 0
