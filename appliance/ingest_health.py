"""Ingest health: loss made visible, and log lines that stay few when things go wrong at scale.

:class:`GapDetector` follows each sensor's source timestamps and counts the gaps
in them: a reading that arrives more than ``factor`` expected periods after the
previous one (and at least ``min_gap_s`` later than the period says) means
readings are missing. A broker that dropped queued messages (Mosquitto's
``max_queued_messages``), a publisher that lost its buffer, a link that was down:
all show up as gaps, counted per sensor with an estimate of the readings missing.
The expected period is configured, or learned as the median interval between a
sensor's recent readings.

:class:`LogLimiter` lets a condition that repeats (the same warning for the same
thing) through once per interval and counts the rest, so a flood of bad input
costs a few log lines, not one per message. :func:`log_sensor_changes` does the
same for the watchdog's silent/resumed reports: a handful of lines per check,
then one summary line.

>>> gd = GapDetector(min_samples=4, min_gap_s=0.5)
>>> [gd.observe("pump1", "Current", t) for t in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)]
[None, None, None, None, None, None]
>>> gap = gd.observe("pump1", "Current", 12.0)
>>> gap.span_s, gap.period_s, gap.missing
(7.0, 1.0, 6)
>>> gd.status()["gaps"], gd.status()["missing_estimate"]
(1, 6)
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from appliance.core import SensorHealth

# Once this many different keys are held, the oldest half is forgotten: a hostile
# stream of ever-new names cannot grow the limiter without bound.
_MAX_KEYS = 4096


class LogLimiter:
    """At most one log line per key per ``interval_s``; the ones held back are counted.

    The next line that gets through for a key says how many were suppressed since
    the previous one. Thread-safe.

    >>> records = []
    >>> class L:
    ...     def log(self, level, msg, *args, **kw): records.append(msg % args)
    >>> now = [0.0]
    >>> lim = LogLimiter(L(), interval_s=60, clock=lambda: now[0])
    >>> [lim.log(logging.WARNING, "bad", "bad input from %s", "x") for _ in range(3)]
    [True, False, False]
    >>> now[0] = 61.0
    >>> lim.log(logging.WARNING, "bad", "bad input from %s", "x"), records
    (True, ['bad input from x', 'bad input from x (2 similar suppressed in the last 61 s)'])
    """

    def __init__(self, logger, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = _MAX_KEYS):
        self._log = logger
        self.interval_s = interval_s
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._keys: dict[object, list] = {}  # key -> [last logged at, suppressed since]
        self.suppressed = 0

    def log(self, level: int, key: object, msg: str, *args, **kwargs) -> bool:
        """Log ``msg % args`` unless ``key`` was logged less than ``interval_s`` ago; True if logged.

        ``kwargs`` (``exc_info=True``...) go to the logger with the line."""
        now = self._clock()
        with self._lock:
            entry = self._keys.get(key)
            if entry is not None and now - entry[0] < self.interval_s:
                entry[1] += 1
                self.suppressed += 1
                return False
            held = entry[1] if entry is not None else 0
            since = now - entry[0] if entry is not None else 0.0
            if entry is None and len(self._keys) >= self._max_keys:
                for old in list(self._keys)[: self._max_keys // 2]:
                    del self._keys[old]
            self._keys[key] = [now, 0]
        if held:
            msg += " (%d similar suppressed in the last %.0f s)"
            args = (*args, held, since)
        self._log.log(level, msg, *args, **kwargs)
        return True


def log_sensor_changes(logger, changes: Iterable[SensorHealth], limit: int = 10) -> None:
    """Log the watchdog's silent/resumed reports: ``limit`` lines of each kind, then one summary.

    Ten thousand sensors going silent at once (a hostile publisher inventing
    assets, a whole line switched off) is one event to a reader, not ten thousand.
    """
    silent: list[SensorHealth] = []
    resumed: list[SensorHealth] = []
    for h in changes:
        (silent if h.silent else resumed).append(h)
    for items, level, word in ((silent, logging.WARNING, "silent"), (resumed, logging.INFO, "resumed")):
        for h in items[:limit]:
            logger.log(level, "sensor %s asset=%s sensor=%s", word, h.asset, h.sensor)
        if len(items) > limit:
            assets = sorted({h.asset for h in items[limit:]})
            shown = ",".join(assets[:5]) + (",..." if len(assets) > 5 else "")
            logger.log(level, "sensor %s: %d more sensors of %d assets (%s)", word, len(items) - limit,
                       len(assets), shown)


@dataclass(frozen=True, slots=True)
class Gap:
    """Readings missing between two consecutive readings of one sensor."""

    asset: str
    sensor: str
    start: float       # source time of the reading before the gap
    end: float         # source time of the reading after it
    period_s: float    # the expected period the gap was judged against
    missing: int       # readings that would have arrived in between, estimated
    learned: bool      # True when the period was learned, False when configured

    @property
    def span_s(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict:
        return {"asset": self.asset, "sensor": self.sensor, "start": self.start, "end": self.end,
                "span_s": round(self.span_s, 6), "period_s": self.period_s, "missing": self.missing,
                "period_learned": self.learned}


class _Series:
    __slots__ = ("last", "intervals", "period", "since_median", "gaps", "missing", "last_gap", "interrupted")

    def __init__(self, ts: float, period: float | None, history: int):
        self.last = ts
        self.intervals: deque[float] = deque(maxlen=history)  # the newest intervals, to learn the period from
        self.period = period
        self.since_median = 0
        self.gaps = 0
        self.missing = 0
        self.last_gap: Gap | None = None
        self.interrupted = False


class GapDetector:
    """Counts gaps in each sensor's readings against its expected period (see the module doc).

    ``periods`` maps ``"sensor"`` or ``"asset/sensor"`` to a configured period
    (the asset-qualified key wins); ``expected_period_s`` is the default for every
    other sensor; without either the period is learned: the median of the last
    ``history`` intervals, once ``min_samples`` are known. Readings that do not
    move a sensor forward in time (duplicates, out of order) are ignored. Memory
    is bounded by ``max_series``; sensors beyond it are not followed (and counted).

    Not thread-safe: one input calls :meth:`observe` from one thread;
    :meth:`status` only reads.
    """

    def __init__(self, expected_period_s: float | None = None, periods: Mapping[str, float] | None = None,
                 factor: float = 3.0, min_gap_s: float = 1.0, min_samples: int = 8, history: int = 32,
                 max_series: int = 100_000, on_gap: Callable[[Gap], None] | None = None):
        if factor <= 1:
            raise ValueError("factor must be > 1")
        self.expected_period_s = expected_period_s
        self.periods = dict(periods or {})
        self.factor = factor
        self.min_gap_s = min_gap_s
        self.min_samples = max(2, min_samples)
        self.history = max(self.min_samples, history)
        self.max_series = max_series
        self.on_gap = on_gap
        self._series: dict[tuple[str, str], _Series] = {}
        self.gaps = 0
        self.missing = 0
        self.untracked = 0
        self.last_gap: Gap | None = None
        self._interrupted: set[tuple[str, str]] = set()

    def interrupt(self, asset: str, sensor: str) -> None:
        """The source declared the sensor gone (a Sparkplug death): shown at once, and the next
        reading closes a gap however short the pause was."""
        s = self._series.get((asset, sensor))
        if s is not None and not s.interrupted:
            s.interrupted = True
            self._interrupted.add((asset, sensor))

    def _configured(self, asset: str, sensor: str) -> float | None:
        if self.periods:
            p = self.periods.get(f"{asset}/{sensor}")
            if p is None:
                p = self.periods.get(sensor)
            if p is not None:
                return p
        return self.expected_period_s

    def observe(self, asset: str, sensor: str, ts: float) -> Gap | None:
        """Take one reading's source time; return the gap it closes, if it closes one."""
        key = (asset, sensor)
        s = self._series.get(key)
        if s is None:
            if len(self._series) >= self.max_series:
                self.untracked += 1
                return None
            self._series[key] = _Series(ts, self._configured(asset, sensor), self.history)
            return None
        dt = ts - s.last
        if dt <= 0:
            return None
        s.last = ts
        if s.interrupted:
            return self._close_interruption(key, s, dt, ts)
        period = s.period
        learned = False
        if period is None or s.intervals:
            learned = True
            iv = s.intervals
            iv.append(dt)  # _learn, inline: this runs for every reading of every sensor
            if len(iv) < self.min_samples:
                return None
            s.since_median += 1
            if period is None or s.since_median >= len(iv):
                period = self._relearn(s)
        if dt < self.factor * period or dt < period + self.min_gap_s:
            return None
        gap = Gap(asset, sensor, ts - dt, ts, period, max(1, round(dt / period) - 1), learned)
        if learned:
            s.intervals.pop()  # a gap is not an interval to learn the period from
        return self._record(s, gap)

    def _record(self, s: _Series, gap: Gap) -> Gap:
        """Count ``gap`` on its series and in total, and tell the listener."""
        s.gaps += 1
        s.missing += gap.missing
        s.last_gap = gap
        self.gaps += 1
        self.missing += gap.missing
        self.last_gap = gap
        if self.on_gap is not None:
            self.on_gap(gap)
        return gap

    def _close_interruption(self, key: tuple[str, str], s: _Series, dt: float, ts: float) -> Gap:
        s.interrupted = False
        self._interrupted.discard(key)
        period = s.period if s.period is not None else (self.expected_period_s or dt)
        gap = Gap(key[0], key[1], ts - dt, ts, period, max(0, round(dt / period) - 1), s.period is None)
        return self._record(s, gap)

    @staticmethod
    def _relearn(s: _Series) -> float:
        """The period learned again from the intervals: a median over a few dozen values, recomputed every
        history-length readings."""
        s.period = statistics.median(s.intervals)
        s.since_median = 0
        return s.period

    def series(self) -> int:
        return len(self._series)

    def status(self, top: int = 10) -> dict:
        """Totals, the last gap, and the ``top`` sensors with the most gaps."""
        worst = sorted(((s.gaps, k, s) for k, s in list(self._series.items()) if s.gaps),
                       key=lambda x: -x[0])[:top]
        return {"gaps": self.gaps, "missing_estimate": self.missing, "series": len(self._series),
                "untracked": self.untracked,
                # sensors their source declared gone (a Sparkplug death), not heard from since
                "interrupted": [{"asset": a, "sensor": n} for a, n in sorted(self._interrupted)[:top]],
                "interrupted_count": len(self._interrupted),
                "last_gap": self.last_gap.to_dict() if self.last_gap is not None else None,
                "by_sensor": [{"asset": k[0], "sensor": k[1], "gaps": s.gaps, "missing_estimate": s.missing,
                               "period_s": s.period} for _, k, s in worst]}
