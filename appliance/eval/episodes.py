"""Alarms counted as an operator counts them: episodes, time to raise, time to clear.

Rows in alarm say how much of a day is red; an operator counts how many times
they were called. An *episode* is one stretch of consecutive rows in alarm. On
normal data every episode is a false one, and the rate that matters is false
episodes per day (or per week) of data. Around a fault that starts and ends,
what matters is how long after its start the alarm is raised and how long
after its end it clears.

Plain functions of a per-row ``alarm`` column (0/1) and its timestamps, shared
by ``benchmarks/detector_process.py`` and the SKAB report. Nothing here trains.

>>> alarm = np.array([0, 1, 1, 0, 0, 1, 0])
>>> alarm_episodes(alarm)
[(1, 3), (5, 6)]
>>> ts = np.arange(7) * DAY_S / 7  # 7 rows, each standing for 1/7 of a day
>>> round(episodes_per_day(alarm, ts), 3)
2.0
>>> raise_and_clear(np.array([0, 0, 0, 1, 1, 1, 0, 0]), np.arange(8) * 60.0, start=2, end=5)
{'raised': True, 'raise_s': 60.0, 'cleared': True, 'clear_s': 60.0, 'active_at_start': False}
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

DAY_S = 86_400.0
WEEK_S = 7 * DAY_S


def alarm_episodes(alarm: Sequence[int] | np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges of consecutive rows in alarm."""
    a = np.asarray(alarm, dtype=bool).astype(np.int8)
    if not len(a):
        return []
    edges = np.diff(np.concatenate([[0], a, [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def span_seconds(ts: np.ndarray) -> float:
    """How much time ``ts`` covers: last minus first plus one median step (a row stands for its period)."""
    ts = np.asarray(ts, dtype=np.float64)
    if len(ts) < 2:
        return 0.0
    return float(ts[-1] - ts[0] + np.median(np.diff(ts)))


def episodes_per_day(alarm: np.ndarray, ts: np.ndarray) -> float:
    """Episodes in ``alarm`` per 24 h of data (``ts`` in seconds)."""
    span = span_seconds(ts)
    return len(alarm_episodes(alarm)) * DAY_S / span if span > 0 else math.nan


def pooled_rate(counts: Iterable[int], spans_s: Iterable[float], per_s: float = WEEK_S) -> float:
    """Episodes per ``per_s`` seconds over several recordings: total episodes over total time."""
    total = float(sum(spans_s))
    return float(sum(counts)) * per_s / total if total > 0 else math.nan


def raise_and_clear(alarm: np.ndarray, ts: np.ndarray, start: int, end: int | None = None) -> dict:
    """Seconds from a fault's first row (``start``) to the first row in alarm, and from its end (``end``,
    the first row after it) to the first row out of alarm.

    ``active_at_start``: the alarm was already on when the fault began (a false alarm running into it);
    its raise time says nothing about the fault. ``raised`` False: no alarm during the fault. ``cleared``
    False: still in alarm at the end of the recording (``clear_s`` then the time it stayed on, a lower
    bound)."""
    a = np.asarray(alarm, dtype=bool)
    ts = np.asarray(ts, dtype=np.float64)
    stop = len(a) if end is None else min(end, len(a))
    out = {"raised": False, "raise_s": None, "cleared": None, "clear_s": None,
           "active_at_start": bool(start > 0 and a[start - 1])}
    on = np.flatnonzero(a[start:stop])
    if not len(on):
        return out
    out.update(raised=True, raise_s=float(ts[start + on[0]] - ts[start]))
    if end is None or end >= len(a):
        return out
    off = np.flatnonzero(~a[end:])
    if len(off):
        out.update(cleared=True, clear_s=float(ts[end + off[0]] - ts[end]))
    else:
        out.update(cleared=False, clear_s=float(ts[-1] - ts[end]))
    return out


def median_p90(values: Sequence[float]) -> dict:
    """``{"n", "median", "p90"}`` of ``values`` (None where there are none)."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return {"n": 0, "median": None, "p90": None}
    return {"n": int(len(v)), "median": float(np.median(v)), "p90": float(np.quantile(v, 0.9))}
