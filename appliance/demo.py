"""``appliance demo``: a private broker, the pump simulator and the appliance, end to end.

On first run it trains a model on simulated normal operation (offline, a few
seconds), then starts Mosquitto on a free loopback port, the appliance on it,
and the pump simulator publishing at 10 Hz. After ``fault_at`` seconds a fault
is injected; the alarm shows up on the console (and on the dashboard, and on the
MQTT alarm topic). With ``seconds`` it runs headless and ends with a one-line
summary; the exit code says whether the demo saw what it should (an alarm after
the fault and none before it).
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from appliance.broker import Mosquitto, free_port
from appliance.config import parse_config

log = logging.getLogger(__name__)

DEMO_RATE_HZ = 10.0
DEMO_ASSET = "pump1"


def _normal_training_csv(path: Path, rows: int = 12_000, seed: int = 7) -> Path:
    """Simulated normal operation, at the rate the demo publishes, with slow load changes."""
    from firmware_sim.pump import PumpModel

    pump = PumpModel(seed=seed)
    dt = 1.0 / DEMO_RATE_HZ
    t0 = 1_700_000_000.0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = None
        for i in range(rows):
            values = pump.step(dt)
            if w is None:
                w = csv.writer(f)
                sensors = list(values)
                w.writerow(["ts", *sensors])
            w.writerow([f"{t0 + i * dt:.3f}", *(f"{values[s]:.6g}" for s in sensors)])
    return path


def ensure_demo_model(cfg) -> Path:
    bundle = cfg.path(cfg.detector.bundle)
    if (bundle / "bundle.json").exists():
        return bundle
    from appliance.detector.train import train_from_csv

    print(f"demo: no model at {bundle}; training one on simulated normal operation ...", flush=True)
    t0 = time.monotonic()
    data = _normal_training_csv(cfg.path("demo-normal.csv"))
    train_from_csv([data], bundle, period_s=1.0 / DEMO_RATE_HZ)
    print(f"demo: model trained in {time.monotonic() - t0:.1f}s -> {bundle}", flush=True)
    return bundle


def _demo_config(cfg, port: int, plc_port: int | None):
    data = cfg.model_dump(mode="json")
    data["inputs"]["mqtt"]["broker"]["host"] = "127.0.0.1"
    data["inputs"]["mqtt"]["broker"]["port"] = port
    data["outputs"]["mqtt_alarm"]["broker"] = None
    if plc_port is not None:
        # The PLC is the only source; it is sampled at the rate the demo model was trained on.
        opcua = data["inputs"]["opcua"]
        opcua["endpoint"] = f"opc.tcp://127.0.0.1:{plc_port}/appliance/plc"
        opcua["sampling_interval_ms"] = opcua["publishing_interval_ms"] = 1000.0 / DEMO_RATE_HZ
        data["inputs"]["mqtt"]["enabled"] = False
    if "history" in data:
        data["history"]["enabled"] = False  # no InfluxDB in the demo; the local store has it all
    return parse_config(data, "demo")


def _publish_bad_payloads(port: int) -> int:
    """A few malformed messages, to show they are dead-lettered and change nothing."""
    import paho.mqtt.client as mqtt

    bad = [b"not json", b'{"ts": "yesterday", "value": 1}', b'{"ts": 1700000000, "value": NaN}']
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="demo-bad-payloads")
    c.connect("127.0.0.1", port)
    c.loop_start()
    for p in bad:
        c.publish(f"plant/{DEMO_ASSET}/Current", p, qos=1).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()
    return len(bad)


def run_demo(cfg, seconds: float | None = None, fault_at: float | None = None,
             fault: str = "bearing_wear") -> int:
    return asyncio.run(_run(cfg, seconds, fault_at, fault))


async def _run(cfg, seconds, fault_at, fault) -> int:
    from appliance.runtime import build, start_web
    from firmware_sim.publisher import run_pump

    ensure_demo_model(cfg)
    if fault_at is None:
        fault_at = 20.0 if seconds is None else min(20.0, max(8.0, seconds * 0.4))
    broker = Mosquitto(cfg.path("demo-broker"), port=free_port()).start()
    plc = None
    if cfg.inputs.opcua.enabled:
        from firmware_sim.plc import PlcSimulator

        plc = PlcSimulator("127.0.0.1", free_port(), period_s=1.0 / DEMO_RATE_HZ, seed=11)
        await plc.start()
    dcfg = _demo_config(cfg, broker.port, plc.port if plc else None)
    app = build(dcfg)
    events: list[tuple[float, object]] = []
    t_start = time.monotonic()

    def on_event(e):
        events.append((time.monotonic() - t_start, e))
        if e.kind in ("raised", "escalated", "cleared"):
            a = e.alarm
            print(f"demo: +{time.monotonic() - t_start:5.1f}s ALARM {e.kind.upper()} asset={a.asset} "
                  f"level={a.level.name.lower()} score={a.peak_score:.2f}x threshold "
                  f"top_sensors={','.join(a.top_sensors)}", flush=True)

    app.add_event_listener(on_event)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sim_stop = threading.Event()
    web = None
    await app.start()
    try:
        # Sources start once the appliance listens, so the demo counts every reading.
        if not await app.wait_inputs_ready(60):
            print("demo: WARNING: inputs not ready after 60 s; starting the simulator anyway", flush=True)
        if dcfg.web.enabled:
            try:
                web = start_web(app, dcfg.web.host, dcfg.web.port)
            except OSError:  # the usual port is taken: any free one will do for a demo
                web = start_web(app, dcfg.web.host, 0)
            print(f"demo: dashboard on http://{dcfg.web.host}:{web.port}/", flush=True)
        if plc is None:
            sim = threading.Thread(target=run_pump, name="pump-sim", daemon=True, kwargs=dict(
                host="127.0.0.1", port=broker.port, asset=DEMO_ASSET, rate_hz=DEMO_RATE_HZ,
                fault=fault, fault_at=fault_at, stop_event=sim_stop))
            sim.start()
            bad = await asyncio.to_thread(_publish_bad_payloads, broker.port)
            print(f"demo: broker on 127.0.0.1:{broker.port}, simulator publishing {DEMO_RATE_HZ:g} Hz over MQTT; "
                  f"fault '{fault}' at +{fault_at:g}s; {bad} malformed payloads sent", flush=True)
        else:
            asyncio.get_running_loop().call_later(fault_at, plc.model.inject, fault, 1.0)
            print(f"demo: PLC simulator on {plc.endpoint}, read over OPC-UA at {DEMO_RATE_HZ:g} Hz; "
                  f"alarms on MQTT 127.0.0.1:{broker.port}; fault '{fault}' at +{fault_at:g}s", flush=True)
        try:
            await asyncio.wait_for(stop.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass
    finally:
        sim_stop.set()
        await asyncio.sleep(0.3)
        if web is not None:
            web.stop()
        await app.shutdown()
        if plc is not None:
            await plc.stop()
        broker.stop()

    raised = [(t, e) for t, e in events if e.kind == "raised"]
    before = [t for t, _ in raised if t < fault_at]
    after = [t for t, _ in raised if t >= fault_at]
    c = app.counters
    lat = app.latency.summary()
    summary = {
        "readings": c.get("readings"), "windows": c.get("windows_scored"),
        "alarms": len(raised), "alarms_before_fault": len(before), "alarms_after_fault": len(after),
        "first_alarm_after_fault_s": round(after[0] - fault_at, 1) if after else None,
        "dead_letters": c.get("dead_letters"), "decision_p50_us": lat.get("p50_us"),
        "decision_p99_us": lat.get("p99_us"),
    }
    print("demo summary: " + " ".join(f"{k}={v}" for k, v in summary.items()), flush=True)
    if os.environ.get("APPLIANCE_DEMO_JSON"):
        Path(os.environ["APPLIANCE_DEMO_JSON"]).write_text(json.dumps(summary))
    if seconds is not None and (before or not after):
        print("demo: UNEXPECTED: wanted at least one alarm after the fault and none before it", flush=True)
        return 1
    return 0
