"""Back-test speed: a week of the pump simulator's 8 sensors at 1 Hz, replayed from the store through a bundle.

What a gateway does when a signed release arrives (``appliance.lifecycle.backtest``,
``appliance backtest``): the store's readings, asset by asset in time order, through
the live window builder, each complete window scored by the model (an ONNX batch),
the live decider per model, the replayed alarms matched with the labelled episodes.

The store is written first, as the running appliance writes it (``Store.put_reading``,
its writer thread): ``--days`` of the pump simulator at 1 Hz with a bearing-wear fault
every day, an alarm episode on each with a ``fault`` verdict and a false-alarm
episode a day. The model is trained (default settings but the epoch cap) on the
first hour. Then, timed:

  * ``read_and_window``: the store's readings through the window builder alone
    (no model), the part every model shares;
  * ``one_model``: the back-test of one bundle (the running one, ``appliance backtest``
    without a current model);
  * ``two_models``: a candidate (the bundle recalibrated x 1.2) beside the current
    model, one pass, as for a release.

Figures are grid rows (one per second of the asset's record, 8 readings each)
per second of wall time, single-threaded ONNX Runtime, as the gateway runs it.

Usage:
  .venv/bin/python benchmarks/backtest.py [--days 7] [--out benchmarks/results/backtest.json]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.actions.decide import Decider  # noqa: E402
from appliance.core import Alarm, AlarmState, Level, Reading, Score  # noqa: E402
from appliance.detector.bundle import MODEL_FILES, write_bundle  # noqa: E402
from appliance.detector.scorer import Detector  # noqa: E402
from appliance.detector.train import TrainSettings, train_bundle  # noqa: E402
from appliance.lifecycle.backtest import Grid, backtest  # noqa: E402
from appliance.lifecycle.config import BacktestBounds  # noqa: E402
from appliance.store import Store, StoreReader  # noqa: E402
from appliance.store.verdicts import AlarmVerdict  # noqa: E402
from benchmarks.common import parser, write_results  # noqa: E402
from firmware_sim.pump import SENSORS, PumpModel  # noqa: E402

LIBRARIES = ("onnxruntime", "numpy")
T0 = 1_765_000_000.0
DAY = 86_400
FAULT_AT, FAULT_S = 13 * 3600, 600      # each day: bearing wear from 13:00 for 10 minutes ...
FALSE_AT = 20 * 3600                     # ... and an alarm at 20:00 a technician called a false alarm


def simulate(days: float, store: Store) -> tuple[np.ndarray, list[tuple[str, float, float, str]]]:
    """Write ``days`` of the pump into ``store``; return the first hour's rows and the episodes recorded."""
    pump = PumpModel(seed=11)
    first_hour, episodes = [], []
    for t in range(int(days * DAY)):
        in_day = t % DAY
        if in_day == FAULT_AT:
            pump.inject("bearing_wear", severity=2.0)
        elif in_day == FAULT_AT + FAULT_S:
            pump.clear_faults()
            episodes.append(("fault", T0 + t - FAULT_S + 5, T0 + t + 30, "bearing"))
        elif in_day == FALSE_AT:
            episodes.append(("false_alarm", T0 + t, T0 + t + 60, ""))
        sample = pump.step(1.0)
        if t < 3600:
            first_hour.append([sample[s] for s in SENSORS])
        for s, v in sample.items():
            store.put_reading(Reading("pump1", s, T0 + t, v))
        if t % 50_000 == 0:
            store.flush(600)  # the live path's bound on readings in flight, roughly
    store.put_score(Score("pump1", T0 + days * DAY - 1, 0.5, 1.0, {s: 1 / 8 for s in SENSORS}, "live"))
    for i, (verdict, start, end, cause) in enumerate(episodes):
        alarm = Alarm(id=f"ep{i:03d}", asset="pump1", level=Level.ANOMALY, state=AlarmState.NORMAL, start=start,
                      end=end, active=False, peak_ratio=3.0, top_sensors=("Accelerometer1RMS",))
        store.put_alarm(alarm)
        store.put_verdict(AlarmVerdict.new(alarm.id, "pump1", "tech", verdict, cause=cause or None, ts=end + 600))
    assert store.flush(600)
    return np.asarray(first_hour), episodes


