"""Train a model bundle from normal-operation rows, on the gateway itself.

Every choice is one validated :class:`TrainSettings`. Steps of :func:`train_bundle`
(each deterministic for a given ``seed``; BLAS pinned to one thread throughout):

1. Put the rows on the ``period_s`` grid (when timestamps are given) with the
   live :class:`~appliance.detector.windowing.WindowBuilder` (:func:`grid_rows`),
   and split in time: the oldest ``holdout`` share is held back. Windows never
   straddle the split or the end of a run (a gap, a stale or bad value), so
   held-back windows share no row with training windows and are an honest
   sample of unseen normal data.
2. Fit the robust scaler (median, IQR) on the training part of the rows.
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
from typing import Annotated, Iterable, Literal, Sequence

import numpy as np
import onnx
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from scipy import stats
from sklearn.base import clone
from threadpoolctl import threadpool_limits

from appliance.detector.autoencoder import TRAIN_BLAS_THREADS, WindowAutoencoder
from appliance.detector.bundle import FORMAT_VERSION, Scaler, data_sha256, write_bundle
from appliance.detector.features import TREND_LIMIT, center_levels, trending_sensors
from appliance.detector.quantize import (CheckLimits, QuantizationCheckError, gemm_nodes, probe_shift_for,
                                         probe_windows, quantize_model, verify_int8)
from appliance.detector.session import make_session, sensor_errors
from appliance.detector.windowing import GridRows, grid_rows, rows_as_readings

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


# ---------------------------------------------------------------- settings

def _whole_number(v):
    """An int (numpy ints too); never a float or a bool, which pydantic would otherwise coerce."""
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"must be an int, got {v!r}")
    return v


Whole = Annotated[int, BeforeValidator(_whole_number)]


class TrainSettings(BaseModel):
    """Every choice :func:`train_bundle` makes, validated when the settings are built.

    Alignment (``period_s``, ``staleness_s``, ``lateness_s``): the grid the rows
    are put on, as the live window builder puts readings on it; give the
    appliance's ``[windows]`` values.
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
    ``prior_stride`` thins the windows of ``prior_rows`` (see :func:`train_bundle`).
    ``int8_exclude``: ``"auto"`` quantizes everything and, only if the INT8 check
    fails, retries with the output layer kept in FP32; a list names the nodes to
    keep in FP32; ``()`` never keeps any.

    >>> TrainSettings(window=10, hidden=[32, 8]).hidden
    (32, 8)
    >>> try:
    ...     TrainSettings(window=4.0)
    ... except ValueError as e:  # pydantic's ValidationError, one entry per problem
    ...     print(e.errors()[0]["loc"], e.errors()[0]["msg"])
    ('window',) Value error, must be an int, got 4.0
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # grid alignment
    period_s: float = Field(1.0, gt=0)
    staleness_s: float = Field(5.0, gt=0)
    lateness_s: float = Field(2.0, ge=0)
    # windows and split
    window: Whole = Field(30, ge=2)
    stride: Whole = Field(1, ge=1)
    train_stride: Whole = Field(1, ge=1)
    holdout: float = Field(0.2, gt=0, lt=1)
    holdout_at: Literal["start", "end"] = "start"
    # the autoencoder
    hidden: tuple[Annotated[Whole, Field(ge=1)], ...] = Field((64, 16), min_length=1)
    alpha: float = Field(1e-4, ge=0)
    noise: float = Field(0.0, ge=0)
    max_iter: Whole = Field(200, ge=1)
    batch_size: Whole = Field(128, ge=1)
    learning_rate_init: float = Field(1e-3, gt=0)
    seed: Whole = Field(0, ge=0)
    # the threshold
    threshold_method: Literal["pot", "quantile"] = "pot"
    risk: float = Field(1e-3, gt=0, lt=1)
    init_quantile: float = Field(0.98, gt=0, lt=1)
    margin: float = Field(1.1, gt=0)
    calibration: Literal["auto", "holdout", "cv"] = "auto"
    cv_folds: Whole = Field(5, ge=3)
    threshold_scale: float = Field(1.0, gt=0)
    # INT8
    per_channel: bool = True
    int8_exclude: Literal["auto"] | tuple[str, ...] = "auto"
    calibrate_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    check_limits: CheckLimits = CheckLimits()
    max_calibration_windows: Whole = Field(2000, ge=1)
    calibrate_probes: bool = True
    probe_reach: float = Field(3.0, gt=0)
    # level-free sensors and another normal record
    level_free: tuple[str, ...] = ()
    trend_limit: float | None = Field(TREND_LIMIT, gt=0)
    level_free_scale: Literal["window", "overall"] = "window"
    prior_stride: Whole = Field(5, ge=1)

    @field_validator("level_free", mode="before")
    @classmethod
    def _names(cls, v):
        # A bare string would otherwise read as a list of one-letter sensors, or fail obscurely.
        if isinstance(v, str) or not all(isinstance(s, str) for s in v):
            raise ValueError(f"level_free must be a list of sensor names, got {v!r}")
        return v

    @field_validator("int8_exclude", mode="before")
    @classmethod
    def _nodes(cls, v):
        if isinstance(v, str) and v != "auto":
            raise ValueError(f"int8_exclude must be 'auto' or a list of node names, got {v!r}")
        return v

    @model_validator(mode="after")
    def _grid(self):
        if self.staleness_s < self.period_s:
            raise ValueError(f"staleness_s ({self.staleness_s}) must be >= period_s ({self.period_s})")
        return self

    def autoencoder(self) -> WindowAutoencoder:
        """The (unfitted) autoencoder these settings describe."""
        return WindowAutoencoder(hidden=self.hidden, alpha=self.alpha, noise=self.noise, max_iter=self.max_iter,
                                 batch_size=self.batch_size, learning_rate_init=self.learning_rate_init,
                                 random_state=self.seed)


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


