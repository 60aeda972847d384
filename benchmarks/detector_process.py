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

from appliance.eval.episodes import alarm_episodes, median_p90, pooled_rate, raise_and_clear, span_seconds  # noqa: E402
from benchmarks.common import write_results  # noqa: E402
from process import FAULTS, PLANT_FAULTS, Fault, ProcessModel, write_process_csv  # noqa: E402

APPLIANCE = [sys.executable, "-m", "appliance.cli"]
# As invisible to a supervised oracle as noise (benchmarks/detectability.py, results/detectability*.json).
UNDETECTABLE = ("small_step", "sticky_valve")


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(APPLIANCE + args, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:1])} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


def alarms(scores_csv: Path) -> tuple[np.ndarray, float, np.ndarray]:
    """The ``alarm`` column, the share of scored windows over the threshold (before debounce), the times."""
    with scores_csv.open() as f:
        rows = list(csv.DictReader(f))
    scored = [float(r["score"]) > float(r["threshold"]) for r in rows if r["score"]]
    return (np.array([int(r["alarm"]) for r in rows]), float(np.mean(scored)) if scored else float("nan"),
            np.array([float(r["timestamp"]) for r in rows]))


def false_episodes(scored: list[tuple[np.ndarray, float, np.ndarray]]) -> dict:
    """Alarm episodes on normal runs: the count, per day and per week of data, and the longest (hours)."""
    counts = [len(alarm_episodes(alarm)) for alarm, _, _ in scored]
    spans = [span_seconds(ts) for _, _, ts in scored]
    lengths = [float(ts[min(b, len(ts) - 1)] - ts[a]) / 3600.0 for alarm, _, ts in scored
               for a, b in alarm_episodes(alarm)]
    return {"episodes": int(sum(counts)), "by_run": counts, "days": round(sum(spans) / 86400.0, 2),
            "per_day": pooled_rate(counts, spans, 86400.0), "per_week": pooled_rate(counts, spans),
            "longest_h": max(lengths) if lengths else 0.0}


def process_back_s(seed: int, fault: Fault, rows: int, regime: dict, period_s: float = 180.0,
                   tolerance: float = 0.5, hold: int = 20) -> float | None:
    """Seconds after the fault's end until the process is back: the run and its fault-free twin (same seed,
    same random draws) differ by less than ``tolerance`` of each sensor's normal spread, and stay so for
    ``hold`` rows (1 h). What no detector can beat; None where the twin's draws differ (the sticky valve
    draws one more number per row) or the process is not back by the run's end."""
    if fault.end is None:
        return None
    faulty = ProcessModel(seed=seed, fault=fault, **regime).run(rows)
    twin = ProcessModel(seed=seed, **regime).run(rows)
    effect = (np.abs(faulty - twin) / twin.std(axis=0)).max(axis=1)
    if effect[: fault.start].max() > 1e-9:
        return None
    calm = effect < tolerance
    for r in range(fault.end, rows - hold + 1):
        if calm[r:r + hold].all():
            return (r - fault.end) * period_s
    return None


def prefault_episodes(alarm: np.ndarray, fault_at: int) -> int:
    """Episodes raised before the fault began: false ones."""
    return sum(a < fault_at for a, _ in alarm_episodes(alarm))


def raise_clear_summary(events: list[dict]) -> dict:
    """Median and p90 of the seconds to raise and to clear (hours in the table), and how many never did."""
    fair = [e for e in events if not e["active_at_start"]]
    behind = [e["clear_s"] - e["back_s"] for e in fair if e["cleared"] and e.get("back_s") is not None]
    return {"runs": len(events), "raised": sum(e["raised"] for e in fair),
            "process_back_s": median_p90([e.get("back_s") for e in events]),
            "clear_after_process_back_s": median_p90(behind),
            "active_at_start": len(events) - len(fair),
            "raise_s": median_p90([e["raise_s"] for e in fair if e["raised"]]),
            "clear_s": median_p90([e["clear_s"] for e in fair if e["cleared"]]),
            "not_cleared_by_run_end": sum(e["cleared"] is False for e in fair)}


