"""Per-asset alignment of per-sensor readings onto a fixed grid, and sliding windows.

Sensors report at their own times. Each asset gets a grid of rows ``k * period``;
the value of a sensor in row ``t`` is its last good reading with ``ts <= t``
(last value held) if that reading is at most ``staleness_s`` old, otherwise the
cell is *missing* (``mask`` False, value NaN). Nothing is ever zero-filled.

When a row is final (the deliberate rule for late and out-of-order data):

* as soon as every sensor of the asset has reported a reading with ``ts >= t``
  (the normal case: the decision follows the reading at once), or
* when the asset's newest timestamp passes ``t + lateness_s`` (a sensor is slow
  or silent; the row then holds what arrived, stale cells masked).

Readings out of order but for a row not yet final are placed where they belong.
A reading for a row already final is *late*: it is stored by the caller but
does not rewrite windows already scored; it is counted in ``late``.

Every ``stride`` rows, once ``window`` rows exist, a :class:`Window` is emitted.
A gap longer than the window (asset silent, appliance off) restarts the window
instead of producing a run of empty rows.

Training, evaluation and commissioning put recorded rows on the grid with the
same builder (:func:`grid_rows`), so a model learns from rows aligned exactly
by the rule it is later scored under.

>>> wb = WindowBuilder(("a", "b"), period_s=1.0, window=3, stride=1, staleness_s=2.5, lateness_s=2.0)
>>> out = []
>>> for t in range(100, 105):
...     out += wb.add(Reading("pump", "a", t, float(t)))
...     out += wb.add(Reading("pump", "b", t, -float(t)))
>>> [(w.t_end, w.values[:, 0].tolist()) for w in out]
[(102.0, [100.0, 101.0, 102.0]), (103.0, [101.0, 102.0, 103.0]), (104.0, [102.0, 103.0, 104.0])]
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from appliance.core import Quality, Reading, Window


@dataclass(slots=True)
class _SensorTrack:
    held_ts: float = -math.inf
    held_value: float = math.nan
    held_good: bool = False
    newest_ts: float = -math.inf
    pending: list = field(default_factory=list)  # sorted (ts, value, good) with ts > last final row


class _AssetAligner:
    def __init__(self, builder: "WindowBuilder", asset: str):
        self.b = builder
        self.asset = asset
        self.tracks = {s: _SensorTrack() for s in builder.sensors}
        self.next_row: float | None = None
        self.last_final = -math.inf
        self.newest_ts = -math.inf
        self.rows_values: deque[np.ndarray] = deque(maxlen=builder.window)
        self.rows_mask: deque[np.ndarray] = deque(maxlen=builder.window)
        self.rows_historical: deque[bool] = deque(maxlen=builder.window)
        self.since_emit = 0
        self.historical = False
        # Tracks whose newest reading has reached next_row: readiness in O(1) per reading, not
        # a pass over every sensor (which made a row of S sensors cost S^2 checks).
        self.fresh = 0

    def add(self, r: Reading) -> list[Window]:
        b = self.b
        track = self.tracks.get(r.sensor)
        if track is None:
            b.unknown_sensor += 1
            return []
        if self.next_row is None:
            self.next_row = math.ceil(r.ts / b.period_s) * b.period_s
            self._count_fresh()
        if r.ts <= self.last_final:
            # Rows up to last_final are already scored and are not rewritten; the
            # value still counts as the held value for the rows to come if newer.
            b.late += 1
            if r.ts <= track.held_ts:
                return []
        good = r.quality == Quality.GOOD and math.isfinite(r.value)
        bisect.insort(track.pending, (r.ts, r.value, good))
        due = self.next_row - b._eps
        if track.newest_ts < due <= r.ts:
            self.fresh += 1
        track.newest_ts = max(track.newest_ts, r.ts)
        self.newest_ts = max(self.newest_ts, r.ts)
        self.historical = r.historical
        return self._finalize_ready()

    def _count_fresh(self) -> None:
        due = self.next_row - self.b._eps
        self.fresh = sum(tr.newest_ts >= due for tr in self.tracks.values())

    def _ready(self) -> bool:
        """Whether ``next_row`` can be finalized: every sensor has reported at or after it, or the
        newest reading of any is past it by more than the lateness allowance."""
        if self.newest_ts >= self.next_row + self.b.lateness_s:
            return True
        return self.fresh >= len(self.tracks)

    def _finalize_ready(self) -> list[Window]:
        b = self.b
        out: list[Window] = []
        horizon = b.window * b.period_s + b.staleness_s
        while self.next_row is not None and self._ready():
            if self.newest_ts - b.lateness_s - self.next_row > horizon:
                # Long gap: rows in it would all be stale; restart the window after it.
                first_new = min(tr.pending[0][0] for tr in self.tracks.values() if tr.pending)
                skip_to = max(math.floor((self.newest_ts - b.lateness_s - b.window * b.period_s) / b.period_s),
                              math.ceil(first_new / b.period_s - 1e-9)) * b.period_s
                self._advance_tracks(skip_to - b.period_s)
                self.rows_values.clear()
                self.rows_mask.clear()
                self.rows_historical.clear()
                self.since_emit = 0
                b.gaps += 1
                self.last_final = skip_to - b.period_s
                self.next_row = skip_to
                self._count_fresh()
                continue
            window = self._finalize_row(self.next_row)
            if window is not None:
                out.append(window)
            self.next_row = round((self.next_row + b.period_s) / b.period_s) * b.period_s
            self._count_fresh()
        return out

    def _advance_tracks(self, t: float) -> None:
        for tr in self.tracks.values():
            cut = bisect.bisect_right(tr.pending, (t + self.b._eps, math.inf, True))
            if cut:
                tr.held_ts, tr.held_value, tr.held_good = tr.pending[cut - 1]
                del tr.pending[:cut]

    def _finalize_row(self, t: float) -> Window | None:
        b = self.b
        self._advance_tracks(t)
        self.last_final = t
        values = np.empty(len(b.sensors), dtype=b.dtype)
        mask = np.empty(len(b.sensors), dtype=bool)
        for j, s in enumerate(b.sensors):
            tr = self.tracks[s]
            fresh = tr.held_good and (t - tr.held_ts) <= b.staleness_s + b._eps
            mask[j] = fresh
            values[j] = tr.held_value if fresh else np.nan
        self.rows_values.append(values)
        self.rows_mask.append(mask)
        self.rows_historical.append(self.historical)
        b.rows += 1
        self.since_emit += 1
        if len(self.rows_values) < b.window or self.since_emit < b.stride:
            return None
        self.since_emit = 0
        b.windows += 1
        return Window(asset=self.asset, t_end=float(t), period=b.period_s, sensors=b.sensors,
                      values=np.stack(self.rows_values), mask=np.stack(self.rows_mask),
                      historical=any(self.rows_historical))


class WindowBuilder:
    """Aligns readings of any number of assets and emits their sliding windows.

    ``dtype`` is the type of the windows' values: float32 is what the scorer
    takes; offline callers that want a reading's value unrounded ask for float64.
    """

    def __init__(self, sensors, period_s: float, window: int, stride: int = 1,
                 staleness_s: float = 5.0, lateness_s: float = 2.0, dtype=np.float32):
        sensors = tuple(sensors)
        if not sensors or len(set(sensors)) != len(sensors):
            raise ValueError("sensors must be a non-empty list of distinct names")
        if not (period_s > 0 and math.isfinite(period_s)):
            raise ValueError(f"period_s must be > 0, got {period_s!r}")
        if int(window) < 1 or int(stride) < 1:
            raise ValueError(f"window and stride must be >= 1, got {window!r}, {stride!r}")
        if staleness_s <= 0 or lateness_s < 0:
            raise ValueError("staleness_s must be > 0 and lateness_s >= 0")
        self.sensors = sensors
        self.period_s = float(period_s)
        self.window = int(window)
        self.stride = int(stride)
        self.staleness_s = float(staleness_s)
        self.lateness_s = float(lateness_s)
        self.dtype = np.dtype(dtype)
        self._eps = self.period_s * 1e-6
        self._assets: dict[str, _AssetAligner] = {}
        self.late = 0
        self.unknown_sensor = 0
        self.gaps = 0
        self.rows = 0
        self.windows = 0

    def add(self, reading: Reading) -> list[Window]:
        """Take one reading; return the windows it completed (often none)."""
        aligner = self._assets.get(reading.asset)
        if aligner is None:
            aligner = self._assets[reading.asset] = _AssetAligner(self, reading.asset)
        return aligner.add(reading)

    def assets(self) -> list[str]:
        return sorted(self._assets)

    def forget(self, asset: str) -> None:
        """Drop an asset's alignment state (its input stopped admitting it)."""
        self._assets.pop(asset, None)

    def status(self) -> dict:
        return {"rows": self.rows, "windows": self.windows, "late_readings": self.late,
                "unknown_sensor": self.unknown_sensor, "gaps": self.gaps}


