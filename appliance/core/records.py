"""The records every part of the appliance speaks.

Connectors produce :class:`Reading` (or :class:`DeadLetter` for what they cannot
accept), the window builder turns readings into :class:`Window`, the detector
turns a window into a :class:`Score`, the decision step turns scores into
:class:`Alarm` changes published as :class:`AlarmEvent`; an operator's change of
an alarm point's mode is a :class:`ModeChange`, and a PLC mitigation step is a
:class:`MitigationAction`. Nothing here imports another part of the appliance,
so every part can import this module.

Timestamps (``ts``) are UNIX seconds (UTC, float) taken from the source.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import asdict, dataclass, field
from typing import Mapping

import numpy as np

from appliance.core.compat import StrEnum
from appliance.core.severity import severity


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


def _reading_factory():
    """:class:`Reading` built without its dataclass ``__init__``: a frozen dataclass sets each field
    through ``object.__setattr__`` (about 0.4 µs a field); the slots' own descriptors set them for
    half that. For the inputs' hot paths, where a Sparkplug or multi-value message makes eight
    readings; anything else calls ``Reading(...)``.

    >>> new_reading("p1", "T", 1.0, 2.0, Quality.BAD, "mqtt", True) == Reading("p1", "T", 1.0, 2.0, Quality.BAD,
    ...                                                                           "mqtt", True)
    True
    """
    new = object.__new__
    set_asset, set_sensor, set_ts, set_value, set_quality, set_source, set_historical = (
        Reading.__dict__[name].__set__ for name in ("asset", "sensor", "ts", "value", "quality", "source",
                                                      "historical"))

    def new_reading(asset: str, sensor: str, ts: float, value: float, quality: Quality = Quality.GOOD,
                    source: str = "", historical: bool = False) -> Reading:
        r = new(Reading)
        set_asset(r, asset)
        set_sensor(r, sensor)
        set_ts(r, ts)
        set_value(r, value)
        set_quality(r, quality)
        set_source(r, source)
        set_historical(r, historical)
        return r

    return new_reading


new_reading = _reading_factory()


class DeadLetterCode(StrEnum):
    """Why input was refused: a stable code to count and filter by (the detail says the rest)."""

    INTERNAL_ERROR = "internal_error"
    TOO_LARGE = "too_large"
    BAD_JSON = "bad_json"
    NOT_OBJECT = "not_object"
    BAD_TOPIC = "bad_topic"
    MISSING_TS = "missing_ts"
    BAD_TS = "bad_ts"
    TS_TOO_OLD = "ts_too_old"
    TS_IN_FUTURE = "ts_in_future"
    MISSING_VALUE = "missing_value"
    AMBIGUOUS_VALUE = "ambiguous_value"
    SHAPE_MISMATCH = "shape_mismatch"
    EMPTY_VALUES = "empty_values"
    BAD_SENSOR_NAME = "bad_sensor_name"
    BAD_VALUE = "bad_value"
    NON_FINITE = "non_finite"
    BAD_QUALITY = "bad_quality"
    BAD_HISTORICAL = "bad_historical"
    UNKNOWN_SENSOR = "unknown_sensor"
    UNKNOWN_ASSET = "unknown_asset"
    OUT_OF_RANGE = "out_of_range"
    BAD_PROTOBUF = "bad_protobuf"      # a Sparkplug B payload that does not decode
    BAD_BIRTH = "bad_birth"            # a Sparkplug B birth refused (too many metrics, cache full) or flawed (aliases collide)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input that could not be accepted, kept with the reason so nothing vanishes."""

    source: str
    payload: bytes
    code: DeadLetterCode
    detail: str
    received_at: float
    # How many refusals this one record stands for: repeats of the same refusal (many
    # unknown sensors in one message, one bad message resent) are kept once, counted.
    count: int = 1

    @property
    def reason(self) -> str:
        """``code: detail``, for people reading a log or the dashboard."""
        return f"{self.code.value}: {self.detail}" if self.detail else self.code.value


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
    ``unseen`` names the sensors whose level in this window lies outside the
    model's training operating envelope (:mod:`appliance.detector.envelope`).
    """

    asset: str
    t_end: float
    value: float
    threshold: float
    contributions: Mapping[str, float]
    model_version: str = ""
    historical: bool = False
    unseen: tuple[str, ...] = ()

    @property
    def ratio(self) -> float:
        return self.value / self.threshold if self.threshold > 0 else float("inf")

    @property
    def severity(self) -> int:
        """0-100, 50 at the threshold: see :mod:`appliance.core.severity`."""
        return severity(self.ratio)

    def top_sensors(self, n: int = 3) -> tuple[str, ...]:
        ranked = sorted(self.contributions.items(), key=lambda kv: kv[1], reverse=True)
        return tuple(name for name, _ in ranked[:n])


class Level(enum.IntEnum):
    NORMAL = 0
    ANOMALY = 1
    CRITICAL = 2


class PointMode(StrEnum):
    """What an operator made of an asset's alarm point (ISA-18.2 shelving and suppression)."""

    IN_SERVICE = "in_service"
    SHELVED = "shelved"
    SUPPRESSED = "suppressed"
    OUT_OF_SERVICE = "out_of_service"

    @property
    def alarm_state(self) -> "AlarmState | None":
        """The state an occurrence takes while its point is in this mode (None: its own state).

        >>> PointMode.SHELVED.alarm_state.value, PointMode.IN_SERVICE.alarm_state
        ('shelved', None)
        """
        return None if self is PointMode.IN_SERVICE else AlarmState(self.value)


