"""A gateway's own recent normal operation, read from its store, as the fleet model's training rows.

The rows come the way ``appliance train --from-store`` gets them
(:func:`appliance.commission.recorded_rows`: the store's readings put on the grid
by the live window builder, a missing value ending a run). Commissioning refuses
a span with an alarm in it; a fleet client instead leaves the alarm out: every
row from ``margin_s`` before a live alarm's start to ``margin_s`` after its end
is dropped (an alarm still open drops everything from its start on), and the
runs are cut there, so no window spans a fault or the gap it leaves. Nothing
here imports flwr.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from appliance.commission import CommissionError, recorded_rows
from appliance.detector.windowing import GridRows
from appliance.store import StoreReader

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class StoreSource:
    """Where a gateway's fleet client reads its rows: its store, one asset, the recent span, the grid limits."""

    db_path: Path
    asset: str
    recent_s: float
    margin_s: float = 300.0
    staleness_s: float = 5.0
    lateness_s: float = 2.0

    def check(self) -> None:
        """Fail before joining a fleet run when the store has nothing of the asset."""
        try:
            newest = StoreReader(self.db_path).newest_reading_ts(self.asset) if self.db_path.is_file() else None
        except Exception as e:  # an unreadable or foreign file
            raise CommissionError(f"{self.db_path}: cannot read the store ({e})") from None
        if newest is None:
            raise CommissionError(f"{self.db_path}: no readings of asset {self.asset!r} recorded")

    def normal_grid(self, sensors: Sequence[str], period_s: float) -> tuple[GridRows, dict]:
        """The asset's recent grid rows of ``sensors`` with alarms left out, and what was left out."""
        grid = recorded_rows(self.db_path, self.asset, last_s=self.recent_s, sensors=list(sensors),
                             period_s=period_s, staleness_s=self.staleness_s, lateness_s=self.lateness_s)
        t0, t1 = float(grid.ts[0]), float(grid.ts[-1])
        alarms = StoreReader(self.db_path).live_alarms_during(self.asset, t0 - self.margin_s, t1 + self.margin_s)
        spans = [(a.start - self.margin_s, np.inf if a.end is None else a.end + self.margin_s) for a in alarms]
        normal = without_spans(grid, spans)
        info = {"rows": len(grid), "normal_rows": len(normal), "alarms_left_out": len(alarms),
                "open_alarm": any(a.end is None for a in alarms), "from_ts": t0, "to_ts": t1}
        log.info("fleet data asset=%s rows=%d normal_rows=%d alarms_left_out=%d", self.asset, len(grid),
                 len(normal), len(alarms))
        if not len(normal):
            raise CommissionError(f"asset {self.asset!r}: every recorded row of the last {self.recent_s:g} s is "
                                  f"within {self.margin_s:g} s of an alarm; no normal operation to train on")
        return normal, info
