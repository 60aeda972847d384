"""SKAB evaluation through the appliance's own code path (``appliance eval skab``).

Protocol mode (the published SKAB outlier-detection protocol, scored causally):

* every experiment file: the first 400 rows are training data, the rest is test;
* a model bundle is trained on those 400 rows with :func:`train_bundle` (robust
  scaler, autoencoder, FP32 export, static INT8 quantization + check, threshold);
* the whole file is replayed row by row, one :class:`~appliance.core.Reading`
  per sensor, through :class:`WindowBuilder` -> :meth:`Detector.score_one` ->
  :class:`Decider`, exactly as the running appliance does; incomplete windows
  are not scored (the runtime skips them too);
* the prediction of a test row is whether the alarm is active after the latest
  window ending at or before that row: causal, no look-ahead. Test rows before
  the first scored window are predicted 0 (and still written and scored);
* metrics come from one confusion matrix pooled over all test rows
  (F1 = TP / (TP + (FN + FP) / 2), FAR = FP / (FP + TN), MAR = FN / (FN + TP)).

Reference detectors run in the same pass on the same grid rows and through the
same threshold calibration and decision logic: PCA T²+Q and IsolationForest
(scikit-learn), plus the flag-everything floor. Nothing is tuned on test labels:
every setting is the appliance default or set in :class:`EvalSettings`.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from appliance.actions.decide import Decider
from appliance.config import Config
from appliance.core import Reading
from appliance.detector.bundle import Scaler, load_bundle
from appliance.detector.scorer import Detector
from appliance.detector.train import align_rows, calibrate_threshold, read_csv, train_bundle
from appliance.detector.windowing import WindowBuilder

logger = logging.getLogger(__name__)

EXPERIMENT_DIRS = ("valve1", "valve2", "other")
TRAIN_ROWS = 400
DETECTORS = ("ae_int8", "ae_fp32", "pca_t2q", "iforest", "flag_all")
LABELS = {
    "ae_int8": "Autoencoder INT8 (appliance)",
    "ae_fp32": "Autoencoder FP32",
    "pca_t2q": "PCA T²+Q (scikit-learn)",
    "iforest": "IsolationForest (scikit-learn)",
    "flag_all": "flag every row (floor)",
}


@dataclass(frozen=True)
class EvalSettings:
    """Everything the evaluation fixes in advance; none of it looks at test labels.

    ``bundle`` overrides :func:`train_bundle` keyword arguments (empty = the
    appliance defaults); ``config`` gives the window builder and decision
    settings (default: the appliance's embedded defaults).
    """

    train_rows: int = TRAIN_ROWS
    bundle: dict = field(default_factory=dict)
    config: Config = field(default_factory=Config)
    seed: int = 0
    reference_holdout: float = 0.2


# ---------------------------------------------------------------- data

def experiment_files(data_dir: str | Path) -> list[tuple[str, Path]]:
    """``(relative name, path)`` of the experiment files, in a stable order."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: SKAB data directory not found")
    out = []
    for sub in EXPERIMENT_DIRS:
        d = root / sub
        if not d.is_dir():
            continue
        files = sorted(d.glob("*.csv"), key=lambda p: (int(p.stem) if p.stem.isdigit() else math.inf, p.stem))
        out += [(f"{sub}/{p.name}", p) for p in files]
    if not out:
        raise FileNotFoundError(f"{root}: no experiment files under {', '.join(EXPERIMENT_DIRS)}")
    return out


def confusion(pred: np.ndarray, label: np.ndarray) -> dict:
    pred = np.asarray(pred).astype(bool)
    label = np.asarray(label).astype(bool)
    return {"tp": int((pred & label).sum()), "fp": int((pred & ~label).sum()),
            "fn": int((~pred & label).sum()), "tn": int((~pred & ~label).sum())}


def scores_from(c: dict) -> dict:
    """F1, FAR % and MAR % from a pooled confusion matrix (SKAB definitions).

    >>> scores_from({"tp": 6, "fp": 2, "fn": 2, "tn": 8})
    {'f1': 0.75, 'far': 20.0, 'mar': 25.0}
    """
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    f1 = tp / (tp + (fn + fp) / 2) if tp + fn + fp else 0.0
    far = 100.0 * fp / (fp + tn) if fp + tn else 0.0
    mar = 100.0 * fn / (fn + tp) if fn + tp else 0.0
    return {"f1": round(f1, 4), "far": round(far, 2), "mar": round(mar, 2)}


# ---------------------------------------------------------------- reference detectors

