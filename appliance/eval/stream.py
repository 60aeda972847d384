"""SKAB deployment-shaped evaluation (``appliance eval skab --mode stream``).

One bundle is trained on ``anomaly-free.csv`` (as a technician would train on a
stretch of normal operation), then every experiment file is replayed over a
real Mosquitto broker by the simulator's CSV replay (original timestamps,
QoS 1), received by the appliance's MQTT connector and sent through the running
pipeline (windows, INT8 detector, decisions, alarm book). The alarm events the
appliance emits are turned back into per-row alarm states and scored against
the ``anomaly`` labels of every row of every file. Nothing here decides
anything: it only feeds the appliance and listens to its alarms.

The simulator is a separate program (``firmware-sim``); it runs here as a child
process (``python -m firmware_sim.cli replay``), never as an import, so the
appliance package does not depend on it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from appliance.config import parse_config
from appliance.core import AlarmEvent, EventKind, ModeChange
from appliance.detector.train import read_csv, train_from_csv
from appliance.eval.common import (EvalSettings, confusion, episode_delays, experiment_files, scores_from,
                                   with_level_free, write_outputs)

logger = logging.getLogger(__name__)


def _asset(rel: str) -> str:
    return rel.removesuffix(".csv").replace("/", "-")


def alarm_states(intervals: list[tuple[float, float | None]], ts: np.ndarray) -> np.ndarray:
    """1 where a row's time falls inside an alarm (``start <= ts < end``; open alarms never end).

    >>> alarm_states([(2.0, 4.0), (6.0, None)], np.arange(8.0)).tolist()
    [0, 0, 1, 1, 0, 0, 1, 1]
    """
    out = np.zeros(len(ts), dtype=np.uint8)
    for start, end in intervals:
        out[(ts >= start) & (ts < (np.inf if end is None else end))] = 1
    return out


async def publish_file(rel: str, path: Path, port: int, host: str = "127.0.0.1") -> int:
    """Publish ``path`` as asset ``_asset(rel)`` with the simulator's replay, as fast as the broker takes it.

    Returns the number of samples (rows) published, every one acknowledged by the
    broker; raises RuntimeError naming the file otherwise.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "firmware_sim.cli", "replay", str(path), "--host", host, "--port", str(port),
        "--asset", _asset(rel), "--speed", "max", "--log-level", "WARNING",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await proc.communicate()
    finally:
        if proc.returncode is None:  # cancelled: the child must not outlive the evaluation
            proc.kill()
            await proc.wait()
    # The replay's last line on stdout: "appliance-sim replay: published=N acked=N samples=N".
    fields = dict(f.split("=", 1) for f in out.decode(errors="replace").split() if "=" in f)
    if proc.returncode == 1:
        raise RuntimeError(f"{rel}: the broker did not acknowledge every sample")
    if proc.returncode != 0 or "samples" not in fields:
        lines = err.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{rel}: the simulator's replay failed: {lines[-1] if lines else proc.returncode}")
    return int(fields["samples"])


async def _stream(files: list[tuple[str, Path]], bundle: Path, work: Path, settings: EvalSettings,
                  timeout_s: float, stall_s: float = 15.0) -> tuple[dict[str, list], dict]:
    from appliance.broker import Mosquitto, free_port
    from appliance.runtime import build

    broker = Mosquitto(work / "broker", port=free_port()).start()
    try:
        data = settings.config.model_dump(mode="json")
        data["data_dir"] = str(work / "appliance")
        data["connections"]["mqtt"].update(host="127.0.0.1", port=broker.port)
        data["inputs"]["mqtt"]["client_id"] = "skab-stream-eval"
        data["inputs"]["opcua"]["enabled"] = False
        data["outputs"]["mqtt_alarm"]["broker"] = None  # alarms go to the same broker
        data["detector"]["bundle"] = str(bundle)
        data["web"]["enabled"] = False
        # Only the path under test: no history database to fill, no PLC to write to.
        data["outputs"]["history"]["enabled"] = False
        data["outputs"]["mitigation"]["enabled"] = False
        cfg = parse_config(data, "skab-stream")
        app = build(cfg)
        intervals: dict[str, list] = {}
        raised: dict[str, float] = {}

        def on_event(e: AlarmEvent | ModeChange) -> None:
            if not isinstance(e, AlarmEvent):  # nobody shelves a point during an evaluation
                return
            a = e.alarm
            if e.kind is EventKind.RAISED:
                raised[a.asset] = a.start
            elif e.kind is EventKind.CLEARED and a.asset in raised:
                intervals.setdefault(a.asset, []).append((raised.pop(a.asset), a.end))

        app.add_event_listener(on_event)
        expected = 0
        await app.start()
        try:
            # Publish only once the broker holds our subscription: a message published
            # before it is routed to nobody (it is not queued for a session not yet made).
            if not await app.wait_inputs_ready(60):
                raise RuntimeError("the MQTT connector did not subscribe within 60 s")
            t0 = time.monotonic()
            for rel, path in files:
                samples = await publish_file(rel, path, broker.port)
                n_sensors = len(read_csv(path)[0])
                expected += samples * n_sensors
            published_s = time.monotonic() - t0
            # Every sample is acknowledged by the broker; wait until the appliance has taken
            # them all, or until it makes no progress for stall_s (then report the shortfall).
            deadline = time.monotonic() + timeout_s
            last, last_change = -1, time.monotonic()
            while app.counters.get("readings") < expected and time.monotonic() < deadline:
                n = app.counters.get("readings")
                if n != last:
                    last, last_change = n, time.monotonic()
                elif time.monotonic() - last_change > stall_s:
                    logger.warning("stream eval: appliance stalled at %d of %d readings", n, expected)
                    break
                await asyncio.sleep(0.05)
            await app.drain()
            status = {"readings_expected": expected, "readings": app.counters.get("readings"),
                      "windows_scored": app.counters.get("windows_scored"),
                      "dead_letters": app.counters.get("dead_letters"),
                      "pipeline_errors": app.counters.get("pipeline_errors"),
                      "windows_incomplete": app.counters.get("windows_incomplete"),
                      "publish_seconds": round(published_s, 1),
                      "pipeline_seconds": round(time.monotonic() - t0, 1)}
        finally:
            await app.shutdown()
        for asset, start in raised.items():
            intervals.setdefault(asset, []).append((start, None))
        return intervals, status
    finally:
        broker.stop()


