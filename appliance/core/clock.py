"""Clocks for waits that must survive a clock that jumps.

A gateway with no real-time clock boots in the past and is stepped forward by
NTP; a virtual machine that is paused and resumed can see its clocks leap. The
wall clock is for people (timestamps, schedules); how long something has been
waited for is measured on :class:`SteadyClock`, which only moves forward and
never by more than ``max_step_s`` between two readings, so a jump of either
sign counts as at most one short step instead of stalling or rushing a wait.
"""

from __future__ import annotations

import time
from typing import Callable


class SteadyClock:
    """Seconds elapsed, read often, that ignore jumps of the clock underneath.

    Each call adds the time since the previous call, clamped to
    ``[0, max_step_s]``. Read it at least every ``max_step_s`` (a poll loop does)
    or long quiet gaps count short: waits then last longer, never shorter.

    >>> ticks = iter([100.0, 101.0, 701.0, 702.0, 50.0, 51.0])
    >>> clock = SteadyClock(source=lambda: next(ticks), max_step_s=5.0)
    >>> [clock() for _ in range(5)]   # +1, then a 600 s leap counted as 5, +1, a step back as 0, +1
    [1.0, 6.0, 7.0, 7.0, 8.0]
    """

    def __init__(self, source: Callable[[], float] = time.monotonic, max_step_s: float = 5.0):
        if not max_step_s > 0:
            raise ValueError(f"max_step_s must be > 0, got {max_step_s!r}")
        self._source = source
        self.max_step_s = float(max_step_s)
        self._last = source()
        self._elapsed = 0.0
        self.jumps = 0  # readings whose step was clamped: how often the clock underneath leapt

    def __call__(self) -> float:
        now = self._source()
        step = now - self._last
        self._last = now
        if step < 0 or step > self.max_step_s:
            self.jumps += 1
            step = 0.0 if step < 0 else self.max_step_s
        self._elapsed += step
        return self._elapsed


class StepDetector:
    """Notices when the wall clock steps against the monotonic one.

    Returns the size of the step (seconds, signed) since the previous check, or
    0.0 while the two clocks run together within ``tolerance_s`` (NTP slews;
    only a step moves their offset by more).

    >>> wall = iter([1000.0, 1001.0, 1602.0]); mono = iter([5.0, 6.0, 7.0])
    >>> d = StepDetector(wall=lambda: next(wall), monotonic=lambda: next(mono))
    >>> d.check(), d.check()
    (0.0, 600.0)
    """

    def __init__(self, wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 tolerance_s: float = 2.0):
        self._wall, self._mono, self.tolerance_s = wall, monotonic, tolerance_s
        self._offset = wall() - monotonic()

    def check(self) -> float:
        offset = self._wall() - self._mono()
        step = offset - self._offset
        self._offset = offset
        return step if abs(step) > self.tolerance_s else 0.0


class AgeCutoff:
    """The wall time before which stored rows are old enough to drop: ``now - keep_s``,
    except for rows received since this cutoff was made, until it has lived ``keep_s``.

    Rows are stamped with the wall clock when they arrive. A gateway without a
    real-time clock that NTP steps forward by months would otherwise find all it
    received before the step "months old" and drop it at once, rows not yet
    forwarded included. Nothing received in this run is older than the run itself
    (monotonic), so until the run is ``keep_s`` old the cutoff stays at or below the
    lowest wall time seen in it.

    >>> wall = iter([1000.0, 1000.0 + 90 * 86400, 1000.0 + 91 * 86400])
    >>> mono = iter([5.0, 65.0, 86400.0 + 65.0])
    >>> cutoff = AgeCutoff(86400.0, wall=lambda: next(wall), monotonic=lambda: next(mono))
    >>> cutoff()  # 90 days later by the wall clock, one minute by the monotonic one: keep this run's rows
    1000.0
    >>> cutoff() == 1000.0 + 90 * 86400  # a day into the run the wall clock rules again
    True
    """

    def __init__(self, keep_s: float, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        if not keep_s > 0:
            raise ValueError(f"keep_s must be > 0, got {keep_s!r}")
        self.keep_s = float(keep_s)
        self._wall, self._mono = wall, monotonic
        self._lowest_wall = wall()
        self._born = monotonic()

    def __call__(self) -> float:
        now = self._wall()
        self._lowest_wall = min(self._lowest_wall, now)
        cutoff = now - self.keep_s
        if self._mono() - self._born < self.keep_s:
            cutoff = min(cutoff, self._lowest_wall)
        return cutoff


def both_clocks_cutoff(now: float, newest: float | None, keep_s: float) -> float:
    """The own time before which a row is old by both clocks: ``keep_s`` before the wall clock's
    ``now`` and ``keep_s`` before the ``newest`` own time kept (None: nothing kept, the wall clock alone).

    For rows stamped only with their own time (a reading's ``ts``, a score's ``t_end``); the store,
    whose rows also carry when they were received, applies the same rule as a condition on both
    columns (``Store._drop_aged``). A forward step of the wall clock ages nothing that the data's own
    times still call recent, and a plant gone quiet keeps its last ``keep_s``; a row stamped far in
    the future (a device's bad clock) cannot age the rest either, the wall clock holds them.

    >>> both_clocks_cutoff(now=1000.0 + 365 * 86400, newest=1000.0, keep_s=86400.0)  # clock a year ahead
    -85400.0
    >>> both_clocks_cutoff(now=1000.0, newest=9e9, keep_s=100.0), both_clocks_cutoff(1000.0, None, 100.0)
    (900.0, 900.0)
    """
    return (now if newest is None else min(now, newest)) - keep_s
