"""Commissioning: train a bundle on an asset's own recorded operation, on the gateway.

A model must know the operating point it watches (a pump run at another flow
alarms on everything, see ``docs/detector.md``, stream mode). The appliance
already records every reading in its local store, so a technician can let it
watch a machine running normally, then train on exactly that span, offline::

    appliance train --from-store pump3 --last 3600 --out var/model-pump3

Readings are put on the grid by the same :class:`WindowBuilder` the live path
uses (last value held, stale cells missing), so the model is trained on rows
aligned exactly as it will later see them; rows with a missing sensor split the
data into runs instead of being filled. A span that overlaps an alarm of the
asset is refused unless explicitly allowed: training "normal" on a fault is the
one mistake commissioning must not make quietly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from appliance.core import Quality, Reading
from appliance.detector.train import train_bundle
from appliance.detector.windowing import WindowBuilder
from appliance.store import open_reader


class CommissionError(ValueError):
    """The recorded span cannot be trained on (no data, an alarm in it, ...)."""


def recorded_rows(db_path: str | Path, asset: str, *, since: float | None = None, until: float | None = None,
                  last_s: float | None = None, sensors: Sequence[str] | None = None, period_s: float = 1.0,
                  staleness_s: float = 5.0, lateness_s: float = 2.0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(sensors, grid_ts, rows)``: the asset's complete grid rows in ``[since, until]``.

    ``last_s`` instead of ``since``: the last seconds before the newest reading
    (by the readings' own timestamps, not the gateway clock). ``sensors``
    defaults to every sensor the asset reported in the span, by name.
    """
    if not Path(db_path).is_file():
        raise CommissionError(f"{db_path}: no appliance store here (wrong config or data_dir?)")
    if last_s is not None and (since is not None or not last_s > 0):
        raise CommissionError(f"last_s must be > 0 and not combined with since, got {last_s!r}")
    lo, hi = (-math.inf if since is None else since), (math.inf if until is None else until)
    if lo >= hi:
        raise CommissionError(f"empty time span: since {since} is not before until {until}")
    conn = open_reader(db_path)
    try:
        if last_s is not None:
            newest = conn.execute("SELECT MAX(ts) FROM readings WHERE asset = ? AND ts <= ?", (asset, hi)).fetchone()[0]
            lo = -math.inf if newest is None else newest - last_s
        readings = conn.execute("SELECT sensor, ts, value, quality FROM readings WHERE asset = ? AND ts >= ? "
                                "AND ts <= ? ORDER BY ts", (asset, lo, hi)).fetchall()
    finally:
        conn.close()
    seen = sorted({r["sensor"] for r in readings})
    if not readings:
        raise CommissionError(f"no readings of asset {asset!r} recorded in that span")
    sensors = list(sensors) if sensors else seen
    if missing := sorted(set(sensors) - set(seen)):
        raise CommissionError(f"asset {asset!r} has no readings of {missing} in that span (it has {seen})")
    builder = WindowBuilder(sensors, period_s, window=1, stride=1, staleness_s=staleness_s, lateness_s=lateness_s)
    ts, rows = [], []
    for r in readings:
        if r["sensor"] not in builder.sensors:
            continue
        value = math.nan if r["value"] is None else r["value"]
        for w in builder.add(Reading(asset, r["sensor"], r["ts"], value, Quality(r["quality"]))):
            if w.complete:
                ts.append(w.t_end)
                rows.append(w.values[0])
    if not rows:
        raise CommissionError(f"asset {asset!r}: no grid row in that span has every sensor of {sensors}")
    return sensors, np.asarray(ts, dtype=np.float64), np.asarray(rows, dtype=np.float64)


def alarms_during(db_path: str | Path, asset: str, since: float, until: float) -> list[str]:
    """Live (not replayed) alarms of ``asset`` that were active at some time in ``[since, until]``."""
    conn = open_reader(db_path)
    try:
        rows = conn.execute("SELECT id, start, end FROM alarms WHERE asset = ? AND historical = 0 AND start <= ? "
                            "AND (end IS NULL OR end >= ?) AND id NOT LIKE 'point-%' ORDER BY start",
                            (asset, until, since)).fetchall()
    finally:
        conn.close()
    return [f"{r['id']} (from {r['start']:.0f}" + (")" if r["end"] is None else f" to {r['end']:.0f})")
            for r in rows]


def commission(db_path: str | Path, asset: str, out_dir: str | Path, *, since: float | None = None,
               until: float | None = None, last_s: float | None = None, sensors: Sequence[str] | None = None,
               period_s: float = 1.0, staleness_s: float = 5.0, lateness_s: float = 2.0, allow_alarms: bool = False,
               **train_opts) -> Path:
    """Train a bundle on ``asset``'s recorded rows in ``[since, until]``; ``train_opts`` go to ``train_bundle``."""
    sensors, ts, rows = recorded_rows(db_path, asset, since=since, until=until, last_s=last_s, sensors=sensors,
                                      period_s=period_s, staleness_s=staleness_s, lateness_s=lateness_s)
    overlapping = alarms_during(db_path, asset, float(ts[0]), float(ts[-1]))
    if overlapping and not allow_alarms:
        raise CommissionError(f"asset {asset!r} was in alarm during the span: {', '.join(overlapping)}; "
                              "choose a span of normal operation (or allow it explicitly)")
    return train_bundle(rows, sensors, out_dir, ts=ts, period_s=period_s, staleness_s=staleness_s, **train_opts)
