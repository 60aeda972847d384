"""An asset's score and sensor trends over a chosen range, at most ``MAX_POINTS`` buckets per series.

Raw readings and scores come from the store, for the span it still holds (it
keeps every reading received since its oldest one: retention drops the oldest
first; 5,000,000 readings by default, about 14 h at 100 readings/s); the local
history (``[outputs.history.local]``, when the appliance has it) adds its
one-minute aggregates before that span, and serves ranges longer than
``RAW_UP_TO_S`` whole (a day of raw readings is more than a dashboard request
should scan; its aggregates are kept a month, and written every
``commit_interval_s``, 2 minutes by default, so such a range's last minutes show
up that much later). Without local history the store
serves everything it has. Either way each series comes back bucketed: the mean,
min and max of every bucket for a sensor, the highest severity of every bucket
for the score, so a short spike is never averaged away (the store buckets in
SQLite, :class:`~appliance.store.store.StoreReader`). ``source`` says which was
read. Alarm episodes that overlap the range come from the store.
"""

from __future__ import annotations

import math
import time

from appliance.core.severity import severity
from appliance.history.local import ROLLUP_S

RANGES = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400}
DEFAULT_RANGE = "1h"
MAX_POINTS = 600
RAW_UP_TO_S = 6 * 3600  # longer ranges are read from the local history's one-minute rollups when it is on
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
    cut = since if local is None else _store_cut(reader, since, until, span)
    out = {s: _Buckets(since, width) for s in sensors}
    score = _Buckets(since, width)
    sources = []
    if cut > since:
        _add_minutes(local, asset, since, cut, out, score)
        sources.append("local history (1m)")
    if cut < until:
        _add_store(reader, asset, cut, until, width, out, score)
        sources.append("store")
    return {"asset": asset, "range": range_key, "since": since, "until": until, "bucket_s": width,
            "source": " and the ".join(sources), "score": _score_series(score),
            "sensors": {s: b.series() for s, b in out.items()}, "threshold_severity": severity(1.0)}


def _store_cut(reader, since: float, until: float, span: float) -> float:
    """Where the store takes over from the local history's minutes: the first whole minute from which
    the store holds every reading (``until`` past ``RAW_UP_TO_S`` or when it holds none)."""
    kept_since = reader.readings_kept_since()
    if span > RAW_UP_TO_S or kept_since is None:
        return until
    return min(max(since, math.ceil(kept_since / ROLLUP_S) * ROLLUP_S), until)


def _score_series(b: _Buckets) -> dict[str, list]:
    """Each bucket's highest score as a severity (and as the raw ratio, for the tooltip)."""
    s = b.series()
    return {"t": s["t"], "severity": [severity(r) for r in s["max"]], "ratio_max": s["max"]}


def _add_minutes(local, asset: str, since: float, cut: float, out: dict[str, _Buckets], score: _Buckets) -> None:
    """The local history's whole minutes in ``[since, cut)`` (``cut`` is a minute boundary), at their middle."""
    half = ROLLUP_S / 2
    for sensor, b in out.items():
        for r in local.query_readings(asset, sensor, since, cut, "1m", MAX_RAW_ROWS):
            if r["ts"] < cut:
                b.add(r["ts"] + half, r["mean"], r["min"], r["max"], r["count"] or 1)
    for r in local.query_scores(asset, since, cut, "1m", MAX_RAW_ROWS):
        if r["ts"] < cut:
            score.add(r["ts"] + half, r["max_ratio"], r["max_ratio"], r["max_ratio"])


def _add_store(reader, asset: str, since: float, until: float, width: float, out: dict[str, _Buckets],
               score: _Buckets) -> None:
    """The store's readings and scores in ``(since, until]``, bucketed in SQLite."""
    for sensor, b in out.items():
        for start, mean, lo, hi, n in reader.reading_buckets(asset, sensor, since, until, width):
            b.add(start + width / 2, mean, lo, hi, n)
    for start, hi, _ in reader.score_buckets(asset, since, until, width):
        score.add(start + width / 2, hi)
