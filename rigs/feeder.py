"""A thread submitting readings through the runtime's sink the whole time, as an input does."""

from __future__ import annotations

import threading
import time
from typing import Sequence

from appliance.core import Reading


class Feeder(threading.Thread):
    """Submits one row of readings of ``asset`` per simulated second from ``t0`` until told to stop."""

    def __init__(self, app, rows, sensors: Sequence[str], t0: float, asset: str = "pump1", pace_s: float = 0.002):
        super().__init__(name="feeder", daemon=True)
        self.app, self.rows, self.pace_s = app, rows, pace_s
        self.sensors, self.t0, self.asset = list(sensors), t0, asset
        self.sent = 0
        self.stop_after: int | None = None  # rows
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for i, row in enumerate(self.rows):
                if self.stop_after is not None and i >= self.stop_after:
                    return
                self.app.submit([Reading(self.asset, s, self.t0 + i, float(v)) for s, v in zip(self.sensors, row)])
                self.sent = i + 1
                time.sleep(self.pace_s)
        except BaseException as e:  # reported by whoever waits on the feeder, not lost in a thread
            self.error = e