def train_bundle(rows, sensors: Sequence[str], out_dir: str | Path, settings: TrainSettings | None = None, *,
                 ts: np.ndarray | None = None, prior_rows: np.ndarray | None = None) -> Path:
    """Fit, export, quantize, check and write a bundle; return its path.

    ``rows`` is ``(n, n_sensors)`` normal-operation data. Without ``ts`` the rows
    are taken as already on the ``period_s`` grid, one run; with ``ts`` they are
    fed, row by row, to the live window builder (:func:`grid_rows`): last value
    held up to ``staleness_s``, a stale row or a long gap splits the rows into
    separate runs. ``settings``: :class:`TrainSettings` (default: the appliance's).
    ``prior_rows``: normal rows of the same sensors from another record (an
    earlier session, possibly at another operating point), on the same time
    grid. Each record is scaled by its own robust scaler, so the model learns
    normal shapes and cross-sensor relations from both while the threshold is
    calibrated on ``rows`` alone; ``settings.prior_stride`` thins its windows.
    """
    settings = _settings(settings)
    rows = np.asarray(rows, dtype=np.float64)
    sensors = [str(s) for s in sensors]
    if rows.ndim != 2 or rows.shape[1] != len(sensors):
        raise ValueError(f"rows must be (n, {len(sensors)}) for sensors {sensors}, got shape {rows.shape}")
    _check_sensors(sensors)
    if not np.isfinite(rows).all():
        bad = sorted({sensors[j] for j in np.argwhere(~np.isfinite(rows))[:, 1]})
        raise ValueError(f"rows contain NaN or infinite values in sensors {bad}")
    prior_rows = _check_data(sensors, settings, prior_rows)
    if ts is None:
        grid = GridRows(tuple(sensors), settings.period_s * np.arange(len(rows), dtype=np.float64), rows,
                        ((0, len(rows)),) if len(rows) else ())
    else:
        ts = np.asarray(ts, dtype=np.float64)
        if ts.shape != (len(rows),):
            raise ValueError(f"ts has shape {ts.shape}, expected ({len(rows)},)")
        if not np.isfinite(ts).all():
            raise ValueError("ts contains NaN or infinite values")
        grid = grid_rows(rows_as_readings("training", sensors, ts, rows), sensors, settings.period_s,
                         settings.staleness_s, settings.lateness_s)
    return _train(grid, out_dir, settings, prior_rows, source_rows=rows)


