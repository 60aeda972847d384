"""Fleet poisoning benchmark: how far one lying client moves the fleet model, with the server's bounds off and on.

Every scenario is a real fleet run on loopback: ``appliance fleet server`` and one
process per client (``appliance fleet client``; the liar is
``rigs/fleet_attacker.py``), seeded with a small trained bundle, on the
pump-like rows of ``rigs/pump_rows.py`` at three operating points.

* ``honest``           three honest gateways
* ``billion_off/on``   two honest gateways and one that sends the global weights plus a
                       nudge of ``--nudge`` L2 norm claiming 10^9 training windows
* ``threshold_off/on`` one honest gateway and one reporting ``--threshold-factor`` x its
                       own calibrated threshold (two clients: the old median was their mean)

* ``nan_off/on``       two honest gateways and one sending NaN weights

``off`` runs the fleet server of the commit before the bounds (``--before``, default
``a4d3e1c``; its ``appliance`` package extracted with ``git archive``; the clients run
today's code): it reproduces issue 27's findings. ``on`` runs today's server with the
default ``[fleet.robust]``. Reported per scenario: whether the server ended normally,
the fleet model's drift from the seed (L2 of all weights) and its ratio to the honest
run's, its FP32 threshold, and the alarms it raises on held-out normal recordings (live
path replay: builder, INT8 detector, the default debounce) against the seed's.
The threshold scenarios also give the shadow verdict (``appliance/lifecycle/shadow.py``)
of the fleet model against the seed on normal rows followed by a pressure fault.

Usage:
  .venv/bin/python benchmarks/fleet_poisoning.py          # JSON to benchmarks/results/fleet_poisoning.json
  .venv/bin/python benchmarks/fleet_poisoning.py --rounds 3 --nudge 6 --threshold-factor 10
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.actions.decide import Decider  # noqa: E402
from appliance.detector.replay import replay_rows  # noqa: E402
from appliance.detector.scorer import Detector  # noqa: E402
from appliance.detector.train import TrainSettings, train_bundle  # noqa: E402
from appliance.detector.windowing import WindowBuilder, rows_as_readings  # noqa: E402
from appliance.fleet.model import seed_from_bundle, update_norm  # noqa: E402
from appliance.lifecycle.shadow import ShadowBounds, ShadowRun  # noqa: E402
from benchmarks.common import parser, write_results  # noqa: E402
from rigs.fleet_run import FleetRun  # noqa: E402
from rigs.pump_rows import SENSORS, T0, normal_rows, operating_point, write_csv  # noqa: E402

LIBRARIES = ("flwr", "grpcio", "onnxruntime", "scikit-learn")
WINDOW = 16  # the tests' seed bundle (tests/support/tuf_repo.release_bundles_fixture)
BEFORE = "a4d3e1c"  # the last commit whose fleet server had no [fleet.robust]


def old_tree(rev: str, into: Path) -> Path:
    """The ``appliance`` package as it was at ``rev`` (``git archive``), to run its fleet server."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "appliance"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def run_fleet(work: Path, seed: Path, ref: Path, clients: list[tuple[str, str | None, Path, list[str]]],
              rounds: int, server_tree: Path) -> tuple[int, dict | None, Path]:
    """One run: the server (its package from ``server_tree``) and ``clients`` (name, attack mode or None,
    data, extra args); the server's exit code, its report (None if it wrote none) and bundle path."""
    fleet = {"rounds": rounds, "clients": len(clients), "min_results": 2, "local_epochs": 3, "batch_size": 64,
             # Short: the old server facing NaN is left without clients and waits this long a round.
             "join_timeout_s": 120.0, "round_timeout_s": 300.0}
    run = FleetRun(work, fleet, seed, ref, server_tree)
    try:
        for name, mode, data, extra in clients:
            if mode is None:
                run.client(name, data)
            else:
                run.attacker(name, mode, data, *extra)
        rc = run.wait()
    finally:
        run.stop()
    return rc, run.report(), run.out


def alarms(bundle: Path, recordings: list[np.ndarray]) -> int:
    """Alarms the bundle raises over ``recordings`` (each replayed from a fresh builder and decider)."""
    det = Detector.load(bundle)
    ts = T0 + np.arange(len(recordings[0]), dtype=np.float64)
    return sum(replay_rows(det, SENSORS, ts[:len(r)], r, Decider()).alarms_raised for r in recordings)


def shadow_verdict(current: Path, candidate: Path, rows: np.ndarray) -> dict:
    """The gateway's shadow verdict on ``rows`` (default bounds, no duration): candidate vs current."""
    cur, cand = Detector.load(current), Detector.load(candidate)
    run = ShadowRun(cand, ShadowBounds(duration_s=0, min_windows=1, max_latency_p99_us=1e7), Decider)
    decider = Decider()
    builder = WindowBuilder(cur.sensors, cur.period_s, cur.window, cur.stride, 5.0, 2.0)
    for reading in rows_as_readings("pump", cur.sensors, T0 + np.arange(len(rows), dtype=np.float64), rows,
                                    source="bench"):
        for w in builder.add(reading):
            if w.complete:
                score = cur.score_one(w)
                decider.update(score)
                run.observe(w, score)
    r = run.result()
    ok, why = r.verdict(run.bounds)
    old_rule = r.candidate_raises <= int(run.bounds.max_alarm_factor * r.current_raises) + run.bounds.max_extra_alarms
    return {"promoted": ok, "reason": why, "current_raises": r.current_raises, "candidate_raises": r.candidate_raises,
            "missed_windows": r.missed_windows, "promoted_by_the_alarm_limit_alone": old_rule}


