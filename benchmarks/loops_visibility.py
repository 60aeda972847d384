"""Is a step the control loops compensate visible in the plant rig's sensors, and what would a detector need?

Issue 28 item 3. On the plant regime (``firmware-sim/process.py``, ``regime="plant"``)
``compensated_step`` is caught on 0 % of its rows by the default bundle and by the
opt-in relation member (``benchmarks/results/detector_process_plant*.json``). This
script answers two questions without the appliance, in numpy, on the simulator:

1. **What moves**: the fault run against its fault-free twin (same seed, same
   draws): the faulted valve's shift in its reading's units against that valve's
   normal spread on the twin, and every measurement's shift in units of its
   normal spread (mean over the fault's rows after the loop has settled).
2. **What a detector with perfect knowledge of the normal relation would see**:
   each controller output (valve01-06) regressed on the other 51 sensors' levels
   (ridge :data:`RIDGE`, the relation member's), fitted on a normal record of
   ``n`` rows for several ``n`` (500 rows = 25 h, the benchmark's records, up to
   20,000 rows = 42 days); the score is the squared standardized residual of the
   faulted valve (``faulted valve``) or the mean over the six valves (``six valves``,
   what the relation member scores), averaged over ``HORIZON`` rows as the bundle's
   horizon does. Reported: the unseen normal runs' 99.9th percentile over the
   training record's own 99th (how far unseen normal days land from what training
   saw: 1 would be "the relation holds"), and the share of the fault's settled rows
   above the unseen normal runs' 99.9th percentile (an oracle threshold that has
   seen the test days: the best any threshold could do with this relation).

3. **What the plant's own equations see** (``parity``): a detector that knows the
   rig's matrices (``Plant``) estimates the ten states from the 42 measurements
   and the valves by least squares, forms each row's state-equation residual
   ``x(t) - a x(t-1) - B_mv v(t)`` (which holds the unknown disturbances
   ``B_dist d(t)`` and the fault), and projects it onto the five directions that no
   disturbance can move (the orthogonal complement of ``B_dist``'s columns): the
   parity residual, whitened on a normal run and averaged over ``HORIZON`` rows
   (before squaring).
   Unseen normal runs' 99.9th percentile against the fault's settled rows, as above.
   This is the bound: what the sensors carry when the detector knows the plant.

Variants of the regression (``--variants``): ``rows`` (each row's level, as the
relation member), ``hourly`` (means over ``HORIZON`` rows, a steady-state
relation) and ``valves`` (the other five controller outputs only); and ``dynamic``,
the parity of item 3 learned from the training record instead of known: a PCA of
each pair of consecutive rows (104 values), its residual outside the first
:data:`DYNAMIC_COMPONENTS` directions (the rig's structure fixes that count a
priori: 10 states at two rows and 10 valves, less 10 state equations, plus 5
disturbances), each residual direction standardized on the training record,
averaged over ``HORIZON`` rows before squaring, as the parity. And ``measured``: each
valve regressed on what the rig does not export, the five disturbances (with their
slow drift) as if feed analyzers measured them exactly, at the row and an hour
before (a crude dynamic), standardized and scored as ``rows``: would measuring
the loads be enough for a learned static relation?

Usage:
  .venv/bin/python benchmarks/loops_visibility.py [--train-rows 500,2880,8640,20000] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "firmware-sim"))

from benchmarks.common import write_results  # noqa: E402
from process import N_CONTROLLED, N_DIST, N_MEAS, PLANT_FAULTS, SENSORS, Fault, Plant, ProcessModel  # noqa: E402

RIDGE = 0.01  # appliance.detector.pca.RELATION_RIDGE (not imported: this script must not need the appliance)
HORIZON = 20  # rows: the bundle's horizon at a 180 s period (1 h)
VALVES = [N_MEAS + i for i in range(N_CONTROLLED)]  # the controllers' outputs, valve01-06
FAULT_AT, FAULT_END, RUN_ROWS = 240, 720, 1440  # as benchmarks/detector_process.py --regime plant
DYNAMIC_COMPONENTS = 25
SETTLED = FAULT_AT + 2 * HORIZON  # the loop has pulled its measurement back by then (process back: 0.3-0.6 h)


def moving_mean(x: np.ndarray, rows: int) -> np.ndarray:
    """Means over ``rows`` consecutive rows along axis 0 (the result is ``rows - 1`` shorter)."""
    c = np.cumsum(np.concatenate([np.zeros((1, *x.shape[1:])), x]), axis=0)
    return (c[rows:] - c[:-rows]) / rows


def fault_run(target: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A compensated step on loop ``target`` and its fault-free twin."""
    fault = Fault("compensated_step", FAULT_AT, 1.0, target=target, end=FAULT_END)
    return (ProcessModel(seed=seed, fault=fault, regime="plant").run(RUN_ROWS),
            ProcessModel(seed=seed, regime="plant").run(RUN_ROWS))


