"""SKAB evaluation through the appliance's own code path (``appliance eval skab``).

Protocol mode (the published SKAB outlier-detection protocol, scored causally):

* every experiment file: the first 400 rows are training data, the rest is test;
* those 400 rows are put on the grid by the live :class:`WindowBuilder`
  (:func:`grid_rows`) and a model bundle is trained on them with
  :func:`train_grid` (robust scaler, autoencoder, FP32 export, static INT8
  quantization + check, threshold);
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

import logging
import math
import os
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from appliance.actions.decide import Decider
from appliance.config import Config
from appliance.detector.bundle import Scaler, load_bundle
from appliance.detector.quantize import QuantizationCheckError
from appliance.detector.scorer import Detector
from appliance.detector.train import TrainSettings, calibrate_threshold, read_csv, train_grid
from appliance.detector.windowing import WindowBuilder, grid_rows, rows_as_readings
from appliance.eval.common import (EvalSettings, anomaly_free_path, confusion, experiment_files,
                                   pooled_scores, scores_from, with_level_free, write_outputs)
from appliance.eval.datasets import skab_dir
from appliance.eval.stream import run_stream_eval

logger = logging.getLogger(__name__)

DETECTORS = ("ae_int8", "ae_fp32", "pca_t2q", "iforest", "flag_all")
LABELS = {
    "ae_int8": "Autoencoder INT8 (appliance)",
    "ae_fp32": "Autoencoder FP32",
    "pca_t2q": "PCA T²+Q (scikit-learn)",
    "iforest": "IsolationForest (scikit-learn)",
    "flag_all": "flag every row (floor)",
}


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
    """A row-wise reference detector, calibrated like the bundle (holdout + out-of-fold)."""

    def __init__(self, kind: str, train_rows: np.ndarray, holdout: float, folds: int, seed: int,
                 threshold_opts: dict):
        self.kind, self.seed = kind, seed
        # Same split as train_bundle's default: the oldest rows held back, fit on the recent ones.
        cut = int(round(len(train_rows) * holdout))
        self.scaler = Scaler.fit(train_rows[cut:])
        z = self.scaler.transform(train_rows)
        self.model = self._fit(z[cut:])
        held = [self._parts(self.model, z[:cut])]
        # Out-of-fold scores over time blocks of the fitting part, as train_bundle does.
        bounds = np.linspace(cut, len(z), folds).round().astype(int)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            rest = np.concatenate([z[:lo], z[hi:]])
            held.append(self._parts(self._fit(rest), z[lo:hi]))
        parts = [np.concatenate(p) for p in zip(*held)]
        if kind == "iforest":
            # The quantile margin is meant for error magnitudes; an IsolationForest score is a
            # bounded path-length ratio where 10 % more is already a gross outlier.
            threshold_opts = {**threshold_opts, "margin": 1.0}
        self.th = tuple(calibrate_threshold(p + 1e-12, **threshold_opts)[0] for p in parts)

    def _fit(self, z: np.ndarray):
        if self.kind == "pca_t2q":
            return _PcaT2Q().fit(z)
        if self.kind == "iforest":
            from sklearn.ensemble import IsolationForest
            return IsolationForest(n_estimators=100, random_state=self.seed).fit(z)
        raise ValueError(f"unknown reference detector {self.kind!r}")

    def _parts(self, model, z: np.ndarray) -> tuple[np.ndarray, ...]:
        if self.kind == "pca_t2q":
            return model.parts(z)
        return (-model.score_samples(z),)

    def ratio(self, row: np.ndarray) -> float:
        parts = self._parts(self.model, self.scaler.transform(row[None, :]))
        return float(max(p[0] / t for p, t in zip(parts, self.th)))


# ---------------------------------------------------------------- one file

def _threshold_opts(train: TrainSettings) -> dict:
    return {"method": train.threshold_method, "risk": train.risk, "init_quantile": train.init_quantile,
            "margin": train.margin}


def _new_decider(cfg: Config) -> Decider:
    d = cfg.decision
    return Decider(d.raise_k, d.raise_n, d.clear_n, d.clear_ratio, d.critical_ratio)


def replay_file(rel: str, sensors: list[str], ts: np.ndarray, rows: np.ndarray, settings: EvalSettings,
                work_dir: Path, allowance: dict[str, float] | None = None) -> dict:
    """Train on the first ``settings.train_rows`` rows, replay every row through the appliance path.

    Returns per scored window: ``t_end``, ``ratio`` (score / threshold) and
    ``active`` (alarm state after the window) for every detector, decided live by
    the appliance's :class:`Decider`. With ``allowance`` (threshold scale per
    detector, key ``"ae"`` for the autoencoder), ``active_allowance`` holds the
    decisions of a second, identical Decider fed ``ratio / scale``: the same
    model with its threshold raised by the drift allowance.
    """
    started = time.monotonic()
    n_train = settings.train_rows
    cfg = settings.config
    allowance = allowance or {}
    # INT8 must be verified up to the highest threshold it will be used with.
    train = settings.train_settings(probe_reach=3.0 * max(1.0, allowance.get("ae", 1.0)))
    # The training rows on the grid, by the live window builder; the bundle and the reference
    # detectors learn from the same rows.
    grid = grid_rows(rows_as_readings(rel, sensors, ts[:n_train], rows[:n_train]), sensors, train.period_s,
                     train.staleness_s, train.lateness_s)
    bundle_dir = train_grid(grid, work_dir / rel.replace("/", "_"), train, prior_rows=settings.prior_rows)
    t_trained = time.monotonic()
    bundle = load_bundle(bundle_dir)
    detectors = {"ae_int8": Detector(bundle, "int8"), "ae_fp32": Detector(bundle, "fp32")}
    stride = cfg.windows.stride or bundle.stride
    period_s = cfg.windows.period_s or bundle.period_s

    th_opts = _threshold_opts(train)
    refs = {k: _RowReference(k, grid.values, train.holdout, train.cv_folds, settings.seed, th_opts)
            for k in ("pca_t2q", "iforest")}

    deciders = {k: _new_decider(cfg) for k in (*detectors, *refs)}
    builder = WindowBuilder(bundle.sensors, period_s=period_s, window=bundle.span, stride=stride,
                            staleness_s=cfg.windows.staleness_s, lateness_s=cfg.windows.lateness_s)
    cols = [sensors.index(s) for s in bundle.sensors]
    t_end: list[float] = []
    ratio = {k: [] for k in deciders}
    active = {k: [] for k in deciders}
    value, top = [], []
    skipped = 0
    for reading in rows_as_readings(rel, bundle.sensors, ts, rows[:, cols], source="skab"):
        for w in builder.add(reading):
            if not w.complete:
                skipped += 1  # the runtime does not score incomplete windows either
                continue
            t_end.append(w.t_end)
            for k, det in detectors.items():
                score = det.score_one(w)
                ratio[k].append(score.ratio)
                active[k].append(deciders[k].update(score).active)
                if k == "ae_int8":
                    value.append(score.value)
                    top.append(score.top_sensors(1)[0])
            last = w.values[-1].astype(np.float64)
            for k, ref in refs.items():
                r = ref.ratio(last)
                ratio[k].append(r)
                active[k].append(deciders[k].update_ratio(r).active)
    ratios = {k: np.asarray(v) for k, v in ratio.items()}
    active_allowance = {}
    if allowance:
        for k, rs in ratios.items():
            scale = allowance.get("ae" if k.startswith("ae_") else k, 1.0)
            d = _new_decider(cfg)
            active_allowance[k] = np.array([d.update_ratio(x / scale).active for x in rs], dtype=bool)
    return {
        "t_end": np.asarray(t_end), "period_s": period_s,
        "ratio": ratios,
        "active": {k: np.asarray(v, dtype=bool) for k, v in active.items()},
        "active_allowance": active_allowance,
        "value": np.asarray(value), "threshold": bundle.thresholds["int8"], "top": top,
        "windows": len(t_end), "windows_skipped": skipped,
        "bundle": {"model_version": bundle.model_version, "window": bundle.window, "stride": stride,
                   "sizes": {p: bundle.models[p].stat().st_size for p in bundle.models},
                   "thresholds": bundle.thresholds, "int8_check": bundle.meta["int8_check"],
                   "level_free": list(bundle.level_free),
                   "threshold_calibration": bundle.meta["threshold_calibration"]["int8"]},
        "seconds": {"train": round(t_trained - started, 2), "replay": round(time.monotonic() - t_trained, 2)},
    }


def row_predictions(t_end: np.ndarray, active: np.ndarray, row_ts: np.ndarray, period_s: float) -> np.ndarray:
    """Alarm state after the latest window ending at or before each row (0 before the first).

    >>> row_predictions(np.array([10., 11., 12.]), np.array([False, True, False]),
    ...                 np.array([9., 10., 11., 11.5, 12., 30.]), 1.0).tolist()
    [0, 0, 1, 1, 0, 0]
    """
    j = np.searchsorted(t_end, row_ts + 1e-6 * period_s, side="right") - 1
    if len(active) == 0:
        return np.zeros(len(row_ts), dtype=np.uint8)
    return np.where(j >= 0, active[np.clip(j, 0, None)], False).astype(np.uint8)


def evaluate_file(rel: str, path: Path, settings: EvalSettings, work_dir: Path,
                  allowance: dict[str, float] | None = None) -> dict:
    """Protocol evaluation of one experiment file: per-test-row predictions of every detector."""
    sensors, ts, rows, labels = read_csv(path)
    if len(rows) <= settings.train_rows:
        raise ValueError(f"{path}: {len(rows)} rows, need more than {settings.train_rows} (training part)")
    label = labels.get("anomaly")
    if label is None:
        raise ValueError(f"{path}: no 'anomaly' column to score against")
    return evaluate_rows(rel, sensors, ts, rows, label, settings, work_dir, allowance)


def evaluate_rows(rel: str, sensors: list[str], ts: np.ndarray, rows: np.ndarray, label: np.ndarray,
                  settings: EvalSettings, work_dir: Path, allowance: dict[str, float] | None = None) -> dict:
    """:func:`evaluate_file` on rows already in memory (``label``: 0/1 per row)."""
    n_train = settings.train_rows
    try:
        r = replay_file(rel, sensors, ts, rows, settings, work_dir, allowance)
    except QuantizationCheckError as e:
        raise QuantizationCheckError(f"{rel}: {e}", e.report) from None
    test_ts = ts[n_train:]
    preds = {k: row_predictions(r["t_end"], a, test_ts, r["period_s"]) for k, a in r["active"].items()}
    preds["flag_all"] = np.ones(len(test_ts), dtype=np.uint8)
    preds_allowance = {k: row_predictions(r["t_end"], a, test_ts, r["period_s"])
                       for k, a in r["active_allowance"].items()}
    return {
        "file": rel, "ts": test_ts, "label": (label[n_train:] > 0).astype(np.uint8), "pred": preds,
        "pred_allowance": preds_allowance,
        "trace": {"t_end": r["t_end"], "value": r["value"], "threshold": r["threshold"],
                  "active": r["active"]["ae_int8"], "active_allowance": r["active_allowance"].get("ae_int8"),
                  "top": r["top"], "ts_all": ts,
                  "label_all": label, "train_rows": n_train},
        "windows": r["windows"], "windows_skipped": r["windows_skipped"], "bundle": r["bundle"],
        "seconds": r["seconds"],
    }


def _worker(args) -> dict:
    fn, fargs = args
    logging.getLogger("appliance").setLevel(logging.WARNING)
    # One BLAS thread per job (the reference detectors' fits too): the workers already use every core.
    with threadpool_limits(limits=1):
        return fn(*fargs)


def run_jobs(jobs: list, workers: int) -> list:
    """Run ``(fn, args)`` jobs in ``workers`` spawned processes (one BLAS thread each), in order."""
    if workers == 1 or len(jobs) == 1:
        return [_worker(j) for j in jobs]
    import multiprocessing as mp
    # spawn: ONNX Runtime and BLAS thread pools do not survive fork safely.
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
        return list(ex.map(_worker, jobs))


# ---------------------------------------------------------------- choices made on anomaly-free.csv

def with_prior(data_dir: str | Path, settings: EvalSettings) -> EvalSettings:
    """``settings`` whose bundles also learn from all of ``anomaly-free.csv``, when asked to."""
    if not settings.prior_from_anomaly_free or settings.prior_rows is not None:
        return settings
    sensors, ts, rows, _ = read_csv(anomaly_free_path(data_dir))
    # On the appliance's time grid, like the rows it is trained next to.
    train = settings.train_settings()
    grid = grid_rows(rows_as_readings("anomaly-free", sensors, ts, rows), sensors, train.period_s,
                     train.staleness_s, train.lateness_s)
    return replace(settings, prior_rows=grid.values)


# ---------------------------------------------------------------- drift allowance from anomaly-free.csv

def _chunk_replay(rel: str, path: Path, start: int, length: int, settings: EvalSettings, work_dir: Path) -> dict:
    sensors, ts, rows, _ = read_csv(path)
    sl = slice(start, start + length)
    settings1 = replace(settings, bundle={**settings.bundle, "threshold_scale": 1.0})
    r = replay_file(f"{rel}@{start}", sensors, ts[sl], rows[sl], settings1, work_dir)
    r["test_ts"] = ts[sl][settings.train_rows:]
    return r


def _far_at(chunks: list[dict], key: str, scale: float, cfg: Config) -> float:
    flagged = total = 0
    for c in chunks:
        d = _new_decider(cfg)
        active = np.array([d.update_ratio(x / scale).active for x in c["ratio"][key]], dtype=bool)
        p = row_predictions(c["t_end"], active, c["test_ts"], c["period_s"])
        flagged += int(p.sum())
        total += len(p)
    return flagged / total if total else 0.0


def calibrate_drift_allowance(data_dir: str | Path, settings: EvalSettings, budget: float, workers: int,
                              work_dir: Path, chunk_rows: int = 1150, step_rows: int = 1000) -> dict:
    """Threshold scale per detector so that normal operation stays within a false-alarm budget.

    ``anomaly-free.csv`` (normal operation only, no labels involved) is cut into
    protocol-shaped chunks: ``train_rows`` to train on, then the rest of
    ``chunk_rows`` as "test" rows that are all normal. Every detector is trained
    and replayed on each chunk exactly as in the protocol, and its thresholds are
    scaled by the smallest factor >= 1 at which at most ``budget`` of those normal
    rows are alarmed. This measures how far the process wanders beyond what 400
    rows show, on data the protocol allows for choices.
    """
    path = anomaly_free_path(data_dir)
    n = len(read_csv(path)[1])
    starts = list(range(0, n - chunk_rows + 1, step_rows))
    chunks = run_jobs([(_chunk_replay, ("anomaly-free", path, s, chunk_rows, settings, work_dir)) for s in starts],
                  workers)
    out = {"budget": budget, "chunks": len(chunks), "chunk_rows": chunk_rows, "scales": {}, "far_at_1": {}}
    for key in ("ae_int8", "pca_t2q", "iforest"):
        far1 = _far_at(chunks, key, 1.0, settings.config)
        out["far_at_1"][key] = round(far1, 4)
        if far1 <= budget:
            out["scales"][key] = 1.0
            continue
        lo, hi = 0.0, math.log(1000.0)  # bisection on log scale; FAR falls as the scale grows
        for _ in range(20):
            mid = (lo + hi) / 2
            if _far_at(chunks, key, math.exp(mid), settings.config) <= budget:
                hi = mid
            else:
                lo = mid
        out["scales"][key] = round(math.exp(hi), 4)
    logger.info("drift allowance budget=%.3f scales=%s", budget, out["scales"])
    return out


# ---------------------------------------------------------------- whole run

def format_table(summary: dict) -> str:
    allow = summary.get("detectors_drift_allowance")
    lines = [f"SKAB {summary['mode']} mode: {summary['files']} files, {summary['test_rows']} test rows "
             f"({summary['anomalous_share']:.1%} anomalous), every row scored causally"]
    head = f"{'detector':34s} {'F1':>6s} {'FAR %':>7s} {'MAR %':>7s} {'delay s':>8s} {'fEp/d':>7s}"
    if allow:
        lines.append(f"{'':34s} {'threshold from training rows':^38s} | {'+ drift allowance':^38s}")
        head += f" | {'F1':>6s} {'FAR %':>7s} {'MAR %':>7s} {'delay s':>8s} {'fEp/d':>7s}"
    lines.append(head)

    def cells(m: dict | None) -> str:
        if m is None:
            return f"{'':>6s} {'':>7s} {'':>7s} {'':>8s} {'':>7s}"
        delay, per_day = m.get("mean_delay_s"), m.get("false_episodes_per_day")
        return (f"{m['f1']:6.3f} {m['far']:7.2f} {m['mar']:7.2f} "
                f"{'-' if delay is None else f'{delay:.1f}':>8s} {'-' if per_day is None else f'{per_day:.0f}':>7s}")
    for k in DETECTORS:
        line = f"{LABELS[k]:34s} {cells(summary['detectors'][k])}"
        if allow:
            line += f" | {cells(allow.get(k))}"
        lines.append(line)
    hours = summary["detectors"]["ae_int8"].get("normal_hours")
    if hours is not None:
        lines.append(f"fEp/d: alarm episodes raised on a normal row, per day of normal test rows "
                     f"({hours:.1f} h of them)")
    q = summary["int8"]
    lines.append(f"INT8 vs FP32: rows decided the same {q['row_agreement']:.2%}"
                 + (f" ({q['row_agreement_drift_allowance']:.2%} with allowance)" if allow else "")
                 + f", F1 diff {q['f1_diff']:+.4f}, model {q['fp32_bytes_mean']:,.0f} -> "
                 f"{q['int8_bytes_mean']:,.0f} bytes ({q['size_ratio']:.2f}x smaller)")
    if allow:
        d = summary["drift_allowance"]
        lines.append(f"drift allowance: thresholds x {', '.join(f'{k} {v:.2f}' for k, v in d['scales'].items())} "
                     f"(<= {d['budget']:.0%} of normal rows alarmed on {d['chunks']} chunks of anomaly-free.csv)")
    lf = summary.get("level_free") or {}
    if lf.get("per_file"):
        counts = Counter(n for names in lf["per_file"].values() for n in names)
        given = (lf.get("from_anomaly_free") or {}).get("sensors")
        lines.append("level-free sensors (files): " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                                                       or "none")
                     + (f"; drifting in anomaly-free.csv: {', '.join(given) or 'none'}" if given is not None else ""))
    lines.append(f"elapsed {summary['elapsed_s']:.0f} s, {summary['workers']} worker(s)")
    return "\n".join(lines)


def run_skab_eval(data_dir: str | Path, mode: str = "protocol", predictions_out: str | Path | None = None,
                  json_out: str | Path | None = None, *, settings: EvalSettings | None = None,
                  workers: int | None = None, files: Sequence[str] | None = None, quiet: bool = False,
                  keep_results: bool = False) -> dict:
    """Run the SKAB evaluation, print the table, return the summary dict.

    Two operating points of the same run are reported: thresholds calibrated
    on each file's training rows alone (the appliance default; these are the
    predictions written to ``predictions_out``), and the same thresholds raised
    by the drift allowance measured on ``anomaly-free.csv`` (see
    :func:`calibrate_drift_allowance`; skipped when ``settings.drift_budget`` is
    None). ``files`` restricts the run to some relative names (e.g.
    ``["valve1/0.csv"]``); ``keep_results`` adds the per-file arrays under
    ``"results"`` (for plots).
    """
    if mode == "stream":
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
    settings, level_free = with_level_free(data_dir, settings)
    settings = with_prior(data_dir, settings)
    if settings.prior_from_anomaly_free:
        # The allowance is measured on anomaly-free.csv, which these bundles have now seen.
        settings = replace(settings, drift_budget=None)
    allowance = None
    with tempfile.TemporaryDirectory(prefix="skab-eval-") as tmp:
        scales: dict[str, float] = {}
        if settings.drift_budget is not None:
            allowance = calibrate_drift_allowance(data_dir, settings, settings.drift_budget, workers, Path(tmp))
            scales = {("ae" if k == "ae_int8" else k): v for k, v in allowance["scales"].items()}
        jobs = [(evaluate_file, (rel, p, settings, Path(tmp), scales)) for rel, p in todo]
        results = run_jobs(jobs, workers)
    labels = np.concatenate([r["label"] for r in results])
    summary: dict[str, Any] = {
        "mode": "protocol", "files": len(results), "test_rows": int(len(labels)),
        "anomalous_share": float(labels.mean()), "train_rows_per_file": settings.train_rows,
        "detectors": pooled_scores(results, labels, "pred", DETECTORS),
    }
    if allowance is not None:
        summary["detectors_drift_allowance"] = pooled_scores(results, labels, "pred_allowance",
                                                      [k for k in DETECTORS if k != "flag_all"])
    cat = lambda key, k: np.concatenate([r[key][k] for r in results])  # noqa: E731
    sizes = {p: float(np.mean([r["bundle"]["sizes"][p] for r in results])) for p in ("int8", "fp32")}
    summary["int8"] = {
        "row_agreement": float((cat("pred", "ae_int8") == cat("pred", "ae_fp32")).mean()),
        "f1_diff": round(summary["detectors"]["ae_int8"]["f1"] - summary["detectors"]["ae_fp32"]["f1"], 4),
        "int8_bytes_mean": sizes["int8"], "fp32_bytes_mean": sizes["fp32"],
        "size_ratio": sizes["fp32"] / sizes["int8"],
        "fp32_nodes": sorted({n for r in results for n in r["bundle"]["int8_check"].get("fp32_nodes", [])}),
        "holdout_error_correlation_min": min(r["bundle"]["int8_check"]["holdout"]["error_correlation"]
                                             for r in results),
    }
    if allowance is not None:
        summary["int8"]["row_agreement_drift_allowance"] = float(
            (cat("pred_allowance", "ae_int8") == cat("pred_allowance", "ae_fp32")).mean())
        summary["int8"]["f1_diff_drift_allowance"] = round(
            summary["detectors_drift_allowance"]["ae_int8"]["f1"]
            - summary["detectors_drift_allowance"]["ae_fp32"]["f1"], 4)
    summary["per_file"] = {r["file"]: {**{k: scores_from(confusion(r["pred"][k], r["label"]))
                                          for k in ("ae_int8", "ae_fp32", "pca_t2q")},
                                       "int8_fp32_agreement": round(float(
                                           (r["pred"]["ae_int8"] == r["pred"]["ae_fp32"]).mean()), 4),
                                       "windows": r["windows"], "windows_skipped": r["windows_skipped"],
                                       "threshold": r["bundle"]["threshold_calibration"],
                                       "seconds": r["seconds"]} for r in results}
    bundle_opts = dict(settings.bundle)
    if settings.prior_rows is not None:
        bundle_opts["prior_rows"] = f"{len(settings.prior_rows)} rows of anomaly-free.csv"
    summary["settings"] = {"train_rows": settings.train_rows, "bundle": bundle_opts,
                           "drift_budget": settings.drift_budget,
                           "windows": settings.config.windows.model_dump(),
                           "decision": settings.config.decision.model_dump(),
                           "window": results[0]["bundle"]["window"], "stride": results[0]["bundle"]["stride"]}
    summary["drift_allowance"] = allowance
    summary["level_free"] = {"from_anomaly_free": level_free,
                             "per_file": {r["file"]: r["bundle"]["level_free"] for r in results}}
    summary["elapsed_s"] = round(time.monotonic() - started, 1)
    summary["workers"] = workers
    write_outputs(summary, results, predictions_out, json_out)
    if not quiet:
        print(format_table(summary))
    if keep_results:
        summary["results"] = results
    return summary


if __name__ == "__main__":  # pragma: no cover - convenience for development
    run_skab_eval(sys.argv[1] if len(sys.argv) > 1 else skab_dir())

