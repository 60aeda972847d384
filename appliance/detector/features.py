"""Which sensors' levels the model may trust, and how windows are shown to it.

Some sensors wander in normal operation: a thermocouple warms with the fluid
over an hour, far beyond what a few hundred training rows show. A model that
learns their absolute level alarms on every warm afternoon, and after a fault
it keeps alarming because the loop never comes back to the temperature of its
training rows. For such **level-free** sensors the model sees each window with
the sensor's own window mean removed: their short-term shape still counts
(a sudden jump inside the window does), their slow level does not.

Two ways a sensor becomes level-free, neither looking at anomaly labels:

* :func:`trending_sensors`: within the training rows themselves the sensor
  follows a clear linear trend (the process was still settling);
* :func:`drifting_sensors`: over a long record of normal operation (for SKAB:
  ``anomaly-free.csv``) the sensor's level after a training-sized stretch
  usually lies outside what that stretch showed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

TREND_LIMIT = 3.0


def center_levels(windows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Remove each window's mean from ``columns`` of ``windows`` (n, rows, sensors), in place.

    Every caller hands over a freshly built array, so no copy is made on the
    scoring path. Returns ``windows``.

    >>> w = np.array([[[1.0, 10.0], [3.0, 14.0]]])
    >>> center_levels(w, np.array([1])).tolist()
    [[[1.0, -2.0], [3.0, 2.0]]]
    """
    if len(columns):
        windows[:, :, columns] -= windows[:, :, columns].mean(axis=1, keepdims=True)
    return windows


def _in_units_of(delta: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """``delta / unit`` per column; a zero unit gives inf for a nonzero delta, else 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(unit > 0, delta / np.where(unit > 0, unit, 1.0), np.where(delta > 0, np.inf, 0.0))


def trend_strength(rows: np.ndarray) -> np.ndarray:
    """Per column: the linear trend's rise over all rows, in residual standard deviations.

    >>> t = np.arange(100.0)
    >>> rows = np.c_[t / 10 + np.sin(t), np.sin(t)]
    >>> np.round(trend_strength(rows), 1).tolist()
    [13.9, 0.1]
    """
    rows = np.asarray(rows, dtype=np.float64)
    n = len(rows)
    if n < 3:
        return np.zeros(rows.shape[1])
    t = np.arange(n) - (n - 1) / 2.0
    centered = rows - rows.mean(axis=0)
    slope = (t @ centered) / (t @ t)
    resid = centered - np.outer(t, slope)
    return _in_units_of(np.abs(slope) * (n - 1), resid.std(axis=0))


def trending_sensors(rows: np.ndarray, sensors: Sequence[str], limit: float = TREND_LIMIT) -> list[str]:
    """Sensors whose linear trend over ``rows`` rises more than ``limit`` residual deviations.

    >>> t = np.arange(200.0)
    >>> trending_sensors(np.c_[t / 20 + np.sin(t), np.sin(t)], ["warming", "steady"])
    ['warming']
    """
    strength = trend_strength(rows)
    return [s for s, v in zip(sensors, strength) if v > limit]


def drifting_sensors(rows: np.ndarray, sensors: Sequence[str], train_rows: int = 400,
                     horizon_rows: int = 750, step_rows: int = 1000, shift_limit: float = 1.5,
                     share: float = 0.5) -> tuple[list[str], dict]:
    """Sensors whose level wanders in a long record of normal operation.

    The record is cut into stretches shaped like a commissioning: ``train_rows``
    rows to learn from, then ``horizon_rows`` rows of watching (one stretch
    every ``step_rows`` rows). A sensor drifts in a stretch when the median of
    its watching rows lies more than ``shift_limit`` training standard
    deviations from the training median; it is reported when it drifts in more
    than ``share`` of the stretches. Returns ``(sensors, report)``.

    >>> rng = np.random.default_rng(0)
    >>> t = np.arange(5000.0)
    >>> rows = np.c_[rng.normal(size=5000), rng.normal(size=5000) + t / 200]
    >>> drifting_sensors(rows, ["noise", "warming"])[0]
    ['warming']
    """
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != len(sensors):
        raise ValueError(f"rows must be (n, {len(sensors)}), got shape {rows.shape}")
    span = train_rows + horizon_rows
    starts = range(0, len(rows) - span + 1, step_rows)
    if not len(starts):
        raise ValueError(f"need at least {span} rows of normal operation to judge drift, got {len(rows)}")
    shifts = []
    for a in starts:
        train, watch = rows[a:a + train_rows], rows[a + train_rows:a + span]
        delta = np.abs(np.median(watch, axis=0) - np.median(train, axis=0))
        shifts.append(_in_units_of(delta, train.std(axis=0)))
    shifts = np.array(shifts)
    drift_share = (shifts > shift_limit).mean(axis=0)
    chosen = [s for s, v in zip(sensors, drift_share) if v > share]
    report = {"stretches": len(shifts), "shift_limit": shift_limit, "share": share,
              "drift_share": {s: round(float(v), 3) for s, v in zip(sensors, drift_share)},
              "median_shift": {s: round(float(v), 2) for s, v in zip(sensors, np.median(shifts, axis=0))}}
    return chosen, report
