"""A candidate model runs in shadow beside the current one, then is promoted or rejected.

The shadow scores every window the current model scores (same windows, same
order), decides on its scores with the same debounce and hysteresis as the live
path, and raises nothing: it only counts. Both models' decisions are replayed by
private deciders, so the comparison is like for like. The candidate is promoted
only if, after ``duration_s`` and at least ``min_windows`` windows, it stayed
within bounds:

* it would have raised at most ``max_alarm_factor`` x the current model's raises
  plus ``max_extra_alarms`` (a new model that alarms on normal data is refused);
* it would have raised at least ``min_alarm_factor`` x the current model's raises
  minus ``max_fewer_alarms``, unless it scored over its own threshold every window the
  current model scored over its threshold (a model that alarms far less while it
  stays quiet on windows the current model treats as faults is refused: a raised
  threshold or a poisoned fleet model would pass the first bound);
* its p99 scoring latency stayed under ``max_latency_p99_us`` (the edge target);
* it scored every window the current model scored (none failed).

Beside the raises it keeps both models' score ratios (score / own threshold) on
the same windows: ``status()`` and the verdict's reason show their quantiles, the
share of windows at or above the threshold (each model's alarm-level rate) and
the alarm rate per hour, so an engineer sees how the candidate's scores sit
against the current model's, not only whether it passed.

Once promoted, :class:`Probation` watches the new model for ``probation_s``: if it
raises more than ``max_probation_alarms``, the lifecycle (:mod:`appliance.lifecycle.life`)
rolls back to the kept previous model. Nothing here trains or quantizes: it is part
of the live path.

>>> b = ShadowBounds(duration_s=0, min_windows=2, max_alarm_factor=1.0, max_extra_alarms=0)
>>> r = ShadowResult(windows=3, failed=0, current_raises=1, candidate_raises=2, latency_p99_us=40.0)
>>> r.verdict(b)
(False, 'candidate would raise 2 alarms where the current model raised 1 (allowed 1) over 3 windows')
>>> ShadowResult(windows=300, failed=0, current_raises=11, candidate_raises=2, latency_p99_us=40.0,
...              missed_windows=25).verdict(b)[0]
False
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydantic import Field

from appliance.actions.decide import Decider
from appliance.core import Detector, EventKind, Score, Window
from appliance.settings import DAY_S, Section


class ModelCommandError(ValueError):
    """A model command that does not apply (no candidate in shadow, nothing to roll back to ...)."""


class ShadowBounds(Section):
    """``[outputs.sync.shadow]``-style limits a candidate must keep to be promoted."""

    duration_s: float = Field(3600.0, ge=0, le=30 * DAY_S, description="shadow run length")
    min_windows: int = Field(100, ge=1, le=10_000_000, description="windows scored before a verdict")
    max_alarm_factor: float = Field(1.0, ge=0, le=100, description="candidate raises <= factor x current ...")
    max_extra_alarms: int = Field(1, ge=0, le=10_000, description="... + this many")
    min_alarm_factor: float = Field(0.5, ge=0, le=1, description="candidate raises >= factor x current ...")
    max_fewer_alarms: int = Field(1, ge=0, le=10_000, description="... - this many, when it misses windows the "
                                                                  "current model scores over its threshold")
    max_latency_p99_us: float = Field(10_000.0, gt=0, le=10_000_000, description="the edge decision budget")
    probation_s: float = Field(3600.0, ge=0, le=30 * DAY_S, description="after promotion, watch this long")
    max_probation_alarms: int = Field(3, ge=0, le=10_000, description="more raises in probation roll back")


def compatibility(current: Detector, candidate: Detector) -> str | None:
    """Why ``candidate`` cannot take ``current``'s place without a restart, or None.

    A hot swap keeps the window builder and every partial window, so the candidate
    must read the same sensors on the same grid.
    """
    for attr in ("sensors", "window", "stride", "period_s"):
        if getattr(current, attr) != getattr(candidate, attr):
            return (f"candidate {attr} {getattr(candidate, attr)!r} differs from the current model's "
                    f"{getattr(current, attr)!r}; installing it needs a restart")
    return None


def hot_swap_check(running_bundle: str | Path, candidate_bundle: str | Path) -> str | None:
    """:func:`compatibility` of two bundles on disk: why a gateway running ``running_bundle`` cannot take
    ``candidate_bundle`` through its shadow run without a restart, or None. Commissioning and the fleet
    server say it when they write a bundle, by the same rule the running gateway applies."""
    from appliance.detector.scorer import Detector as OnnxDetector

    return compatibility(OnnxDetector.load(running_bundle), OnnxDetector.load(candidate_bundle))


QUANTILES = (0.5, 0.9, 0.99)


def quantiles(values, qs=QUANTILES) -> list[float | None]:
    """Nearest-rank quantiles of ``values`` (None when empty); small and dependency-free on the live path."""
    v = sorted(values)
    if not v:
        return [None for _ in qs]
    return [v[min(len(v) - 1, int(q * len(v)))] for q in qs]


def distribution(ratios) -> dict:
    """How one model's score ratios sit: p50/p90/p99 and the share of windows at or above the threshold."""
    ratios = list(ratios)
    p50, p90, p99 = quantiles(ratios)
    over = sum(1 for r in ratios if r >= 1.0)
    return {"p50": _round(p50), "p90": _round(p90), "p99": _round(p99),
            "over_threshold": round(over / len(ratios), 4) if ratios else None}


