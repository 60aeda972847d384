"""A gateway's own recent normal operation, read from its store, as the fleet model's training rows.

The rows come the way ``appliance train --from-store`` gets them
(:func:`appliance.commission.recorded_rows`: the store's readings put on the grid
by the live window builder, a missing value ending a run), and their live alarm
episodes are used by their verdicts as commissioning uses them
(:func:`appliance.commission.training_labels`): a ``false_alarm`` episode is normal
operation and kept; a ``fault``, ``maintenance`` or not yet judged episode is left
out, every row from ``margin_s`` before its start to ``margin_s`` after its end (an
alarm still open: everything from its start on), and the runs are cut there, so no
window spans a fault or the gap it leaves. Commissioning refuses a span with an
unjudged episode; a fleet client, which runs unattended, leaves it out. Nothing
here imports flwr.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from appliance.commission import CommissionError, live_episodes, recorded_rows, training_labels
from appliance.detector.windowing import GridRows, without_spans
from appliance.store import StoreReader

log = logging.getLogger(__name__)

# What a fleet client reports of its data each round (the server keeps them in its round record).
DATA_COUNTS = ("normal_rows", "alarms_left_out", "false_alarms_kept", "faults_left_out", "maintenance_left_out",
               "unlabelled_left_out")


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
        episodes = live_episodes(self.db_path, self.asset, t0 - self.margin_s, t1 + self.margin_s)
        spans, use = training_labels(episodes, self.margin_s)
        normal = without_spans(grid, spans)
        info = {"rows": len(grid), "normal_rows": len(normal), "alarms_left_out": use.left_out,
                "false_alarms_kept": use.false_alarm_kept, "faults_left_out": use.fault_left_out,
                "maintenance_left_out": use.maintenance_left_out, "unlabelled_left_out": use.unlabelled_left_out,
                "open_alarm": any(e["end"] is None and (e["verdict"] or {}).get("verdict") != "false_alarm"
                                  for e in episodes),
                "from_ts": t0, "to_ts": t1}
        log.info("fleet data asset=%s rows=%d normal_rows=%d false_alarms_kept=%d faults_left_out=%d "
                 "maintenance_left_out=%d unlabelled_left_out=%d", self.asset, len(grid), len(normal),
                 use.false_alarm_kept, use.fault_left_out, use.maintenance_left_out, use.unlabelled_left_out)
        if not len(normal):
            raise CommissionError(f"asset {self.asset!r}: every recorded row of the last {self.recent_s:g} s is "
                                  f"within {self.margin_s:g} s of an alarm; no normal operation to train on")
        return normal, info
