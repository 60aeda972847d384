"""The runtime detector: a model bundle in an ONNX Runtime session.

``Detector.load(path)`` validates the bundle and opens one CPU session
(``intra_op_num_threads=threads``, sequential execution). ``score_one`` turns a
complete :class:`~appliance.core.Window` into a :class:`~appliance.core.Score`
whose ``value`` is the mean squared reconstruction error of the scaled window
(level-free sensors with their window mean removed, as in training) and whose
``contributions`` are each sensor's share of that error (summing to 1).

A bundle with members (format 4, e.g. the PCA-Q model of
:mod:`appliance.detector.pca`) is scored by every model on the same scaled
window; each model's error is divided by its own threshold, and the score is
the autoencoder's threshold times the largest of those ratios, so
``value / threshold`` is "how far past its own threshold the most alarmed model
is" and stays 1 at the alarm level. The contributions are those of that model.
Bundles without members score exactly as before.

A bundle with a ``horizon`` above 1 (format 5) scores windows of ``window +
horizon - 1`` rows (``Detector.window``): each of its ``horizon`` overlapping
model windows is reconstructed, and every model's per-sensor errors are averaged
over them before the ratios are taken, as training calibrated them. The
scoring stays stateless: a model swap or a gap needs no history but the window.

A bundle may also watch sensors for a frozen value (:mod:`appliance.detector.frozen`):
a watched sensor whose value has repeated at the end of the window for longer
than its allowed run scores ``threshold x run / allowed`` when that is higher,
and gets the contributions, so the alarm names it.

A span member (``bundle.SPAN_MEMBERS``, e.g. :mod:`appliance.detector.spread`)
takes the whole scaled window of ``window + horizon - 1`` rows at once and gives
per-sensor errors itself; its ratio to its own threshold competes like any member's.

A bundle with an ``envelope`` (:mod:`appliance.detector.envelope`) also names, in
``Score.unseen``, the sensors whose level in the window lies outside what training
saw; what to make of it is the alarm side's (:mod:`appliance.actions.operating_point`).
The session is safe to share between threads (ONNX Runtime's ``run`` is).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from appliance.core import Score, Window
from appliance.detector.bundle import SPAN_MEMBERS, Bundle, BundleError, load_bundle
from appliance.detector.features import center_levels
from appliance.detector.session import ONNX_INPUT, make_session, reconstruct, takes_flat_windows

logger = logging.getLogger(__name__)

PRECISIONS = ("int8", "fp32")


def contributions_from(sensor_err: np.ndarray) -> np.ndarray:
    """Each sensor's share of a window's error; equal shares for a perfect reconstruction.

    >>> contributions_from(np.array([[3.0, 1.0], [0.0, 0.0]])).tolist()
    [[0.75, 0.25], [0.5, 0.5]]
    """
    total = sensor_err.sum(axis=1, keepdims=True)
    n = sensor_err.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(total > 0, sensor_err / np.where(total > 0, total, 1.0), 1.0 / n)
    return shares


def _horizon_errors(windows: np.ndarray, recon: np.ndarray, horizon: int) -> np.ndarray:
    """Per sensor, the mean squared error over each model window's rows, then over each run of
    ``horizon`` consecutive model windows: ``(len(windows) // horizon, sensors)``."""
    err = ((windows - recon) ** 2).mean(axis=1)
    return err.reshape(len(err) // horizon, horizon, -1).mean(axis=1)


class Detector:
    """Scores windows with a bundle's model. Build it with :meth:`load`."""

    def __init__(self, bundle: Bundle, precision: str = "int8", threads: int = 1):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.bundle = bundle
        self.precision = precision
        self.threads = threads
        self.sensors: tuple[str, ...] = bundle.sensors
        # The rows of a scored window; the model itself sees ``model_window`` of them at a time.
        self.window: int = bundle.span
        self.model_window: int = bundle.window
        self.horizon: int = bundle.horizon
        self.stride: int = bundle.stride
        self.period_s: float = bundle.period_s
        self.threshold: float = bundle.threshold(precision)
        self.version: str = bundle.model_version
        self._center = bundle.scaler.center.astype(np.float32)
        self._inv_scale = (1.0 / bundle.scaler.scale).astype(np.float32)
        self._session = make_session(bundle.models[precision], threads=threads)
        self._flat = takes_flat_windows(self._session)
        self._index = {s: i for i, s in enumerate(self.sensors)}
        self._level_free = np.array([self._index[s] for s in bundle.level_free], dtype=int)
        self._frozen = bundle.frozen
        self._envelope = bundle.envelope
        self.held_rows = 0
        # Members are FP32 in both precisions; each scores against its own threshold.
        self._members = [(name, make_session(p, threads=threads), bundle.member_thresholds[name])
                         for name, p in sorted(bundle.members.items())]
        logger.info("detector loaded bundle=%s version=%s precision=%s threads=%d sensors=%d window=%d horizon=%d",
                    bundle.path, self.version, precision, threads, len(self.sensors), self.model_window,
                    self.horizon)

    def allow_held(self, rows: int) -> None:
        """The live grid may hold a value over ``rows`` missing reports: such a repeat is never frozen.

        The bundle's allowed runs already cover its training grid's staleness; a runtime
        configured with a longer ``[windows] staleness_s`` raises them to match.
        """
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ValueError(f"rows must be an int >= 0, got {rows!r}")
        self.held_rows = rows

    @classmethod
    def load(cls, path: str | Path, precision: str = "int8", threads: int = 1) -> "Detector":
        """Load the bundle at ``path``; any problem with it is a :class:`BundleError` of one line."""
        bundle = load_bundle(path)
        try:
            return cls(bundle, precision=precision, threads=threads)
        except Exception as e:  # ONNX Runtime raises its own types for a model it cannot run
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise BundleError(f"{path}: ONNX Runtime cannot load the model: {first}") from e

    def _columns(self, sensors: tuple[str, ...]) -> np.ndarray | None:
        """Column order mapping ``sensors`` onto the bundle's order (None if already equal)."""
        if tuple(sensors) == self.sensors:
            return None
        pos = {s: i for i, s in enumerate(sensors)}
        missing = [s for s in self.sensors if s not in pos]
        if missing:
            raise ValueError(f"window lacks sensors the model needs: {missing}")
        return np.array([pos[s] for s in self.sensors])

    def score_one(self, window: Window) -> Score:
        """Score one complete window; extra sensors are ignored, order is by name."""
        values = np.asarray(window.values)
        if values.shape != (self.window, len(window.sensors)):
            raise ValueError(f"window of asset {window.asset!r} has shape {values.shape}, expected "
                             f"({self.window}, {len(window.sensors)}) for its sensors")
        cols = self._columns(window.sensors)
        mask = np.asarray(window.mask)
        if mask.shape != values.shape:
            raise ValueError(f"window mask shape {mask.shape} differs from values shape {values.shape}")
        used_mask = mask if cols is None else mask[:, cols]
        if not used_mask.all():
            raise ValueError(f"window of asset {window.asset!r} is incomplete (missing: "
                             f"{list(window.missing_sensors)}); masked cells are never scored")
        if cols is not None:
            values = values[:, cols]
        errors, contrib = self.score_batch(values[None])
        unseen = self.unseen_batch(values[None])[0]
        return Score(asset=window.asset, t_end=window.t_end, value=float(errors[0]),
                     threshold=self.threshold,
                     contributions={s: float(c) for s, c in zip(self.sensors, contrib[0])},
                     model_version=self.version, historical=window.historical,
                     unseen=tuple(s for s, out in zip(self.sensors, unseen) if out))

    def unseen_batch(self, values: np.ndarray) -> np.ndarray:
        """``(n, sensors)`` True where a raw window's level is outside the training envelope (none without one)."""
        values = np.asarray(values)
        if self._envelope is None:
            return np.zeros((len(values), len(self.sensors)), dtype=bool)
        return self._envelope.unseen(values, self.sensors)

    def scale(self, values: np.ndarray) -> np.ndarray:
        return ((values - self._center) * self._inv_scale).astype(np.float32, copy=False)

    def score_batch(self, values: np.ndarray, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Errors ``[n]`` and contributions ``[n, n_sensors]`` of raw (unscaled) windows."""
        values = np.asarray(values)
        if values.ndim != 3 or values.shape[1:] != (self.window, len(self.sensors)):
            raise ValueError(f"values must have shape (n, {self.window}, {len(self.sensors)}), "
                             f"got {values.shape}")
        if not np.issubdtype(values.dtype, np.number):
            raise ValueError(f"values must be numeric, got dtype {values.dtype}")
        x = self.scale(values.astype(np.float32, copy=False))
        if not np.isfinite(x).all():
            raise ValueError("values contain NaN or infinite cells")
        n, h, w = len(x), self.horizon, self.model_window
        sensor_err = np.empty((n, len(self.sensors)), dtype=np.float32)
        member_err = [np.empty_like(sensor_err) for _ in self._members]
        step = max(1, batch // h)  # windows per run: at most ``batch`` model windows
        for i in range(0, n, step):
            chunk = x[i:i + step]
            m = len(chunk)
            if h > 1:
                # The horizon's overlapping model windows, one after another: (m * h, w, sensors).
                chunk = np.lib.stride_tricks.sliding_window_view(chunk, w, axis=1).transpose(0, 1, 3, 2)
            chunk = np.ascontiguousarray(chunk).reshape(m * h, w, -1)
            center_levels(chunk, self._level_free)  # chunk is a copy when h > 1, else a slice of x
            sensor_err[i:i + m] = _horizon_errors(chunk, reconstruct(self._session, chunk, self._flat), h)
            for (name, session, _), out in zip(self._members, member_err):
                if name in SPAN_MEMBERS:  # the whole scaled span (a level removed or not: its bands ignore it)
                    spans = np.ascontiguousarray(x[i:i + m]).reshape(m, -1)
                    out[i:i + m] = session.run([SPAN_MEMBERS[name]], {ONNX_INPUT: spans})[0]
                else:
                    out[i:i + m] = _horizon_errors(chunk, reconstruct(session, chunk, True), h)
        errors = sensor_err.mean(axis=1).astype(np.float64)
        sensor_err = sensor_err.astype(np.float64)
        if self._members:
            # In units of the autoencoder's threshold: value / threshold is the largest model's ratio.
            ratio = errors / self.threshold
            for (_, _, threshold), m_err in zip(self._members, member_err):
                m_err = m_err.astype(np.float64)
                m_ratio = m_err.mean(axis=1) / threshold
                wins = m_ratio > ratio
                ratio = np.where(wins, m_ratio, ratio)
                sensor_err[wins] = m_err[wins]
            errors = ratio * self.threshold
        if self._frozen is not None:
            frozen = self._frozen.ratios(values, self.sensors, self.held_rows)
            worst = frozen.max(axis=1)
            wins = worst * self.threshold > errors
            errors = np.where(wins, worst * self.threshold, errors)
            sensor_err[wins] = frozen[wins]
        return errors, contributions_from(sensor_err)