def summary(name: str, rc: int, report: dict | None, bundle: Path, seed: Path, normal: list[np.ndarray]) -> dict:
    if not bundle.is_dir():
        return {"scenario": name, "server_exit": rc, "bundle": False}
    norms = [c["update_norm"] for r in report["rounds"] for c in r["clients"]]
    _, w_seed = seed_from_bundle(seed)
    _, w_fleet = seed_from_bundle(bundle)
    return {"scenario": name, "server_exit": rc, "bundle": True,
            "drift_from_seed": round(update_norm(w_fleet, w_seed), 4),
            "threshold_fp32": round(Detector.load(bundle, precision="fp32").threshold, 4),
            "alarms_on_normal": alarms(bundle, normal),
            "clipped_by_server": sum(c.get("clipped_by_server", False) for r in report["rounds"] for c in r["clients"]),
            "dropped": sum(len(r.get("rejected", [])) for r in report["rounds"]),
            "update_norms": [round(min(norms), 3), round(max(norms), 3)],
            "last_round_thresholds": {e["name"]: round(e["threshold"], 4)
                                      for e in report["rounds"][-1]["evaluation"]}}


def main() -> int:
    ap = parser(__doc__, ROOT / "benchmarks" / "results" / "fleet_poisoning.json")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--nudge", type=float, default=6.0, help="L2 norm of the liar's nudge")
    ap.add_argument("--threshold-factor", type=float, default=2.0)
    ap.add_argument("--before", default=BEFORE, help="the commit whose fleet server is the 'off' case")
    args = ap.parse_args()
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fleet-poisoning-") as tmp:
        tmp = Path(tmp)
        seed = train_bundle(normal_rows(1500, 0), SENSORS, tmp / "seed",
                            TrainSettings(window=WINDOW, stride=2, hidden=(16, 4), max_iter=30, seed=3))
        ref = write_csv(tmp / "ref.csv", normal_rows(600, 100))
        data = {n: write_csv(tmp / f"{n}.csv", operating_point(normal_rows(700, s), load))
                for n, s, load in (("gw1", 101, 1.0), ("gw2", 102, 1.05), ("gw3", 103, 0.95))}
        normal = [operating_point(normal_rows(2000, 200 + i), load) for i, load in enumerate((1.0, 1.05, 0.95))]
        fault = operating_point(normal_rows(1200, 300), 1.0)
        fault[600:, 1] *= 0.85  # pressure falls while current and flow hold: a leak or a worn impeller
        honest3 = [("gw1", None, data["gw1"], []), ("gw2", None, data["gw2"], []), ("gw3", None, data["gw3"], [])]
        liar = [("gw1", None, data["gw1"], []), ("gw2", None, data["gw2"], []),
                ("liar", "windows", data["gw3"], ["--nudge", str(args.nudge)])]
        high = [("gw1", None, data["gw1"], []),
                ("liar", "threshold", data["gw2"], ["--threshold-factor", str(args.threshold_factor)])]
        nan = [("gw1", None, data["gw1"], []), ("gw2", None, data["gw2"], []), ("liar", "nan", data["gw3"], [])]
        before = old_tree(args.before, tmp / "before")
        runs = [("honest", honest3, ROOT), ("billion_off", liar, before), ("billion_on", liar, ROOT),
                ("threshold_off", high, before), ("threshold_on", high, ROOT), ("nan_off", nan, before),
                ("nan_on", nan, ROOT)]
        rows = []
        for name, clients, tree in runs:
            print(f"running {name} ...", flush=True)
            rc, report, bundle = run_fleet(tmp / name, seed, ref, clients, args.rounds, tree)
            row = summary(name, rc, report, bundle, seed, normal)
            if name.startswith("threshold") and row["bundle"]:
                row["shadow"] = shadow_verdict(seed, bundle, np.concatenate([normal[0][:1200], fault]))
            rows.append(row)
        seed_row = {"scenario": "seed", "threshold_fp32": round(Detector.load(seed, precision="fp32").threshold, 4),
                    "alarms_on_normal": alarms(seed, normal)}
    honest = rows[0]["drift_from_seed"]
    for r in rows:
        if r["bundle"]:
            r["drift_vs_honest"] = round(r["drift_from_seed"] / honest, 2)
    print(f"{'scenario':14} {'exit':>4} {'drift':>7} {'x honest':>8} {'threshold':>9} {'alarms':>6} {'clipped':>7} "
          f"{'dropped':>7}  shadow")
    print(f"{'seed':14} {'':>4} {'':>7} {'':>8} {seed_row['threshold_fp32']:>9} {seed_row['alarms_on_normal']:>6}")
    for r in rows:
        if not r["bundle"]:
            print(f"{r['scenario']:14} {r['server_exit']:>4}  (no bundle)")
            continue
        shadow = r.get("shadow", {})
        verdict = "" if not shadow else ("promoted" if shadow["promoted"] else "refused") + (
            f" (alarm limit alone: {'promoted' if shadow['promoted_by_the_alarm_limit_alone'] else 'refused'})")
        print(f"{r['scenario']:14} {r['server_exit']:>4} {r['drift_from_seed']:>7} {r['drift_vs_honest']:>8} "
              f"{r['threshold_fp32']:>9} {r['alarms_on_normal']:>6} {r['clipped_by_server']:>7} {r['dropped']:>7}  "
              f"{verdict}")
    doc = {"benchmark": "fleet_poisoning", "rounds": args.rounds, "nudge": args.nudge,
           "threshold_factor": args.threshold_factor, "before": args.before, "seed": seed_row, "scenarios": rows,
           "normal_recordings": [len(r) for r in normal], "seconds": round(time.monotonic() - t_start, 1)}
    path = write_results(args.out, doc, LIBRARIES)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