class _PcaT2Q:
    """PCA T² and Q (squared prediction error) on scaled rows; score = max of the two ratios."""

    def __init__(self, variance: float = 0.9):
        self.variance = variance

    def fit(self, z: np.ndarray) -> "_PcaT2Q":
        from sklearn.decomposition import PCA
        self.pca = PCA(n_components=self.variance, svd_solver="full").fit(z)
        self.eig = np.maximum(self.pca.explained_variance_, 1e-12)
        return self

    def parts(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = self.pca.transform(z)
        t2 = (t ** 2 / self.eig).sum(axis=1)
        q = ((z - self.pca.inverse_transform(t)) ** 2).sum(axis=1)
        return t2, q


class _RowReference:
    """A row-wise reference detector with thresholds calibrated like the bundle's."""

    def __init__(self, kind: str, train_rows: np.ndarray, holdout: float, seed: int, threshold_opts: dict):
        self.kind = kind
        cut = int(round(len(train_rows) * (1 - holdout)))
        fit_rows, held_rows = train_rows[:cut], train_rows[cut:]
        self.scaler = Scaler.fit(fit_rows)
        zf, zh = self.scaler.transform(fit_rows), self.scaler.transform(held_rows)
        if kind == "pca_t2q":
            self.model = _PcaT2Q().fit(zf)
            t2, q = self.model.parts(zh)
            self.th = (calibrate_threshold(t2 + 1e-12, **threshold_opts)[0],
                       calibrate_threshold(q + 1e-12, **threshold_opts)[0])
        elif kind == "iforest":
            from sklearn.ensemble import IsolationForest
            self.model = IsolationForest(n_estimators=100, random_state=seed).fit(zf)
            self.th = (calibrate_threshold(-self.model.score_samples(zh), **threshold_opts)[0],)
        else:
            raise ValueError(f"unknown reference detector {kind!r}")

    def ratio(self, row: np.ndarray) -> float:
        z = self.scaler.transform(row[None, :])
        if self.kind == "pca_t2q":
            t2, q = self.model.parts(z)
            return float(max(t2[0] / self.th[0], q[0] / self.th[1]))
        return float(-self.model.score_samples(z)[0] / self.th[0])


# ---------------------------------------------------------------- one file

def _threshold_opts(bundle_opts: dict) -> dict:
    from inspect import signature
    defaults = signature(train_bundle).parameters
    get = lambda k: bundle_opts.get(k, defaults[k].default)  # noqa: E731
    return {"method": get("threshold_method"), "risk": get("risk"),
            "init_quantile": get("init_quantile"), "margin": get("margin")}


def evaluate_file(rel: str, path: Path, settings: EvalSettings, work_dir: Path) -> dict:
    """Train on the first rows of one file, replay all of it, return per-row predictions."""
    started = time.monotonic()
    sensors, ts, rows, labels = read_csv(path)
    n_train = settings.train_rows
    if len(rows) <= n_train:
        raise ValueError(f"{path}: {len(rows)} rows, need more than {n_train} (training part)")
    label = labels.get("anomaly")
    if label is None:
        raise ValueError(f"{path}: no 'anomaly' column to score against")
    cfg = settings.config
    opts = {"seed": settings.seed, **settings.bundle}
    if "period_s" not in opts and cfg.windows.period_s is not None:
        opts["period_s"] = cfg.windows.period_s
    opts.setdefault("staleness_s", cfg.windows.staleness_s)
    bundle_dir = train_bundle(rows[:n_train], sensors, work_dir / rel.replace("/", "_"),
                              ts=ts[:n_train], **opts)
    t_trained = time.monotonic()
    bundle = load_bundle(bundle_dir)
    detectors = {"ae_int8": Detector(bundle, "int8"), "ae_fp32": Detector(bundle, "fp32")}
    stride = cfg.windows.stride or bundle.stride
    period_s = cfg.windows.period_s or bundle.period_s

    # Reference detectors: same grid alignment of the same training rows.
    _, grid_train, _ = align_rows(ts[:n_train], rows[:n_train], period_s, opts["staleness_s"])
    th_opts = _threshold_opts(settings.bundle)
    refs = {k: _RowReference(k, grid_train, settings.reference_holdout, settings.seed, th_opts)
            for k in ("pca_t2q", "iforest")}

    dec = cfg.decision
    deciders = {k: Decider(dec.raise_k, dec.raise_n, dec.clear_n, dec.clear_ratio, dec.critical_ratio)
                for k in (*detectors, *refs)}
    builder = WindowBuilder(bundle.sensors, period_s=period_s, window=bundle.window, stride=stride,
                            staleness_s=cfg.windows.staleness_s, lateness_s=cfg.windows.lateness_s)
    col = {s: sensors.index(s) for s in bundle.sensors}
    t_end, active, trace = [], {k: [] for k in deciders}, {"value": [], "threshold": [], "top": []}
    skipped = 0
    for i in range(len(rows)):
        for s, j in col.items():
            for w in builder.add(Reading(rel, s, float(ts[i]), float(rows[i, j]), source="skab")):
                if not w.complete:
                    skipped += 1
                    continue
                t_end.append(w.t_end)
                for k, det in detectors.items():
                    score = det.score_one(w)
                    active[k].append(deciders[k].update(score).active)
                    if k == "ae_int8":
                        trace["value"].append(score.value)
                        trace["threshold"].append(score.threshold)
                        trace["top"].append(score.top_sensors(1)[0])
                last = w.values[-1].astype(np.float64)
                for k, ref in refs.items():
                    active[k].append(deciders[k].update_ratio(ref.ratio(last)).active)
    t_end_arr = np.asarray(t_end)
    test_ts = ts[n_train:]
    # Latest window ending at or before each test row (small epsilon: float grid times).
    j = np.searchsorted(t_end_arr, test_ts + 1e-6 * period_s, side="right") - 1
    preds = {}
    for k, a in active.items():
        a = np.asarray(a, dtype=bool)
        preds[k] = np.where(j >= 0, a[np.clip(j, 0, None)] if len(a) else False, False).astype(np.uint8)
    preds["flag_all"] = np.ones(len(test_ts), dtype=np.uint8)
    meta = bundle.meta
    return {
        "file": rel,
        "ts": test_ts,
        "label": (label[n_train:] > 0).astype(np.uint8),
        "pred": preds,
        "trace": {"t_end": t_end_arr, "value": np.asarray(trace["value"]),
                  "threshold": np.asarray(trace["threshold"]), "active": np.asarray(active["ae_int8"]),
                  "top": trace["top"], "ts_all": ts, "label_all": label, "train_rows": n_train},
        "windows": len(t_end), "windows_skipped": skipped,
        "bundle": {"model_version": bundle.model_version, "window": bundle.window, "stride": stride,
                   "sizes": {p: bundle.models[p].stat().st_size for p in bundle.models},
                   "thresholds": bundle.thresholds, "int8_check": meta["int8_check"],
                   "threshold_method": meta["threshold_calibration"]["int8"]["method"]},
        "seconds": {"train": round(t_trained - started, 2), "total": round(time.monotonic() - started, 2)},
    }


def _worker(args) -> dict:
    rel, path, settings, work_dir = args
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)  # one BLAS thread per worker: the workers already use every core
    except ImportError:
        pass
    logging.getLogger("appliance").setLevel(logging.WARNING)
    return evaluate_file(rel, path, settings, Path(work_dir))


