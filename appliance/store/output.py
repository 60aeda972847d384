"""The store as an :class:`~appliance.core.Output`: every record the detection path makes goes to SQLite.

Its operator commands store a technician's word on an alarm episode and answer once it is
committed, so the journal read right after the answer shows it: ``add_comment``
(``alarm_id``, ``asset``, ``user``, ``text``) and ``set_verdict`` (``alarm_id``,
``asset``, ``user``, ``verdict``, ``cause``, ``note``; see :mod:`appliance.store.verdicts`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Mapping

from appliance.core import (Alarm, AlarmEvent, DeadLetter, EventKind, ModeChange, ModelChange,
                            OperatingPointChange, Output, OutputContext, Reading, Score)
from appliance.core.plugins import Command
from appliance.store.comments import AlarmComment
from appliance.store.store import Store
from appliance.store.verdicts import DEFAULT_CAUSES, AlarmVerdict

log = logging.getLogger(__name__)

# An open alarm's row follows its rising peak at most this often: a growing fault
# raises the peak on nearly every window, and the journal needs the trend, not each step.
PEAK_WRITE_INTERVAL_S = 1.0


class StoreOutput(Output):
    name = "store"

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic,
                 verdict_causes: tuple[str, ...] = DEFAULT_CAUSES):
        self.store = store
        self.verdict_causes = tuple(verdict_causes)
        self._clock = clock
        self._peaks_written: dict[str, float] = {}  # open alarm id -> when its peak was last written

    async def start(self, ctx: OutputContext) -> None:
        self.store.start()

    async def stop(self) -> None:
        self.store.close()

    def on_reading(self, reading: Reading) -> None:
        self.store.put_reading(reading)

    def on_dead_letter(self, dead: DeadLetter) -> None:
        self.store.put_dead_letter(dead)

    def on_score(self, score: Score) -> None:
        self.store.put_score(score)

    def on_alarm_event(self, event: AlarmEvent) -> None:
        self.store.put_alarm_event(event)
        if event.kind in (EventKind.CLEARED, EventKind.SUPERSEDED):
            self._peaks_written.pop(event.alarm.id, None)  # keeps the map to open alarms only
        else:
            self._peaks_written.setdefault(event.alarm.id, self._clock())

    def on_alarm_peak(self, alarm: Alarm) -> None:
        now = self._clock()
        if now - self._peaks_written.get(alarm.id, -PEAK_WRITE_INTERVAL_S) >= PEAK_WRITE_INTERVAL_S:
            self._peaks_written[alarm.id] = now
            self.store.put_alarm(alarm)

    def on_mode_change(self, change: ModeChange) -> None:
        self.store.put_mode_change(change)

    def on_model_change(self, change: ModelChange) -> None:
        self.store.put_model_change(change)

    def on_operating_point(self, change: OperatingPointChange) -> None:
        self.store.put_operating_point(change)

    def commands(self) -> Mapping[str, Command]:
        return {"add_comment": self._add_comment, "set_verdict": self._set_verdict}

    async def _add_comment(self, alarm_id: str, asset: str, user: str, text: str) -> list[AlarmComment]:
        """Store ``user``'s comment on ``alarm_id`` (:class:`~appliance.store.comments.CommentError` if refused)."""
        comment = AlarmComment.new(alarm_id, asset, user, text)
        self.store.put_comment(comment)
        await self._committed()
        # The audit line: who commented on which alarm, and when (the text is in the store).
        log.info("store: comment alarm=%s asset=%s user=%s ts=%.3f", comment.alarm_id, comment.asset, comment.user,
                 comment.ts)
        return [comment]

    async def _set_verdict(self, alarm_id: str, asset: str, user: str, verdict: str, cause: str | None = None,
                           note: str | None = None) -> list[AlarmVerdict]:
        """Store ``user``'s verdict on episode ``alarm_id`` (:class:`~appliance.store.verdicts.VerdictError` if refused)."""
        given = AlarmVerdict.new(alarm_id, asset, user, verdict, cause=cause, note=note, causes=self.verdict_causes)
        self.store.put_verdict(given)
        await self._committed()
        # The audit line: who judged which episode, how, and when.
        log.info("store: verdict alarm=%s asset=%s user=%s verdict=%s cause=%s ts=%.3f", given.alarm_id, given.asset,
                 given.user, given.verdict.value, given.cause, given.ts)
        return [given]

    async def _committed(self) -> None:
        """Wait, without holding the event loop, until everything queued so far is committed."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def wake() -> None:
            if not done.done():  # the command may have been given up on meanwhile
                done.set_result(None)

        self.store.after_commit(lambda: loop.call_soon_threadsafe(wake))
        await done

    def status(self) -> dict:
        return {"queued": self.store.queued(), "committed_batches": self.store.committed_batches,
                "write_errors": self.store.write_errors, "last_error": self.store.last_error,
                "dead_letters_collapsed": self.store.dead_letters_collapsed}
