"""Train a model bundle from normal-operation rows, on the gateway itself.

Every choice is one validated :class:`TrainSettings`. Steps of :func:`train_bundle`
(each deterministic for a given ``seed``; BLAS pinned to one thread throughout),
each a function named here and called in this order by ``_train_pinned``:

1. Put the rows on the ``period_s`` grid (when timestamps are given) with the
   live :class:`~appliance.detector.windowing.WindowBuilder` (:func:`grid_rows`).
2. ``_cut_windows``: split in time (the oldest ``holdout`` share is held back),
   fit the robust scaler (median, IQR) on the training part, cut windows. Windows
   never straddle the split or the end of a run (a gap, a stale or bad value), so
   held-back windows share no row with training windows and are an honest
   sample of unseen normal data.
3. ``_fit``: the dense window autoencoder on training windows (stride
   ``train_stride``), the members the settings ask for (a linear PCA-Q member,
   :mod:`appliance.detector.pca`, and the distance member), and, with
   cross-validation, their out-of-fold errors on the same time blocks.
4. ``_export_fp32``: export FP32 ONNX and calibrate its threshold on the unseen
   blocks (:class:`~appliance.detector.calibration.BlockCalibrator`, which every
   model's threshold goes through; the rules are in :mod:`appliance.detector.calibration`).
5. ``_quantize_and_check``: quantize to static INT8 calibrated on training
   windows, calibrate its threshold, and check INT8 against FP32 on held-back
   and probe windows; refuse on failure (``_train`` retries a narrower model).
   With ``horizon`` > 1 both thresholds are then calibrated for the averaged score.
6. ``_export_members``: each member as its own FP32 ONNX file with its own
   threshold, calibrated by the same rule on the same blocks.
7. ``_bundle_meta`` and :func:`~appliance.detector.bundle.write_bundle`: write
   the bundle atomically (temp dir + rename).
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Annotated, Callable, Iterable, Literal, Sequence

import numpy as np
import onnx
from onnxruntime import InferenceSession
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from sklearn.base import clone
from threadpoolctl import threadpool_limits

from appliance.actions.decide import Decider
from appliance.detector.autoencoder import TRAIN_BLAS_THREADS, WindowAutoencoder
from appliance.detector.bundle import (FORMAT_VERSION, HORIZON_FORMAT_VERSION, MEMBER_FILES,
                                       MEMBERS_FORMAT_VERSION, Scaler, data_sha256, write_bundle)
# Re-exported: the threshold rules were defined here, and training's callers still import them from here.
from appliance.detector.calibration import (BlockCalibrator, Calibration, ThresholdPolicy,  # noqa: F401
                                            calibrate_threshold, expected_exceedance, expected_false_episodes,
                                            matched_threshold,
                                            moving_mean, next_block_threshold)
from appliance.detector.envelope import OperatingEnvelope
from appliance.detector.features import TREND_LIMIT, center_levels, trending_sensors
from appliance.detector.frozen import FrozenCheck, held_rows
from appliance.detector.pca import PcaMember
from appliance.detector.quantize import (CheckedInt8, CheckLimits, QuantizationCheckError, probe_shift_for,
                                         probe_windows, quantize_checked)
from appliance.detector.session import ONNX_INPUT, make_session, sensor_errors
from appliance.detector.spread import SPREAD_OUTPUT, SpreadMember
# Re-exported: training's callers read their CSV files from here.
from appliance.detector.tables import LABEL_COLUMNS, TIME_COLUMNS, parse_time, read_csv, read_csv_rows  # noqa: F401
from appliance.detector.windowing import GridRows, grid_rows, rows_as_readings

logger = logging.getLogger(__name__)

def infer_period(ts: np.ndarray) -> float:
    """The sample period of recorded rows: the median spacing of their timestamps (6 significant digits).

    >>> infer_period(np.array([0.0, 180.0, 360.0, 545.0, 720.0]))
    180.0
    """
    ts = np.sort(np.asarray(ts, dtype=np.float64))
    steps = np.diff(ts)
    steps = steps[steps > 0]
    if not len(steps):
        raise ValueError("cannot tell the sample period: fewer than two distinct timestamps (give --period)")
    return float(f"{float(np.median(steps)):.6g}")


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


# ---------------------------------------------------------------- settings

def _whole_number(v):
    """An int (numpy ints too); never a float or a bool, which pydantic would otherwise coerce."""
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"must be an int, got {v!r}")
    return v


Whole = Annotated[int, BeforeValidator(_whole_number)]


# The rule that sizes windows and the grid from the sample period (see grid_defaults).
WINDOW_SPAN_S = 30.0
WINDOW_ROWS = (3, 30)
STALENESS_PERIODS = 5.0
LATENESS_PERIODS = 2.0
# A decision looks at this many rows at least: short windows (slow processes) are averaged over
# consecutive windows until their span reaches it (see grid_defaults).
DECISION_ROWS = 22


def grid_defaults(period_s: float) -> dict:
    """Window length and grid tolerances derived from the sample period (each overridable).

    * ``window``: the rows covering about 30 s of process time, kept within 3-30
      rows: 30 rows at 1 s and faster (a model of 30 x sensors inputs stays small
      enough for a gateway and for a few hundred training rows), 3 rows for a slow
      process (at 3 min a 30-row window would span 90 minutes and hold a fault
      in its memory for as long; each row of a slow process already averages
      minutes, and with 52 sensors 8 rows made 416 inputs from ~400 training
      windows: on the 52-sensor process simulator 3 rows detected 38.9 % of
      faulty rows against 27.8 % with 8, both with no false alarm,
      ``benchmarks/detector_process.py``);
    * ``horizon``: windows shorter than 22 rows have their score averaged over
      consecutive windows until a decision spans 22 rows (3-row windows at 3 min:
      20 windows, 66 minutes): one short window of a slow process holds too few
      rows for a small persistent change to stand out of the noise, and the
      average lets it; a large fault still crosses within a few windows, since
      one window far over the threshold lifts the average (measured with 10, 20
      windows on the process simulator, docs/detector.md); 30-row windows (1 s
      and faster, SKAB) are not averaged;
    * ``staleness_s``: 5 periods: a held value may miss four reports before the
      cell counts as missing (5 s at 1 s, the appliance's default);
    * ``lateness_s``: 2 periods to wait for late readings (2 s at 1 s).

    >>> grid_defaults(1.0), grid_defaults(180.0)["window"], grid_defaults(0.01)["window"]
    ({'window': 30, 'horizon': 1, 'staleness_s': 5.0, 'lateness_s': 2.0}, 3, 30)
    >>> grid_defaults(5.0), grid_defaults(180.0)["horizon"]
    ({'window': 6, 'horizon': 17, 'staleness_s': 25.0, 'lateness_s': 10.0}, 20)
    """
    if not (isinstance(period_s, (int, float)) and math.isfinite(period_s) and period_s > 0):
        raise ValueError(f"period_s must be finite and > 0, got {period_s!r}")
    lo, hi = WINDOW_ROWS
    window = int(min(hi, max(lo, round(WINDOW_SPAN_S / period_s))))
    return {"window": window, "horizon": max(1, DECISION_ROWS - window + 1),
            "staleness_s": STALENESS_PERIODS * period_s, "lateness_s": LATENESS_PERIODS * period_s}


class TrainSettings(BaseModel):
    """Every choice :func:`train_bundle` makes, validated when the settings are built.

    Alignment (``period_s``, ``staleness_s``, ``lateness_s``): the grid the rows
    are put on, as the live window builder puts readings on it; give the
    appliance's ``[windows]`` values. ``window``, ``staleness_s`` and ``lateness_s``
    left out (or None) follow from ``period_s`` by :func:`grid_defaults`.
    ``early_stopping``: the autoencoder stops once its loss on the held-back
    windows has not improved for ``patience`` epochs and keeps its best epoch;
    the out-of-fold models then train for that many epochs.
    ``shrink_on_int8_refusal``: when the INT8 check refuses the model, train
    again with every hidden width halved (until it passes or the widths reach 2),
    recording each refusal in ``training.model.int8_refused``.
    ``holdout_at``: where the held-back share is taken. ``"start"`` (default)
    holds back the oldest rows, so the model is fitted on the most recent ones,
    the closest to the process it is about to watch.
    ``calibration``: errors the threshold is calibrated on: ``"holdout"`` (the
    held-back windows), ``"cv"`` (held-back windows plus out-of-fold errors of
    ``cv_folds - 1`` time blocks of the training part, see :func:`_cv_errors`) or
    ``"auto"`` (cv when fewer than 1000 held-back windows). ``threshold_scale``
    multiplies the calibrated thresholds: an allowance for slow drift of the
    normal process beyond what the training rows show (1 = none).
    ``threshold_rule``: ``"pooled"`` calibrates on all unseen errors pooled (the tail
    fit above); ``"next_block"`` (default) also predicts how high a *new* stretch of
    normal operation will reach: each unseen time block's ``1 - block_risk``
    quantile is taken, and the threshold is at least the one-sided
    ``block_confidence`` prediction bound for one more block's quantile (Student t
    on their logarithms, see :func:`next_block_threshold`). Runs of a process
    differ from each other by more than the noise inside one block; the spread
    between blocks is the only label-free evidence of how much, so it sets the
    margin instead of a fixed factor. ``block_confidence`` left out (None) is 0.99
    where the score is averaged over several windows (``horizon`` > 1, slow
    processes) and 0.95 otherwise. On a slow process a few hundred rows hold only a
    few excursions of disturbances that last hours, neighbouring blocks share them,
    and their spread understates how far another record goes: at 0.95, one 500-row
    training record in four left 6-7 % of the rows of independent normal runs in
    alarm on the process rig. At 1 s 0.99 cost SKAB more misses than it saved false
    alarms (F1 0.805 -> 0.783). Evidence in docs/detector.md.
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
    ``pca_member``: also fit a linear member, a PCA scored by its standardized Q
    residual (:mod:`appliance.detector.pca`), keeping the fewest components that
    explain ``pca_variance`` of the training data's variance; it gets its own
    threshold by the same calibration rule and the detector alarms on whichever
    model is further past its own threshold. Left out (None), it is on where the
    score is averaged over several windows (``horizon`` > 1, slow processes) and
    off otherwise. ``pca_inputs="changes"`` (default) fits it to the row-to-row
    changes inside the window, ``"rows"`` to each row's sensor vector (which
    alarmed on independent normal runs at other operating points, docs/detector.md).
    ``distance_member``: also fit the whitened distance of the row-to-row changes
    (``PcaMember(inputs="changes", statistic="distance")``, Hotelling's T² over every
    direction): a disturbance that varies more than in training, along the
    directions it usually takes, which neither the autoencoder nor Q sees. Left out
    (None), on where ``horizon`` > 1, like ``pca_member``. Its error averages
    hundreds of whitened changes, so it barely varies between the blocks of one
    record, and a run whose disturbances are a little livelier sits just under
    the calibrated threshold, where the debounce's clear level (0.8 x) holds an
    alarm once raised; ``distance_margin`` raises its threshold by that factor
    (1.05: the smallest that kept every training record of the process rig
    under 2 % of normal rows in alarm, docs/detector.md).
    ``spread_member``: also score each sensor's low-band energy over the whole
    scored span (:mod:`appliance.detector.spread`, ``spread_bands`` cosines): a
    disturbance that wanders further than in training, which members of windows of
    a few rows do not measure. Left out (None), on where ``horizon`` > 1, like
    ``pca_member``: on the plant regime of the process rig it raised the detection
    of a random variation from 17.8 % to 23.3 % of its rows and added no false
    episode in 48 days of normal runs (docs/detector.md); at ``horizon`` 1 the span
    is one window and it was not measured to pay.
    ``frozen_check``: watch every sensor that never stood still for long in the
    training rows for a value that stops changing (:mod:`appliance.detector.frozen`).
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
    staleness_s: float = Field(None, gt=0)  # None: from period_s (grid_defaults)
    lateness_s: float = Field(None, ge=0)
    # windows and split
    window: Whole = Field(None, ge=2)
    horizon: Whole = Field(None, ge=1, le=1000)  # None: from period_s (grid_defaults)
    stride: Whole = Field(1, ge=1)
    train_stride: Whole = Field(1, ge=1)
    holdout: float = Field(0.2, gt=0, lt=1)
    holdout_at: Literal["start", "end"] = "start"
    # the autoencoder
    hidden: tuple[Annotated[Whole, Field(ge=1)], ...] = Field((64, 16), min_length=1)
    alpha: float = Field(1e-4, ge=0)
    noise: float = Field(0.0, ge=0)
    max_iter: Whole = Field(200, ge=1)
    early_stopping: bool = False
    shrink_on_int8_refusal: bool = True
    patience: Whole = Field(20, ge=1)
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
    threshold_rule: Literal["pooled", "next_block"] = "next_block"
    block_risk: float = Field(0.01, gt=0, lt=1)
    block_confidence: float = Field(None, gt=0.5, lt=1)  # None: 0.99 where horizon > 1, else 0.95
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
    # the linear member (see docs/detector.md for the evidence behind the default)
    pca_member: bool = None  # None: on where horizon > 1 (see _from_period)
    pca_variance: float = Field(0.99, gt=0, lt=1)
    pca_inputs: Literal["rows", "changes"] = "changes"
    distance_member: bool = None  # None: on where horizon > 1 (see _from_period)
    distance_margin: float = Field(1.05, ge=1)
    # controllers' outputs (valve positions, drive speeds): a relation member scores each against the rest
    manipulated: tuple[str, ...] = ()
    # each sensor's low-band energy over the scored span (see appliance/detector/spread.py)
    spread_member: bool = None  # None: on where horizon > 1 (see _from_period)
    spread_bands: Whole = Field(3, ge=1)
    # sensors whose value stops changing (see appliance/detector/frozen.py)
    frozen_check: bool = True

    @model_validator(mode="before")
    @classmethod
    def _from_period(cls, data):
        if not isinstance(data, dict):
            return data
        period = data.get("period_s", 1.0)
        if not (isinstance(period, (int, float)) and not isinstance(period, bool)
                and math.isfinite(period) and period > 0):
            return data  # the field's own validation names the problem
        derived = grid_defaults(float(period))
        data = {**data, **{k: v for k, v in derived.items() if data.get(k) is None}}
        horizon = data["horizon"]
        if isinstance(horizon, int) and not isinstance(horizon, bool):
            # Averaged windows are where the changes members measurably helped (docs/detector.md).
            for member in ("pca_member", "distance_member", "spread_member"):
                if data.get(member) is None:
                    data[member] = horizon > 1
        if data.get("block_confidence") is None and isinstance(horizon, int) and not isinstance(horizon, bool):
            # Slow processes: a short record understates how far the next one goes (docs/detector.md).
            data["block_confidence"] = 0.99 if horizon > 1 else 0.95
        return data

    @field_validator("level_free", "manipulated", mode="before")
    @classmethod
    def _names(cls, v):
        # A bare string would otherwise read as a list of one-letter sensors, or fail obscurely.
        if isinstance(v, str) or not all(isinstance(s, str) for s in v):
            raise ValueError(f"must be a list of sensor names, got {v!r}")
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
            raise ValueError(f"staleness_s ({self.staleness_s}) must be >= period_s ({self.period_s}): "
                             "a value held for less than one period makes every row missing")
        return self

    def members(self, sensors: Sequence[str] = ()) -> dict[str, tuple[Callable[[], PcaMember], float]]:
        """The members these settings ask for, by bundle name: a maker of each (unfitted), and the factor
        on its calibrated threshold (``sensors``: the model's, which ``manipulated`` names)."""
        makers = {}
        if self.manipulated:
            missing = [n for n in self.manipulated if n not in sensors]
            if missing:
                raise ValueError(f"manipulated sensors not in the data: {missing}")
            targets = tuple(list(sensors).index(n) for n in self.manipulated)
            makers["relation"] = (lambda: PcaMember(inputs="rows", statistic="relation", targets=targets), 1.0)
        if self.pca_member:
            makers["pca"] = (lambda: PcaMember(self.pca_variance, self.pca_inputs), 1.0)
        if self.distance_member:
            makers["distance"] = (lambda: PcaMember(inputs="changes", statistic="distance"), self.distance_margin)
        return makers

    def threshold_policy(self) -> ThresholdPolicy:
        """How these settings calibrate a threshold from unseen errors (see :class:`BlockCalibrator`)."""
        return ThresholdPolicy(self.threshold_method, self.risk, self.init_quantile, self.margin,
                               self.threshold_rule, self.block_risk, self.block_confidence)

    def autoencoder(self) -> WindowAutoencoder:
        """The (unfitted) autoencoder these settings describe."""
        return WindowAutoencoder(hidden=self.hidden, alpha=self.alpha, noise=self.noise, max_iter=self.max_iter,
                                 batch_size=self.batch_size, learning_rate_init=self.learning_rate_init,
                                 random_state=self.seed, patience=self.patience if self.early_stopping else None)


