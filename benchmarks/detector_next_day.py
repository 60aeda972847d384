"""Does the threshold hold on tomorrow's normal data? Expected against observed false alarms, label-free.

A bundle states how often normal windows should cross its threshold
(``bundle.json`` ``expected_window_exceedance``: the design rate of the tail fit
and the share measured on unseen time blocks of its own training data). Here
bundles are trained on one stretch of normal operation and the *following*
normal data is replayed through the live path (``appliance.detector.replay``,
as ``appliance score`` does); no anomaly label is read anywhere.

Splits:
  * SKAB ``anomaly-free.csv`` (1 s): train on ``--train-rows`` rows starting at
    several offsets, replay the next ``--next-rows`` rows ("next day");
  * the pump simulator (1 Hz): train at rated speed, replay a new day at rated
    speed and days at other operating points (speed 0.9 and valve 0.8).

Also times training (the whole ``train_bundle``) on the first split.

Usage:
  .venv/bin/python benchmarks/detector_next_day.py [--bundle-opts '{"early_stopping": true}'] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.actions.config import DecisionConfig  # noqa: E402
from appliance.actions.decide import Decider  # noqa: E402
from appliance.detector.bundle import load_bundle  # noqa: E402
from appliance.detector.replay import replay_rows  # noqa: E402
from appliance.detector.scorer import Detector  # noqa: E402
from appliance.detector.train import TrainSettings, read_csv, train_bundle  # noqa: E402
from appliance.eval.datasets import skab_dir  # noqa: E402

SKAB_FREE = skab_dir() / "anomaly-free" / "anomaly-free.csv"


def simulator_rows(rows: int, seed: int, speed: float = 1.0, valve: float = 1.0) -> tuple[list[str], np.ndarray]:
    from firmware_sim.pump import PumpModel

    pump = PumpModel(seed=seed, speed=speed, valve=valve)
    first = pump.step(1.0)
    sensors = list(first)
    out = [[first[s] for s in sensors]] + [[v[s] for s in sensors] for v in (pump.step(1.0) for _ in range(rows - 1))]
    return sensors, np.asarray(out, dtype=np.float64)


def one_split(name: str, sensors, train_ts, train_rows, next_ts, next_rows, settings: TrainSettings,
              work: Path) -> dict:
    started = time.perf_counter()
    bundle_dir = train_bundle(train_rows, sensors, work / "b", settings, ts=train_ts)
    train_s = time.perf_counter() - started
    meta = load_bundle(bundle_dir).meta
    det = Detector.load(bundle_dir)
    started = time.perf_counter()
    r = replay_rows(det, sensors, next_ts, next_rows, Decider.from_config(DecisionConfig()), source=name)
    replay_s = time.perf_counter() - started
    exp = meta["expected_window_exceedance"]
    return {"split": name, "train_rows": int(len(train_rows)), "next_rows": int(len(next_rows)),
            "expected_design": exp["design"], "expected_unseen_blocks": exp["unseen_blocks"],
            "expected_worst_block": exp["worst_block"], "expected_next_block": exp["next_block"],
            "expected_next_block_worst": exp["next_block_worst"],
            "observed_windows_over": r.windows_over / max(r.windows_scored, 1),
            "observed_alarm_rows": float(r.alarm.mean()), "alarms_raised": r.alarms_raised,
            "hidden": meta["training"]["model"]["hidden"], "stopped": meta["training"]["model"]["stopped"],
            "train_s": round(train_s, 2), "replay_rows_per_s": round(len(next_rows) / replay_s)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-rows", type=int, default=400)
    p.add_argument("--next-rows", type=int, default=2000)
    p.add_argument("--bundle-opts", default="{}", help="TrainSettings overrides, JSON")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "detector_next_day.json"))
    args = p.parse_args()
    opts = json.loads(args.bundle_opts)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if SKAB_FREE.is_file():
            sensors, ts, rows, _ = read_csv(SKAB_FREE)
            span = args.train_rows + args.next_rows
            for start in range(0, len(rows) - span + 1, max(1, (len(rows) - span) // 3)):
                tr, nx = slice(start, start + args.train_rows), slice(start + args.train_rows, start + span)
                results.append(one_split(f"anomaly-free@{start}", sensors, ts[tr], rows[tr], ts[nx], rows[nx],
                                         TrainSettings(**opts), work))
        n = args.train_rows
        sensors, base = simulator_rows(n + args.next_rows, seed=1)
        t = 1_700_000_000.0 + np.arange(n + args.next_rows)
        for label, speed, valve, seed in (("sim next day", 1.0, 1.0, 2), ("sim speed 0.9", 0.9, 1.0, 3),
                                          ("sim valve 0.8", 1.0, 0.8, 4)):
            _, nxt = simulator_rows(args.next_rows, seed=seed, speed=speed, valve=valve)
            results.append(one_split(label, sensors, t[:n], base[:n], t[n:], nxt, TrainSettings(**opts), work))
    head = (f"{'split':22s} {'rows':>5s} {'design':>7s} {'next blk':>8s} {'worst':>7s} | {'observed':>8s} "
            f"{'alarm rows':>10s} {'raised':>6s} {'train s':>7s}")
    print(f"next-day false alarms, bundle {opts or 'defaults'} (window exceedance: share of windows over "
          "the threshold; alarm rows after 3-of-5 debounce)")
    print(head)
    for r in results:
        print(f"{r['split']:22s} {r['train_rows']:5d} {r['expected_design']:7.2%} {r['expected_next_block']:8.2%} "
              f"{r['expected_next_block_worst']:7.2%} | {r['observed_windows_over']:8.2%} "
              f"{r['observed_alarm_rows']:10.2%} "
              f"{r['alarms_raised']:6d} {r['train_s']:7.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"bundle_opts": opts, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