@dataclass(frozen=True)
class GridRows:
    """One asset's complete grid rows in time order, and the runs of consecutive ones.

    ``values[i]`` is the row at ``ts[i]`` (float64, every sensor fresh and good);
    ``runs`` are ``[start, end)`` index spans of rows one period apart. A run ends
    where the builder finalized an incomplete row (a stale, bad or missing
    value) or skipped a long gap: a window never spans the end of a run.
    """

    sensors: tuple[str, ...]
    ts: np.ndarray
    values: np.ndarray
    runs: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return len(self.ts)


def rows_as_readings(asset: str, sensors: Sequence[str], ts: np.ndarray, rows: np.ndarray,
                     source: str = "") -> Iterator[Reading]:
    """The readings of a table: row by row, one per sensor, as a device that reports rows sends them."""
    for i in range(len(rows)):
        t = float(ts[i])
        for j, sensor in enumerate(sensors):
            yield Reading(asset, sensor, t, float(rows[i, j]), source=source)


def grid_rows(readings: Iterable[Reading], sensors: Sequence[str], period_s: float, staleness_s: float = 5.0,
              lateness_s: float = 2.0) -> GridRows:
    """Put one asset's readings on the grid with a :class:`WindowBuilder`; keep the complete rows.

    The rows are the ones the live builder finalizes, with one nuance: a builder
    skips a gap longer than its window plus ``staleness_s`` (and ``lateness_s``),
    and this one builds one-row windows, so it skips sooner. After a gap longer
    than that but shorter than the live window, the few rows the live builder
    finalizes with held values just before the gap are not kept here. Windows cut
    from the runs are therefore always windows the live path scores. Readings of
    sensors not in ``sensors`` are ignored; readings of another asset are refused.

    >>> readings = rows_as_readings("p", ["a", "b"], np.array([0., 1, 3, 4, 20, 21]),
    ...                             np.c_[np.arange(6.), -np.arange(6.)])
    >>> g = grid_rows(readings, ["a", "b"], period_s=1.0, staleness_s=5.0)
    >>> g.ts.tolist(), g.values[:, 0].tolist(), g.runs
    ([0.0, 1.0, 2.0, 3.0, 4.0, 20.0, 21.0], [0.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0], ((0, 5), (5, 7)))
    """
    builder = WindowBuilder(sensors, period_s, window=1, stride=1, staleness_s=staleness_s,
                            lateness_s=lateness_s, dtype=np.float64)
    asset = None
    ts: list[float] = []
    values: list[np.ndarray] = []
    starts: list[int] = []
    last_t, last_complete = None, False
    for r in readings:
        if asset is None:
            asset = r.asset
        elif r.asset != asset:
            raise ValueError(f"grid_rows aligns one asset; got readings of {asset!r} and {r.asset!r}")
        for w in builder.add(r):
            t = w.t_end
            # Grid rows are a period apart, or at least two after a skipped gap; a half-period margin
            # absorbs float rounding of large timestamps (at 1.7e9 s one ulp is 2.4e-7 s).
            follows = last_complete and t - last_t < 1.5 * builder.period_s
            last_t, last_complete = t, w.complete
            if not w.complete:
                continue
            if not follows:
                starts.append(len(ts))
            ts.append(t)
            values.append(w.values[0])
    bounds = [*starts, len(ts)]
    return GridRows(sensors=builder.sensors, ts=np.asarray(ts, dtype=np.float64),
                    values=np.asarray(values, dtype=np.float64).reshape(len(ts), len(builder.sensors)),
                    runs=tuple(zip(bounds[:-1], bounds[1:])))


def without_spans(grid: GridRows, spans: Sequence[tuple[float, float]]) -> GridRows:
    """``grid`` without the rows whose time falls in any ``[start, end]`` of ``spans``; runs cut at each hole.

    >>> g = GridRows(("a",), np.arange(10.0), np.arange(10.0)[:, None], ((0, 6), (6, 10)))
    >>> h = without_spans(g, [(2.0, 3.0), (8.5, 99.0)])
    >>> h.ts.tolist(), h.runs
    ([0.0, 1.0, 4.0, 5.0, 6.0, 7.0, 8.0], ((0, 2), (2, 4), (4, 7)))
    """
    keep = np.ones(len(grid.ts), dtype=bool)
    for start, end in spans:
        keep &= ~((grid.ts >= start) & (grid.ts <= end))
    new_index = np.cumsum(keep) - 1
    runs: list[tuple[int, int]] = []
    for a, b in grid.runs:
        i = a
        while i < b:
            if not keep[i]:
                i += 1
                continue
            j = i
            while j < b and keep[j]:
                j += 1
            runs.append((int(new_index[i]), int(new_index[j - 1]) + 1))
            i = j
    return GridRows(grid.sensors, grid.ts[keep], grid.values[keep], tuple(runs))
