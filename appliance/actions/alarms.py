"""Alarm lifecycle after ISA-18.2, one alarm point per asset.

States of the current occurrence: *unacknowledged* (active, not yet seen),
*acknowledged* (active, seen by a named user), *returned-to-normal
unacknowledged* (the process is back but nobody has seen it) and *normal*
(closed). The point itself can be *shelved* by a user for a limited time,
*suppressed* by design (e.g. asset stopped) or taken *out of service* for
maintenance; while so, occurrences are still tracked and stored but carry that
state, and out-of-service points raise nothing.

Every transition of an occurrence is returned as an
:class:`~appliance.core.AlarmEvent`, every change of the point's mode as a
:class:`~appliance.core.ModeChange`, for the caller to store and publish. A rise
of the open alarm's peak is reported to ``on_peak``. The book is not
thread-safe: the runtime calls it from its one event loop.

>>> from appliance.core import Score
>>> book = AlarmBook(Decider(raise_k=1, raise_n=1, clear_n=1), clock=lambda: 0.0)
>>> s = lambda t, v: Score("pump1", t, v, 1.0, {"Current": 0.9, "Pressure": 0.1})
>>> [e.kind.value for e in book.on_score(s(10, 1.5))]
['raised']
>>> book.current("pump1").state.value
'unacknowledged'
>>> [e.kind.value for e in book.acknowledge("pump1", "ana") + book.on_score(s(11, 0.1))]
['acknowledged', 'cleared']
>>> book.current("pump1").state.value
'normal'
>>> [(m.name, m.mode.value) for m in book.shelve("pump1", "ana", duration_s=600)]
[('shelved', 'shelved')]
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

from appliance.actions.decide import Decider
from appliance.core import Alarm, AlarmEvent, AlarmState, EventKind, ModeChange, PointMode, Score

MAX_SHELVE_S = 7 * 86400


class AlarmCommandError(ValueError):
    """A user command that does not apply (nothing to acknowledge, unknown asset...)."""


@dataclass(slots=True)
class _Point:
    decider: Decider
    mode: PointMode = PointMode.IN_SERVICE
    shelved_until: float | None = None
    alarm: Alarm | None = None
    acked: bool = False
    peak_ratio: float = 0.0
    contributions: dict = field(default_factory=dict)


class AlarmBook:
    def __init__(self, decider_factory: Callable[[], Decider] | Decider,
                 clock: Callable[[], float] = time.time, top_n: int = 3,
                 on_peak: Callable[[Alarm], None] | None = None):
        if isinstance(decider_factory, Decider):
            template = decider_factory
            decider_factory = lambda: copy.deepcopy(template)  # noqa: E731
        self._new_decider = decider_factory
        self._clock = clock
        self._top_n = top_n
        self._on_peak = on_peak
        self._points: dict[str, _Point] = {}

    # -- process side ---------------------------------------------------------
    def on_score(self, score: Score) -> list[AlarmEvent]:
        p = self._point(score.asset)
        if p.mode is PointMode.OUT_OF_SERVICE:
            return []
        d = p.decider.update(score)
        events: list[AlarmEvent] = []
        ratio = score.ratio
        if d.change is EventKind.RAISED:
            if p.alarm is not None and p.alarm.state != AlarmState.NORMAL:
                p.alarm.active = False
                p.alarm.state = AlarmState.NORMAL
                events.append(self._event(EventKind.SUPERSEDED, p, note="a new occurrence was raised"))
            p.acked = False
            p.peak_ratio = ratio
            p.alarm = Alarm(id=Alarm.make_id(score.asset, score.t_end), asset=score.asset,
                            level=d.level, state=AlarmState.UNACKED, start=score.t_end,
                            peak_ratio=ratio, top_sensors=score.top_sensors(self._top_n),
                            historical=score.historical)
            self._refresh(p)
            events.append(self._event(EventKind.RAISED, p))
        elif p.alarm is not None and p.alarm.active:
            if ratio > p.peak_ratio:
                p.peak_ratio = ratio
                p.alarm.peak_ratio = ratio
                p.alarm.top_sensors = score.top_sensors(self._top_n)
                if self._on_peak is not None:
                    self._on_peak(copy.copy(p.alarm))
            if d.change is EventKind.ESCALATED:
                p.alarm.level = d.level
                events.append(self._event(EventKind.ESCALATED, p))
            elif d.change is EventKind.CLEARED:
                p.alarm.active = False
                p.alarm.end = score.t_end
                self._refresh(p)
                events.append(self._event(EventKind.CLEARED, p))
        return events

    def tick(self) -> list[ModeChange]:
        """Expire shelving; call about once a second."""
        now = self._clock()
        changes = []
        for asset, p in self._points.items():
            if p.mode is PointMode.SHELVED and p.shelved_until is not None and now >= p.shelved_until:
                changes.append(self._change(asset, p, PointMode.IN_SERVICE, "system", "shelving expired"))
        return changes

    # -- operator side --------------------------------------------------------
    def acknowledge(self, asset: str, user: str, note: str = "") -> list[AlarmEvent]:
        p = self._known(asset)
        if p.alarm is None or p.acked or p.alarm.state == AlarmState.NORMAL:
            raise AlarmCommandError(f"asset {asset!r} has no unacknowledged alarm")
        p.alarm.acked_by = _user(user)
        p.acked = True
        self._refresh(p)
        return [self._event(EventKind.ACKNOWLEDGED, p, user=user, note=note)]

    def shelve(self, asset: str, user: str, duration_s: float, note: str = "") -> list[ModeChange]:
        if not 0 < duration_s <= MAX_SHELVE_S:
            raise AlarmCommandError("shelving duration must be between 0 and 7 days")
        p = self._known(asset)
        return [self._change(asset, p, PointMode.SHELVED, _user(user), note, until=self._clock() + duration_s)]

    def set_mode(self, asset: str, mode: str, user: str, note: str = "") -> list[ModeChange]:
        """Unshelve, suppress, take out of service or return to service."""
        try:
            new = PointMode(mode)
        except ValueError:
            new = None
        if new is None or new is PointMode.SHELVED:
            raise AlarmCommandError(f"mode must be one of in_service, suppressed, out_of_service; got {mode!r}")
        p = self._known(asset)
        user = _user(user)
        if p.mode is new:
            return []
        if new is PointMode.OUT_OF_SERVICE:
            p.decider = self._new_decider()
        return [self._change(asset, p, new, user, note)]

    # -- views and restart ----------------------------------------------------
    def current(self, asset: str) -> Alarm | None:
        p = self._points.get(asset)
        return None if p is None else p.alarm

    def alarms(self) -> list[Alarm]:
        return [p.alarm for p in self._points.values() if p.alarm is not None]

    def modes(self) -> dict[str, PointMode]:
        return {a: p.mode for a, p in self._points.items()}

    def restore_mode(self, asset: str, mode: PointMode, shelved_until: float | None = None) -> None:
        """Take back a point's mode from the store after a restart (before :meth:`restore`)."""
        p = self._point(asset)
        p.mode, p.shelved_until = PointMode(mode), shelved_until

    def restore(self, alarm: Alarm) -> None:
        """Take back an open alarm from the store after a restart."""
        p = self._point(alarm.asset)
        p.alarm, p.acked = alarm, alarm.acked_by is not None
        p.peak_ratio = alarm.peak_ratio
        self._refresh(p)
        if alarm.active:
            p.decider.active, p.decider.level = True, alarm.level

    def ensure(self, asset: str) -> None:
        """Make the asset's alarm point known (so it can be shelved before any alarm)."""
        self._point(asset)

    def _point(self, asset: str) -> _Point:
        p = self._points.get(asset)
        if p is None:
            p = self._points[asset] = _Point(self._new_decider())
        return p

    def _known(self, asset: str) -> _Point:
        if asset not in self._points:
            raise AlarmCommandError(f"unknown asset {asset!r}")
        return self._points[asset]

    def _refresh(self, p: _Point) -> None:
        a = p.alarm
        if a is None:
            return
        a.shelved_until = p.shelved_until
        if p.mode is not PointMode.IN_SERVICE:
            a.state = p.mode.alarm_state
        elif a.active:
            a.state = AlarmState.ACKED if p.acked else AlarmState.UNACKED
        else:
            a.state = AlarmState.NORMAL if p.acked else AlarmState.RTN_UNACKED

    def _event(self, kind: EventKind, p: _Point, user: str | None = None, note: str = "") -> AlarmEvent:
        return AlarmEvent(kind=kind, alarm=copy.copy(p.alarm), ts=self._clock(), user=user, note=note)

    def _change(self, asset: str, p: _Point, mode: PointMode, user: str, note: str,
                until: float | None = None) -> ModeChange:
        previous, p.mode, p.shelved_until = p.mode, mode, until
        self._refresh(p)
        return ModeChange(asset=asset, mode=mode, previous=previous, ts=self._clock(), user=user, note=note,
                          shelved_until=until, alarm=copy.copy(p.alarm) if p.alarm is not None else None)


def _user(user: str) -> str:
    user = (user or "").strip()
    if not user:
        raise AlarmCommandError("a named user is required")
    return user
