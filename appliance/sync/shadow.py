"""A candidate model runs in shadow beside the current one, then is promoted or rejected.

The shadow scores every window the current model scores (same windows, same
order), decides on its scores with the same debounce and hysteresis as the live
path, and raises nothing: it only counts. Both models' decisions are replayed by
private deciders, so the comparison is like for like. The candidate is promoted
only if, after ``duration_s`` and at least ``min_windows`` windows, it stayed
within bounds:

* it would have raised at most ``max_alarm_factor`` x the current model's raises
  plus ``max_extra_alarms`` (a new model that alarms on normal data is refused);
* its p99 scoring latency stayed under ``max_latency_p99_us`` (the edge target);
* it scored every window the current model scored (none failed).

Once promoted, :class:`Probation` watches the new model for ``probation_s``: if it
raises more than ``max_probation_alarms``, the runtime rolls back to the kept
previous model. Nothing here trains or quantizes: it is part of the live path.

>>> b = ShadowBounds(duration_s=0, min_windows=2, max_alarm_factor=1.0, max_extra_alarms=0)
>>> r = ShadowResult(windows=3, failed=0, current_raises=1, candidate_raises=2, latency_p99_us=40.0)
>>> r.verdict(b)
(False, 'candidate would raise 2 alarms where the current model raised 1 (allowed 1)')
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import Field

from appliance.actions.decide import Decider
from appliance.core import Score, Window
from appliance.settings import DAY_S, Section


class ModelCommandError(ValueError):
    """A model command that does not apply (no candidate in shadow, nothing to roll back to ...)."""


class ShadowBounds(Section):
    """``[outputs.sync.shadow]``-style limits a candidate must keep to be promoted."""

    duration_s: float = Field(3600.0, ge=0, le=30 * DAY_S, description="shadow run length")
    min_windows: int = Field(100, ge=1, le=10_000_000, description="windows scored before a verdict")
    max_alarm_factor: float = Field(1.0, ge=0, le=100, description="candidate raises <= factor x current ...")
    max_extra_alarms: int = Field(1, ge=0, le=10_000, description="... + this many")
    max_latency_p99_us: float = Field(10_000.0, gt=0, le=10_000_000, description="the edge decision budget")
    probation_s: float = Field(3600.0, ge=0, le=30 * DAY_S, description="after promotion, watch this long")
    max_probation_alarms: int = Field(3, ge=0, le=10_000, description="more raises in probation roll back")


def compatibility(current: Any, candidate: Any) -> str | None:
    """Why ``candidate`` cannot take ``current``'s place without a restart, or None.

    A hot swap keeps the window builder and every partial window, so the candidate
    must read the same sensors on the same grid.
    """
    for attr in ("sensors", "window", "stride", "period_s"):
        if getattr(current, attr) != getattr(candidate, attr):
            return (f"candidate {attr} {getattr(candidate, attr)!r} differs from the current model's "
                    f"{getattr(current, attr)!r}; installing it needs a restart")
    return None


@dataclass(frozen=True)
class ShadowResult:
    windows: int
    failed: int
    current_raises: int
    candidate_raises: int
    latency_p99_us: float

    def verdict(self, bounds: ShadowBounds) -> tuple[bool, str]:
        allowed = int(bounds.max_alarm_factor * self.current_raises) + bounds.max_extra_alarms
        if self.failed:
            return False, f"candidate failed to score {self.failed} of {self.windows} windows"
        if self.candidate_raises > allowed:
            return False, (f"candidate would raise {self.candidate_raises} alarms where the current model raised "
                           f"{self.current_raises} (allowed {allowed})")
        if self.latency_p99_us > bounds.max_latency_p99_us:
            return False, (f"candidate p99 latency {self.latency_p99_us:.0f} us exceeds "
                           f"{bounds.max_latency_p99_us:.0f} us")
        return True, (f"within bounds over {self.windows} windows: {self.candidate_raises} raises against "
                      f"{self.current_raises}, p99 {self.latency_p99_us:.0f} us")


@dataclass
class ShadowRun:
    """Scores windows with ``candidate`` beside the live model; see the module docstring."""

    candidate: Any
    bounds: ShadowBounds
    new_decider: Callable[[], Decider]
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    windows: int = 0
    failed: int = 0
    current_raises: int = 0
    candidate_raises: int = 0
    last_error: str | None = None
    _latency_us: deque = field(default_factory=lambda: deque(maxlen=10_000))
    _deciders: dict[tuple[str, str], Decider] = field(default_factory=dict)

    def __post_init__(self):
        self.started = self.clock()

    def observe(self, window: Window, current: Score) -> None:
        """Score ``window`` with the candidate too and count what each model would have raised."""
        self.windows += 1
        self.current_raises += self._raised("current", current)
        t0 = time.perf_counter()
        try:
            score = self.candidate.score_one(window)
        except Exception as e:  # a candidate's failure is a verdict, never the live path's problem
            self.failed += 1
            self.last_error = f"{type(e).__name__}: {e}"
            return
        self._latency_us.append((time.perf_counter() - t0) * 1e6)
        self.candidate_raises += self._raised("candidate", score)

    def _raised(self, who: str, score: Score) -> int:
        key = (who, score.asset)
        d = self._deciders.get(key)
        if d is None:
            d = self._deciders[key] = self.new_decider()
        return int(d.update(score).change == "raised")

    def result(self) -> ShadowResult:
        lat = sorted(self._latency_us)
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else 0.0
        return ShadowResult(self.windows, self.failed, self.current_raises, self.candidate_raises, p99)

    def done(self) -> bool:
        return self.clock() - self.started >= self.bounds.duration_s and self.windows >= self.bounds.min_windows

    def status(self) -> dict:
        lat = list(self._latency_us)
        return {"candidate": getattr(self.candidate, "version", "?"), "windows": self.windows, "failed": self.failed,
                "current_raises": self.current_raises, "candidate_raises": self.candidate_raises,
                "latency_p50_us": round(statistics.median(lat), 1) if lat else None,
                "elapsed_s": round(self.clock() - self.started, 1), "duration_s": self.bounds.duration_s,
                "last_error": self.last_error}


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
