"""Alarm lifecycle after ISA-18.2, one alarm point per asset.

States of the current occurrence: *unacknowledged* (active, not yet seen),
*acknowledged* (active, seen by a named user), *returned-to-normal
unacknowledged* (the process is back but nobody has seen it) and *normal*
(closed). The point itself can be *shelved* by a user for a limited time,
*suppressed* by design (e.g. asset stopped) or taken *out of service* for
maintenance; while so, occurrences are still tracked and stored but carry that
state, and out-of-service points raise nothing.

Every transition is returned as an :class:`~appliance.core.AlarmEvent` for the
caller to store and publish. The book is not thread-safe: the runtime calls it
from its one event loop.

>>> from appliance.core import Score
>>> book = AlarmBook(Decider(raise_k=1, raise_n=1, clear_n=1), clock=lambda: 0.0)
>>> s = lambda t, v: Score("pump1", t, v, 1.0, {"Current": 0.9, "Pressure": 0.1})
>>> [e.kind for e in book.on_score(s(10, 1.5))]
['raised']
>>> book.current("pump1").state.value
'unacknowledged'
>>> [e.kind for e in book.acknowledge("pump1", "ana")] + [e.kind for e in book.on_score(s(11, 0.1))]
['acknowledged', 'cleared']
>>> book.current("pump1").state.value
'normal'
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

from appliance.actions.decide import Decider
from appliance.core import Alarm, AlarmEvent, AlarmState, Level, Score

MODES = ("in_service", "shelved", "suppressed", "out_of_service")
_MODE_STATE = {"shelved": AlarmState.SHELVED, "suppressed": AlarmState.SUPPRESSED,
               "out_of_service": AlarmState.OUT_OF_SERVICE}


class AlarmCommandError(ValueError):
    """A user command that does not apply (nothing to acknowledge, unknown asset...)."""


@dataclass(slots=True)
class _Point:
    decider: Decider
    mode: str = "in_service"
    shelved_until: float | None = None
    alarm: Alarm | None = None
    acked: bool = False
    peak_ratio: float = 0.0
    contributions: dict = field(default_factory=dict)


class AlarmBook:
    def __init__(self, decider_factory: Callable[[], Decider] | Decider,
                 clock: Callable[[], float] = time.time, top_n: int = 3):
        if isinstance(decider_factory, Decider):
            template = decider_factory
            decider_factory = lambda: copy.deepcopy(template)  # noqa: E731
        self._new_decider = decider_factory
        self._clock = clock
        self._top_n = top_n
        self._points: dict[str, _Point] = {}

    # -- process side ---------------------------------------------------------
    def on_score(self, score: Score) -> list[AlarmEvent]:
        p = self._point(score.asset)
        if p.mode == "out_of_service":
            return []
        d = p.decider.update(score)
        events: list[AlarmEvent] = []
        ratio = score.ratio
        if d.change == "raised":
            if p.alarm is not None and p.alarm.state != AlarmState.NORMAL:
                p.alarm.active = False
                p.alarm.state = AlarmState.NORMAL
                events.append(self._event("superseded", p, note="a new occurrence was raised"))
            p.acked = False
            p.peak_ratio = ratio
            p.alarm = Alarm(id=Alarm.make_id(score.asset, score.t_end), asset=score.asset,
                            level=d.level, state=AlarmState.UNACKED, start=score.t_end,
                            peak_score=ratio, top_sensors=score.top_sensors(self._top_n),
                            historical=score.historical)
            self._refresh(p)
            events.append(self._event("raised", p))
        elif p.alarm is not None and p.alarm.active:
            if ratio > p.peak_ratio:
                p.peak_ratio = ratio
                p.alarm.peak_score = ratio
                p.alarm.top_sensors = score.top_sensors(self._top_n)
            if d.change == "escalated":
                p.alarm.level = d.level
                events.append(self._event("escalated", p))
            elif d.change == "cleared":
                p.alarm.active = False
                p.alarm.end = score.t_end
                self._refresh(p)
                events.append(self._event("cleared", p))
        return events

    def tick(self) -> list[AlarmEvent]:
        """Expire shelving; call about once a second."""
        now = self._clock()
        events = []
        for p in self._points.values():
            if p.mode == "shelved" and p.shelved_until is not None and now >= p.shelved_until:
                p.mode, p.shelved_until = "in_service", None
                self._refresh(p)
                events.append(self._event("unshelved", p, user="system", note="shelving expired"))
        return events

    # -- operator side --------------------------------------------------------
    def acknowledge(self, asset: str, user: str, note: str = "") -> list[AlarmEvent]:
        p = self._known(asset)
        if p.alarm is None or p.acked or p.alarm.state == AlarmState.NORMAL:
            raise AlarmCommandError(f"asset {asset!r} has no unacknowledged alarm")
        p.alarm.acked_by = _user(user)
        p.acked = True
        self._refresh(p)
        return [self._event("acknowledged", p, user=user, note=note)]

    def shelve(self, asset: str, user: str, duration_s: float, note: str = "") -> list[AlarmEvent]:
        if not 0 < duration_s <= 7 * 86400:
            raise AlarmCommandError("shelving duration must be between 0 and 7 days")
        p = self._known(asset)
        _user(user)
        p.mode, p.shelved_until = "shelved", self._clock() + duration_s
        self._refresh(p)
        return [self._event("shelved", p, user=user, note=note)]

    def set_mode(self, asset: str, mode: str, user: str, note: str = "") -> list[AlarmEvent]:
        """Unshelve, suppress, take out of service or return to service."""
        if mode not in MODES or mode == "shelved":
            raise AlarmCommandError(f"mode must be one of in_service, suppressed, out_of_service; got {mode!r}")
        p = self._known(asset)
        _user(user)
        if p.mode == mode:
            return []
        previous, p.mode, p.shelved_until = p.mode, mode, None
        if mode == "out_of_service":
            p.decider = self._new_decider()
        self._refresh(p)
        kind = {"in_service": "unshelved" if previous == "shelved" else "returned_to_service",
                "suppressed": "suppressed", "out_of_service": "removed_from_service"}[mode]
        return [self._event(kind, p, user=user, note=note)]

    # -- views and restart ----------------------------------------------------
    def current(self, asset: str) -> Alarm | None:
        p = self._points.get(asset)
        return None if p is None else p.alarm

    def alarms(self) -> list[Alarm]:
        return [p.alarm for p in self._points.values() if p.alarm is not None]

    def modes(self) -> dict[str, str]:
        return {a: p.mode for a, p in self._points.items()}

    def restore(self, alarm: Alarm, mode: str = "in_service", shelved_until: float | None = None) -> None:
        """Take back an open alarm from the store after a restart."""
        p = self._point(alarm.asset)
        p.alarm, p.acked = alarm, alarm.acked_by is not None
        p.peak_ratio = alarm.peak_score
        p.mode, p.shelved_until = mode if mode in MODES else "in_service", shelved_until
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
        if p.mode != "in_service":
            a.state = _MODE_STATE[p.mode]
        elif a.active:
            a.state = AlarmState.ACKED if p.acked else AlarmState.UNACKED
        else:
            a.state = AlarmState.NORMAL if p.acked else AlarmState.RTN_UNACKED

    def _event(self, kind: str, p: _Point, user: str | None = None, note: str = "") -> AlarmEvent:
        alarm = p.alarm
        if alarm is None:  # a point-level change with no occurrence yet
            asset = next(a for a, q in self._points.items() if q is p)
            alarm = Alarm(id=f"point-{asset}", asset=asset, level=Level.NORMAL,
                          state=_MODE_STATE.get(p.mode, AlarmState.NORMAL), start=self._clock(),
                          peak_score=0.0, top_sensors=(), active=False, shelved_until=p.shelved_until)
        return AlarmEvent(kind=kind, alarm=copy.copy(alarm), ts=self._clock(), user=user, note=note)


def _user(user: str) -> str:
    user = (user or "").strip()
    if not user:
        raise AlarmCommandError("a named user is required")
    return user