def recalibrated(bundle: Path, out: Path, factor: float) -> Path:
    meta = json.loads((bundle / "bundle.json").read_text())
    meta = dict(meta, thresholds={k: v * factor for k, v in meta["thresholds"].items()},
                threshold=meta["threshold"] * factor, model_version=f"{meta['model_version']}-x{factor:g}")
    return write_bundle(out, meta, {p: bundle / n for p, n in MODEL_FILES.items()})


def read_and_window(db: Path, detector: Detector, grid: Grid) -> tuple[int, int, float]:
    """The shared part alone: readings out of the store, through the window builder."""
    builder = grid.builder(detector)
    started = time.perf_counter()
    n = windows = 0
    for r in StoreReader(db).asset_readings("pump1"):
        n += 1
        windows += sum(w.complete for w in builder.add(r))
    return n, builder.rows, time.perf_counter() - started


def timed_backtest(db: Path, candidate: Detector, current: Detector | None, grid: Grid) -> dict:
    report = backtest(db, candidate, current, grid, Decider, BacktestBounds(days=366, min_history_s=0))
    rp = report.replay
    return {"seconds": round(rp.seconds, 2), "grid_rows": rp.grid_rows, "readings": rp.readings,
            "windows_scored_per_model": report.candidate.windows,
            "rows_per_s": round(rp.grid_rows / rp.seconds), "readings_per_s": round(rp.readings / rp.seconds),
            "episodes": len(report.episodes), "candidate_alarms": report.candidate.alarms,
            "faults_caught": len(report.candidate.caught), "faults_missed": len(report.candidate.missed),
            "verdict": report.reason}


def main() -> None:
    ap = parser(__doc__, ROOT / "benchmarks" / "results" / "backtest.json")
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--max-epochs", type=int, default=60)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        db = work / "store.db"
        store = Store(db, retention_days=3650, max_readings=50_000_000)
        store.start()
        started = time.perf_counter()
        hour, episodes = simulate(args.days, store)
        store.close()
        write_s = time.perf_counter() - started
        print(f"store: {args.days:g} days x {len(SENSORS)} sensors at 1 Hz written in {write_s:.0f} s, "
              f"{len(episodes)} labelled episodes")
        bundle = train_bundle(hour, list(SENSORS), work / "current", TrainSettings(max_iter=args.max_epochs, seed=1))
        current = Detector.load(bundle)
        candidate = Detector.load(recalibrated(bundle, work / "candidate", 1.2))
        grid = Grid(staleness_s=5.0, lateness_s=2.0)
        n, rows, seconds = read_and_window(db, current, grid)
        shared = {"seconds": round(seconds, 2), "readings": n, "grid_rows": rows, "rows_per_s": round(rows / seconds),
                  "readings_per_s": round(n / seconds)}
        one = timed_backtest(db, current, None, grid)
        two = timed_backtest(db, candidate, current, grid)
    res = {"days": args.days, "sensors": len(SENSORS), "period_s": 1.0,
           "model": {"window": current.window, "stride": current.stride, "hidden": list(TrainSettings().hidden),
                     "max_epochs": args.max_epochs, "precision": current.precision, "threads": current.threads},
           "store_write_s": round(write_s, 1), "read_and_window": shared, "one_model": one, "two_models": two}
    print(f"{'phase':<18}{'seconds':>10}{'grid rows/s':>14}{'readings/s':>14}")
    for name, r in (("read_and_window", shared), ("one_model", one), ("two_models", two)):
        print(f"{name:<18}{r['seconds']:>10.1f}{r['rows_per_s']:>14,}{r['readings_per_s']:>14,}")
    print(f"verdict (candidate x1.2 against the current model): {two['verdict']}")
    print(f"\nwrote {write_results(args.out, res, libraries=LIBRARIES)}")


if __name__ == "__main__":
    main()
