"""An asset's score and sensor trends over a chosen range, at most ``MAX_POINTS`` buckets per series.

The source is the local history (``[outputs.history.local]``: raw readings and
scores for a day, one-minute rollups for a month) when the appliance has it,
otherwise the store (raw readings, bounded by its own retention; bucketed by
:class:`~appliance.store.store.StoreReader` in SQLite). Either way
each series comes back bucketed: the mean, min and max of every bucket for a
sensor, the highest severity of every bucket for the score, so a short spike is
never averaged away. Alarm episodes that overlap the range come from the store.
"""

from __future__ import annotations

import math
import time
from typing import Any

from appliance.core.severity import severity

RANGES = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400}
DEFAULT_RANGE = "1h"
MAX_POINTS = 600
RAW_UP_TO_S = 6 * 3600  # longer ranges are read from the one-minute rollups
MAX_RAW_ROWS = 100_000


def bucket_width(span_s: float) -> float:
    """Seconds per bucket so that ``span_s`` fits in ``MAX_POINTS`` (at least one second).

    >>> bucket_width(900), bucket_width(3600), bucket_width(7 * 86400)
    (1.5, 6.0, 1008.0)
    """
    return max(1.0, span_s / MAX_POINTS)


class _Buckets:
    """Mean/min/max (or max severity) per time bucket, oldest first."""

    def __init__(self, since: float, width: float):
        self.since, self.width = since, width
        self.acc: dict[int, list[float]] = {}

    def add(self, ts: float, value: float | None, lo: float | None = None, hi: float | None = None,
            n: int = 1) -> None:
        if value is None or not math.isfinite(value):
            return
        b = int((ts - self.since) // self.width)
        a = self.acc.get(b)
        lo = value if lo is None else lo
        hi = value if hi is None else hi
        if a is None:
            self.acc[b] = [value * n, n, lo, hi]
        else:
            a[0] += value * n
            a[1] += n
            a[2] = min(a[2], lo)
            a[3] = max(a[3], hi)

    def series(self) -> dict[str, list]:
        keys = sorted(self.acc)
        return {"t": [round(self.since + (b + 0.5) * self.width, 3) for b in keys],
                "mean": [self.acc[b][0] / self.acc[b][1] for b in keys],
                "min": [self.acc[b][2] for b in keys],
                "max": [self.acc[b][3] for b in keys]}


def trend(reader, history, asset: str, sensors: list[str], range_key: str, until: float | None = None) -> dict:
    """The asset's trend for ``range_key`` ending at ``until`` (now by default). See the module docstring."""
    span = RANGES[range_key]
    until = time.time() if until is None else until
    since = until - span
    width = bucket_width(span)
    local = getattr(history, "local", None) if history is not None else None
    if local is not None:
        source, sensor_series, score = _from_local(local, asset, sensors, since, until, width, span)
    else:
        source, sensor_series, score = _from_store(reader, asset, sensors, since, until, width)
    return {"asset": asset, "range": range_key, "since": since, "until": until, "bucket_s": width,
            "source": source, "score": score, "sensors": sensor_series,
            "threshold_severity": severity(1.0)}


def _score_series(b: _Buckets) -> dict[str, list]:
    """Each bucket's highest score as a severity (and as the raw ratio, for the tooltip)."""
    s = b.series()
    return {"t": s["t"], "severity": [severity(r) for r in s["max"]], "ratio_max": s["max"]}


def _from_local(local, asset, sensors, since, until, width, span) -> tuple[str, dict, dict]:
    resolution = "raw" if span <= RAW_UP_TO_S else "1m"
    out = {}
    for sensor in sensors:
        b = _Buckets(since, width)
        for r in local.query_readings(asset, sensor, since, until, resolution, MAX_RAW_ROWS):
            if resolution == "raw":
                b.add(r["ts"], r["value"])
            else:
                b.add(r["ts"] + 30, r["mean"], r["min"], r["max"], r["count"] or 1)
        out[sensor] = b.series()
    b = _Buckets(since, width)
    for r in local.query_scores(asset, since, until, resolution, MAX_RAW_ROWS):
        if resolution == "raw":
            b.add(r["ts"], r["ratio"])
        else:
            b.add(r["ts"] + 30, r["max_ratio"], r["max_ratio"], r["max_ratio"])
    return f"local history ({resolution})", out, _score_series(b)


def _from_store(reader, asset, sensors, since, until, width) -> tuple[str, dict, dict]:
    out: dict[str, Any] = {}
    for sensor in sensors:
        b = _Buckets(since, width)
        for start, mean, lo, hi, n in reader.reading_buckets(asset, sensor, since, until, width):
            b.add(start + width / 2, mean, lo, hi, n)
        out[sensor] = b.series()
    b = _Buckets(since, width)
    for start, hi, _ in reader.score_buckets(asset, since, until, width):
        b.add(start + width / 2, hi)
    return "store", out, _score_series(b)