def run_stream_eval(data_dir: str | Path, predictions_out: str | Path | None = None,
                    json_out: str | Path | None = None, settings: EvalSettings | None = None,
                    files: Sequence[str] | None = None, quiet: bool = False, timeout_s: float = 300.0) -> dict:
    """Train on anomaly-free.csv, stream every experiment file through the running appliance."""
    settings = settings or EvalSettings()
    started = time.monotonic()
    root = Path(data_dir)
    normal = root / "anomaly-free" / "anomaly-free.csv"
    if not normal.is_file():
        raise FileNotFoundError(f"{normal}: the stream mode trains on it")
    todo = experiment_files(root)
    if files is not None:
        todo = [(rel, p) for rel, p in todo if rel in set(files)]
        if not todo:
            raise FileNotFoundError(f"none of {list(files)} among the experiment files")
    with tempfile.TemporaryDirectory(prefix="skab-stream-") as tmp:
        work = Path(tmp)
        settings, level_free = with_level_free(root, settings)
        bundle = train_from_csv([normal], work / "bundle", settings.train_settings())
        t_trained = time.monotonic()
        intervals, status = asyncio.run(_stream(todo, bundle, work, settings, timeout_s))
    results = []
    for rel, path in todo:
        _, ts, _, labels = read_csv(path)
        pred = alarm_states(intervals.get(_asset(rel), []), ts)
        results.append({"file": rel, "ts": ts, "label": (labels["anomaly"] > 0).astype(np.uint8),
                        "pred": {"ae_int8": pred}})
    labels = np.concatenate([r["label"] for r in results])
    pred = np.concatenate([r["pred"]["ae_int8"] for r in results])
    c = confusion(pred, labels)
    summary: dict[str, Any] = {
        "mode": "stream", "files": len(results), "rows": int(len(labels)),
        "anomalous_share": float(labels.mean()),
        "ae_int8": {**scores_from(c), **c, **episode_delays(results, "ae_int8")},
        "alarms": sum(len(v) for v in intervals.values()),
        "pipeline": status, "train_seconds": round(t_trained - started, 1), "level_free": level_free,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    write_outputs(summary, results, predictions_out, json_out)
    if not quiet:
        m = summary["ae_int8"]
        print(f"SKAB stream mode: one bundle trained on anomaly-free.csv, {summary['files']} files streamed over "
              f"MQTT through the running appliance, {summary['rows']} rows ({summary['anomalous_share']:.1%} "
              f"anomalous)")
        print(f"{'detector':34s} {'F1':>6s} {'FAR %':>7s} {'MAR %':>7s} {'delay s':>8s}")
        delay = "-" if m["mean_delay_s"] is None else f"{m['mean_delay_s']:.1f}"
        print(f"{'Autoencoder INT8 (appliance)':34s} {m['f1']:6.3f} {m['far']:7.2f} {m['mar']:7.2f} {delay:>8s}")
        print(f"alarms {summary['alarms']}, episodes detected {m['episodes_detected']}/"
              f"{m['episodes_detected'] + m['episodes_missed']}, readings {status['readings']}/"
              f"{status['readings_expected']}, dead letters {status['dead_letters']}, "
              f"elapsed {summary['elapsed_s']:.0f} s")
    return summary