def train_grid(grid: GridRows, out_dir: str | Path, settings: TrainSettings | None = None, *,
               prior_rows: np.ndarray | None = None) -> Path:
    """:func:`train_bundle` on rows already on the grid (:func:`grid_rows`), e.g. an asset's recorded readings.

    ``settings.period_s`` must be the grid's period; the bundle records it for the live builder.
    """
    settings = _settings(settings)
    sensors = list(grid.sensors)
    _check_sensors(sensors)
    values = np.asarray(grid.values, dtype=np.float64)
    if values.shape != (len(grid.ts), len(sensors)) or not np.isfinite(values).all():
        raise ValueError(f"grid values must be finite, shape ({len(grid.ts)}, {len(sensors)}); got {values.shape}")
    prior_rows = _check_data(sensors, settings, prior_rows)
    return _train(replace(grid, values=values), out_dir, settings, prior_rows, source_rows=values)


def _settings(settings: TrainSettings | None) -> TrainSettings:
    if settings is None:
        return TrainSettings()
    if not isinstance(settings, TrainSettings):
        raise TypeError(f"settings must be a TrainSettings, got {type(settings).__name__}")
    return settings


def _check_sensors(sensors: list[str]) -> None:
    if len(set(sensors)) != len(sensors) or not all(sensors):
        raise ValueError(f"sensor names must be non-empty and unique, got {sensors}")


def _check_data(sensors: list[str], settings: TrainSettings, prior_rows: np.ndarray | None) -> np.ndarray | None:
    """The checks on the data that the settings alone cannot make; returns ``prior_rows`` as float64."""
    unknown = sorted(set(settings.level_free) - set(sensors))
    if unknown:
        raise ValueError(f"level_free names sensors that are not in the data: {unknown} (sensors: {sensors})")
    if prior_rows is None:
        return None
    prior_rows = np.asarray(prior_rows, dtype=np.float64)
    if prior_rows.ndim != 2 or prior_rows.shape[1] != len(sensors):
        raise ValueError(f"prior_rows must be (n, {len(sensors)}) for sensors {sensors}, "
                         f"got shape {prior_rows.shape}")
    if not np.isfinite(prior_rows).all():
        raise ValueError("prior_rows contain NaN or infinite values")
    if len(prior_rows) < 2 * settings.window:
        raise ValueError(f"prior_rows has {len(prior_rows)} rows; need >= {2 * settings.window} (2 windows)")
    return prior_rows


def _train(grid: GridRows, out_dir: str | Path, s: TrainSettings, prior_rows: np.ndarray | None,
           source_rows: np.ndarray) -> Path:
    # One BLAS thread for the whole training (scaler, folds, final fit, checks): a loaded
    # 2-core gateway must not make it many times slower, and no caller has to remember it.
    with threadpool_limits(limits=TRAIN_BLAS_THREADS):
        return _train_pinned(grid, out_dir, s, prior_rows, source_rows)


