"""Train a model bundle from normal-operation rows, on the gateway itself.

Steps of :func:`train_bundle` (each deterministic for a given ``seed``):

1. Fit the robust scaler (median, IQR) on the training part of the rows.
2. Align rows to the ``period_s`` grid (when timestamps are given) and split in
   time: the oldest ``holdout`` share is held back. Windows never
   straddle the split or a gap in the timestamps, so held-back windows share no
   row with training windows and are an honest sample of unseen normal data.
3. Fit the dense window autoencoder on training windows (stride ``train_stride``).
4. Export FP32 ONNX; quantize to static INT8 calibrated on training windows.
5. Calibrate one threshold per precision on held-back errors (see
   :func:`calibrate_threshold`).
6. Check INT8 against FP32 on held-back and probe windows; refuse on failure.
7. Write the bundle atomically (temp dir + rename).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx
from scipy import stats
from sklearn.base import clone

from appliance.detector.autoencoder import WindowAutoencoder
from appliance.detector.bundle import FORMAT_VERSION, Scaler, data_sha256, write_bundle
from appliance.detector.features import TREND_LIMIT, center_levels, trending_sensors
from appliance.detector.quantize import (CheckLimits, QuantizationCheckError, gemm_nodes, make_session,
                                         probe_shift_for, probe_windows, quantize_model, sensor_errors,
                                         verify_int8)

logger = logging.getLogger(__name__)

LABEL_COLUMNS = frozenset({"anomaly", "changepoint"})
TIME_COLUMNS = ("datetime", "ts", "timestamp", "time")


# ---------------------------------------------------------------- CSV input

def parse_time(text: str, where: str) -> float:
    """UNIX seconds or ISO 8601 (naive = UTC) from a text cell; ValueError names ``where``."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{where}: cannot parse time {text!r} (UNIX seconds or ISO 8601 expected)") from None
    if dt.tzinfo is None:
        # Naive timestamps (SKAB) are taken as UTC: the gateway never guesses a local zone.
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def read_csv(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """One CSV file: ``(sensors, ts, rows, labels)``; ``labels`` holds the dropped label columns.

    The delimiter is ``;`` (SKAB) or ``,``; the time column is ``datetime``,
    ``ts``, ``timestamp`` or ``time`` (UNIX seconds or ISO 8601, naive = UTC).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ValueError(f"{p}: cannot read ({e.strerror or e})") from None
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"{p}: empty file")
    delimiter = ";" if lines[0].count(";") > lines[0].count(",") else ","
    reader = csv.reader(lines, delimiter=delimiter)
    header = [h.strip() for h in next(reader)]
    lower = [h.lower() for h in header]
    time_idx = next((lower.index(c) for c in TIME_COLUMNS if c in lower), None)
    if time_idx is None:
        raise ValueError(f"{p}: no time column (one of {', '.join(TIME_COLUMNS)}) in header {header}")
    label_idx = [i for i, h in enumerate(lower) if h in LABEL_COLUMNS]
    sensor_idx = [i for i in range(len(header)) if i != time_idx and i not in label_idx]
    sensors = [header[i] for i in sensor_idx]
    if not sensors:
        raise ValueError(f"{p}: no sensor columns")
    if len(set(sensors)) != len(sensors) or any(not s for s in sensors):
        raise ValueError(f"{p}: sensor column names must be non-empty and unique, got {sensors}")
    ts, rows, labels = [], [], {header[i].lower(): [] for i in label_idx}
    for lineno, rec in enumerate(reader, start=2):
        if not rec or all(not c.strip() for c in rec):
            continue
        where = f"{p}:{lineno}"
        if len(rec) != len(header):
            raise ValueError(f"{where}: {len(rec)} fields, header has {len(header)}")
        ts.append(parse_time(rec[time_idx], where))
        try:
            rows.append([float(rec[i]) for i in sensor_idx])
            for i in label_idx:
                labels[header[i].lower()].append(float(rec[i]) if rec[i].strip() else 0.0)
        except ValueError:
            bad = next(header[i] for i in sensor_idx + label_idx if not _is_float(rec[i]))
            raise ValueError(f"{where}: column {bad!r} is not a number") from None
    if not rows:
        raise ValueError(f"{p}: no data rows")
    return (sensors, np.asarray(ts, dtype=np.float64), np.asarray(rows, dtype=np.float64),
            {k: np.asarray(v) for k, v in labels.items()})


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def read_csv_rows(paths: str | Path | Iterable[str | Path]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read one or more CSV files into ``(sensors, ts[n], rows[n, n_sensors])``.

    Files are concatenated in the order given; every file must carry the same
    sensors (columns are reordered by name to the first file's order).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise ValueError("no CSV files given")
    sensors: list[str] | None = None
    all_ts, all_rows = [], []
    for p in paths:
        s, ts, rows, _ = read_csv(p)
        if sensors is None:
            sensors = s
        elif set(s) != set(sensors):
            raise ValueError(f"{p}: sensors {s} differ from the first file's {sensors}")
        else:
            rows = rows[:, [s.index(name) for name in sensors]]
        all_ts.append(ts)
        all_rows.append(rows)
    return sensors, np.concatenate(all_ts), np.concatenate(all_rows)


# ---------------------------------------------------------------- windows

def segments(n: int, ts: np.ndarray | None, max_gap_s: float) -> list[tuple[int, int]]:
    """``[start, end)`` runs of rows without a time gap over ``max_gap_s`` or a step back.

    >>> segments(6, np.array([0., 1, 2, 10, 11, 12]), 1.5)
    [(0, 3), (3, 6)]
    """
    if ts is None:
        return [(0, n)]
    d = np.diff(ts)
    breaks = np.flatnonzero((d > max_gap_s) | (d <= 0)) + 1
    bounds = [0, *breaks.tolist(), n]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def align_rows(ts: np.ndarray, rows: np.ndarray, period_s: float,
               staleness_s: float) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Resample rows onto a ``period_s`` grid by holding the last value, as the live
    window builder does; a gap longer than ``staleness_s`` (or a step back in time)
    ends a run. Returns ``(grid_ts, grid_rows, runs)``.

    >>> g, r, runs = align_rows(np.array([0., 1, 3, 4, 20, 21]), np.arange(6.)[:, None], 1.0, 5.0)
    >>> g.tolist(), r[:, 0].tolist(), runs
    ([0.0, 1.0, 2.0, 3.0, 4.0, 20.0, 21.0], [0.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0], [(0, 5), (5, 7)])
    """
    out_ts, out_rows, runs, start = [], [], [], 0
    for a, b in segments(len(ts), ts, staleness_s):
        grid = ts[a] + period_s * np.arange(int(np.floor((ts[b - 1] - ts[a]) / period_s + 1e-9)) + 1)
        idx = a + np.searchsorted(ts[a:b], grid + 1e-9 * period_s, side="right") - 1
        out_ts.append(grid)
        out_rows.append(rows[idx])
        runs.append((start, start + len(grid)))
        start += len(grid)
    return np.concatenate(out_ts), np.concatenate(out_rows), runs


def sliding_windows(rows: np.ndarray, window: int, step: int = 1) -> np.ndarray:
    """``(n_windows, window, n_sensors)`` views of consecutive rows (a copy is made).

    >>> sliding_windows(np.arange(10.).reshape(5, 2), 3, 2).shape
    (2, 3, 2)
    """
    if len(rows) < window:
        return np.empty((0, window, rows.shape[1]), dtype=rows.dtype)
    v = np.lib.stride_tricks.sliding_window_view(rows, window, axis=0)  # (n-w+1, s, w)
    return np.ascontiguousarray(v[::step].transpose(0, 2, 1))


def windows_in(rows: np.ndarray, spans: list[tuple[int, int]], window: int, step: int) -> np.ndarray:
    parts = [sliding_windows(rows[a:b], window, step) for a, b in spans]
    parts = [p for p in parts if len(p)]
    if not parts:
        return np.empty((0, window, rows.shape[1]), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32)


# ---------------------------------------------------------------- threshold

def calibrate_threshold(errors: np.ndarray, method: str = "pot", risk: float = 1e-3,
                        init_quantile: float = 0.98, margin: float = 1.1,
                        min_peaks: int = 20, max_shape: float = 0.5) -> tuple[float, dict]:
    """Threshold on held-back normal errors and a record of how it was found.

    ``pot`` (peaks over threshold, Siffer et al. 2017): fit a generalized Pareto
    distribution to the errors above their ``init_quantile`` and take the level
    exceeded with probability ``risk``. It extrapolates the tail instead of
    trusting the single largest held-back error. With fewer than ``min_peaks``
    peaks the fit is not trustworthy and ``quantile`` is used instead: the
    ``1 - risk`` quantile (at most the maximum) times ``margin``.

    >>> e = np.random.default_rng(0).exponential(1.0, 5000)
    >>> t, info = calibrate_threshold(e, risk=1e-3)
    >>> info["method"], 5.5 < t < 8.5
    ('pot', True)
    >>> calibrate_threshold(np.array([1.0, 2.0, 3.0]))[1]["method"]
    'quantile'
    """
    e = np.asarray(errors, dtype=np.float64)
    if e.ndim != 1 or len(e) == 0 or not np.isfinite(e).all():
        raise ValueError("threshold calibration needs a non-empty 1-D array of finite errors")
    if method not in ("pot", "quantile"):
        raise ValueError(f"threshold method must be 'pot' or 'quantile', got {method!r}")
    if not 0 < risk < 1:
        raise ValueError(f"risk must be in (0, 1), got {risk!r}")
    info: dict = {"n_errors": int(len(e)), "risk": risk, "holdout_max": float(e.max()),
                  "holdout_p99": float(np.quantile(e, 0.99))}
    if method == "pot":
        t0 = float(np.quantile(e, init_quantile))
        peaks = e[e > t0] - t0
        if len(peaks) >= min_peaks and peaks.std() > 0:
            c, _, sigma = stats.genpareto.fit(peaks, floc=0.0)
            r = risk * len(e) / len(peaks)
            z = t0 - sigma * math.log(r) if abs(c) < 1e-9 else t0 + sigma / c * (r ** (-c) - 1.0)
            if math.isfinite(z) and z > 0 and c <= max_shape:
                info.update(method="pot", init_quantile=init_quantile, init_threshold=t0,
                            n_peaks=int(len(peaks)), gpd_shape=float(c), gpd_scale=float(sigma))
                return float(z), info
        logger.info("pot fit not usable peaks=%d; falling back to quantile", len(peaks))
    q = float(min(np.quantile(e, 1.0 - risk), e.max()))
    info.update(method="quantile", quantile=1.0 - risk, margin=margin)
    threshold = q * margin
    if threshold <= 0:
        raise ValueError("held-back errors are all zero; the model cannot separate anything")
    return threshold, info


# ---------------------------------------------------------------- training

def _split(n: int, spans: list[tuple[int, int]], holdout: float, at: str):
    """Training and held-back spans; the held-back share is taken at the start or the end."""
    cut = int(round(n * (holdout if at == "start" else 1.0 - holdout)))
    first, second = _clip_spans(spans, 0, cut), _clip_spans(spans, cut, n)
    return (second, first) if at == "start" else (first, second)


def _clip_spans(spans: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    return [(max(a, lo), min(b, hi)) for a, b in spans if min(b, hi) > max(a, lo)]


def _cv_errors(scaled: np.ndarray, train_spans, held_spans, window: int, train_stride: int,
               folds: int, make_ae, prepare=lambda x: x, extra: np.ndarray | None = None
               ) -> tuple[np.ndarray, list[int]]:
    """Out-of-fold errors over the training part, in ``folds - 1`` contiguous time blocks.

    Each block is scored by a model fitted on every other block (the held-back
    block included), so every training row gets an honest, unseen-data error.
    With a few hundred rows the held-back block alone gives too few windows for a
    stable threshold; this multiplies them by ``folds``. ``extra`` windows (from
    another normal record) join every fold's fit, as they join the final model's.
    """
    start, end = min(a for a, _ in train_spans), max(b for _, b in train_spans)
    bounds = np.linspace(start, end, folds).round().astype(int)
    errors, sizes = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        inside = _clip_spans(train_spans, lo, hi)
        outside = _clip_spans(train_spans, start, lo) + _clip_spans(train_spans, hi, end) + list(held_spans)
        X_fit = prepare(windows_in(scaled, outside, window, train_stride))
        X_oof = prepare(windows_in(scaled, inside, window, 1))
        if len(X_oof) == 0 or len(X_fit) < 10:
            continue
        if extra is not None and len(extra):
            X_fit = np.concatenate([X_fit, extra])
        errors.append(make_ae().fit(X_fit).errors(X_oof))
        sizes.append(len(X_oof))
    return (np.concatenate(errors) if errors else np.empty(0)), sizes


def _check_int(name: str, v, lo: int) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return int(v)


def train_bundle(rows, sensors: Sequence[str], out_dir: str | Path, *, window: int = 30, stride: int = 1,
                 period_s: float = 1.0, ts: np.ndarray | None = None, staleness_s: float = 5.0,
                 holdout: float = 0.2, holdout_at: str = "start",
                 train_stride: int = 1, hidden: Sequence[int] = (64, 16), alpha: float = 1e-4,
                 noise: float = 0.0, max_iter: int = 200, batch_size: int = 128,
                 learning_rate_init: float = 1e-3, threshold_method: str = "pot", risk: float = 1e-3,
                 init_quantile: float = 0.98, margin: float = 1.1, per_channel: bool = True,
                 calibration: str = "auto", cv_folds: int = 5, threshold_scale: float = 1.0,
                 int8_exclude: str | Sequence[str] = "auto", calibrate_method: str = "minmax",
                 check_limits: CheckLimits = CheckLimits(), max_calibration_windows: int = 2000,
                 calibrate_probes: bool = True, probe_reach: float = 3.0,
                 level_free: Sequence[str] = (), trend_limit: float | None = TREND_LIMIT,
                 level_free_scale: str = "window", prior_rows: np.ndarray | None = None,
                 prior_stride: int = 5, seed: int = 0) -> Path:
    """Fit, export, quantize, check and write a bundle; return its path.

    ``rows`` is ``(n, n_sensors)`` normal-operation data. Without ``ts`` the rows
    are taken as already on the ``period_s`` grid; with ``ts`` they are aligned to
    it like the live window builder does (last value held up to ``staleness_s``;
    longer gaps and steps back split the rows into separate runs).
    ``holdout_at``: where the held-back share is taken. ``"start"`` (default)
    holds back the oldest rows, so the model is fitted on the most recent ones,
    the closest to the process it is about to watch.
    ``calibration``: errors the threshold is calibrated on: ``"holdout"`` (the
    held-back windows), ``"cv"`` (held-back windows plus out-of-fold errors of
    ``cv_folds - 1`` time blocks of the training part, see :func:`_cv_errors`) or
    ``"auto"`` (cv when fewer than 1000 held-back windows). ``threshold_scale``
    multiplies the calibrated thresholds: an allowance for slow drift of the
    normal process beyond what the training rows show (1 = none).
    ``probe_reach``: INT8 calibration and check use probe windows whose errors reach
    about this multiple of the threshold (raise it if thresholds may be scaled
    up later).
    ``level_free``: sensors whose slow level the model must not learn (each
    window is shown with their window mean removed, see
    :mod:`appliance.detector.features`); sensors whose training rows trend by
    more than ``trend_limit`` residual deviations are added (None: never).
    ``level_free_scale``: ``"window"`` scales a level-free sensor by the spread of
    its deviations from the window mean, ``"overall"`` by its whole spread (drift
    included, so its shape weighs less).
    ``prior_rows``: normal rows of the same sensors from another record (an
    earlier session, possibly at another operating point), on the same time
    grid. Each record is scaled by its own robust scaler, so the model learns
    normal shapes and cross-sensor relations from both while the threshold is
    calibrated on ``rows`` alone; ``prior_stride`` thins its windows.
    ``int8_exclude``: ``"auto"`` quantizes everything and, only if the INT8 check
    fails, retries with the output layer kept in FP32; a list names the nodes to
    keep in FP32; ``()`` never keeps any.
    """
    started = time.monotonic()
    rows = np.asarray(rows, dtype=np.float64)
    sensors = [str(s) for s in sensors]
    if rows.ndim != 2 or rows.shape[1] != len(sensors):
        raise ValueError(f"rows must be (n, {len(sensors)}) for sensors {sensors}, got shape {rows.shape}")
    if len(set(sensors)) != len(sensors) or not all(sensors):
        raise ValueError(f"sensor names must be non-empty and unique, got {sensors}")
    if not np.isfinite(rows).all():
        bad = sorted({sensors[j] for j in np.argwhere(~np.isfinite(rows))[:, 1]})
        raise ValueError(f"rows contain NaN or infinite values in sensors {bad}")
    window = _check_int("window", window, 2)
    stride = _check_int("stride", stride, 1)
    train_stride = _check_int("train_stride", train_stride, 1)
    _check_int("seed", seed, 0)
    if not (isinstance(period_s, (int, float)) and math.isfinite(period_s) and period_s > 0):
        raise ValueError(f"period_s must be finite and > 0, got {period_s!r}")
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be in (0, 1), got {holdout!r}")
    if not (isinstance(staleness_s, (int, float)) and math.isfinite(staleness_s) and staleness_s >= period_s):
        raise ValueError(f"staleness_s must be finite and >= period_s, got {staleness_s!r}")
    if ts is not None:
        ts = np.asarray(ts, dtype=np.float64)
        if ts.shape != (len(rows),):
            raise ValueError(f"ts has shape {ts.shape}, expected ({len(rows)},)")
        if not np.isfinite(ts).all():
            raise ValueError("ts contains NaN or infinite values")
    if holdout_at not in ("start", "end"):
        raise ValueError(f"holdout_at must be 'start' or 'end', got {holdout_at!r}")
    if threshold_method not in ("pot", "quantile"):
        raise ValueError(f"threshold_method must be 'pot' or 'quantile', got {threshold_method!r}")
    if not 0 < risk < 1:
        raise ValueError(f"risk must be in (0, 1), got {risk!r}")
    if calibration not in ("auto", "holdout", "cv"):
        raise ValueError(f"calibration must be 'auto', 'holdout' or 'cv', got {calibration!r}")
    cv_folds = _check_int("cv_folds", cv_folds, 3)
    if not (isinstance(threshold_scale, (int, float)) and math.isfinite(threshold_scale) and threshold_scale > 0):
        raise ValueError(f"threshold_scale must be finite and > 0, got {threshold_scale!r}")
    if isinstance(level_free, str) or not all(isinstance(s, str) for s in level_free):
        raise ValueError(f"level_free must be a list of sensor names, got {level_free!r}")
    level_free_given = list(dict.fromkeys(level_free))
    unknown = sorted(set(level_free) - set(sensors))
    if unknown:
        raise ValueError(f"level_free names sensors that are not in the data: {unknown} (sensors: {sensors})")
    if level_free_scale not in ("window", "overall"):
        raise ValueError(f"level_free_scale must be 'window' or 'overall', got {level_free_scale!r}")
    if trend_limit is not None and not (isinstance(trend_limit, (int, float)) and math.isfinite(trend_limit)
                                        and trend_limit > 0):
        raise ValueError(f"trend_limit must be finite and > 0 or None, got {trend_limit!r}")
    prior_stride = _check_int("prior_stride", prior_stride, 1)
    if prior_rows is not None:
        prior_rows = np.asarray(prior_rows, dtype=np.float64)
        if prior_rows.ndim != 2 or prior_rows.shape[1] != len(sensors):
            raise ValueError(f"prior_rows must be (n, {len(sensors)}) for sensors {sensors}, "
                             f"got shape {prior_rows.shape}")
        if not np.isfinite(prior_rows).all():
            raise ValueError("prior_rows contain NaN or infinite values")
        if len(prior_rows) < 2 * window:
            raise ValueError(f"prior_rows has {len(prior_rows)} rows; need >= {2 * window} (2 windows)")
    if int8_exclude != "auto" and isinstance(int8_exclude, str):
        raise ValueError(f"int8_exclude must be 'auto' or a list of node names, got {int8_exclude!r}")
    ae = WindowAutoencoder(hidden=hidden, alpha=alpha, noise=noise, max_iter=max_iter,
                           batch_size=batch_size, learning_rate_init=learning_rate_init,
                           random_state=seed)
    ae._validate_params()  # fail on bad model settings before any work is done

    if ts is None:
        grid_rows, runs = rows, [(0, len(rows))]
    else:
        _, grid_rows, runs = align_rows(ts, rows, period_s, staleness_s)
    train_spans, held_spans = _split(len(grid_rows), runs, holdout, holdout_at)
    train_rows = np.concatenate([grid_rows[a:b] for a, b in train_spans]) if train_spans else rows[:0]
    if len(train_rows) < 2:
        raise ValueError(f"not enough training rows ({len(rows)} given)")
    trending = trending_sensors(train_rows, sensors, trend_limit) if trend_limit is not None else []
    level_free = [s for s in sensors if s in set(level_free) | set(trending)]
    level_cols = np.array([sensors.index(s) for s in level_free], dtype=int)

    def fit_scaler(rows_: np.ndarray, spans: list[tuple[int, int]], stride_: int) -> Scaler:
        scaler_ = Scaler.fit(np.concatenate([rows_[a:b] for a, b in spans]))
        if len(level_cols) and level_free_scale == "window":
            # A level-free sensor's spread over the training rows is mostly its drift; the model
            # only sees its deviations from the window mean, so those set its scale.
            dev = center_levels(windows_in(rows_, spans, window, stride_), level_cols)
            scale = scaler_.scale.copy()
            scale[level_cols] = Scaler.fit(dev.reshape(-1, len(sensors))).scale[level_cols]
            scaler_ = replace(scaler_, scale=scale)
        return scaler_

    def prepare(X: np.ndarray) -> np.ndarray:
        return center_levels(X, level_cols)  # windows_in builds a new array each time

    scaler = fit_scaler(grid_rows, train_spans, train_stride)
    scaled = scaler.transform(grid_rows)
    X_prior = None
    if prior_rows is not None:
        whole = [(0, len(prior_rows))]
        X_prior = prepare(windows_in(fit_scaler(prior_rows, whole, prior_stride).transform(prior_rows),
                                     whole, window, prior_stride))

    X_train = prepare(windows_in(scaled, train_spans, window, train_stride))
    X_held = prepare(windows_in(scaled, held_spans, window, 1))
    need = f"(window={window}, holdout={holdout}, rows={len(rows)})"
    if len(X_train) < 10:
        raise ValueError(f"only {len(X_train)} training windows; need >= 10 {need}")
    if len(X_held) < 5:
        raise ValueError(f"only {len(X_held)} held-back windows; need >= 5 {need}")

    ae.fit(X_train if X_prior is None else np.concatenate([X_train, X_prior]))
    use_cv = calibration == "cv" or (calibration == "auto" and len(X_held) < 1000)
    oof, oof_sizes = np.empty(0), []
    if use_cv:
        oof, oof_sizes = _cv_errors(scaled, train_spans, held_spans, window, train_stride, cv_folds,
                                    lambda: clone(ae), prepare, X_prior)
    fit_s = time.monotonic() - started
    calib = X_train[np.linspace(0, len(X_train) - 1, min(len(X_train), max_calibration_windows)).astype(int)]

    with tempfile.TemporaryDirectory(prefix="appliance-train-") as tmpdir:
        tmp = Path(tmpdir)
        fp32_path, int8_path = tmp / "model.fp32.onnx", tmp / "model.int8.onnx"
        model = ae.to_onnx()
        onnx.save(model, str(fp32_path))
        s32 = make_session(fp32_path)
        e32 = sensor_errors(s32, X_held).mean(axis=1)

        def threshold(held_errors: np.ndarray, oof_errors: np.ndarray) -> tuple[float, dict]:
            th, info = calibrate_threshold(np.concatenate([oof_errors, held_errors]), threshold_method,
                                           risk, init_quantile, margin)
            info.update(calibration="cv" if use_cv else "holdout", holdout_windows=int(len(held_errors)),
                        oof_windows=int(len(oof_errors)), cv_blocks=oof_sizes,
                        threshold_scale=threshold_scale, unscaled_threshold=th)
            return th * threshold_scale, info

        th32, info32 = threshold(e32, oof)
        shift = probe_shift_for(th32, len(sensors), reach=probe_reach)
        if calibrate_probes:
            # Activation ranges must also cover anomalous inputs up to past the threshold,
            # or INT8 clips exactly the windows that matter and its decisions drift from FP32's.
            calib = np.concatenate([calib, probe_windows(calib, max_shift=shift, seed=seed + 1)])

        if int8_exclude == "auto":
            attempts = [(), (gemm_nodes(model)[-1],)]
        else:
            attempts = [tuple(int8_exclude)]
        failure: QuantizationCheckError | None = None
        for exclude in attempts:
            quantize_model(fp32_path, int8_path, calib, per_channel=per_channel,
                           nodes_to_exclude=exclude, calibrate_method=calibrate_method)
            s8 = make_session(int8_path)
            e8 = sensor_errors(s8, X_held).mean(axis=1)
            # Out-of-fold errors come from FP32 fold models; carry them to INT8 by the
            # median INT8/FP32 error ratio of the final model on the held-back windows.
            ratio = float(np.median(e8 / np.maximum(e32, 1e-12)))
            th8, info8 = threshold(e8, oof * ratio)
            info8["int8_over_fp32_error_ratio"] = ratio
            try:
                check = verify_int8(s32, s8, X_held, th32, th8, check_limits, seed=seed, probe_shift=shift)
            except QuantizationCheckError as e:
                logger.warning("int8 check failed excluded=%s: %s", list(exclude), e)
                failure = e
                continue
            check["fp32_nodes"] = list(exclude)
            failure = None
            break
        if failure is not None:
            raise failure

        digest = hashlib.sha256(fp32_path.read_bytes() + int8_path.read_bytes()).hexdigest()
        created = datetime.now(timezone.utc)
        meta = {
            "format_version": FORMAT_VERSION,
            "model_version": f"{created:%Y%m%dT%H%M%SZ}-{digest[:12]}",
            "created_at": created.isoformat(timespec="seconds"),
            "sensors": sensors,
            "window": window,
            "stride": stride,
            "period_s": float(period_s),
            "scaler": scaler.to_dict(),
            "level_free": level_free,
            "threshold": th8,
            "thresholds": {"int8": th8, "fp32": th32},
            "threshold_calibration": {"int8": info8, "fp32": info32},
            "score": "mean squared reconstruction error of the scaled window",
            "training": {
                "data_sha256": data_sha256(sensors, rows),
                "rows": int(len(rows)),
                "grid_rows": int(len(grid_rows)),
                "train_rows": int(len(train_rows)),
                "train_windows": int(len(X_train)),
                "holdout_windows": int(len(X_held)),
                "holdout": holdout,
                "holdout_at": holdout_at,
                "train_stride": train_stride,
                "prior": None if prior_rows is None else {
                    "rows": int(len(prior_rows)), "stride": prior_stride, "windows": int(len(X_prior)),
                    "data_sha256": data_sha256(sensors, prior_rows)},
                "level_free": {"given": level_free_given, "trending": trending,
                               "trend_limit": trend_limit, "scale": level_free_scale},
                "seed": seed,
                "model": {"type": "dense_autoencoder", "hidden": [int(h) for h in hidden],
                          "alpha": alpha, "noise": noise, "max_iter": max_iter, "epochs": ae.n_iter_,
                          "batch_size": batch_size, "learning_rate_init": learning_rate_init},
                "quantization": {"format": "QDQ", "activations": "int8", "weights": "int8", "output": "float",
                                 "per_channel": per_channel, "calibrate_method": calibrate_method,
                                 "calibration_windows": int(len(calib))},
                "fit_seconds": round(fit_s, 3),
            },
            "int8_check": check,
        }
        out = write_bundle(out_dir, meta, {"fp32": fp32_path, "int8": int8_path})
    logger.info("trained bundle=%s rows=%d windows=%d threshold_int8=%.5g seconds=%.1f",
                out, len(rows), len(X_train), th8, time.monotonic() - started)
    return out


def train_from_csv(paths: str | Path | Iterable[str | Path], out_dir: str | Path, **opts) -> Path:
    """``read_csv_rows`` then ``train_bundle`` (timestamps used to split runs at gaps)."""
    sensors, ts, rows = read_csv_rows(paths)
    return train_bundle(rows, sensors, out_dir, ts=ts, **opts)