def _round(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.4g}")


@dataclass(frozen=True)
class ShadowResult:
    windows: int
    failed: int
    current_raises: int
    candidate_raises: int
    latency_p99_us: float
    current_scores: dict | None = None     # distribution() of the current model's ratios on the same windows
    candidate_scores: dict | None = None
    elapsed_s: float | None = None
    missed_windows: int = 0  # windows the current model scored over its threshold, the candidate under its own

    def scores_line(self) -> str:
        """``; score ratio p50/p99 0.41/0.92 vs current 0.38/0.88`` (empty when nothing was kept)."""
        c, k = self.candidate_scores, self.current_scores
        if not c or not k or c["p50"] is None or k["p50"] is None:
            return ""
        return (f"; score ratio p50/p99 {c['p50']:g}/{c['p99']:g} vs current {k['p50']:g}/{k['p99']:g}, "
                f"windows over threshold {c['over_threshold']:.1%} vs {k['over_threshold']:.1%}")

    def verdict(self, bounds: ShadowBounds) -> tuple[bool, str]:
        allowed = int(bounds.max_alarm_factor * self.current_raises) + bounds.max_extra_alarms
        scores = self.scores_line()
        if self.failed:
            return False, f"candidate failed to score {self.failed} of {self.windows} windows"
        if self.candidate_raises > allowed:
            return False, (f"candidate would raise {self.candidate_raises} alarms where the current model raised "
                           f"{self.current_raises} (allowed {allowed}) over {self.windows} windows{scores}")
        fewest = math.ceil(bounds.min_alarm_factor * self.current_raises) - bounds.max_fewer_alarms
        if self.candidate_raises < fewest and self.missed_windows:
            return False, (f"candidate would raise {self.candidate_raises} alarms where the current model raised "
                           f"{self.current_raises} (at least {fewest} expected) and stay under its threshold on "
                           f"{self.missed_windows} windows the current model scored over its own, over "
                           f"{self.windows} windows{scores}")
        if self.latency_p99_us > bounds.max_latency_p99_us:
            return False, (f"candidate p99 latency {self.latency_p99_us:.0f} us exceeds "
                           f"{bounds.max_latency_p99_us:.0f} us{scores}")
        return True, (f"within bounds over {self.windows} windows: {self.candidate_raises} raises against "
                      f"{self.current_raises}, p99 {self.latency_p99_us:.0f} us{scores}")