# What each member's error is, for bundle.json's "score".
MEMBER_SCORES = {"pca": "mean squared standardized Q residual of its rows or changes",
                 "relation": "mean squared standardized residual of the manipulated variables given the rest",
                 "distance": "mean squared whitened row-to-row change (Mahalanobis)",
                 "spread": "mean squared one-sided z of each sensor's log low-band energy over the span"}


# ---------------------------------------------------------------- training

def _split(n: int, spans: list[tuple[int, int]], holdout: float, at: str):
    """Training and held-back spans; the held-back share is taken at the start or the end."""
    cut = int(round(n * (holdout if at == "start" else 1.0 - holdout)))
    first, second = _clip_spans(spans, 0, cut), _clip_spans(spans, cut, n)
    return (second, first) if at == "start" else (first, second)


def _clip_spans(spans: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    return [(max(a, lo), min(b, hi)) for a, b in spans if min(b, hi) > max(a, lo)]


def _cv_errors(scaled: np.ndarray, train_spans, held_spans, window: int, train_stride: int,
               folds: int, make_ae, prepare=lambda x: x, extra: np.ndarray | None = None,
               progress: Callable[[int, dict], None] | None = None) -> tuple[np.ndarray, list[int]]:
    """Out-of-fold errors over the training part, in ``folds - 1`` contiguous time blocks.

    Each block is scored by a model fitted on every other block (the held-back
    block included), so every training row gets an honest, unseen-data error.
    With a few hundred rows the held-back block alone gives too few windows for a
    stable threshold; this multiplies them by ``folds``. ``extra`` windows (from
    another normal record) join every fold's fit, as they join the final model's.
    ``progress(fold, epoch_info)`` is called after every epoch of fold 1, 2, ...
    """
    start, end = min(a for a, _ in train_spans), max(b for _, b in train_spans)
    bounds = np.linspace(start, end, folds).round().astype(int)
    errors, sizes = [], []
    for fold, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]), start=1):
        inside = _clip_spans(train_spans, lo, hi)
        outside = _clip_spans(train_spans, start, lo) + _clip_spans(train_spans, hi, end) + list(held_spans)
        X_fit = prepare(windows_in(scaled, outside, window, train_stride))
        X_oof = prepare(windows_in(scaled, inside, window, 1))
        if len(X_oof) == 0 or len(X_fit) < 10:
            continue
        if extra is not None and len(extra):
            X_fit = np.concatenate([X_fit, extra])
        report = None if progress is None else (lambda info, fold=fold: progress(fold, info))
        errors.append(make_ae().fit(X_fit, progress=report).errors(X_oof))
        sizes.append(len(X_oof))
    return (np.concatenate(errors) if errors else np.empty(0)), sizes