def anatomy(target: int, faulty: np.ndarray, twin: np.ndarray) -> dict:
    """What the fault moves, in units of each sensor's normal spread on the twin."""
    valve = N_MEAS + target
    shift = (faulty - twin)[SETTLED:FAULT_END]
    spread = twin.std(axis=0)
    meas = np.abs(shift[:, :N_MEAS]).mean(axis=0) / spread[:N_MEAS]
    lo, hi = np.quantile(twin[:, valve], [0.01, 0.99])
    return {"valve": SENSORS[valve], "valve_shift": float(shift[:, valve].mean()),
            "valve_normal_sd": float(spread[valve]), "valve_normal_range_1_99": [float(lo), float(hi)],
            "valve_shift_in_sd": float(abs(shift[:, valve].mean()) / spread[valve]),
            "measurements_shift_in_sd_mean": float(meas.mean()),
            "measurements_shift_in_sd_max": float(meas.max()),
            "measurement_most_moved": SENSORS[int(meas.argmax())]}


def with_loads(seed: int, rows: int, fault: Fault | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A plant run and, per row, its true disturbances (with the slow drift), as a perfect feed analyzer
    would read them (the rig keeps them inside; read from the model after each row)."""
    model = ProcessModel(seed=seed, fault=fault, regime="plant")
    out, loads = [], []
    for _ in range(rows):
        out.append(model.run(1)[0])
        loads.append(model.dist + model.life.drift)
    return np.array(out), np.array(loads)


def load_features(loads: np.ndarray) -> np.ndarray:
    """The loads at the row and ``HORIZON`` rows before (the first rows repeat the first load)."""
    before = np.vstack([np.repeat(loads[:1], HORIZON, axis=0), loads[:-HORIZON]])
    return np.concatenate([loads, before], axis=1)


def score_measured(train: tuple[np.ndarray, np.ndarray], normals: list[tuple[np.ndarray, np.ndarray]],
                   faults: list[tuple[int, tuple[np.ndarray, np.ndarray]]]) -> dict:
    rows, loads = train
    f = load_features(loads)
    fm, fs, mu, sd = f.mean(axis=0), f.std(axis=0), rows.mean(axis=0), rows.std(axis=0)
    x = (f - fm) / fs
    maps = []
    for v in VALVES:
        y = (rows[:, v] - mu[v]) / sd[v]
        gram = x.T @ x / len(x)
        coef = np.linalg.solve(gram + RIDGE * np.trace(gram) / len(gram) * np.eye(len(gram)), x.T @ y / len(x))
        maps.append((v, coef, float((y - x @ coef).std())))

    def score(run: tuple[np.ndarray, np.ndarray], t: int) -> np.ndarray:
        r, ld = run
        v, coef, s = maps[t]
        resid = ((r[:, v] - mu[v]) / sd[v] - ((load_features(ld) - fm) / fs) @ coef) / s
        return moving_mean(resid ** 2, HORIZON)

    train_p99 = float(np.quantile(np.concatenate([score(train, t) for t in range(N_CONTROLLED)]), 0.99))
    oracle = float(np.quantile(np.concatenate([score(n, t) for n in normals for t in range(N_CONTROLLED)]), 0.999))
    detected = [float((score(f, t)[SETTLED - HORIZON + 1:FAULT_END - HORIZON + 1] > oracle).mean())
                for t, f in faults]
    one = {"train_p99": train_p99, "unseen_normal_p999": oracle, "unseen_over_train": oracle / train_p99,
           "detected_at_oracle": detected, "detected_at_oracle_mean": float(np.mean(detected))}
    return {"faulted valve": one, "six valves": one}  # scored per valve only


class Relation:
    """Each valve regressed on its inputs (standardized on the training record, ridge :data:`RIDGE`)."""

    def __init__(self, train: np.ndarray, variant: str):
        self.variant = variant
        self.mu, self.sd = train.mean(axis=0), train.std(axis=0)
        z = self._levels(train)
        self.maps = []
        for v in VALVES:
            inputs = self._inputs(v)
            x, y = z[:, inputs], z[:, v]
            gram = x.T @ x / len(x)
            coef = np.linalg.solve(gram + RIDGE * np.trace(gram) / len(inputs) * np.eye(len(inputs)),
                                   x.T @ y / len(x))
            self.maps.append((v, inputs, coef, float((y - x @ coef).std())))

    def _inputs(self, valve: int) -> list[int]:
        if self.variant == "valves":
            return [v for v in VALVES if v != valve]
        return [i for i in range(len(SENSORS)) if i != valve]

    def _levels(self, rows: np.ndarray) -> np.ndarray:
        z = (rows - self.mu) / self.sd
        return moving_mean(z, HORIZON) if self.variant == "hourly" else z

    def squared(self, rows: np.ndarray) -> np.ndarray:
        """``(n, 6)`` squared standardized residual of each valve, averaged over the horizon, aligned so
        that row ``i`` ends at the run's row ``i + HORIZON - 1`` (both variants)."""
        z = self._levels(rows)
        r2 = np.stack([((z[:, v] - z[:, inputs] @ coef) / s) ** 2 for v, inputs, coef, s in self.maps], axis=1)
        return r2[HORIZON - 1:] if self.variant == "hourly" else moving_mean(r2, HORIZON)


class LearnedParity:
    """The parity learned from a normal record: PCA of consecutive row pairs, the residual directions
    standardized, averaged over the horizon, then squared (score aligned as :meth:`Relation.squared`)."""

    def __init__(self, train: np.ndarray):
        self.mu, self.sd = train.mean(axis=0), train.std(axis=0)
        pairs = self._pairs(train)
        self.center = pairs.mean(axis=0)
        _, _, vt = np.linalg.svd(pairs - self.center, full_matrices=False)
        self.residual = vt[DYNAMIC_COMPONENTS:]
        self.scale = 1.0 / np.maximum(((pairs - self.center) @ self.residual.T).std(axis=0), 1e-9)

    def _pairs(self, rows: np.ndarray) -> np.ndarray:
        z = (rows - self.mu) / self.sd
        return np.concatenate([z[1:], z[:-1]], axis=1)

    def score(self, rows: np.ndarray) -> np.ndarray:
        r = (self._pairs(rows) - self.center) @ self.residual.T * self.scale
        return (moving_mean(r, HORIZON) ** 2).mean(axis=1)


def score_dynamic(train: np.ndarray, normals: list[np.ndarray], faults: list[tuple[int, np.ndarray]]) -> dict:
    model = LearnedParity(train)
    train_p99 = float(np.quantile(model.score(train), 0.99))
    oracle = float(np.quantile(np.concatenate([model.score(n) for n in normals]), 0.999))
    detected = [float((model.score(f)[SETTLED - HORIZON:FAULT_END - HORIZON] > oracle).mean()) for _, f in faults]
    one = {"train_p99": train_p99, "unseen_normal_p999": oracle, "unseen_over_train": oracle / train_p99,
           "detected_at_oracle": detected, "detected_at_oracle_mean": float(np.mean(detected))}
    return {"faulted valve": one, "six valves": one}  # one score for every loop


def score_relation(variant: str, train: np.ndarray, normals: list[np.ndarray],
                   faults: list[tuple[int, np.ndarray]]) -> dict:
    rel = Relation(train, variant)
    out = {}
    for name, pick in (("faulted valve", None), ("six valves", "mean")):
        def score(rows: np.ndarray, target: int) -> np.ndarray:
            r2 = rel.squared(rows)
            return r2.mean(axis=1) if pick == "mean" else r2[:, target]
        # Unseen normal days against every valve (the fault could hit any loop): the oracle threshold.
        normal = np.concatenate([score(n, t) for n in normals for t in range(N_CONTROLLED)]) if pick is None \
            else np.concatenate([score(n, 0) for n in normals])
        train_p99 = float(np.quantile(score(train, 0) if pick else
                                      np.concatenate([score(train, t) for t in range(N_CONTROLLED)]), 0.99))
        oracle = float(np.quantile(normal, 0.999))
        detected = [float((score(f, t)[SETTLED - HORIZON + 1:FAULT_END - HORIZON + 1] > oracle).mean())
                    for t, f in faults]
        out[name] = {"train_p99": train_p99, "unseen_normal_p999": oracle,
                     "unseen_over_train": oracle / train_p99, "detected_at_oracle": detected,
                     "detected_at_oracle_mean": float(np.mean(detected))}
    return out


def parity_residual(rows: np.ndarray) -> np.ndarray:
    """``(n - 1, 5)``: each row's state-equation residual in the directions no disturbance moves."""
    p = Plant.draw(14, 180.0)
    valve = (rows[:, N_MEAS:] - 50.0) / 10.0
    seen = (rows[:, :N_MEAS] - p.offset) / p.unit - valve @ p.c_mv.T
    states = np.linalg.lstsq(p.c_state, seen.T, rcond=None)[0].T
    step = states[1:] - p.a * states[:-1] - valve[1:] @ p.b_mv.T
    u, _, _ = np.linalg.svd(p.b_dist, full_matrices=True)
    return step @ u[:, N_DIST:]


def parity_bound(normals: list[np.ndarray], faults: list[tuple[int, np.ndarray]], calibrate: np.ndarray) -> dict:
    """Detection of the fault's settled rows at the unseen normal runs' 99.9th percentile of the parity score."""
    ref = parity_residual(calibrate)
    cov = np.cov(ref.T)
    whiten = np.linalg.inv(np.linalg.cholesky(cov)).T

    def score(rows: np.ndarray) -> np.ndarray:
        # Averaged before squaring: the fault is a sustained offset, the noise averages out (its level
        # changes on this regime, which an average of squares would take for a fault).
        return (moving_mean(parity_residual(rows) @ whiten, HORIZON) ** 2).mean(axis=1)

    oracle = float(np.quantile(np.concatenate([score(n) for n in normals]), 0.999))
    # parity rows start at the run's row 1; a moving mean at index i ends at the run's row i + HORIZON
    detected = [float((score(f)[SETTLED - HORIZON:FAULT_END - HORIZON] > oracle).mean()) for _, f in faults]
    fault_level = [float(np.median(score(f)[SETTLED - HORIZON:FAULT_END - HORIZON]) / oracle) for _, f in faults]
    return {"unseen_normal_p999": oracle, "detected_at_oracle": detected,
            "detected_at_oracle_mean": float(np.mean(detected)), "fault_median_over_oracle": fault_level}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-rows", default="500,2880,8640,20000")
    ap.add_argument("--train-seeds", default="1,7")
    ap.add_argument("--normal-runs", type=int, default=3, help="unseen normal runs of 2880 rows (seeds 1000+)")
    ap.add_argument("--variants", default="rows,hourly,valves,dynamic,measured")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "loops_visibility.json"))
    a = ap.parse_args(argv)
    sizes = [int(v) for v in a.train_rows.split(",")]
    seeds = [int(v) for v in a.train_seeds.split(",")]
    variants = a.variants.split(",")

    kind = PLANT_FAULTS.index("compensated_step")
    runs = [(t, *fault_run(t, 2000 + 10 * t + kind)) for t in range(N_CONTROLLED)]
    moved = [anatomy(t, f, twin) for t, f, twin in runs]
    faults = [(t, f) for t, f, _ in runs]
    normals = [ProcessModel(seed=1000 + k, regime="plant").run(2880) for k in range(a.normal_runs)]
    print("| loop | valve shift (reading units) | valve's normal sd / 1-99 % range | shift in sd | "
          "measurements: mean / largest shift in sd |\n|---|---|---|---|---|")
    for m in moved:
        lo, hi = m["valve_normal_range_1_99"]
        print(f"| {m['valve']} | {m['valve_shift']:.1f} | {m['valve_normal_sd']:.1f} / {lo:.0f} .. {hi:.0f} | "
              f"{m['valve_shift_in_sd']:.2f} | {m['measurements_shift_in_sd_mean']:.2f} / "
              f"{m['measurements_shift_in_sd_max']:.2f} ({m['measurement_most_moved']}) |")
    parity = parity_bound(normals, faults, ProcessModel(seed=1, regime="plant").run(2880))
    print("\nparity (the plant's equations known): detected " + ", ".join(
        f"{SENSORS[N_MEAS + t]} {100 * d:.0f} % (median {m:.0f}x)" for (t, _), d, m in
        zip(faults, parity["detected_at_oracle"], parity["fault_median_over_oracle"])) +
        " of the settled fault rows at the unseen normal runs' p99.9")
    relation = []
    if "measured" in variants:
        loaded_normals = [with_loads(1000 + k, 2880) for k in range(a.normal_runs)]
        loaded_faults = [(t, with_loads(2000 + 10 * t + kind, RUN_ROWS,
                                        Fault("compensated_step", FAULT_AT, 1.0, target=t, end=FAULT_END)))
                         for t in range(N_CONTROLLED)]
    print("\n| variant | training rows (days) | seed | faulted valve: unseen normal p99.9 / training p99 | "
          "detected at that p99.9 | six valves: ratio | detected |\n|---|---|---|---|---|---|---|")
    for variant in variants:
        for n in sizes:
            for seed in seeds:
                if variant == "measured":
                    one = score_measured(with_loads(seed, n), loaded_normals, loaded_faults)
                else:
                    train = ProcessModel(seed=seed, regime="plant").run(n)
                    one = (score_dynamic(train, normals, faults) if variant == "dynamic" else
                           score_relation(variant, train, normals, faults))
                relation.append({"variant": variant, "train_rows": n, "train_seed": seed, **one})
                f, s = one["faulted valve"], one["six valves"]
                print(f"| {variant} | {n} ({n * 180 / 86400:.1f}) | {seed} | {f['unseen_over_train']:.1f} | "
                      f"{100 * f['detected_at_oracle_mean']:.0f} % | {s['unseen_over_train']:.1f} | "
                      f"{100 * s['detected_at_oracle_mean']:.0f} % |", flush=True)
    doc = {"regime": "plant", "fault": "compensated_step", "fault_rows": [FAULT_AT, FAULT_END], "run_rows": RUN_ROWS,
           "settled_from": SETTLED, "horizon": HORIZON, "ridge": RIDGE, "normal_runs": a.normal_runs,
           "anatomy": moved, "parity": parity, "relation": relation}
    print(f"written {write_results(a.out, doc)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