@dataclass
class ShadowRun:
    """Scores windows with ``candidate`` beside the live model; see the module docstring."""

    candidate: Detector
    bounds: ShadowBounds
    new_decider: Callable[[], Decider]
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    windows: int = 0
    failed: int = 0
    current_raises: int = 0
    candidate_raises: int = 0
    missed_windows: int = 0
    last_error: str | None = None
    _latency_us: deque = field(default_factory=lambda: deque(maxlen=10_000))
    _current_ratios: deque = field(default_factory=lambda: deque(maxlen=10_000))
    _candidate_ratios: deque = field(default_factory=lambda: deque(maxlen=10_000))
    _deciders: dict[tuple[str, str], Decider] = field(default_factory=dict)

    def __post_init__(self):
        self.started = self.clock()

    def observe(self, window: Window, current: Score) -> None:
        """Score ``window`` with the candidate too and count what each model would have raised."""
        self.windows += 1
        self.current_raises += self._raised("current", current)
        self._current_ratios.append(current.ratio)
        t0 = time.perf_counter()
        try:
            score = self.candidate.score_one(window)
        except Exception as e:  # a candidate's failure is a verdict, never the live path's problem
            self.failed += 1
            self.last_error = f"{type(e).__name__}: {e}"
            return
        self._latency_us.append((time.perf_counter() - t0) * 1e6)
        self._candidate_ratios.append(score.ratio)
        self.candidate_raises += self._raised("candidate", score)
        self.missed_windows += int(current.ratio >= 1.0 > score.ratio)

    def _raised(self, who: str, score: Score) -> int:
        key = (who, score.asset)
        d = self._deciders.get(key)
        if d is None:
            d = self._deciders[key] = self.new_decider()
        return int(d.update(score).change is EventKind.RAISED)

    def result(self) -> ShadowResult:
        p99 = quantiles(self._latency_us, (0.99,))[0] or 0.0
        return ShadowResult(self.windows, self.failed, self.current_raises, self.candidate_raises, p99,
                            distribution(self._current_ratios), distribution(self._candidate_ratios),
                            round(self.clock() - self.started, 1), self.missed_windows)

    def done(self) -> bool:
        return self.clock() - self.started >= self.bounds.duration_s and self.windows >= self.bounds.min_windows

    def status(self) -> dict:
        lat = list(self._latency_us)
        elapsed = self.clock() - self.started
        p99 = quantiles(lat, (0.99,))[0]
        return {"candidate": self.candidate.version, "windows": self.windows, "failed": self.failed,
                "current_raises": self.current_raises, "candidate_raises": self.candidate_raises,
                "missed_windows": self.missed_windows,
                # raises per hour of shadow run: each model's alarm rate on the same live windows
                "alarm_rate_per_h": {"current": _per_hour(self.current_raises, elapsed),
                                     "candidate": _per_hour(self.candidate_raises, elapsed)},
                "scores": {"current": distribution(self._current_ratios),
                           "candidate": distribution(self._candidate_ratios)},
                "latency_p50_us": round(statistics.median(lat), 1) if lat else None,
                "latency_p99_us": None if p99 is None else round(p99, 1),
                "elapsed_s": round(elapsed, 1), "duration_s": self.bounds.duration_s,
                "last_error": self.last_error}


def _per_hour(count: int, elapsed_s: float) -> float | None:
    return round(count * 3600.0 / elapsed_s, 2) if elapsed_s > 0 else None


@dataclass
class Probation:
    """Watches a freshly promoted model; ``breached`` says why it must be rolled back."""

    bounds: ShadowBounds
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    raises: int = 0

    def __post_init__(self):
        self.started = self.clock()

    def over(self) -> bool:
        return self.clock() - self.started >= self.bounds.probation_s

    def on_raise(self) -> str | None:
        self.raises += 1
        if self.raises > self.bounds.max_probation_alarms:
            return (f"promoted model raised {self.raises} alarms within {self.clock() - self.started:.0f} s of "
                    f"probation (allowed {self.bounds.max_probation_alarms})")
        return None
