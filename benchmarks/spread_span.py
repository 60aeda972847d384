"""What a longer span would buy the spread member, on the plant regime of the process rig (a study).

The spread member (``appliance/detector/spread.py``) scores the span a decision
covers: ``window + horizon - 1`` rows, 22 rows (66 min) at 3 min. The rig's
disturbances last 1-4 h, so a span of an hour sees only part of one excursion.
This study fits the member alone (no autoencoder, no CLI) on each training
record's scaled rows for several span lengths and reports, per span:

* the share of spans of independent normal runs (other seeds, operating points,
  disturbance spreads) over a fixed probe threshold: twice the 99th percentile
  of the member's error on its own training record (label-free, the same rule
  for every span; not the bundle's calibrated threshold);
* the share of faulty spans over it, per fault class, and the median error.

A span longer than the scored window would need the live detector to keep more
rows than one decision's window; the figures say whether that would pay.

Usage:
  .venv/bin/python benchmarks/spread_span.py [--spans 22,44,80] [--train-seeds 1,7] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "firmware-sim"))

from appliance.detector.bundle import Scaler  # noqa: E402
from appliance.detector.spread import SpreadMember  # noqa: E402
from appliance.detector.train import sliding_windows  # noqa: E402
from benchmarks.common import write_results  # noqa: E402
from process import PLANT_FAULTS, Fault, ProcessModel  # noqa: E402

KINDS = ("variance", "feed_step", "drift")


def runs(normal_runs: int, fault_seeds: int, fault_at: int, fault_rows: int) -> tuple[list, dict]:
    """Normal runs and fault runs seeded as ``benchmarks/detector_process.py`` seeds them."""
    normal = [ProcessModel(seed=1000 + k, regime="plant").run(2880) for k in range(normal_runs)]
    faults = {kind: [ProcessModel(seed=2000 + 10 * j + PLANT_FAULTS.index(kind), regime="plant",
                                  fault=Fault(kind, fault_at, 1.0, target=j + 1, end=fault_at + fault_rows)
                                  ).run(fault_at + 2 * fault_rows) for j in range(fault_seeds)]
              for kind in KINDS}
    return normal, faults


def one_record(seed: int, span: int, normal: list, faults: dict, fault_at: int, fault_rows: int) -> dict:
    train = ProcessModel(seed=seed, regime="plant").run(500)
    scaler = Scaler.fit(train)
    member = SpreadMember().fit(sliding_windows(scaler.transform(train), span))

    def errors(rows: np.ndarray) -> np.ndarray:
        return member.errors(sliding_windows(scaler.transform(rows), span))
    probe = 2.0 * float(np.quantile(errors(train), 0.99))
    on_normal = np.concatenate([errors(r) for r in normal])
    out = {"probe_threshold": round(probe, 3), "normal_over": round(float(np.mean(on_normal > probe)), 4)}
    for kind, kind_runs in faults.items():
        # Spans ending inside the fault, after it has filled one span.
        e = np.concatenate([errors(r)[fault_at:fault_at + fault_rows - span + 1] for r in kind_runs])
        out[kind] = {"over": round(float(np.mean(e > probe)), 4), "median": round(float(np.median(e)), 3)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", default="22,44,80")
    ap.add_argument("--train-seeds", default="1,7")
    ap.add_argument("--normal-runs", type=int, default=3)
    ap.add_argument("--fault-seeds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "spread_span.json"))
    a = ap.parse_args(argv)
    fault_at, fault_rows = 240, 480
    normal, faults = runs(a.normal_runs, a.fault_seeds, fault_at, fault_rows)
    seeds = [int(v) for v in a.train_seeds.split(",")]
    table = {}
    print(f"{'span':>5} {'rows':>5} {'normal over':>12} " + " ".join(f"{k + ' over':>15}" for k in KINDS))
    for span in (int(v) for v in a.spans.split(",")):
        by_seed = {s: one_record(s, span, normal, faults, fault_at, fault_rows) for s in seeds}
        mean = {"normal_over": float(np.mean([r["normal_over"] for r in by_seed.values()])),
                **{k: float(np.mean([r[k]["over"] for r in by_seed.values()])) for k in KINDS}}
        table[span] = {"mean": mean, "by_seed": by_seed}
        print(f"{span:>5} {span * 3:>4}m {100 * mean['normal_over']:>11.1f}% "
              + " ".join(f"{100 * mean[k]:>14.1f}%" for k in KINDS))
    write_results(a.out, {"spans": table, "train_seeds": seeds, "normal_runs": a.normal_runs,
                          "fault_seeds": a.fault_seeds, "fault_at": fault_at, "fault_rows": fault_rows},
                  libraries=("numpy",))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