def hours(summary: dict) -> str:
    """``raise m / p90 h; clear m / p90 h (raised a/b, not cleared c)`` for a table cell."""
    def pair(d: dict) -> str:
        return "-" if not d["n"] else f"{d['median'] / 3600:.1f} / {d['p90'] / 3600:.1f} h"
    return (f"raise {pair(summary['raise_s'])}; clear {pair(summary['clear_s'])}; process back "
            f"{pair(summary['process_back_s'])}; clear after it {pair(summary['clear_after_process_back_s'])} (raised "
            f"{summary['raised']}/{summary['runs'] - summary['active_at_start']}, not cleared by the run's end "
            f"{summary['not_cleared_by_run_end']})")


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
    ap.add_argument("--normal-rows", type=int, default=0, help="rows of each normal run (0: --run-rows)")
    ap.add_argument("--fault-rows", type=int, default=0,
                    help="rows a fault lasts before the process is back (0: to the end of the run, as before)")
    ap.add_argument("--regime", choices=("rig", "plant"), default="rig",
                    help="plant: operating-point moves, drifts of hours, noise-level changes, compensated steps")
    ap.add_argument("--train-args", default="", help="extra arguments for appliance train (ablations)")
    ap.add_argument("--label", default="default")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "detector_process.json"))
    a = ap.parse_args(argv)

    seeds = [int(v) for v in a.train_seeds.split(",") if v.strip()]
    kinds = FAULTS if a.regime == "rig" else PLANT_FAULTS
    detectable = [k for k in kinds if k not in UNDETECTABLE]
    fault_end = a.fault_at + a.fault_rows if a.fault_rows else None
    regime = {"run_spread": a.run_spread, "regime": a.regime}
    per_seed = []
    with tempfile.TemporaryDirectory(prefix="bench-process-") as tmpdir:
        work = Path(tmpdir)
        runs = [write_process_csv(work / f"normal_{k}.csv", a.normal_rows or a.run_rows, seed=1000 + k, **regime)
                for k in range(a.normal_runs)]
        fault_runs, back = [], []
        for kind in kinds:
            for j in range(a.fault_seeds):
                fault = Fault(kind, a.fault_at, 1.0, target=j + 1, end=fault_end)
                seed = 2000 + 10 * j + PLANT_FAULTS.index(kind)
                fault_runs.append((kind, write_process_csv(work / f"{kind}_{j}.csv", a.run_rows, seed=seed,
                                                           fault=fault, **regime)))
                back.append(process_back_s(seed, fault, a.run_rows, regime))
        for train_seed in seeds:
            # Training seeds far from the runs' seeds (1000+, 2000+): no training record is also a test run.
            normal = write_process_csv(work / f"train_{train_seed}.csv", a.train_rows, seed=train_seed, **regime)
            bundle = work / f"B{train_seed}"
            started = time.perf_counter()
            train = run_cli(["train", "--data", str(normal), "--period", "180", "--out", str(bundle),
                             *shlex.split(a.train_args)])
            train_s = time.perf_counter() - started
            meta = json.loads((bundle / "bundle.json").read_text())

            def score(run: Path) -> tuple[np.ndarray, float, np.ndarray]:
                out = run.with_suffix(f".{train_seed}.scores.csv")
                run_cli(["score", "--bundle", str(bundle), "--data", str(run), "--out", str(out)])
                return alarms(out)

            normal = [score(run) for run in runs]
            normal_share = [float(alarm.mean()) for alarm, _, _ in normal]
            detection: dict[str, list[float]] = {}
            timing: dict[str, list[dict]] = {}
            before_fault, before_episodes = [], []
            for (kind, run), back_s in zip(fault_runs, back):
                alarm, _, ts = score(run)
                detection.setdefault(kind, []).append(float(alarm[a.fault_at:fault_end].mean()))
                timing.setdefault(kind, []).append({**raise_and_clear(alarm, ts, a.fault_at, fault_end),
                                                    "back_s": back_s})
                before_fault.append(float(alarm[:a.fault_at].mean()))
                before_episodes.append(prefault_episodes(alarm, a.fault_at))
            one = {
                "train_seed": train_seed, "train_seconds": round(train_s, 1),
                "train_output": train.stdout.strip().splitlines(),
                "window": meta["window"], "horizon": meta.get("horizon", 1),
                "hidden": meta["training"]["model"]["hidden"],
                "epochs": meta["training"]["model"]["epochs"], "stopped": meta["training"]["model"].get("stopped"),
                "expected_window_exceedance": meta.get("expected_window_exceedance"),
                "threshold_calibration": {k: v for k, v in meta["threshold_calibration"]["int8"].items()
                                          if not isinstance(v, list)},
                "expected_false_episodes": meta.get("expected_false_episodes"),
                "normal_rows_in_alarm": normal_share, "normal_rows_in_alarm_mean": float(np.mean(normal_share)),
                "normal_false_episodes": false_episodes(normal),
                "prefault_false_episodes": int(sum(before_episodes)),
                "raise_clear": {k: raise_clear_summary(v) for k, v in timing.items()},
                "raise_clear_detectable": raise_clear_summary([e for k in detectable for e in timing[k]]),
                "raise_clear_runs": timing,
                # What the bundle promised (expected_window_exceedance) against what its windows did.
                "normal_windows_over_threshold": float(np.mean([over for _, over, _ in normal])),
                "prefault_rows_in_alarm_mean": float(np.mean(before_fault)),
                "detection": {k: float(np.mean(v)) for k, v in detection.items()},
                "detection_runs": detection,
                "mean_detection_detectable": float(np.mean([np.mean(detection[k]) for k in detectable])),
                "mean_detection_but_small_step": float(np.mean([np.mean(detection[k]) for k in kinds
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
        "regime": a.regime, "fault_rows": a.fault_rows or None,
        "normal_false_episodes_per_week_mean": float(np.mean([one["normal_false_episodes"]["per_week"]
                                                              for one in per_seed])),
        "normal_false_episodes_per_week_by_seed": {str(one["train_seed"]): one["normal_false_episodes"]["per_week"]
                                                   for one in per_seed},
        "normal_false_episodes_per_day_mean": float(np.mean([one["normal_false_episodes"]["per_day"]
                                                             for one in per_seed])),
        "normal_false_episode_longest_h": max(one["normal_false_episodes"]["longest_h"] for one in per_seed),
        "normal_days_per_seed": per_seed[0]["normal_false_episodes"]["days"],
        "expected_false_episodes_per_week_by_seed": {
            str(one["train_seed"]): (one["expected_false_episodes"] or {}).get("per_week") for one in per_seed},
        "expected_false_episodes_upper95_by_seed": {
            str(one["train_seed"]): (one["expected_false_episodes"] or {}).get("per_week_upper95") for one in per_seed},
        "prefault_false_episodes": int(sum(one["prefault_false_episodes"] for one in per_seed)),
        "raise_clear": {k: raise_clear_summary([e for one in per_seed for e in one["raise_clear_runs"][k]])
                        for k in kinds},
        "raise_clear_detectable": raise_clear_summary([e for one in per_seed for k in detectable
                                                       for e in one["raise_clear_runs"][k]]),
        "detection": {k: float(np.mean([one["detection"][k] for one in per_seed])) for k in kinds},
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
    print(f"| false episodes on normal runs, per week (mean over seeds; {result['normal_days_per_seed']} days "
          f"per seed) | {result['normal_false_episodes_per_week_mean']:.2f} (by seed: " + ", ".join(
              f"{k}: {v:.2f}" for k, v in result["normal_false_episodes_per_week_by_seed"].items()) + ") |")
    upper = result["expected_false_episodes_upper95_by_seed"]
    print("| false episodes per week the bundles expected (label-free, training; 95 % upper bound) | " + ", ".join(
        f"{k}: {v:.2f} (<= {upper[k]:.1f})" if v is not None else f"{k}: -"
        for k, v in result["expected_false_episodes_per_week_by_seed"].items()) + " |")
    print(f"| longest false episode on normal runs | {result['normal_false_episode_longest_h']:.1f} h |")
    print(f"| false episodes raised before the fault (all fault runs, all seeds) | "
          f"{result['prefault_false_episodes']} |")
    print(f"| time to raise / to clear, detectable classes (median, p90) | {hours(result['raise_clear_detectable'])} |")
    for k in kinds:
        print(f"| time to raise / to clear, {k} | {hours(result['raise_clear'][k])} |")
    for k in kinds:
        print(f"| detection {k}{' (not detectable: oracle)' if k in UNDETECTABLE else ''} | "
              f"{100 * result['detection'][k]:.1f} % |")
    print(f"| mean detection, detectable classes ({', '.join(detectable)}) | "
          f"{100 * result['mean_detection_detectable']:.1f} % |")
    print(f"| mean detection, every class but small_step | {100 * result['mean_detection_but_small_step']:.1f} % |")
    print(f"written {write_results(a.out, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