def _train_pinned(grid: GridRows, out_dir: str | Path, s: TrainSettings, prior_rows: np.ndarray | None,
                  source_rows: np.ndarray) -> Path:
    started = time.monotonic()
    sensors = list(grid.sensors)
    window = s.window
    ae = s.autoencoder()

    grid_values, runs = grid.values, list(grid.runs)
    train_spans, held_spans = _split(len(grid_values), runs, s.holdout, s.holdout_at)
    train_rows = (np.concatenate([grid_values[a:b] for a, b in train_spans]) if train_spans
                  else grid_values[:0])
    if len(train_rows) < 2:
        raise ValueError(f"not enough training rows ({len(source_rows)} given)")
    trending = trending_sensors(train_rows, sensors, s.trend_limit) if s.trend_limit is not None else []
    level_free_given = list(dict.fromkeys(s.level_free))
    level_free = [n for n in sensors if n in set(s.level_free) | set(trending)]
    level_cols = np.array([sensors.index(n) for n in level_free], dtype=int)

    def fit_scaler(rows_: np.ndarray, spans: list[tuple[int, int]], stride_: int) -> Scaler:
        scaler_ = Scaler.fit(np.concatenate([rows_[a:b] for a, b in spans]))
        if len(level_cols) and s.level_free_scale == "window":
            # A level-free sensor's spread over the training rows is mostly its drift; the model
            # only sees its deviations from the window mean, so those set its scale.
            dev = center_levels(windows_in(rows_, spans, window, stride_), level_cols)
            scale = scaler_.scale.copy()
            scale[level_cols] = Scaler.fit(dev.reshape(-1, len(sensors))).scale[level_cols]
            scaler_ = replace(scaler_, scale=scale)
        return scaler_

    def prepare(X: np.ndarray) -> np.ndarray:
        return center_levels(X, level_cols)  # windows_in builds a new array each time

    scaler = fit_scaler(grid_values, train_spans, s.train_stride)
    scaled = scaler.transform(grid_values)
    X_prior = None
    if prior_rows is not None:
        whole = [(0, len(prior_rows))]
        X_prior = prepare(windows_in(fit_scaler(prior_rows, whole, s.prior_stride).transform(prior_rows),
                                     whole, window, s.prior_stride))

    X_train = prepare(windows_in(scaled, train_spans, window, s.train_stride))
    X_held = prepare(windows_in(scaled, held_spans, window, 1))
    need = f"(window={window}, holdout={s.holdout}, rows={len(source_rows)})"
    if len(X_train) < 10:
        raise ValueError(f"only {len(X_train)} training windows; need >= 10 {need}")
    if len(X_held) < 5:
        raise ValueError(f"only {len(X_held)} held-back windows; need >= 5 {need}")

    ae.fit(X_train if X_prior is None else np.concatenate([X_train, X_prior]))
    use_cv = s.calibration == "cv" or (s.calibration == "auto" and len(X_held) < 1000)
    oof, oof_sizes = np.empty(0), []
    if use_cv:
        oof, oof_sizes = _cv_errors(scaled, train_spans, held_spans, window, s.train_stride, s.cv_folds,
                                    lambda: clone(ae), prepare, X_prior)
    fit_s = time.monotonic() - started
    calib = X_train[np.linspace(0, len(X_train) - 1, min(len(X_train), s.max_calibration_windows)).astype(int)]

    with tempfile.TemporaryDirectory(prefix="appliance-train-") as tmpdir:
        tmp = Path(tmpdir)
        fp32_path, int8_path = tmp / "model.fp32.onnx", tmp / "model.int8.onnx"
        model = ae.to_onnx()
        onnx.save(model, str(fp32_path))
        s32 = make_session(fp32_path)
        e32 = sensor_errors(s32, X_held).mean(axis=1)

        def threshold(held_errors: np.ndarray, oof_errors: np.ndarray) -> tuple[float, dict]:
            th, info = calibrate_threshold(np.concatenate([oof_errors, held_errors]), s.threshold_method,
                                           s.risk, s.init_quantile, s.margin)
            info.update(calibration="cv" if use_cv else "holdout", holdout_windows=int(len(held_errors)),
                        oof_windows=int(len(oof_errors)), cv_blocks=oof_sizes,
                        threshold_scale=s.threshold_scale, unscaled_threshold=th)
            return th * s.threshold_scale, info

        th32, info32 = threshold(e32, oof)
        shift = probe_shift_for(th32, len(sensors), reach=s.probe_reach)
        if s.calibrate_probes:
            # Activation ranges must also cover anomalous inputs up to past the threshold,
            # or INT8 clips exactly the windows that matter and its decisions drift from FP32's.
            calib = np.concatenate([calib, probe_windows(calib, max_shift=shift, seed=s.seed + 1)])

        if s.int8_exclude == "auto":
            attempts = [(), (gemm_nodes(model)[-1],)]
        else:
            attempts = [tuple(s.int8_exclude)]
        failure: QuantizationCheckError | None = None
        for exclude in attempts:
            quantize_model(fp32_path, int8_path, calib, per_channel=s.per_channel,
                           nodes_to_exclude=exclude, calibrate_method=s.calibrate_method)
            s8 = make_session(int8_path)
            e8 = sensor_errors(s8, X_held).mean(axis=1)
            # Out-of-fold errors come from FP32 fold models; carry them to INT8 by the
            # median INT8/FP32 error ratio of the final model on the held-back windows.
            ratio = float(np.median(e8 / np.maximum(e32, 1e-12)))
            th8, info8 = threshold(e8, oof * ratio)
            info8["int8_over_fp32_error_ratio"] = ratio
            try:
                check = verify_int8(s32, s8, X_held, th32, th8, s.check_limits, seed=s.seed, probe_shift=shift)
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
            "stride": s.stride,
            "period_s": float(s.period_s),
            "scaler": scaler.to_dict(),
            "level_free": level_free,
            "threshold": th8,
            "thresholds": {"int8": th8, "fp32": th32},
            "threshold_calibration": {"int8": info8, "fp32": info32},
            "score": "mean squared reconstruction error of the scaled window",
            "training": {
                "data_sha256": data_sha256(sensors, source_rows),
                "rows": int(len(source_rows)),
                "grid_rows": int(len(grid_values)),
                "train_rows": int(len(train_rows)),
                "train_windows": int(len(X_train)),
                "holdout_windows": int(len(X_held)),
                "holdout": s.holdout,
                "holdout_at": s.holdout_at,
                "train_stride": s.train_stride,
                "prior": None if prior_rows is None else {
                    "rows": int(len(prior_rows)), "stride": s.prior_stride, "windows": int(len(X_prior)),
                    "data_sha256": data_sha256(sensors, prior_rows)},
                "level_free": {"given": level_free_given, "trending": trending,
                               "trend_limit": s.trend_limit, "scale": s.level_free_scale},
                "seed": s.seed,
                "model": {"type": "dense_autoencoder", "hidden": [int(h) for h in s.hidden],
                          "alpha": s.alpha, "noise": s.noise, "max_iter": s.max_iter, "epochs": ae.n_iter_,
                          "batch_size": s.batch_size, "learning_rate_init": s.learning_rate_init},
                "quantization": {"format": "QDQ", "activations": "int8", "weights": "int8", "output": "float",
                                 "per_channel": s.per_channel, "calibrate_method": s.calibrate_method,
                                 "calibration_windows": int(len(calib))},
                "fit_seconds": round(fit_s, 3),
            },
            "int8_check": check,
        }
        out = write_bundle(out_dir, meta, {"fp32": fp32_path, "int8": int8_path})
    logger.info("trained bundle=%s rows=%d windows=%d threshold_int8=%.5g seconds=%.1f",
                out, len(source_rows), len(X_train), th8, time.monotonic() - started)
    return out


def train_from_csv(paths: str | Path | Iterable[str | Path], out_dir: str | Path,
                   settings: TrainSettings | None = None) -> Path:
    """``read_csv_rows`` then ``train_bundle`` (the timestamps put the rows on the grid)."""
    sensors, ts, rows = read_csv_rows(paths)
    return train_bundle(rows, sensors, out_dir, settings, ts=ts)
