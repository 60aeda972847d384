"""Verdicts: what a technician says an alarm episode was, the labels the gateway learns from.

An alarm episode (one occurrence in the ``alarms`` table) gets a verdict from a
technician or engineer: ``fault`` (with a cause from the gateway's configured list),
``false_alarm``, or ``maintenance`` (someone was working on the asset). A verdict can
be changed; every verdict given is kept (who, when), and the latest one per episode
is the episode's label. They live in the store beside the episode, written by the
store's writer thread like every other record, and are read back through
:meth:`~appliance.store.store.StoreReader.alarm_verdicts` (one episode's history) and
:meth:`~appliance.store.store.StoreReader.labelled_episodes` (episodes with their
current verdict, for the back-test, the KPIs and training).

>>> v = AlarmVerdict.new("a1b2", "pump1", "ana", "fault", cause="bearing", causes=("bearing", "sensor"), ts=5.0)
>>> v.verdict is Verdict.FAULT, v.cause, v.to_dict()["user"]
(True, 'bearing', 'ana')
>>> AlarmVerdict.new("a1b2", "pump1", "ana", "fault", cause="gremlins", causes=("bearing",))
Traceback (most recent call last):
...
appliance.store.verdicts.VerdictError: cause 'gremlins' is not one of: bearing
>>> AlarmVerdict.new("a1b2", "pump1", "ana", "false_alarm", cause="bearing").cause is None
True
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from appliance.core.compat import StrEnum

MAX_NOTE = 500  # characters, after surrounding white space is taken off
# The causes a fault verdict may name when the configuration gives none.
DEFAULT_CAUSES = ("bearing", "cavitation", "seal_leak", "misalignment", "sensor", "process_upset", "other")


class Verdict(StrEnum):
    FAULT = "fault"
    FALSE_ALARM = "false_alarm"
    MAINTENANCE = "maintenance"


class VerdictError(ValueError):
    """A verdict refused before it reaches the store (unknown kind or cause, no author or episode)."""


@dataclass(frozen=True)
class AlarmVerdict:
    alarm_id: str
    asset: str
    ts: float
    user: str
    verdict: Verdict
    cause: str | None = None
    note: str | None = None

    @classmethod
    def new(cls, alarm_id: str, asset: str, user: str, verdict: str, cause: str | None = None,
            note: str | None = None, causes: tuple[str, ...] = DEFAULT_CAUSES,
            ts: float | None = None) -> "AlarmVerdict":
        """A checked verdict by ``user`` on episode ``alarm_id``, dated now unless ``ts`` is given.

        A ``fault`` needs a cause from ``causes``; the other verdicts carry none (a cause
        given with them is dropped, so a form that keeps its last choice does no harm).
        """
        if not alarm_id or not user:
            raise VerdictError("a verdict needs its alarm episode and its author")
        kind = _verdict(verdict)
        cause = _cause(kind, cause, causes)
        note = note.strip() if isinstance(note, str) else None
        if note and len(note) > MAX_NOTE:
            raise VerdictError(f"a verdict's note has at most {MAX_NOTE} characters")
        return cls(alarm_id, asset or "", time.time() if ts is None else float(ts), user, kind, cause, note or None)

    def to_dict(self) -> dict:
        return {"ts": self.ts, "alarm_id": self.alarm_id, "asset": self.asset, "user": self.user,
                "verdict": self.verdict.value, "cause": self.cause, "note": self.note}


def _verdict(value: str) -> Verdict:
    try:
        return Verdict(value)
    except ValueError:
        raise VerdictError(f"verdict {value!r} is not one of: {', '.join(v.value for v in Verdict)}") from None


def _cause(kind: Verdict, cause: str | None, causes: tuple[str, ...]) -> str | None:
    if kind is not Verdict.FAULT:
        return None
    if not cause:
        raise VerdictError("a fault verdict names its cause")
    if cause not in causes:
        raise VerdictError(f"cause {cause!r} is not one of: {', '.join(causes)}")
    return cause
