"""Which fault classes of the process rig can be detected at all: a supervised oracle, with the labels.

``benchmarks/detector_process.py`` reports the mean detection over the
*detectable* fault classes, as process-monitoring benchmarks do (the Tennessee
Eastman literature leaves out the faults no method detects). Which classes those
are must not depend on the appliance's detector, so this script decides it with
a detector the appliance could never have: classifiers trained **with the fault
labels** on many runs of each class, then judged on other runs.

Per window of 22 rows (the span the appliance scores at 3 min), each sensor's
mean, standard deviation, standard deviation of its row-to-row changes and the
lag-1 autocorrelation of those changes (208 features); a gradient-boosted tree
ensemble and a logistic regression (scikit-learn) learn "after the fault" against
"normal" from ``--train-runs`` runs of each, and on ``--test-runs`` other runs
the threshold is set at 1 % of the normal windows. A class that even this
oracle detects in only a few per cent of its faulty windows is as invisible in
the data as noise, whatever the detector; a class it catches is detectable.
Nothing here tunes the appliance: its detector never sees these labels.

Usage:
  .venv/bin/python benchmarks/detectability.py [--run-spread 0.25] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "firmware-sim"))

from benchmarks.common import write_results  # noqa: E402
from process import FAULTS, Fault, ProcessModel  # noqa: E402

SPAN = 22  # rows of one scored window at 3 min (3-row model windows x horizon 20)
FAULT_AT = 160


def window_features(rows: np.ndarray, span: int = SPAN) -> np.ndarray:
    """Per sliding window: each sensor's mean, spread, spread of its changes, lag-1 autocorrelation of those."""
    w = np.lib.stride_tricks.sliding_window_view(rows, span, axis=0)  # (n, sensors, span)
    d = np.diff(w, axis=2)
    dc = d - d.mean(axis=2, keepdims=True)
    lag1 = (dc[:, :, 1:] * dc[:, :, :-1]).mean(axis=2) / (dc.var(axis=2) + 1e-12)
    return np.concatenate([w.mean(axis=2), w.std(axis=2), d.std(axis=2), lag1], axis=1)


def runs(kind: str | None, seeds: range, spread: float, rows: int) -> np.ndarray:
    """Windows of normal runs, or the windows ending after the fault of faulty runs (targets alternate)."""
    out = []
    for seed in seeds:
        fault = None if kind is None else Fault(kind, FAULT_AT, 1.0, target=1 + seed % 2)
        features = window_features(ProcessModel(seed=seed, run_spread=spread, fault=fault).run(rows))
        out.append(features if kind is None else features[FAULT_AT:])
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-spread", type=float, default=0.25, help="as benchmarks/detector_process.py")
    ap.add_argument("--train-runs", type=int, default=12)
    ap.add_argument("--test-runs", type=int, default=6)
    ap.add_argument("--rows", type=int, default=960)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "detectability.json"))
    a = ap.parse_args(argv)

    # Seeds apart from each other and from detector_process.py's (1-99 training, 1000+/2000+ runs).
    n_train, n_test = a.train_runs, a.test_runs
    normal_train = runs(None, range(5000, 5000 + n_train), a.run_spread, a.rows)
    normal_test = runs(None, range(6000, 6000 + n_test), a.run_spread, a.rows)
    result = {"run_spread": a.run_spread, "train_runs": n_train, "test_runs": n_test, "false_alarm_rate": 0.01,
              "detection": {}}
    print(f"supervised oracle, runs differ by {a.run_spread}: share of faulty windows detected at 1 % of "
          "normal windows")
    print("| fault class | gradient boosting | logistic regression |\n|---|---|---|")
    with threadpool_limits(1):
        for i, kind in enumerate(FAULTS):
            faulty_train = runs(kind, range(7000 + 100 * i, 7000 + 100 * i + n_train), a.run_spread, a.rows)
            faulty_test = runs(kind, range(8000 + 100 * i, 8000 + 100 * i + n_test), a.run_spread, a.rows)
            X = np.concatenate([normal_train, faulty_train])
            y = np.r_[np.zeros(len(normal_train)), np.ones(len(faulty_train))]
            mu, sd = X.mean(axis=0), X.std(axis=0) + 1e-12
            found = {}
            for name, clf in (("gradient_boosting", HistGradientBoostingClassifier(max_iter=200, random_state=0)),
                              ("logistic_regression", LogisticRegression(C=0.1, max_iter=3000))):
                clf.fit((X - mu) / sd, y)
                p_normal = clf.predict_proba((normal_test - mu) / sd)[:, 1]
                p_faulty = clf.predict_proba((faulty_test - mu) / sd)[:, 1]
                found[name] = float((p_faulty > np.quantile(p_normal, 0.99)).mean())
            result["detection"][kind] = found
            print(f"| {kind} | {100 * found['gradient_boosting']:.1f} % | {100 * found['logistic_regression']:.1f} % |",
                  flush=True)
    print(f"written {write_results(a.out, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
