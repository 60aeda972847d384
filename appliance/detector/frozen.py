"""Frozen sensors: a value that stops changing where training never saw it stand still.

A stuck transmitter, a frozen fieldbus register or a PLC that keeps publishing
its last good value all show the same thing: the value repeats exactly. A
reconstruction error cannot see it (a frozen value near its normal level is
reconstructed well, and the other sensors stay normal), so the check is
separate and needs no model: for each sensor, the longest run of exactly
repeated values in the training rows (``L``) sets the run it may show live,

    allowed = max(2 L, staleness rows + 1, 3)

where the staleness rows are the grid cells the window builder may fill by
holding a value whose reports went missing (``staleness_s / period_s``): a
network hiccup must not look like a frozen sensor. A sensor is watched only if
its allowed run fits in a scored window; noisy analog sensors (``L`` = 1) are,
quantized or held ones (level switches, set points) are not.

Live, a window's *trailing* run (rows at its end holding the value of its last
row) is compared with the allowed run; a run longer than allowed gives the
sensor the ratio ``run / allowed`` (> 1). The check judges only the window's
own rows, so it stays stateless like the rest of scoring; a sensor that moves
again clears at once.

>>> check = FrozenCheck.fit(np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [4.0, 5.0]]),
...                         ["flow", "switch"], staleness_rows=2, span=8)
>>> check.allowed  # the switch stood still for all 4 rows: 8 is not less than the span, so unwatched
{'flow': 3}
>>> w = np.array([[[1.0, 5.0], [2.0, 5.0], [2.0, 5.0], [2.0, 5.0], [2.0, 5.0], [2.0, 5.0], [2.0, 5.0], [2.0, 5.0]]])
>>> check.ratios(w, ("flow", "switch")).round(3).tolist()  # flow has repeated for 7 rows, 3 allowed
[[2.333, 0.0]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MIN_ALLOWED_RUN = 3


def held_rows(staleness_s: float, period_s: float) -> int:
    """Grid cells a window builder may fill by holding a value over missing reports.

    >>> held_rows(900.0, 180.0), held_rows(5.0, 0.1)
    (5, 50)
    """
    # Divide, then floor with a tolerance: 5.0 // 0.1 is 49.0 in binary floating point.
    return int(math.floor(staleness_s / period_s + 1e-9))


def longest_runs(rows: np.ndarray, spans: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
    """Per column, the longest run of exactly equal consecutive values within each span of ``rows``.

    >>> longest_runs(np.array([[1.0, 2.0], [1.0, 3.0], [1.0, 3.0], [0.0, 4.0]])).tolist()
    [3, 2]
    """
    rows = np.asarray(rows)
    spans = [(0, len(rows))] if spans is None else list(spans)
    best = np.zeros(rows.shape[1], dtype=int)
    for a, b in spans:
        if b <= a:
            continue
        best = np.maximum(best, 1)
        run = np.zeros(rows.shape[1], dtype=int)
        for same in rows[a + 1:b] == rows[a:b - 1]:
            run = (run + 1) * same
            best = np.maximum(best, run + 1)
    return best


def trailing_runs(windows: np.ndarray) -> np.ndarray:
    """``(n, sensors)``: how many rows at the end of each window hold the value of its last row.

    >>> trailing_runs(np.array([[[1.0, 7.0], [2.0, 7.0], [2.0, 7.0]]])).tolist()
    [[2, 3]]
    """
    windows = np.asarray(windows)
    run = np.ones(windows.shape[::2], dtype=int)
    still = np.ones(run.shape, dtype=bool)
    for t in range(windows.shape[1] - 1, 0, -1):
        still &= windows[:, t, :] == windows[:, t - 1, :]
        run += still
    return run


@dataclass(frozen=True)
class FrozenCheck:
    """Allowed trailing runs per watched sensor (see the module docstring)."""

    allowed: dict[str, int]

    @classmethod
    def fit(cls, rows: np.ndarray, sensors: Sequence[str], staleness_rows: int, span: int,
            spans: Sequence[tuple[int, int]] | None = None) -> "FrozenCheck":
        longest = longest_runs(rows, spans)
        allowed = np.maximum(np.maximum(2 * longest, staleness_rows + 1), MIN_ALLOWED_RUN)
        return cls({s: int(a) for s, a in zip(sensors, allowed) if a < span})

    def ratios(self, windows: np.ndarray, sensors: Sequence[str], held_rows: int = 0) -> np.ndarray:
        """``(n, sensors)``: ``run / allowed`` where a watched sensor's trailing run exceeds it, else 0.

        ``held_rows``: cells the live grid may fill by holding a value (its staleness in
        periods); the allowed run is at least one more than that.
        """
        windows = np.asarray(windows)
        out = np.zeros((len(windows), len(sensors)))
        cols = [i for i, s in enumerate(sensors) if s in self.allowed]
        if not cols:
            return out
        runs = trailing_runs(windows[:, :, cols])
        limit = np.array([max(self.allowed[sensors[i]], held_rows + 1) for i in cols])
        out[:, cols] = np.where(runs > limit, runs / limit, 0.0)
        return out

    def to_dict(self) -> dict:
        return {"allowed_run": dict(self.allowed), "rule": "max(2 x longest training run, staleness rows + 1, 3)"}