def train_bundle(rows, sensors: Sequence[str], out_dir: str | Path, settings: TrainSettings | None = None, *,
                 ts: np.ndarray | None = None, prior_rows: np.ndarray | None = None,
                 progress: Callable[[dict], None] | None = None) -> Path:
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
    ``progress`` is called after every training epoch with a dict: ``stage``
    (``"model"`` or ``"fold k/n"``), ``epoch``, ``max_epochs``, ``loss``
    (``val_loss`` with early stopping), ``elapsed_s`` and ``left_s`` (an upper
    bound: every remaining fit run to the epoch cap).
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
        spacing = float(np.median(np.diff(np.sort(ts)))) if len(ts) > 1 else 0.0
        if spacing > settings.staleness_s:
            # Every step between two rows leaves the held values stale: no two grid rows join.
            raise ValueError(
                f"the rows are {spacing:g} s apart (median) but a value older than staleness_s="
                f"{settings.staleness_s:g} s counts as missing, so every step is a gap and no window can form; "
                f"give the data's period (--period {spacing:g}), from which window and staleness follow")
    return _train(grid, out_dir, settings, prior_rows, source_rows=rows, progress=progress)


def train_grid(grid: GridRows, out_dir: str | Path, settings: TrainSettings | None = None, *,
               prior_rows: np.ndarray | None = None, progress: Callable[[dict], None] | None = None) -> Path:
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
    return _train(replace(grid, values=values), out_dir, settings, prior_rows, source_rows=values,
                  progress=progress)


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
           source_rows: np.ndarray, progress: Callable[[dict], None] | None = None) -> Path:
    # One BLAS thread for the whole training (scaler, folds, final fit, checks): a loaded
    # 2-core gateway must not make it many times slower, and no caller has to remember it.
    refused: list[dict] = []
    with threadpool_limits(limits=TRAIN_BLAS_THREADS):
        while True:
            try:
                return _train_pinned(grid, out_dir, s, prior_rows, source_rows, progress, refused)
            except QuantizationCheckError as e:
                smaller = tuple(max(2, h // 2) for h in s.hidden)
                if not s.shrink_on_int8_refusal or smaller == s.hidden:
                    raise
                # INT8 could not follow this model (typically a wide model on few rows, whose
                # small normal errors sit near INT8's resolution): a narrower one is easier to
                # quantize and less able to overfit; the refusal is recorded in the bundle.
                logger.warning("int8 check refused hidden=%s; retrying with hidden=%s: %s", list(s.hidden),
                               list(smaller), e)
                refused.append({"hidden": list(s.hidden), "reason": str(e)})
                s = s.model_copy(update={"hidden": smaller})


def _windows_reason(grid: GridRows, s: TrainSettings, n_train: int, n_held: int) -> str:
    """Why too few windows could be cut: the grid's runs against the window length."""
    runs = [b - a for a, b in grid.runs]
    if not runs:
        return (f"no complete grid row: every row had a sensor value older than staleness_s={s.staleness_s:g} s "
                f"(period_s={s.period_s:g} s); is the period right?")
    longest = max(runs)
    why = (f"{len(grid)} complete grid rows in {len(runs)} runs, the longest {longest} rows; a window needs "
           f"{s.window} consecutive rows")
    if len(runs) > 1:
        why += (f"; runs break where a value is older than staleness_s={s.staleness_s:g} s or readings stop "
                f"(period_s={s.period_s:g} s)")
    return why + f"; {n_train} training and {n_held} held-back windows"


class _Progress:
    """Turns per-epoch reports into ``progress`` dicts with elapsed time and an upper bound of time left."""

    def __init__(self, report: Callable[[dict], None] | None, fits: int, max_epochs: int):
        self.report, self.fits, self.max_epochs = report, fits, max_epochs
        self.started = time.monotonic()
        self.epochs_done = 0
        self.fit_index = 0

    def stage(self, name: str, max_epochs: int | None = None) -> Callable[[dict], None] | None:
        if self.report is None:
            return None
        self.fit_index += 1
        base = self.epochs_done
        cap = max_epochs or self.max_epochs

        def on_epoch(info: dict) -> None:
            self.epochs_done = base + info["epoch"]
            elapsed = time.monotonic() - self.started
            remaining = (cap - info["epoch"]) + (self.fits - self.fit_index) * cap
            self.report({**info, "max_epochs": cap, "stage": name, "elapsed_s": elapsed,
                         "left_s": elapsed / max(self.epochs_done, 1) * remaining})
        return on_epoch


class _FoldStages:
    """:func:`_cv_errors`'s ``progress``: one tracker stage per fold, opened at the fold's first epoch
    (a fold with too few windows to fit never opens one)."""

    def __init__(self, tracker: _Progress, folds: int, max_epochs: int):
        self.tracker, self.folds, self.max_epochs = tracker, folds, max_epochs
        self.stages: dict[int, Callable[[dict], None]] = {}

    def __call__(self, fold: int, info: dict) -> None:
        if fold not in self.stages:
            self.stages[fold] = self.tracker.stage(f"fold {fold}/{self.folds}", self.max_epochs)
        self.stages[fold](info)


# ---------------------------------------------------------------- the steps of one training run

def _train_pinned(grid: GridRows, out_dir: str | Path, s: TrainSettings, prior_rows: np.ndarray | None,
                  source_rows: np.ndarray, progress: Callable[[dict], None] | None,
                  refused: list[dict] | None = None) -> Path:
    """One training run, step by step (the module docstring says what each step does); an INT8 check
    that refuses the model raises :class:`QuantizationCheckError` for :func:`_train` to retry."""
    started = time.monotonic()
    windows = _cut_windows(grid, s, prior_rows, len(source_rows))
    fitted = _fit(windows, s, progress)
    fit_s = time.monotonic() - started
    # Every model is calibrated on the same unseen time blocks by the same rule.
    calibrator = BlockCalibrator(s.threshold_policy(), fitted.oof_sizes, fitted.cross_validated, s.threshold_scale)
    with tempfile.TemporaryDirectory(prefix="appliance-train-") as tmpdir:
        tmp = Path(tmpdir)
        fp32 = _export_fp32(fitted, windows, calibrator, tmp / "model.fp32.onnx")
        quantized = _quantize_and_check(fp32, fitted, windows, calibrator, s, tmp / "model.int8.onnx")
        members = _export_members(fitted, windows, calibrator, s, tmp)
        members.update(_spread_member(fitted, windows, calibrator, s, tmp))
        meta = _bundle_meta(s, grid, windows, fitted, fp32.path, quantized, members,
                            source_rows=source_rows, prior_rows=prior_rows, refused=refused, fit_s=fit_s)
        out = write_bundle(out_dir, meta, {"fp32": fp32.path, "int8": quantized.int8_path},
                           {name: m.path for name, m in members.items()})
    logger.info("trained bundle=%s rows=%d windows=%d threshold_int8=%.5g seconds=%.1f",
                out, len(source_rows), len(windows.X_train), quantized.int8.threshold, time.monotonic() - started)
    return out


# ---------------------------------------------------------------- 2: split, scale, cut windows

@dataclass(frozen=True)
class _LevelFree:
    """Sensors the model sees without their window level (see :mod:`appliance.detector.features`)."""

    given: list[str]     # named in the settings
    trending: list[str]  # found trending in the training rows
    names: list[str]     # both, in sensor order
    cols: np.ndarray     # their columns

    def prepare(self, X: np.ndarray) -> np.ndarray:
        """Windows as the models see them: each level-free sensor less its window mean."""
        return center_levels(X, self.cols)  # windows_in builds a new array each time


@dataclass(frozen=True)
class _Windows:
    """The grid rows split in time and scaled, and the windows every model is fitted and calibrated on."""

    sensors: list[str]
    train_spans: list[tuple[int, int]]
    held_spans: list[tuple[int, int]]
    train_rows: int                # grid rows in the training part
    level_free: _LevelFree
    scaler: Scaler                 # fitted on the training part
    scaled: np.ndarray             # every grid row, scaled
    X_train: np.ndarray            # training windows (stride train_stride)
    X_held: np.ndarray             # held-back windows (stride 1)
    X_prior: np.ndarray | None     # windows of another normal record (prior_rows), scaled on their own

    @property
    def fit_windows(self) -> np.ndarray:
        """What the final models are fitted on: the training windows and the prior record's."""
        return self.X_train if self.X_prior is None else np.concatenate([self.X_train, self.X_prior])


def _cut_windows(grid: GridRows, s: TrainSettings, prior_rows: np.ndarray | None, n_source: int) -> _Windows:
    """Split the grid rows in time (the held-back share, see :func:`_split`), fit the scaler on the
    training part, and cut both parts (and ``prior_rows``) into windows; refuse too few of them."""
    sensors = list(grid.sensors)
    train_spans, held_spans = _split(len(grid.values), list(grid.runs), s.holdout, s.holdout_at)
    train_rows = (np.concatenate([grid.values[a:b] for a, b in train_spans]) if train_spans
                  else grid.values[:0])
    if len(train_rows) < 2:
        raise ValueError(f"not enough training rows ({n_source} given)")
    level_free = _level_free(train_rows, sensors, s)
    scaler = _fit_scaler(grid.values, train_spans, s.train_stride, level_free, s)
    scaled = scaler.transform(grid.values)
    X_prior = None
    if prior_rows is not None:
        whole = [(0, len(prior_rows))]
        prior_scaled = _fit_scaler(prior_rows, whole, s.prior_stride, level_free, s).transform(prior_rows)
        X_prior = level_free.prepare(windows_in(prior_scaled, whole, s.window, s.prior_stride))
    X_train = level_free.prepare(windows_in(scaled, train_spans, s.window, s.train_stride))
    X_held = level_free.prepare(windows_in(scaled, held_spans, s.window, 1))
    _check_window_counts(grid, s, n_source, len(X_train), len(X_held))
    return _Windows(sensors, train_spans, held_spans, len(train_rows), level_free, scaler, scaled,
                    X_train, X_held, X_prior)


def _level_free(train_rows: np.ndarray, sensors: list[str], s: TrainSettings) -> _LevelFree:
    """The sensors named level-free, and those whose training rows trend by more than ``trend_limit``."""
    trending = trending_sensors(train_rows, sensors, s.trend_limit) if s.trend_limit is not None else []
    names = [n for n in sensors if n in set(s.level_free) | set(trending)]
    return _LevelFree(list(dict.fromkeys(s.level_free)), trending, names,
                      np.array([sensors.index(n) for n in names], dtype=int))


def _fit_scaler(rows: np.ndarray, spans: list[tuple[int, int]], stride: int, level_free: _LevelFree,
                s: TrainSettings) -> Scaler:
    """The robust scaler of ``rows`` inside ``spans``; level-free sensors by their deviations (``"window"``)."""
    scaler = Scaler.fit(np.concatenate([rows[a:b] for a, b in spans]))
    if len(level_free.cols) and s.level_free_scale == "window":
        # A level-free sensor's spread over the training rows is mostly its drift; the model
        # only sees its deviations from the window mean, so those set its scale.
        dev = center_levels(windows_in(rows, spans, s.window, stride), level_free.cols)
        scale = scaler.scale.copy()
        scale[level_free.cols] = Scaler.fit(dev.reshape(-1, rows.shape[1])).scale[level_free.cols]
        scaler = replace(scaler, scale=scale)
    return scaler


def _check_window_counts(grid: GridRows, s: TrainSettings, n_source: int, n_train: int, n_held: int) -> None:
    need = f"(window={s.window}, holdout={s.holdout}, rows={n_source})"
    if n_train < 10:
        raise ValueError(f"only {n_train} training windows; need >= 10 {need}: "
                         + _windows_reason(grid, s, n_train, n_held))
    if n_held < 4 + s.horizon:
        shorter = f"; more rows or a shorter --horizon (now {s.horizon}) would do" if s.horizon > 1 else ""
        raise ValueError(f"only {n_held} held-back windows; need >= {4 + s.horizon} {need}: "
                         + _windows_reason(grid, s, n_train, n_held) + shorter)


# ---------------------------------------------------------------- 3: fit

@dataclass(frozen=True)
class _Fitted:
    """The fitted autoencoder and members, and their out-of-fold errors (empty without cross-validation)."""

    autoencoder: WindowAutoencoder
    cross_validated: bool
    oof: np.ndarray                  # the autoencoder's, block after block
    oof_sizes: list[int]             # windows per out-of-fold block
    members: dict[str, PcaMember]
    member_oof: dict[str, np.ndarray]
    member_margin: dict[str, float]  # the factor on each member's calibrated threshold


def _fit(w: _Windows, s: TrainSettings, progress: Callable[[dict], None] | None) -> _Fitted:
    """Fit the autoencoder and the members the settings ask for; with cross-validation, also the fold
    models whose out-of-fold errors the thresholds are calibrated on (see :func:`_cv_errors`)."""
    use_cv = s.calibration == "cv" or (s.calibration == "auto" and len(w.X_held) < 1000)
    tracker = _Progress(progress, 1 + (s.cv_folds - 1 if use_cv else 0), s.max_iter)
    ae = s.autoencoder()
    ae.fit(w.fit_windows, X_val=w.X_held if s.early_stopping else None, progress=tracker.stage("model"))
    oof, oof_sizes = _autoencoder_oof(ae, w, s, tracker) if use_cv else (np.empty(0), [])
    members, member_oof, member_margin = {}, {}, {}
    for name, (make, margin) in s.members(w.sensors).items():
        members[name] = make().fit(w.fit_windows)
        member_oof[name] = _member_oof(name, make, w, s, oof_sizes) if use_cv else np.empty(0)
        member_margin[name] = margin
    return _Fitted(ae, use_cv, oof, oof_sizes, members, member_oof, member_margin)


def _autoencoder_oof(ae: WindowAutoencoder, w: _Windows, s: TrainSettings,
                     tracker: _Progress) -> tuple[np.ndarray, list[int]]:
    # Fold models train as long as the final one did (its best epoch with early stopping),
    # so their out-of-fold errors describe a model of the same fit.
    fold_epochs = ae.best_epoch_ if s.early_stopping else s.max_iter
    fold_ae = clone(ae).set_params(max_iter=fold_epochs, patience=None)
    stages = _FoldStages(tracker, s.cv_folds - 1, fold_epochs) if tracker.report is not None else None
    return _cv_errors(w.scaled, w.train_spans, w.held_spans, s.window, s.train_stride, s.cv_folds,
                      partial(clone, fold_ae), w.level_free.prepare, w.X_prior, progress=stages)


def _member_oof(name: str, make: Callable[[], PcaMember], w: _Windows, s: TrainSettings,
                oof_sizes: list[int]) -> np.ndarray:
    errors, sizes = _cv_errors(w.scaled, w.train_spans, w.held_spans, s.window, s.train_stride, s.cv_folds,
                               make, w.level_free.prepare, w.X_prior)
    if sizes != oof_sizes:  # same blocks and windows as the autoencoder's, by construction
        raise RuntimeError(f"{name} member blocks {sizes} differ from the autoencoder's {oof_sizes}")
    return errors


# ---------------------------------------------------------------- 4-6: export and calibrate, quantize and check, members

@dataclass(frozen=True)
class _Fp32:
    """The exported FP32 autoencoder, its errors on the held-back windows, and its single-window threshold."""

    path: Path
    session: InferenceSession
    errors: np.ndarray
    calibration: Calibration


def _export_fp32(fitted: _Fitted, w: _Windows, calibrator: BlockCalibrator, path: Path) -> _Fp32:
    onnx.save(fitted.autoencoder.to_onnx(), str(path))
    session = make_session(path)
    errors = sensor_errors(session, w.X_held).mean(axis=1)
    return _Fp32(path, session, errors, calibrator.calibrate(errors, fitted.oof))


@dataclass(frozen=True)
class _Quantized:
    """The checked INT8 model and both precisions' thresholds, for the bundle's score (averaged over the
    horizon where it is)."""

    int8_path: Path
    fp32: Calibration
    int8: Calibration
    check: dict               # verify_int8's report
    calibration_windows: int  # windows the INT8 activation ranges were calibrated on


def _quantize_and_check(fp32: _Fp32, fitted: _Fitted, w: _Windows, calibrator: BlockCalibrator,
                        s: TrainSettings, int8_path: Path) -> _Quantized:
    """Quantize to static INT8 and check it against FP32 (:func:`quantize_checked`), or raise
    :class:`QuantizationCheckError`."""
    shift = probe_shift_for(fp32.calibration.threshold, len(w.sensors), reach=s.probe_reach)
    calib = _int8_calibration_windows(w.X_train, s, shift)
    thresholds = _Int8Thresholds(calibrator, fp32, fitted.oof, w.X_held, shift, s.seed)
    # First the INT8 threshold carried over by the error ratio; if the check refuses that,
    # the threshold at which INT8 decides like FP32 (see matched_threshold).
    int8 = quantize_checked(fp32.path, int8_path, fp32.session, calibration=calib, holdout=w.X_held,
                            threshold_fp32=fp32.calibration.threshold, int8_threshold=thresholds,
                            mappings=("ratio", "matched"),
                            attempts=None if s.int8_exclude == "auto" else [tuple(s.int8_exclude)],
                            limits=s.check_limits, seed=s.seed, probe_shift=shift, per_channel=s.per_channel,
                            calibrate_method=s.calibrate_method)
    cal32, cal8 = fp32.calibration, thresholds.kept(int8)
    if s.horizon > 1:
        cal32, cal8 = _averaged_thresholds(fp32, int8, cal8, fitted.oof, calibrator, s.horizon)
    return _Quantized(int8_path, cal32, cal8, int8.check, len(calib))


def _int8_calibration_windows(X_train: np.ndarray, s: TrainSettings, probe_shift: float) -> np.ndarray:
    """Training windows (evenly spaced, at most ``max_calibration_windows``) for INT8's activation ranges."""
    calib = X_train[np.linspace(0, len(X_train) - 1, min(len(X_train), s.max_calibration_windows)).astype(int)]
    if s.calibrate_probes:
        # Activation ranges must also cover anomalous inputs up to past the threshold,
        # or INT8 clips exactly the windows that matter and its decisions drift from FP32's.
        calib = np.concatenate([calib, probe_windows(calib, max_shift=probe_shift, seed=s.seed + 1)])
    return calib


@dataclass
class _Int8Thresholds:
    """The INT8 threshold of each quantization attempt (:data:`~appliance.detector.quantize.Int8Threshold`).

    ``"ratio"``: calibrated on the INT8 model's held-back errors and the out-of-fold
    errors, which come from FP32 fold models and are carried to INT8 by the median
    INT8/FP32 error ratio of the final model on the held-back windows.
    ``"matched"``: the threshold at which INT8 decides like FP32 on held-back windows
    and probes (:func:`matched_threshold`). Every attempt's :class:`Calibration` is
    kept, so the one that passed the check can be found (:meth:`kept`).
    """

    calibrator: BlockCalibrator
    fp32: _Fp32
    oof: np.ndarray
    held: np.ndarray
    probe_shift: float
    seed: int
    attempts: list[Calibration] = field(default_factory=list)

    def __call__(self, session: InferenceSession, errors: np.ndarray, ratio: float,
                 mapping: str) -> tuple[float, dict]:
        calibration = self.calibrator.calibrate(errors, self.oof * ratio)
        calibration = calibration.with_threshold(calibration.threshold, int8_over_fp32_error_ratio=ratio)
        if mapping == "matched":
            calibration = calibration.with_threshold(self._matched(session), int8_mapping="matched",
                                                     threshold_before_matching=calibration.info["unscaled_threshold"])
        self.attempts.append(calibration)
        return calibration.threshold, calibration.info

    def _matched(self, session: InferenceSession) -> float:
        pairs = np.concatenate([self.held, probe_windows(self.held, max_shift=self.probe_shift, seed=self.seed + 2)])
        return matched_threshold(sensor_errors(self.fp32.session, pairs).mean(axis=1),
                                 sensor_errors(session, pairs).mean(axis=1), self.fp32.calibration.threshold)

    def kept(self, checked: CheckedInt8) -> Calibration:
        """The calibration of the attempt that passed: the one whose record ``quantize_checked`` returned."""
        return next(c for c in self.attempts if c.info is checked.calibration)


def _averaged_thresholds(fp32: _Fp32, int8: CheckedInt8, single8: Calibration, oof: np.ndarray,
                         calibrator: BlockCalibrator, horizon: int) -> tuple[Calibration, Calibration]:
    """Both precisions' thresholds for the score averaged over ``horizon`` windows.

    The INT8 check judged single windows against single-window thresholds (where INT8's
    agreement with FP32 is decided); the bundle's thresholds are for the averaged score.
    """
    single32 = fp32.calibration
    cal32 = calibrator.calibrate(fp32.errors, oof, horizon)
    cal8 = calibrator.calibrate(int8.errors, oof * int8.ratio, horizon)
    th8 = cal8.threshold
    if int8.check["threshold_mapping"] == "matched":
        # INT8 follows FP32 only through the matched mapping: keep its ratio.
        th8 = cal32.threshold * single8.threshold / single32.threshold
    int8_record = {k: v for k, v in single8.info.items() if k.startswith("int8_")}
    return (cal32.with_threshold(cal32.threshold, single_window_threshold=single32.threshold),
            cal8.with_threshold(th8, **int8_record, single_window_threshold=single8.threshold))


@dataclass(frozen=True)
class _Member:
    """An exported member, its threshold, and its entry under ``members`` in ``bundle.json``."""

    path: Path
    calibration: Calibration
    meta: dict


def _export_members(fitted: _Fitted, w: _Windows, calibrator: BlockCalibrator, s: TrainSettings,
                    folder: Path) -> dict[str, _Member]:
    """Export each member (FP32 ONNX) and calibrate its own threshold on the autoencoder's blocks."""
    members = {}
    for name, member in fitted.members.items():
        path = folder / MEMBER_FILES[name]
        onnx.save(member.to_onnx(), str(path))
        held = sensor_errors(make_session(path), w.X_held).mean(axis=1)
        calibration = calibrator.calibrate(held, fitted.member_oof[name], s.horizon,
                                           s.threshold_scale * fitted.member_margin[name])
        members[name] = _Member(path, calibration, {"file": MEMBER_FILES[name], **member.summary()})
    return members


def _spread_member(fitted: _Fitted, w: _Windows, calibrator: BlockCalibrator, s: TrainSettings,
                   folder: Path) -> dict[str, _Member]:
    """The spread member (when asked for), fitted, exported and calibrated on whole spans.

    It sees ``window + horizon - 1`` rows at once, so its unseen errors are one per span, not
    averaged model windows; a block of ``k`` model windows holds ``k - horizon + 1`` spans, as
    many as the other models' averaged errors, so the same blocks are compared.
    """
    if not s.spread_member:
        return {}
    span = s.window + s.horizon - 1
    make = partial(SpreadMember, s.spread_bands)
    member = make().fit(windows_in(w.scaled, w.train_spans, span, s.train_stride))
    oof, sizes = (_cv_errors(w.scaled, w.train_spans, w.held_spans, span, s.train_stride, s.cv_folds, make)
                  if fitted.cross_validated else (np.empty(0), []))
    path = folder / MEMBER_FILES["spread"]
    onnx.save(member.to_onnx(), str(path))
    X_held = windows_in(w.scaled, w.held_spans, span, 1)
    held = make_session(path).run([SPREAD_OUTPUT], {ONNX_INPUT: X_held.reshape(len(X_held), -1)})[0]
    if sizes != [n - s.horizon + 1 for n in fitted.oof_sizes] or len(X_held) != len(w.X_held) - s.horizon + 1:
        # Gaps inside a block: spans and averaged windows no longer pair up one to one.
        logger.warning("spread member left out: its calibration blocks %s differ from the other models' "
                       "(gaps in the training rows)", sizes)
        return {}
    calibration = replace(calibrator, oof_sizes=sizes).calibrate(held.mean(axis=1), oof, 1, s.threshold_scale)
    return {"spread": _Member(path, calibration, {"file": MEMBER_FILES["spread"], **member.summary()})}


# ---------------------------------------------------------------- 7: bundle.json

def _bundle_meta(s: TrainSettings, grid: GridRows, w: _Windows, fitted: _Fitted, fp32_path: Path,
                 quantized: _Quantized, members: dict[str, _Member], *, source_rows: np.ndarray,
                 prior_rows: np.ndarray | None, refused: list[dict] | None, fit_s: float) -> dict:
    """``bundle.json`` (before :func:`write_bundle` adds the files' digests)."""
    frozen = _frozen_check(grid, s)
    watched = bool(frozen and frozen.allowed)
    fmt = (HORIZON_FORMAT_VERSION if s.horizon > 1 or watched or "spread" in members  # spans: format 5
           else MEMBERS_FORMAT_VERSION if members else FORMAT_VERSION)
    digest = hashlib.sha256(fp32_path.read_bytes() + quantized.int8_path.read_bytes()).hexdigest()
    created = datetime.now(timezone.utc)
    th8 = quantized.int8.threshold
    meta = {
        "format_version": fmt,
        "model_version": f"{created:%Y%m%dT%H%M%SZ}-{digest[:12]}",
        "created_at": created.isoformat(timespec="seconds"),
        "sensors": w.sensors,
        "window": s.window,
        **({"horizon": s.horizon} if fmt >= HORIZON_FORMAT_VERSION else {}),
        **({"frozen": frozen.to_dict()} if watched else {}),
        **_envelope_meta(grid, w, s),
        "stride": s.stride,
        "period_s": float(s.period_s),
        "staleness_s": float(s.staleness_s),
        "lateness_s": float(s.lateness_s),
        "scaler": w.scaler.to_dict(),
        "level_free": w.level_free.names,
        "threshold": th8,
        "thresholds": {"int8": th8, "fp32": quantized.fp32.threshold,
                       **{name: m.calibration.threshold for name, m in members.items()}},
        "threshold_calibration": {"int8": quantized.int8.info, "fp32": quantized.fp32.info,
                                  **{name: m.calibration.info for name, m in members.items()}},
        # Share of windows of normal operation expected over the threshold (before debounce).
        "expected_window_exceedance": expected_exceedance(
            quantized.int8, {name: m.calibration for name, m in members.items()}),
        # Alarm episodes per week of normal running, as the default debounce would raise them.
        "expected_false_episodes": expected_false_episodes(
            quantized.int8, {name: m.calibration for name, m in members.items()}, stride=s.stride,
            period_s=s.period_s, decider=Decider),
        "score": _score_description(members),
        "training": _training_record(s, grid, w, fitted, quantized, source_rows=source_rows,
                                     prior_rows=prior_rows, refused=refused, fit_s=fit_s),
        "int8_check": quantized.check,
    }
    if members:
        meta["members"] = {name: m.meta for name, m in members.items()}
    return meta


def _frozen_check(grid: GridRows, s: TrainSettings) -> FrozenCheck | None:
    """Sensors to watch for a value that stops changing, over the span one decision scores."""
    if not s.frozen_check:
        return None
    return FrozenCheck.fit(grid.values, list(grid.sensors), staleness_rows=held_rows(s.staleness_s, s.period_s),
                           span=s.window + s.horizon - 1, spans=list(grid.runs))


def _envelope_meta(grid: GridRows, w: _Windows, s: TrainSettings) -> dict:
    """``envelope``: the window levels of the whole record, with margins from as many time blocks as the
    threshold's calibration uses; none when the record is too short for that many windows."""
    try:
        env = OperatingEnvelope.fit(grid.values, w.sensors, span=s.window + s.horizon - 1,
                                    level_free=w.level_free.names, spans=list(grid.runs),
                                    blocks=max(2, s.cv_folds - 1))
    except ValueError as e:
        logger.warning("no operating envelope: %s", e)
        return {}
    return {"envelope": env.to_dict()}


def _score_description(members: dict[str, _Member]) -> str:
    if not members:
        return "mean squared reconstruction error of the scaled window"
    return ("autoencoder threshold x the largest ratio of a model's error to its own threshold "
            "(autoencoder: mean squared reconstruction error of the scaled window; "
            + "; ".join(f"{name}: {MEMBER_SCORES[name]}" for name in members) + ")")


def _training_record(s: TrainSettings, grid: GridRows, w: _Windows, fitted: _Fitted, quantized: _Quantized, *,
                     source_rows: np.ndarray, prior_rows: np.ndarray | None, refused: list[dict] | None,
                     fit_s: float) -> dict:
    """``bundle.json``'s ``training``: the data, the split and every choice that made the models."""
    ae = fitted.autoencoder
    return {
        "data_sha256": data_sha256(w.sensors, source_rows),
        "rows": int(len(source_rows)),
        "grid_rows": int(len(grid.values)),
        "train_rows": int(w.train_rows),
        "train_windows": int(len(w.X_train)),
        "holdout_windows": int(len(w.X_held)),
        "holdout": s.holdout,
        "holdout_at": s.holdout_at,
        "train_stride": s.train_stride,
        "prior": None if prior_rows is None else {
            "rows": int(len(prior_rows)), "stride": s.prior_stride, "windows": int(len(w.X_prior)),
            "data_sha256": data_sha256(w.sensors, prior_rows)},
        "level_free": {"given": w.level_free.given, "trending": w.level_free.trending,
                       "trend_limit": s.trend_limit, "scale": s.level_free_scale},
        "seed": s.seed,
        "model": {"type": "dense_autoencoder", "hidden": [int(h) for h in s.hidden],
                  "alpha": s.alpha, "noise": s.noise, "max_iter": s.max_iter, "epochs": ae.n_iter_,
                  "int8_refused": list(refused or []),
                  "best_epoch": ae.best_epoch_, "stopped": ae.stopped_, "converged": ae.converged_,
                  "early_stopping": s.early_stopping, "patience": s.patience,
                  "batch_size": s.batch_size, "learning_rate_init": s.learning_rate_init},
        "quantization": {"format": "QDQ", "activations": "int8", "weights": "int8", "output": "float",
                         "per_channel": s.per_channel, "calibrate_method": s.calibrate_method,
                         "calibration_windows": int(quantized.calibration_windows)},
        "fit_seconds": round(fit_s, 3),
    }


def train_from_csv(paths: str | Path | Iterable[str | Path], out_dir: str | Path,
                   settings: TrainSettings | None = None) -> Path:
    """``read_csv_rows`` then ``train_bundle`` (the timestamps put the rows on the grid)."""
    sensors, ts, rows = read_csv_rows(paths)
    return train_bundle(rows, sensors, out_dir, settings, ts=ts)
