"""History as an :class:`~appliance.core.Output`: what the detection path produced goes to :class:`History`."""

from __future__ import annotations

import asyncio

from appliance.core import AlarmEvent, MitigationAction, ModeChange, Output, OutputContext, Reading, Score
from appliance.history.sink import History


class HistoryOutput(Output):
    name = "history"

    def __init__(self, history: History):
        self.history = history

    async def start(self, ctx: OutputContext) -> None:
        self.history.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self.history.stop)  # may wait for a write in flight

    def on_reading(self, reading: Reading) -> None:
        self.history.add_reading(reading)

    def on_score(self, score: Score) -> None:
        self.history.add_score(score)

    def on_alarm_event(self, event: AlarmEvent) -> None:
        self.history.add_alarm_event(event)

    def on_mode_change(self, change: ModeChange) -> None:
        self.history.add_mode_change(change)

    def on_action(self, action: MitigationAction) -> None:
        self.history.add_audit(action.to_dict())

    def status(self) -> dict:
        return self.history.status()

    def metrics_text(self) -> bytes:
        return self.history.metrics_text()
