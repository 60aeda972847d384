"""A slow 52-sensor process at 3 min, checked only through the two CLI commands a user would run.

The simulator (``firmware-sim/process.py``) stands in for a continuous
chemical process: ``normal.csv`` (``--train-rows`` rows at 180 s) trains a
bundle with exactly ``appliance train --data normal.csv --period 180 --out B``;
then every run is replayed with ``appliance score --bundle B --data run.csv
--out scores.csv`` and its ``alarm`` column is read back. Reported:

* rows in alarm on independent normal runs (other seeds: other disturbance
  spreads and operating point), and on the fault runs' rows before their fault;
* per fault class, the share of faulty rows in alarm (detection);
* the bundle's own expected window exceedance, and training time.

With several ``--train-seeds`` each seed's normal record trains its own bundle,
and every figure is the mean over those bundles (each seed's own figures are in
the JSON): one training record can be luckier than another, since 500 rows at
3 min hold only a few excursions of disturbances that last hours.

Goals (issue 14 item 7): rows in alarm on independent normal runs <= 2 %, mean
detection over the detectable classes >= 80 %. Which classes are detectable is
decided by ``benchmarks/detectability.py``, a supervised oracle that sees the
labels (never the appliance's detector): it finds ``small_step`` and
``sticky_valve`` in at most 5 % of their faulty windows at 1 % false alarms,
the other classes in 86-100 %. The mean over every class but ``small_step``
(the rig's definition before that measurement) is reported beside it.

Usage:
  .venv/bin/python benchmarks/detector_process.py [--train-seeds 1,7,42,99] [--normal-runs 6] [--fault-seeds 2]
      [--out FILE] [--train-args ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "firmware-sim"))

from benchmarks.common import write_results  # noqa: E402
from process import FAULTS, Fault, write_process_csv  # noqa: E402

APPLIANCE = [sys.executable, "-m", "appliance.cli"]
# As invisible to a supervised oracle as noise (benchmarks/detectability.py, results/detectability*.json).
UNDETECTABLE = ("small_step", "sticky_valve")


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(APPLIANCE + args, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:1])} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


def alarms(scores_csv: Path) -> tuple[np.ndarray, float]:
    """The ``alarm`` column, and the share of scored windows over the threshold (before debounce)."""
    with scores_csv.open() as f:
        rows = list(csv.DictReader(f))
    scored = [float(r["score"]) > float(r["threshold"]) for r in rows if r["score"]]
    return np.array([int(r["alarm"]) for r in rows]), float(np.mean(scored)) if scored else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-rows", type=int, default=500)
    ap.add_argument("--run-rows", type=int, default=960)
    ap.add_argument("--fault-at", type=int, default=160)
    ap.add_argument("--normal-runs", type=int, default=6)
    ap.add_argument("--fault-seeds", type=int, default=2, help="runs per fault class (different seeds and targets)")
    ap.add_argument("--train-seeds", default="1,7,42,99",
                    help="comma-separated: one training record (and bundle) per seed; figures are their mean")
    ap.add_argument("--run-spread", type=float, default=0.25,
                    help="how much runs differ beyond noise (operating point, disturbance spread); 0: one point")
    ap.add_argument("--train-args", default="", help="extra arguments for appliance train (ablations)")
    ap.add_argument("--label", default="default")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "detector_process.json"))
    a = ap.parse_args(argv)

    seeds = [int(v) for v in a.train_seeds.split(",") if v.strip()]
    detectable = [k for k in FAULTS if k not in UNDETECTABLE]
    per_seed = []
    with tempfile.TemporaryDirectory(prefix="bench-process-") as tmpdir:
        work = Path(tmpdir)
        runs = [write_process_csv(work / f"normal_{k}.csv", a.run_rows, seed=1000 + k, run_spread=a.run_spread)
                for k in range(a.normal_runs)]
        fault_runs = []
        for kind in FAULTS:
            for j in range(a.fault_seeds):
                fault = Fault(kind, a.fault_at, 1.0, target=j + 1)
                fault_runs.append((kind, write_process_csv(work / f"{kind}_{j}.csv", a.run_rows,
                                                           seed=2000 + 10 * j + FAULTS.index(kind),
                                                           fault=fault, run_spread=a.run_spread)))
        for train_seed in seeds:
            # Training seeds far from the runs' seeds (1000+, 2000+): no training record is also a test run.
            normal = write_process_csv(work / f"train_{train_seed}.csv", a.train_rows, seed=train_seed,
                                       run_spread=a.run_spread)
            bundle = work / f"B{train_seed}"
            started = time.perf_counter()
            train = run_cli(["train", "--data", str(normal), "--period", "180", "--out", str(bundle),
                             *shlex.split(a.train_args)])
            train_s = time.perf_counter() - started
            meta = json.loads((bundle / "bundle.json").read_text())

            def score(run: Path) -> tuple[np.ndarray, float]:
                out = run.with_suffix(f".{train_seed}.scores.csv")
                run_cli(["score", "--bundle", str(bundle), "--data", str(run), "--out", str(out)])
                return alarms(out)

            normal = [score(run) for run in runs]
            normal_share = [float(alarm.mean()) for alarm, _ in normal]
            detection: dict[str, list[float]] = {}
            before_fault = []
            for kind, run in fault_runs:
                alarm, _ = score(run)
                detection.setdefault(kind, []).append(float(alarm[a.fault_at:].mean()))
                before_fault.append(float(alarm[:a.fault_at].mean()))
            one = {
                "train_seed": train_seed, "train_seconds": round(train_s, 1),
                "train_output": train.stdout.strip().splitlines(),
                "window": meta["window"], "horizon": meta.get("horizon", 1),
                "hidden": meta["training"]["model"]["hidden"],
                "epochs": meta["training"]["model"]["epochs"], "stopped": meta["training"]["model"].get("stopped"),
                "expected_window_exceedance": meta.get("expected_window_exceedance"),
                "threshold_calibration": {k: v for k, v in meta["threshold_calibration"]["int8"].items()
                                          if not isinstance(v, list)},
                "normal_rows_in_alarm": normal_share, "normal_rows_in_alarm_mean": float(np.mean(normal_share)),
                # What the bundle promised (expected_window_exceedance) against what its windows did.
                "normal_windows_over_threshold": float(np.mean([over for _, over in normal])),
                "prefault_rows_in_alarm_mean": float(np.mean(before_fault)),
                "detection": {k: float(np.mean(v)) for k, v in detection.items()},
                "detection_runs": detection,
                "mean_detection_detectable": float(np.mean([np.mean(detection[k]) for k in detectable])),
                "mean_detection_but_small_step": float(np.mean([np.mean(detection[k]) for k in FAULTS
                                                                if k != "small_step"])),
            }
            per_seed.append(one)
            promised = one["expected_window_exceedance"] or {}
            print(f"train seed {train_seed}: normal windows over the threshold "
                  f"{100 * one['normal_windows_over_threshold']:.2f} % (the bundle expects "
                  f"{100 * (promised.get('next_block') or 0):.2f} % next block, design "
                  f"{100 * (promised.get('design') or 0):.2f} %)", flush=True)
            print(f"train seed {train_seed}: normal rows in alarm {100 * one['normal_rows_in_alarm_mean']:.2f} % "
                  f"(worst run {100 * max(normal_share):.1f} %), mean detection "
                  f"{100 * one['mean_detection_detectable']:.1f} %, training {train_s:.1f} s", flush=True)

    all_normal = [v for one in per_seed for v in one["normal_rows_in_alarm"]]
    result = {
        "label": a.label, "train_args": a.train_args, "run_spread": a.run_spread, "train_seeds": seeds,
        "window": per_seed[0]["window"], "horizon": per_seed[0]["horizon"], "hidden": per_seed[0]["hidden"],
        "train_seconds": [one["train_seconds"] for one in per_seed],
        "normal_rows_in_alarm_mean": float(np.mean(all_normal)),
        "normal_rows_in_alarm_worst_run": float(max(all_normal)),
        "normal_rows_in_alarm_by_seed": {str(one["train_seed"]): one["normal_rows_in_alarm_mean"] for one in per_seed},
        "prefault_rows_in_alarm_mean": float(np.mean([one["prefault_rows_in_alarm_mean"] for one in per_seed])),
        "normal_windows_over_threshold_mean": float(np.mean([one["normal_windows_over_threshold"]
                                                             for one in per_seed])),
        "expected_next_block_mean": float(np.mean([(one["expected_window_exceedance"] or {}).get("next_block") or 0.0
                                                   for one in per_seed])),
        "detection": {k: float(np.mean([one["detection"][k] for one in per_seed])) for k in FAULTS},
        "detectable": detectable,
        "mean_detection_detectable": float(np.mean([one["mean_detection_detectable"] for one in per_seed])),
        "mean_detection_but_small_step": float(np.mean([one["mean_detection_but_small_step"] for one in per_seed])),
        "by_seed": per_seed,
    }
    print(f"process benchmark ({a.label}): window {result['window']}, horizon {result['horizon']}, "
          f"hidden {result['hidden']}, {len(seeds)} training seed(s), training {result['train_seconds']} s")
    print("| measure | value |\n|---|---|")
    print(f"| rows in alarm, independent normal runs (mean over seeds and runs; worst run) | "
          f"{100 * result['normal_rows_in_alarm_mean']:.2f} % "
          f"({100 * result['normal_rows_in_alarm_worst_run']:.1f} %) |")
    print("| rows in alarm by training seed | " + ", ".join(
        f"{k}: {100 * v:.2f} %" for k, v in result["normal_rows_in_alarm_by_seed"].items()) + " |")
    print("| windows over the threshold, independent normal runs: observed / the bundles' next-block expectation | "
          f"{100 * result['normal_windows_over_threshold_mean']:.2f} % / "
          f"{100 * result['expected_next_block_mean']:.2f} % |")
    print(f"| rows in alarm before the fault (fault runs) | {100 * result['prefault_rows_in_alarm_mean']:.2f} % |")
    for k in FAULTS:
        print(f"| detection {k}{' (not detectable: oracle)' if k in UNDETECTABLE else ''} | "
              f"{100 * result['detection'][k]:.1f} % |")
    print(f"| mean detection, detectable classes ({', '.join(detectable)}) | "
          f"{100 * result['mean_detection_detectable']:.1f} % |")
    print(f"| mean detection, every class but small_step | {100 * result['mean_detection_but_small_step']:.1f} % |")
    print(f"written {write_results(a.out, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