class EventKind(StrEnum):
    """A transition of one alarm occurrence."""

    RAISED = "raised"
    ESCALATED = "escalated"
    CLEARED = "cleared"
    ACKNOWLEDGED = "acknowledged"
    SUPERSEDED = "superseded"


class AlarmState(StrEnum):
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
    peak_ratio: float  # highest score / threshold seen during the occurrence
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
            "peak_ratio": self.peak_ratio,
            "top_sensors": list(self.top_sensors),
            "acked_by": self.acked_by,
            "shelved_until": self.shelved_until,
            "historical": self.historical,
        }


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """A transition of an alarm occurrence: raised, escalated, cleared, acknowledged, superseded."""

    kind: EventKind
    alarm: Alarm
    ts: float
    user: str | None = None
    note: str = ""

    def to_dict(self) -> dict:
        return {"event": self.kind.value, "ts": self.ts, "user": self.user, "note": self.note,
                "alarm": self.alarm.to_dict()}


_MODE_CHANGE_NAMES = {
    PointMode.SHELVED: "shelved", PointMode.SUPPRESSED: "suppressed",
    PointMode.OUT_OF_SERVICE: "removed_from_service",
}


@dataclass(frozen=True, slots=True)
class ModeChange:
    """An alarm point changed mode (shelved, suppressed, out of service, back in service).

    ``alarm`` is the asset's current occurrence after the change, if it has one
    (its state follows the mode); a point can change mode before any alarm.
    """

    asset: str
    mode: PointMode
    previous: PointMode
    ts: float
    user: str
    note: str = ""
    shelved_until: float | None = None
    alarm: Alarm | None = None

    @property
    def name(self) -> str:
        """What happened, in the words of the alarm journal.

        >>> ModeChange("p1", PointMode.IN_SERVICE, PointMode.SHELVED, 0.0, "system").name
        'unshelved'
        """
        if self.mode is PointMode.IN_SERVICE:
            return "unshelved" if self.previous is PointMode.SHELVED else "returned_to_service"
        return _MODE_CHANGE_NAMES[self.mode]

    def to_dict(self) -> dict:
        return {"event": self.name, "asset": self.asset, "mode": self.mode.value,
                "previous": self.previous.value, "ts": self.ts, "user": self.user, "note": self.note,
                "shelved_until": self.shelved_until,
                "alarm": self.alarm.to_dict() if self.alarm is not None else None}


OPERATING_POINT_WORDING = "operating point not seen in training"


@dataclass(frozen=True, slots=True)
class OperatingPointChange:
    """An asset entered or left "operating point not seen in training" (its own status, not an alarm).

    ``since`` is when the episode began (the ``ts`` of its ``entered``), ``sensors``
    the ones outside the training envelope when it began (``entered``) or, for
    ``left``, over the episode.

    >>> OperatingPointChange("p1", "entered", 10.0, 10.0, ("Temperature",)).to_dict()["status"]
    'operating point not seen in training'
    """

    asset: str
    event: str  # "entered" or "left"
    ts: float
    since: float
    sensors: tuple[str, ...]
    model_version: str = ""
    held_windows: int = 0  # windows over the anomaly threshold not raised as anomalies during the episode

    @property
    def active(self) -> bool:
        return self.event == "entered"

    def to_dict(self) -> dict:
        return {"event": f"operating_point_{self.event}", "asset": self.asset, "ts": self.ts, "since": self.since,
                "status": OPERATING_POINT_WORDING if self.active else "operating point back in training range",
                "active": self.active, "sensors": list(self.sensors), "model_version": self.model_version,
                "held_windows": self.held_windows,
                "advice": ("if this is the plant's new normal, re-commission the model on recent rows "
                           "(appliance commission)") if self.active else ""}


@dataclass(frozen=True, slots=True)
class MitigationAction:
    """One decision about one mitigation proposal, exactly as the audit log keeps it.

    ``status``: ``advised`` (advise-only, nothing written), ``pending_approval``,
    ``approved``, ``rejected``, ``written`` (written and verified), ``refused``
    (``guard`` says which), ``failed`` (the PLC refused or the read-back did not
    match), ``unchanged`` (already at the value), ``expired``, ``withdrawn``,
    ``deferred`` (a revert put off by a stop, re-armed at the next start).
    ``kind`` is ``mitigate`` or ``revert``; or ``arm`` / ``disarm`` (status ``armed`` /
    ``disarmed``, an engineer switching writes on or off at run time; old and new value 0/1).
    ``audit_seq`` and ``audit_hash`` are the audit log's row and keyed chain value once
    recorded: the chain's head, which the cloud uplink carries off the gateway (an anchor).
    """

    proposal_id: str
    ts: float
    kind: str
    status: str
    actor: str
    rule: str
    asset: str
    alarm_id: str | None
    node: str
    old_value: float | None
    new_value: float | None
    reason: str
    guard: str | None = None
    detail: str = ""
    armed: bool = False
    audit_seq: int | None = None
    audit_hash: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ModelChange:
    """A step in a model's life on the gateway: shadow started, promoted, rejected, rolled back."""

    ts: float
    event: str
    version: str
    previous: str
    reason: str
    user: str = "appliance"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SensorHealth:
    """A change in a sensor's data arrival, reported by the watchdog."""

    asset: str
    sensor: str
    silent: bool
    since: float
    ts: float


@dataclass(slots=True)
class Counters:
    """Plain counters a component exposes through ``status()``."""

    values: dict[str, int] = field(default_factory=dict)

    def inc(self, name: str, by: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + by

    def get(self, name: str) -> int:
        return self.values.get(name, 0)