# ---------------------------------------------------------------- whole run

def _delays(results: list[dict], key: str) -> dict:
    """Mean detection delay (s) over episodes detected while their label is set."""
    delays, missed = [], 0
    for r in results:
        lab, pred, ts = r["label"].astype(bool), r["pred"][key].astype(bool), r["ts"]
        if not lab.any():
            continue
        start = np.flatnonzero(lab)[0]
        hit = np.flatnonzero(lab & pred)
        if len(hit):
            delays.append(float(ts[hit[0]] - ts[start]))
        else:
            missed += 1
    return {"mean_delay_s": round(float(np.mean(delays)), 1) if delays else None,
            "episodes_detected": len(delays), "episodes_missed": missed}


def write_predictions(results: list[dict], out_dir: str | Path, key: str = "ae_int8") -> Path:
    """One ``datetime;prediction`` CSV per experiment file, at the same relative path."""
    out = Path(out_dir)
    for r in results:
        p = out / r["file"]
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f, delimiter=";", lineterminator="\n")
            w.writerow(["datetime", "prediction"])
            for t, y in zip(r["ts"], r["pred"][key]):
                w.writerow([datetime.fromtimestamp(float(t), timezone.utc).strftime("%Y-%m-%d %H:%M:%S"), int(y)])
        os.replace(tmp, p)
    return out


def format_table(summary: dict) -> str:
    lines = [f"SKAB {summary['mode']} mode: {summary['files']} files, {summary['test_rows']} test rows "
             f"({summary['anomalous_share']:.1%} anomalous), every row scored causally",
             f"{'detector':34s} {'F1':>6s} {'FAR %':>7s} {'MAR %':>7s} {'delay s':>8s}"]
    for k in DETECTORS:
        m = summary["detectors"][k]
        delay = m.get("mean_delay_s")
        lines.append(f"{LABELS[k]:34s} {m['f1']:6.3f} {m['far']:7.2f} {m['mar']:7.2f} "
                     f"{'-' if delay is None else f'{delay:.1f}':>8s}")
    q = summary["int8"]
    lines.append(f"INT8 vs FP32: rows decided the same {q['row_agreement']:.2%}, F1 diff "
                 f"{q['f1_diff']:+.4f}, model size {q['fp32_bytes_mean']:,.0f} -> {q['int8_bytes_mean']:,.0f} "
                 f"bytes ({q['size_ratio']:.2f}x smaller)")
    lines.append(f"elapsed {summary['elapsed_s']:.0f} s, {summary['workers']} worker(s)")
    return "\n".join(lines)


