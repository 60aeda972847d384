"""A simulated pump feeding an uplink through the runtime's output hooks, for the uplink's tests and benchmark.

The score is the detector's stand-in (what is exercised is the uplink): 0.3 of
the threshold in normal running, 3x while a fault is injected; the real alarm
book (debounce, hysteresis) turns it into real alarm events.
"""

from __future__ import annotations

import math

from appliance.actions.alarms import AlarmBook
from appliance.actions.decide import Decider
from appliance.core import EventKind, Reading, Score
from appliance.sync.uplink import raw_size
from firmware_sim.pump import PumpModel

T0 = 1_760_000_000.0
# Fault-specific shares of the reconstruction error: which sensors the "detector" blames.
BLAME = {"Accelerometer1RMS": 0.35, "Accelerometer2RMS": 0.3, "Current": 0.2, "Temperature": 0.15}


class Plant:
    """One pump, one reading per sensor per simulated second, through the hooks of ``outputs``."""

    def __init__(self, outputs, asset: str = "pump1", seed: int = 7):
        self.outputs = outputs
        self.asset = asset
        self.model = PumpModel(seed=seed)
        self.t = T0
        self.book = AlarmBook(Decider(raise_k=3, raise_n=5, clear_n=5), clock=lambda: self.t)
        self.alarm_ids: list[str] = []
        self.readings = 0
        self.raw_bytes = 0

    def run(self, seconds: int, faulty: bool = False) -> None:
        for _ in range(seconds):
            self.t += 1.0
            for sensor, value in self.model.step(1.0).items():
                r = Reading(self.asset, sensor, self.t, value)
                self.readings += 1
                self.raw_bytes += raw_size(self.asset, sensor)
                for o in self.outputs:
                    o.on_reading(r)
            wobble = 0.05 * math.sin(self.t / 7.0)
            ratio = (3.0 if faulty else 0.3) + wobble
            contributions = BLAME if faulty else {s: 0.25 for s in list(BLAME)}
            score = Score(self.asset, self.t, ratio, 1.0, contributions, model_version="m-1")
            for o in self.outputs:
                o.on_score(score)
            for event in self.book.on_score(score):
                if event.kind is EventKind.RAISED:
                    self.alarm_ids.append(event.alarm.id)
                for o in self.outputs:
                    o.on_alarm_event(event)

    def episode(self, before: int = 40, fault: int = 60, after: int = 40, kind: str = "bearing_wear") -> None:
        self.run(before)
        self.model.inject(kind)
        self.run(fault, faulty=True)
        self.model.clear_faults()
        self.run(after)

    def hour(self) -> None:
        """An hour with three 2-minute bearing-wear faults, each after 15 minutes of normal running."""
        for _ in range(3):
            self.episode(before=900, fault=120, after=180)
        self.run(3600 - 3 * 1200)
