"""Label-free validation: choose detector settings without SKAB's test labels.

The SKAB protocol allows choices made on training rows or ``anomaly-free.csv``
only. This builds a validation set from ``anomaly-free.csv`` alone: the record
is cut into commissioning-shaped stretches (400 rows to train on, 750 to
watch), and each stretch is copied once per fault kind with a synthetic fault
in its watched part, on one or two random sensors, 200-400 rows long, of 2-5
training standard deviations:

* ``step``: a sudden offset that stays;
* ``ramp``: an offset growing linearly to 1.5x;
* ``noise``: extra random noise.

Every copy then goes through exactly the protocol evaluation's code path
(:func:`appliance.eval.skab.evaluate_rows`: bundle training, INT8, window
builder, ``Detector.score_one``, ``Decider``) and one pooled F1 / FAR / MAR
comes out. Its false alarms are dominated by the slow drift of normal
operation, its misses by faults of a size chosen here; it ranks settings, it
does not predict SKAB scores::

    .venv/bin/python -m appliance.eval.validation
    .venv/bin/python -m appliance.eval.validation --bundle '{"hidden": [32, 8]}'
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from appliance.detector.train import read_csv
from appliance.eval.common import EvalSettings, anomaly_free_path, pooled_scores, with_level_free
from appliance.eval.datasets import skab_dir
from appliance.eval.environment import environment
from appliance.eval.skab import evaluate_rows, run_jobs

FAULT_KINDS = ("step", "ramp", "noise")
DETECTORS = ("ae_int8", "ae_fp32", "pca_t2q", "iforest")


def synthetic_faults(sensors: list[str], ts: np.ndarray, rows: np.ndarray, train_rows: int = 400,
                     watch_rows: int = 750, step_rows: int = 1000,
                     seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """``(name, ts, rows, label)`` for every stretch and fault kind; ``rows`` are never modified.

    >>> t = np.arange(2300.0)
    >>> rows = np.random.default_rng(1).normal(size=(2300, 3))
    >>> cases = synthetic_faults(["a", "b", "c"], t, rows)
    >>> [name for name, *_ in cases][:3], len(cases)
    (['stretch0-step', 'stretch0-ramp', 'stretch0-noise'], 6)
    >>> _, _, faulty, label = cases[0]
    >>> same = label == 0
    >>> bool(label[:400].any()), 200 <= int(label.sum()) <= 400, bool((faulty[same] == rows[:1150][same]).all())
    (False, True, True)
    """
    rows = np.asarray(rows, dtype=np.float64)
    span = train_rows + watch_rows
    starts = range(0, len(rows) - span + 1, step_rows)
    if not len(starts):
        raise ValueError(f"need at least {span} rows of normal operation, got {len(rows)}")
    rng = np.random.default_rng(seed)
    out = []
    for k, a in enumerate(starts):
        base, t = rows[a:a + span], ts[a:a + span]
        sd = base[:train_rows].std(axis=0) + 1e-9
        for kind in FAULT_KINDS:
            faulty = base.copy()
            label = np.zeros(span)
            lo = train_rows + int(rng.integers(100, 200))
            hi = min(span, lo + int(rng.integers(200, 400)))
            size = rng.uniform(2.0, 5.0)
            for j in rng.choice(len(sensors), size=int(rng.integers(1, 3)), replace=False):
                sign = rng.choice([-1.0, 1.0])
                if kind == "step":
                    faulty[lo:hi, j] += sign * size * sd[j]
                elif kind == "ramp":
                    faulty[lo:hi, j] += sign * size * sd[j] * np.linspace(0.0, 1.5, hi - lo)
                else:
                    faulty[lo:hi, j] += rng.normal(0.0, size * sd[j], hi - lo)
            label[lo:hi] = 1
            out.append((f"stretch{k}-{kind}", t, faulty, label))
    return out


def run_validation(data_dir: str | Path, settings: EvalSettings | None = None, workers: int | None = None,
                   seed: int = 0, quiet: bool = False) -> dict:
    """Evaluate ``settings`` on the synthetic-fault copies of ``anomaly-free.csv``; print and return the scores."""
    settings = settings or EvalSettings()
    started = time.monotonic()
    settings, level_free = with_level_free(data_dir, settings)
    sensors, ts, rows, _ = read_csv(anomaly_free_path(data_dir))
    cases = synthetic_faults(sensors, ts, rows, train_rows=settings.train_rows, seed=seed)
    workers = workers or min(2, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="validation-") as tmp:
        jobs = [(evaluate_rows, (name, sensors, t, r, label, settings, Path(tmp))) for name, t, r, label in cases]
        results = run_jobs(jobs, workers)
    labels = np.concatenate([r["label"] for r in results])
    summary: dict[str, Any] = {
        "cases": len(results), "rows": int(len(labels)), "faulty_share": round(float(labels.mean()), 4),
        "detectors": pooled_scores(results, labels, "pred", DETECTORS), "bundle": settings.bundle,
        "level_free": level_free, "seed": seed, "elapsed_s": round(time.monotonic() - started, 1),
    }
    if not quiet:
        print(f"label-free validation: {summary['cases']} synthetic-fault copies of anomaly-free.csv stretches, "
              f"{summary['rows']} watched rows ({summary['faulty_share']:.1%} faulty)")
        for k, m in summary["detectors"].items():
            print(f"  {k:8s} F1 {m['f1']:.4f}  FAR {m['far']:6.2f}  MAR {m['mar']:6.2f}")
        print(f"elapsed {summary['elapsed_s']:.0f} s")
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=skab_dir(), type=Path)
    ap.add_argument("--bundle", type=json.loads, default={}, help="TrainSettings overrides as JSON")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    summary = run_validation(args.data, EvalSettings(bundle=args.bundle, drift_budget=None), seed=args.seed)
    if args.json_out:
        args.json_out.write_text(json.dumps({**summary, "environment": environment()}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
