"""Commissioning: train a bundle on an asset's own recorded operation, on the gateway.

A model must know the operating point it watches (a pump run at another flow
alarms on everything, see ``docs/detector.md``, stream mode). The appliance
already records every reading in its local store, so a technician can let it
watch a machine running normally, then train on exactly that span, offline::

    appliance train --from-store pump3 --last 3600 --out var/model-pump3

The recorded readings are put on the grid by the same :class:`WindowBuilder` the
live path uses (:func:`~appliance.detector.windowing.grid_rows`: last value held,
stale or bad cells missing), so the model is trained on rows aligned exactly as
it will later see them; a row with a missing sensor ends a run instead of being
filled, and no window spans it. A span that overlaps an alarm of the asset is
refused unless explicitly allowed: training "normal" on a fault is the one
mistake commissioning must not make quietly. Every read goes through the
store's own methods.

The bundle goes live as any other model, through the model's lifecycle
(:mod:`appliance.lifecycle`): signed as a release, run in shadow beside the model
the gateway runs, promoted or rejected. :func:`going_live` says, when the bundle is
written, whether the running gateway can take it that way or needs a restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from appliance.core import Alarm
from appliance.detector.train import TrainSettings, train_grid
from appliance.detector.windowing import GridRows, grid_rows
from appliance.lifecycle.active import bundle_to_load
from appliance.lifecycle.shadow import hot_swap_check
from appliance.store import StoreReader


class CommissionError(ValueError):
    """The recorded span cannot be trained on (no data, an alarm in it, ...)."""


def _open(db_path: str | Path) -> StoreReader:
    # Read-only: commissioning must never migrate or write a store a running appliance owns.
    if not Path(db_path).is_file():
        raise CommissionError(f"{db_path}: no appliance store here (wrong config or data_dir?)")
    return StoreReader(db_path)


def recorded_rows(db_path: str | Path, asset: str, *, since: float | None = None, until: float | None = None,
                  last_s: float | None = None, sensors: Sequence[str] | None = None, period_s: float = 1.0,
                  staleness_s: float = 5.0, lateness_s: float = 2.0) -> GridRows:
    """The asset's complete grid rows in ``[since, until]``, and their runs.

    ``last_s`` instead of ``since``: the last seconds before the newest reading
    (by the readings' own timestamps, not the gateway clock). ``sensors``
    defaults to every sensor the asset reported in the span, by name.
    """
    if last_s is not None and (since is not None or not last_s > 0):
        raise CommissionError(f"last_s must be > 0 and not combined with since, got {last_s!r}")
    if since is not None and until is not None and since >= until:
        raise CommissionError(f"empty time span: since {since} is not before until {until}")
    store = _open(db_path)
    if last_s is not None:
        newest = store.newest_reading_ts(asset, until)
        if newest is None:
            raise CommissionError(f"no readings of asset {asset!r} recorded in that span")
        since = newest - last_s
    seen = store.asset_sensors(asset, since, until)
    if not seen:
        raise CommissionError(f"no readings of asset {asset!r} recorded in that span")
    sensors = list(sensors) if sensors else seen
    if missing := sorted(set(sensors) - set(seen)):
        raise CommissionError(f"asset {asset!r} has no readings of {missing} in that span (it has {seen})")
    grid = grid_rows(store.asset_readings(asset, since, until), sensors, period_s, staleness_s, lateness_s)
    if not len(grid):
        raise CommissionError(f"asset {asset!r}: no grid row in that span has every sensor of {sensors}")
    return grid


def describe(alarm: Alarm) -> str:
    """``id (from START to END)`` of an alarm, in UNIX seconds, for a refusal message."""
    return f"{alarm.id} (from {alarm.start:.0f}" + (")" if alarm.end is None else f" to {alarm.end:.0f})")


def alarms_during(db_path: str | Path, asset: str, since: float, until: float) -> list[str]:
    """Live (not replayed) alarms of ``asset`` that were active at some time in ``[since, until]``."""
    return [describe(a) for a in _open(db_path).live_alarms_during(asset, since, until)]


def going_live(cfg, bundle_dir: str | Path) -> str:
    """One line: can the gateway configured by ``cfg`` take the bundle in ``bundle_dir`` without a restart?

    Compared with the bundle that gateway loads at its next start (a promoted one, else ``detector.bundle``)
    by the rule its shadow run applies (:func:`~appliance.lifecycle.shadow.hot_swap_check`).
    """
    running = bundle_to_load(cfg)
    if not (running / "bundle.json").exists():
        return f"no model at {running} to compare with: the appliance starts on this bundle as detector.bundle"
    why = hot_swap_check(running, bundle_dir)
    if why is not None:
        return f"the running model ({running}) cannot be replaced without a restart: {why}"
    return (f"the running model ({running}) reads the same sensors on the same grid: a signed release of this "
            "bundle (appliance release add) runs in shadow beside it and is promoted or rejected there")


def commission(db_path: str | Path, asset: str, out_dir: str | Path, settings: TrainSettings | None = None, *,
               since: float | None = None, until: float | None = None, last_s: float | None = None,
               sensors: Sequence[str] | None = None, allow_alarms: bool = False) -> Path:
    """Train a bundle on ``asset``'s recorded rows in ``[since, until]``.

    ``settings`` (default: the appliance's) also give the grid: ``period_s``,
    ``staleness_s`` and ``lateness_s`` should be the appliance's ``[windows]``.
    """
    settings = settings or TrainSettings()
    grid = recorded_rows(db_path, asset, since=since, until=until, last_s=last_s, sensors=sensors,
                         period_s=settings.period_s, staleness_s=settings.staleness_s,
                         lateness_s=settings.lateness_s)
    overlapping = alarms_during(db_path, asset, float(grid.ts[0]), float(grid.ts[-1]))
    if overlapping and not allow_alarms:
        raise CommissionError(f"asset {asset!r} was in alarm during the span: {', '.join(overlapping)}; "
                              "choose a span of normal operation (or allow it explicitly)")
    return train_grid(grid, out_dir, settings)