def run_skab_eval(data_dir: str | Path, mode: str = "protocol", predictions_out: str | Path | None = None,
                  json_out: str | Path | None = None, *, settings: EvalSettings | None = None,
                  workers: int | None = None, files: Sequence[str] | None = None, quiet: bool = False,
                  keep_results: bool = False) -> dict:
    """Run the SKAB evaluation, print the table, return the summary dict.

    ``files`` restricts the run to some relative names (e.g. ``["valve1/0.csv"]``);
    ``keep_results`` adds the per-file arrays under ``"results"`` (for plots).
    """
    if mode == "stream":
        from appliance.eval.stream import run_stream_eval
        return run_stream_eval(data_dir, predictions_out=predictions_out, json_out=json_out,
                               settings=settings, files=files, quiet=quiet)
    if mode != "protocol":
        raise ValueError(f"mode must be 'protocol' or 'stream', got {mode!r}")
    settings = settings or EvalSettings()
    started = time.monotonic()
    todo = experiment_files(data_dir)
    if files is not None:
        wanted = set(files)
        todo = [(rel, p) for rel, p in todo if rel in wanted]
        if missing := wanted - {rel for rel, _ in todo}:
            raise FileNotFoundError(f"not among the experiment files: {sorted(missing)}")
    workers = workers or min(2, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="skab-eval-") as tmp:
        jobs = [(rel, p, settings, tmp) for rel, p in todo]
        if workers == 1:
            results = [_worker(j) for j in jobs]
        else:
            import multiprocessing as mp
            # spawn: ONNX Runtime and BLAS thread pools do not survive fork safely.
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
                results = list(ex.map(_worker, jobs))
    labels = np.concatenate([r["label"] for r in results])
    summary: dict[str, Any] = {
        "mode": "protocol", "files": len(results), "test_rows": int(len(labels)),
        "anomalous_share": float(labels.mean()), "train_rows_per_file": settings.train_rows,
        "detectors": {},
    }
    for k in DETECTORS:
        pred = np.concatenate([r["pred"][k] for r in results])
        c = confusion(pred, labels)
        summary["detectors"][k] = {**scores_from(c), **c, **_delays(results, k)}
    p8 = np.concatenate([r["pred"]["ae_int8"] for r in results])
    p32 = np.concatenate([r["pred"]["ae_fp32"] for r in results])
    sizes = {p: float(np.mean([r["bundle"]["sizes"][p] for r in results])) for p in ("int8", "fp32")}
    summary["int8"] = {
        "row_agreement": float((p8 == p32).mean()),
        "f1_diff": round(summary["detectors"]["ae_int8"]["f1"] - summary["detectors"]["ae_fp32"]["f1"], 4),
        "int8_bytes_mean": sizes["int8"], "fp32_bytes_mean": sizes["fp32"],
        "size_ratio": sizes["fp32"] / sizes["int8"],
        "fp32_nodes": sorted({n for r in results for n in r["bundle"]["int8_check"].get("fp32_nodes", [])}),
        "holdout_error_correlation_min": min(r["bundle"]["int8_check"]["holdout"]["error_correlation"]
                                             for r in results),
    }
    summary["per_file"] = {r["file"]: {**{k: scores_from(confusion(r["pred"][k], r["label"]))
                                          for k in ("ae_int8", "pca_t2q")},
                                       "windows": r["windows"], "windows_skipped": r["windows_skipped"],
                                       "threshold_method": r["bundle"]["threshold_method"],
                                       "seconds": r["seconds"]} for r in results}
    summary["settings"] = {"train_rows": settings.train_rows, "bundle": settings.bundle,
                           "windows": settings.config.windows.model_dump(),
                           "decision": settings.config.decision.model_dump(),
                           "window": results[0]["bundle"]["window"], "stride": results[0]["bundle"]["stride"]}
    summary["elapsed_s"] = round(time.monotonic() - started, 1)
    summary["workers"] = workers
    if predictions_out is not None:
        write_predictions(results, predictions_out)
        summary["predictions_out"] = str(predictions_out)
    if json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(_json_dumps(summary))
    if not quiet:
        print(format_table(summary))
    if keep_results:
        summary["results"] = results
    return summary


def _json_dumps(obj) -> str:
    import json

    def default(o):
        if isinstance(o, (np.integer,)):
            return int(o)
        if isinstance(o, (np.floating,)):
            return float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(type(o))
    return json.dumps(obj, indent=2, default=default) + "\n"


if __name__ == "__main__":  # pragma: no cover - convenience for development
    run_skab_eval(sys.argv[1] if len(sys.argv) > 1 else "../shared/datasets/skab")
