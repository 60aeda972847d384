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

Verdicts decide what the span's alarm episodes are (:func:`training_labels`): an
episode a technician called a ``false_alarm`` is normal operation and its rows are
kept; a ``fault`` or ``maintenance`` episode is left out with ``margin_s`` either
side (a fault's onset and tail, the asset opened up), and the runs are cut there.
An episode nobody has judged yet refuses the span unless alarms are allowed
explicitly, and then it is left out like a fault: training "normal" on a fault is
the one mistake commissioning must not make quietly. The fleet client
(:mod:`appliance.fleet.data`) applies the same rule, with every unjudged episode left
out. Both say how many episodes of each kind they kept or left out (:class:`LabelUse`).

Before the bundle leaves the gateway, :func:`backtest_bundle` replays the recorded
history through it and the running model (:mod:`appliance.lifecycle.backtest`) and
says whether a signed release of it would pass the gateway's back-test.

The bundle goes live as any other model, through the model's lifecycle
(:mod:`appliance.lifecycle`): signed as a release, run in shadow beside the model
the gateway runs, promoted or rejected. :func:`going_live` says, when the bundle is
written, whether the running gateway can take it that way or needs a restart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from appliance.detector.train import TrainSettings, train_grid
from appliance.detector.windowing import GridRows, grid_rows, without_spans
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


@dataclass(frozen=True)
class LabelUse:
    """What training did with the alarm episodes of its span, by verdict."""

    false_alarm_kept: int = 0
    fault_left_out: int = 0
    maintenance_left_out: int = 0
    unlabelled_left_out: int = 0
    margin_s: float = 0.0

    @property
    def left_out(self) -> int:
        return self.fault_left_out + self.maintenance_left_out + self.unlabelled_left_out

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (f"alarm episodes in the span: {self.false_alarm_kept} false alarm(s) kept as normal operation; "
                f"left out with {self.margin_s:g} s either side: {self.fault_left_out} fault(s), "
                f"{self.maintenance_left_out} maintenance, {self.unlabelled_left_out} without a verdict")


def live_episodes(db_path: str | Path, asset: str, since: float, until: float) -> list[dict]:
    """``asset``'s live (not replayed) alarm episodes active at some time in ``[since, until]``, with their
    latest verdict (``StoreReader.labelled_episodes``), oldest first."""
    episodes = _open(db_path).labelled_episodes(until=until + 1e-6, asset=asset)
    return [e for e in episodes if not e["historical"] and (e["end"] is None or e["end"] >= since)]


def training_labels(episodes: Sequence[dict], margin_s: float) -> tuple[list[tuple[float, float]], LabelUse]:
    """The spans training leaves out (faults, maintenance and unjudged episodes, ``margin_s`` either side; an
    episode still open: everything from its start on) and what it did with each kind of episode."""
    spans: list[tuple[float, float]] = []
    counts = {"false_alarm": 0, "fault": 0, "maintenance": 0, None: 0}
    for e in episodes:
        kind = (e.get("verdict") or {}).get("verdict")
        counts[kind if kind in counts else None] += 1
        if kind != "false_alarm":
            spans.append((e["start"] - margin_s, float("inf") if e["end"] is None else e["end"] + margin_s))
    return spans, LabelUse(counts["false_alarm"], counts["fault"], counts["maintenance"], counts[None],
                           margin_s)


def describe_episode(e: dict) -> str:
    """``id (from START to END)`` of an episode, in UNIX seconds, for a refusal message."""
    return f"{e['id']} (from {e['start']:.0f}" + (")" if e["end"] is None else f" to {e['end']:.0f})")


def backtest_bundle(cfg, bundle_dir: str | Path, *, current: str | Path | None = None, since: float | None = None,
                    until: float | None = None, assets: Sequence[str] | None = None):
    """Back-test ``bundle_dir`` on the store of the gateway configured by ``cfg`` beside its running model
    (``current`` instead, if given): ``(BacktestReport, table text)``. The grid and the decisions are the
    gateway's ``[windows]`` and ``[decision]``, the bounds ``[outputs.sync.backtest]``."""
    from appliance.actions.decide import Decider
    from appliance.detector.scorer import Detector
    from appliance.lifecycle.backtest import Grid, backtest, table
    from appliance.runtime import grid_limits

    db = cfg.path(cfg.store.path)
    if not Path(db).is_file():
        raise CommissionError(f"{db}: no appliance store here (wrong config or data_dir?)")
    precision = cfg.detector.precision
    candidate = Detector.load(bundle_dir, precision=precision)
    running = Path(current) if current is not None else bundle_to_load(cfg)
    reference = Detector.load(running, precision=precision) if (running / "bundle.json").exists() else None
    staleness, lateness = grid_limits(cfg.windows, reference or candidate)  # the runtime's builder's
    grid = Grid(cfg.windows.period_s, cfg.windows.stride, staleness, lateness)
    report = backtest(db, candidate, reference, grid, lambda: Decider.from_config(cfg.decision),
                      cfg.outputs.sync.backtest, since=since, until=until, assets=assets)
    return report, table(report)


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
               sensors: Sequence[str] | None = None, allow_alarms: bool = False, margin_s: float = 60.0) -> Path:
    """Train a bundle on ``asset``'s recorded rows in ``[since, until]`` (see :func:`commission_with_labels`)."""
    return commission_with_labels(db_path, asset, out_dir, settings, since=since, until=until, last_s=last_s,
                                  sensors=sensors, allow_alarms=allow_alarms, margin_s=margin_s)[0]


def commission_with_labels(db_path: str | Path, asset: str, out_dir: str | Path,
                           settings: TrainSettings | None = None, *, since: float | None = None,
                           until: float | None = None, last_s: float | None = None,
                           sensors: Sequence[str] | None = None, allow_alarms: bool = False,
                           margin_s: float = 60.0) -> tuple[Path, LabelUse]:
    """Train a bundle on ``asset``'s recorded rows in ``[since, until]``, its alarm episodes used by their
    verdicts (module docstring); returns the bundle and what was done with the episodes.

    ``settings`` (default: the appliance's) also give the grid: ``period_s``,
    ``staleness_s`` and ``lateness_s`` should be the appliance's ``[windows]``.
    """
    settings = settings or TrainSettings()
    grid = recorded_rows(db_path, asset, since=since, until=until, last_s=last_s, sensors=sensors,
                         period_s=settings.period_s, staleness_s=settings.staleness_s,
                         lateness_s=settings.lateness_s)
    episodes = live_episodes(db_path, asset, float(grid.ts[0]), float(grid.ts[-1]))
    unjudged = [describe_episode(e) for e in episodes if e["verdict"] is None]
    if unjudged and not allow_alarms:
        raise CommissionError(f"asset {asset!r} was in alarm during the span: {', '.join(unjudged)}; give each "
                              "episode a verdict (false alarms are kept, faults and maintenance left out), choose a "
                              "span of normal operation, or allow alarms explicitly (they are then left out)")
    spans, use = training_labels(episodes, margin_s)
    normal = without_spans(grid, spans)
    if not len(normal):
        raise CommissionError(f"asset {asset!r}: every row of the span is within {margin_s:g} s of a fault, "
                              "maintenance or unjudged alarm episode; no normal operation to train on")
    return train_grid(normal, out_dir, settings), use
