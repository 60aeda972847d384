"""The small typed core every part of the appliance speaks.

Connectors produce :class:`Reading` (or :class:`DeadLetter` for what they cannot
accept), the window builder turns readings into :class:`Window`, the detector
turns a window into a :class:`Score`, the decision step turns scores into
:class:`Alarm` changes published as :class:`AlarmEvent`. Nothing here imports
another part of the appliance, so every part can import this module.

Timestamps (``ts``) are UNIX seconds (UTC, float) taken from the source.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np


class Quality(enum.IntEnum):
    """Data quality carried with each reading (OPC-UA style, coarse)."""

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one sensor of one asset, as the source stamped it."""

    asset: str
    sensor: str
    ts: float
    value: float
    quality: Quality = Quality.GOOD
    source: str = ""
    historical: bool = False


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input that could not be accepted, kept with the reason so nothing vanishes."""

    source: str
    payload: bytes
    reason: str
    received_at: float


@dataclass(frozen=True, slots=True, eq=False)
class Window:
    """``rows x sensors`` values of one asset aligned on a fixed period.

    ``mask[i, j]`` is True where the cell holds a real, fresh, good value. The
    detector never scores masked cells as if they were data.
    """

    asset: str
    t_end: float
    period: float
    sensors: tuple[str, ...]
    values: np.ndarray
    mask: np.ndarray
    historical: bool = False

    @property
    def complete(self) -> bool:
        return bool(self.mask.all())

    @property
    def missing_sensors(self) -> tuple[str, ...]:
        return tuple(s for s, ok in zip(self.sensors, self.mask.all(axis=0)) if not ok)


@dataclass(frozen=True, slots=True)
class Score:
    """Anomaly score of one window.

    ``value`` is the reconstruction error, ``threshold`` the calibrated limit,
    ``contributions`` each sensor's share of the error (they sum to 1).
    """

    asset: str
    t_end: float
    value: float
    threshold: float
    contributions: Mapping[str, float]
    model_version: str = ""
    historical: bool = False

    @property
    def ratio(self) -> float:
        return self.value / self.threshold if self.threshold > 0 else float("inf")

    def top_sensors(self, n: int = 3) -> tuple[str, ...]:
        ranked = sorted(self.contributions.items(), key=lambda kv: kv[1], reverse=True)
        return tuple(name for name, _ in ranked[:n])


class Level(enum.IntEnum):
    NORMAL = 0
    ANOMALY = 1
    CRITICAL = 2


class AlarmState(str, enum.Enum):
    """ISA-18.2 alarm states."""

    NORMAL = "normal"
    UNACKED = "unacknowledged"
    ACKED = "acknowledged"
    RTN_UNACKED = "returned_unacknowledged"
    SHELVED = "shelved"
    SUPPRESSED = "suppressed"
    OUT_OF_SERVICE = "out_of_service"


@dataclass(slots=True)
class Alarm:
    """One alarm occurrence on one asset, from raise to return-to-normal."""

    id: str
    asset: str
    level: Level
    state: AlarmState
    start: float
    peak_score: float
    top_sensors: tuple[str, ...]
    end: float | None = None
    active: bool = True
    acked_by: str | None = None
    shelved_until: float | None = None
    historical: bool = False

    @staticmethod
    def make_id(asset: str, start: float) -> str:
        """Stable id: the same occurrence always gets the same id (idempotent retries)."""
        return hashlib.sha1(f"{asset}|{start:.6f}".encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "asset": self.asset,
            "level": self.level.name.lower(),
            "state": self.state.value,
            "active": self.active,
            "start": self.start,
            "end": self.end,
            "peak_score": self.peak_score,
            "top_sensors": list(self.top_sensors),
            "acked_by": self.acked_by,
            "shelved_until": self.shelved_until,
            "historical": self.historical,
        }


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """A transition of an alarm: raised, escalated, cleared, acknowledged, ..."""

    kind: str
    alarm: Alarm
    ts: float
    user: str | None = None
    note: str = ""

    def to_dict(self) -> dict:
        return {"event": self.kind, "ts": self.ts, "user": self.user, "note": self.note,
                "alarm": self.alarm.to_dict()}


@dataclass(frozen=True, slots=True)
class SensorHealth:
    """A change in a sensor's data arrival, reported by the watchdog."""

    asset: str
    sensor: str
    silent: bool
    since: float
    ts: float


AckCallback = Callable[[], None]


class IngestSink(Protocol):
    """Where connectors hand what they received. Must be safe to call from any thread.

    ``on_stored`` is called once everything in the batch is durably stored; a
    connector uses it to acknowledge the message to its source (MQTT PUBACK), so a
    crash before that point means the source delivers again.
    """

    def submit(self, readings: Sequence[Reading], dead_letters: Sequence[DeadLetter] = (),
               on_stored: AckCallback | None = None) -> None: ...


@dataclass(slots=True)
class Counters:
    """Plain counters a component exposes through ``status()``."""

    values: dict[str, int] = field(default_factory=dict)

    def inc(self, name: str, by: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + by

    def get(self, name: str) -> int:
        return self.values.get(name, 0)
