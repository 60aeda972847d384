"""The training operating envelope: which slow levels the model has seen.

A model trained at commissioning knows the operating point of its training rows.
When the plant runs somewhere else (another setpoint, another season, another
product), every window looks new to it and its score sits far over the threshold
on every window: an alarm flood that says nothing about a fault. The envelope
lets the appliance tell an operator "operating point not seen in training"
instead (see :mod:`appliance.actions.operating_point`).

It is estimated from the training rows only, without labels:

* each sensor's **level** is its mean over one scored window (``span`` rows), the
  slow part a reconstruction model learns as "where the process sits";
* the levels seen in training give ``[low, high]`` per sensor;
* the **margin** is what an unseen stretch of normal running is known to add: the
  training levels are cut into ``blocks`` contiguous time blocks (as the
  threshold's calibration blocks are) and, for each block, how far its levels
  reach beyond the levels of all other blocks is measured. The largest such reach
  is how far "the next block" went past what the others had shown; it is added
  on both sides. At least ``min_margin`` of the training range is kept, so a
  sensor whose blocks happen to nest exactly still gets room.

Sensors shown to the model without their level (``level_free``) are left out: the
model does not judge their level, so a new level of theirs is not a point the
model does not know. The check is numpy only, on the live path.

>>> rng = np.random.default_rng(0)
>>> rows = np.c_[10 + rng.normal(0, 0.1, 400), 5 + rng.normal(0, 0.1, 400)]
>>> env = OperatingEnvelope.fit(rows, ["flow", "temp"], span=20, level_free=["temp"])
>>> sorted(env.low), env.blocks
(['flow'], 4)
>>> windows = np.stack([rows[:20], rows[:20] + [1.0, 0.0], rows[:20] + [0.0, 9.0]])
>>> env.unseen(windows, ("flow", "temp")).tolist()  # a flow 1.0 higher is new; temp's level is not judged
[[False, False], [True, False], [False, False]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

DEFAULT_BLOCKS = 4
# A sensor's margin is at least this share of its training level range on each side.
MIN_MARGIN = 0.25


def window_levels(rows: np.ndarray, span: int) -> np.ndarray:
    """Each sliding window's mean per column: ``(len(rows) - span + 1, columns)``.

    >>> window_levels(np.array([[1.0], [3.0], [5.0]]), 2).tolist()
    [[2.0], [4.0]]
    """
    rows = np.asarray(rows, dtype=np.float64)
    if len(rows) < span:
        return np.empty((0, rows.shape[1]))
    c = np.cumsum(np.vstack([np.zeros((1, rows.shape[1])), rows]), axis=0)
    return (c[span:] - c[:-span]) / span


def next_block_reach(levels: np.ndarray, blocks: int) -> np.ndarray:
    """Per column, the farthest any of ``blocks`` contiguous time blocks reaches beyond all the others.

    >>> levels = np.c_[np.arange(8.0), np.array([0, 1, 0, 1, 0, 1, 0, 1.0])]
    >>> next_block_reach(levels, 4).tolist()  # the drifting column: each end block goes 2 beyond the rest
    [2.0, 0.0]
    """
    parts = np.array_split(np.asarray(levels, dtype=np.float64), blocks)
    reach = np.zeros(levels.shape[1])
    for i, part in enumerate(parts):
        others = np.concatenate([p for j, p in enumerate(parts) if j != i])
        if not len(part) or not len(others):
            continue
        beyond = np.maximum(others.min(axis=0) - part.min(axis=0), part.max(axis=0) - others.max(axis=0))
        reach = np.maximum(reach, beyond)
    return reach


@dataclass(frozen=True)
class OperatingEnvelope:
    """Per judged sensor, the window levels seen in training (``low``, ``high``) and the ``margin``."""

    low: dict[str, float]
    high: dict[str, float]
    margin: dict[str, float]
    span: int
    blocks: int = DEFAULT_BLOCKS

    @classmethod
    def fit(cls, rows: np.ndarray, sensors: Sequence[str], span: int, level_free: Sequence[str] = (),
            spans: Sequence[tuple[int, int]] | None = None, blocks: int = DEFAULT_BLOCKS,
            min_margin: float = MIN_MARGIN) -> "OperatingEnvelope":
        """The envelope of ``rows`` (training rows in time order; ``spans`` its contiguous runs)."""
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != len(sensors):
            raise ValueError(f"rows must be (n, {len(sensors)}), got shape {rows.shape}")
        if span < 1 or blocks < 2:
            raise ValueError(f"need span >= 1 and blocks >= 2, got {span}, {blocks}")
        runs = spans if spans else [(0, len(rows))]
        levels = np.concatenate([window_levels(rows[a:b], span) for a, b in runs])
        if len(levels) < blocks:
            raise ValueError(f"need at least {blocks} windows of {span} rows to fit an envelope, got {len(levels)}")
        low, high = levels.min(axis=0), levels.max(axis=0)
        margin = np.maximum(next_block_reach(levels, blocks), min_margin * (high - low))
        judged = [i for i, s in enumerate(sensors) if s not in set(level_free)]
        return cls(low={sensors[i]: float(low[i]) for i in judged},
                   high={sensors[i]: float(high[i]) for i in judged},
                   margin={sensors[i]: float(margin[i]) for i in judged}, span=span, blocks=blocks)

    def bounds(self, sensors: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper level limits in ``sensors`` order; unjudged sensors get infinite limits."""
        lo = np.array([self.low[s] - self.margin[s] if s in self.low else -np.inf for s in sensors])
        hi = np.array([self.high[s] + self.margin[s] if s in self.high else np.inf for s in sensors])
        return lo, hi

    def unseen(self, windows: np.ndarray, sensors: Sequence[str]) -> np.ndarray:
        """``(n, sensors)`` True where a window's level (its last ``span`` rows' mean) is outside the envelope."""
        windows = np.asarray(windows, dtype=np.float64)
        level = windows[:, -self.span:, :].mean(axis=1)
        lo, hi = self.bounds(sensors)
        return (level < lo) | (level > hi)

    def to_dict(self) -> dict:
        return {"span": self.span, "blocks": self.blocks, "low": self.low, "high": self.high,
                "margin": self.margin,
                "how": "per sensor, window-mean levels seen in training, widened on both sides by the farthest "
                       "any calibration block's levels reach beyond the other blocks' (at least "
                       f"{MIN_MARGIN:g} x the training range); level-free sensors are not judged"}

    @classmethod
    def from_dict(cls, spec: dict, sensors: Sequence[str]) -> "OperatingEnvelope":
        """Read a bundle's ``envelope``; :class:`ValueError` names what is wrong.

        >>> env = OperatingEnvelope({"a": 1.0}, {"a": 2.0}, {"a": 0.5}, span=10)
        >>> OperatingEnvelope.from_dict(env.to_dict(), ["a", "b"]) == env
        True
        """
        if not isinstance(spec, dict):
            raise ValueError(f"envelope must be an object, got {spec!r}")
        span, blocks = spec.get("span"), spec.get("blocks", DEFAULT_BLOCKS)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (span, blocks)):
            raise ValueError(f"envelope span and blocks must be integers >= 1, got {span!r}, {blocks!r}")
        parts = [spec.get(k) for k in ("low", "high", "margin")]
        if not all(isinstance(p, dict) for p in parts) or not set(parts[0]) == set(parts[1]) == set(parts[2]):
            raise ValueError("envelope low, high and margin must map the same sensors to numbers")
        unknown = set(parts[0]) - set(sensors)
        if unknown:
            raise ValueError(f"envelope names sensors the bundle lacks: {sorted(unknown)}")
        low, high, margin = ({s: float(v) for s, v in p.items()} for p in parts)
        for s in low:
            if not all(np.isfinite([low[s], high[s], margin[s]])) or high[s] < low[s] or margin[s] < 0:
                raise ValueError(f"envelope of {s!r} must be finite with low <= high and margin >= 0")
        return cls(low=low, high=high, margin=margin, span=span, blocks=blocks)
