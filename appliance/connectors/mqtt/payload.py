"""Pure parsing of MQTT topics and JSON payloads into readings and dead letters.

Nothing here does I/O, so every rule the MQTT connector applies to its input can
be tested (and read) in isolation. Two payload shapes are accepted:

* one reading on a topic with a ``{sensor}`` level:
  ``{"ts": 1700000000.5, "value": 1.3}``
* several sensors at once on a topic without one:
  ``{"ts": "2024-05-01T12:00:00Z", "values": {"Current": 1.3, "Voltage": 229.1}}``

Optional keys: ``"quality"`` (``"good"``/``"uncertain"``/``"bad"`` or 0/1/2) and
``"historical"`` (true for replayed data). Unknown keys are ignored so devices can
add fields (sequence numbers, firmware version) without being rejected.

Every refusal is a :class:`~appliance.core.DeadLetter` with a stable
:class:`~appliance.core.DeadLetterCode` (``bad_json``, ``ts_in_future``, ...) to
count by, and a precise human explanation in ``detail``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Collection, Sequence

from appliance.core import DeadLetter, DeadLetterCode, Quality, Reading

# Dead letters keep the start of the raw payload only: a flood of huge bad
# messages must not be able to fill the gateway's disk through the dead-letter table.
DEAD_LETTER_MAX_BYTES = 8192
MAX_SENSOR_NAME = 128
_MS_HINT_ABOVE = 1e11  # a UNIX time in seconds stays below this until year 5138

_QUALITY_NAMES = {"good": Quality.GOOD, "uncertain": Quality.UNCERTAIN, "bad": Quality.BAD}



@dataclass(frozen=True, slots=True)
class RouteMatch:
    """What a topic says about a message: whose it is and how to read it."""

    asset: str
    sensor: str | None
    historical: bool
    pattern: str


@dataclass(frozen=True, slots=True)
class TopicRoute:
    """One configured topic pattern, e.g. ``plant/{asset}/{sensor}``."""

    pattern: str
    fixed_asset: str | None = None
    historical: bool = False

    @property
    def levels(self) -> tuple[str, ...]:
        return tuple(self.pattern.split("/"))

    @property
    def subscription(self) -> str:
        """The MQTT filter: placeholders become single-level wildcards.

        >>> TopicRoute("plant/{asset}/{sensor}").subscription
        'plant/+/+'
        """
        return "/".join("+" if lv in ("{asset}", "{sensor}") else lv for lv in self.levels)

    @property
    def specificity(self) -> int:
        """Number of literal levels; the most specific route wins a topic."""
        return sum(1 for lv in self.levels if lv not in ("{asset}", "{sensor}"))

    def match(self, topic: str) -> RouteMatch | None:
        """Map a concrete topic onto this pattern, or None if it does not fit.

        >>> TopicRoute("plant/{asset}/{sensor}").match("plant/pump1/Current")
        RouteMatch(asset='pump1', sensor='Current', historical=False, pattern='plant/{asset}/{sensor}')
        >>> TopicRoute("line3/telemetry", fixed_asset="press7").match("line3/telemetry").asset
        'press7'
        >>> TopicRoute("plant/{asset}/telemetry").match("plant/pump1/Current") is None
        True
        """
        parts = topic.split("/")
        levels = self.levels
        if len(parts) != len(levels):
            return None
        asset = sensor = None
        for lv, part in zip(levels, parts, strict=True):
            if lv == "{asset}":
                asset = part
            elif lv == "{sensor}":
                sensor = part
            elif lv != part:
                return None
        # An explicitly configured asset overrides the topic level on purpose:
        # it lets one site rename a device without reflashing it.
        return RouteMatch(asset=self.fixed_asset or asset or "", sensor=sensor,
                          historical=self.historical, pattern=self.pattern)


def _covers(general: str, specific: str) -> bool:
    """True if every topic matching filter ``specific`` also matches ``general``."""
    g, s = general.split("/"), specific.split("/")
    return len(g) == len(s) and all(a == "+" or a == b for a, b in zip(g, s, strict=True))


class TopicRouter:
    """Subscriptions for a set of patterns and the route of each incoming topic.

    Overlapping filters are collapsed into the broadest one: brokers (Mosquitto
    included) deliver a message once per matching subscription, and a multi-value
    payload counted twice would double every reading.

    >>> r = TopicRouter([TopicRoute("plant/{asset}/{sensor}"), TopicRoute("plant/{asset}/telemetry")])
    >>> r.subscriptions
    ('plant/+/+',)
    >>> r.route("plant/pump1/telemetry").sensor is None   # the literal level wins
    True
    >>> r.route("plant/pump1/Current").sensor
    'Current'
    >>> r.route("other/pump1/Current") is None
    True
    """

    def __init__(self, routes: Sequence[TopicRoute]):
        if not routes:
            raise ValueError("at least one topic pattern is required")
        self.routes = tuple(routes)
        filters: list[str] = []
        for f in dict.fromkeys(r.subscription for r in self.routes):
            if any(_covers(other, f) for other in filters):
                continue
            filters = [other for other in filters if not _covers(f, other)]
            filters.append(f)
        self.subscriptions = tuple(filters)
        # Stable sort: among equally specific patterns, the configured order decides.
        self._ranked = sorted(self.routes, key=lambda r: -r.specificity)

    def route(self, topic: str) -> RouteMatch | None:
        for r in self._ranked:
            m = r.match(topic)
            if m is not None:
                return m
        return None


def _iso(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "out of range"


def _short(v: object, limit: int = 40) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_timestamp(raw: object) -> float:
    """UNIX seconds from a number or an ISO-8601 string; ValueError says why not.

    Naive ISO strings (no offset) are taken as UTC, the only zone a gateway can
    assume without configuration.

    >>> parse_timestamp(1700000000)
    1700000000.0
    >>> parse_timestamp("2023-11-14T22:13:20Z")
    1700000000.0
    >>> parse_timestamp("2023-11-14 23:13:20.5+01:00")
    1700000000.5
    >>> parse_timestamp(True)
    Traceback (most recent call last):
    ValueError: 'ts' must be UNIX seconds or an ISO-8601 string, got bool
    """
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ValueError(f"'ts' must be UNIX seconds or an ISO-8601 string, got {type(raw).__name__}")
    if isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise ValueError(f"'ts' string {_short(raw)} is not ISO-8601") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    try:
        ts = float(raw)
    except OverflowError:
        raise ValueError(f"'ts' {_short(raw)} is out of range") from None
    if not math.isfinite(ts):
        raise ValueError(f"'ts' is {ts}")
    return ts


def _number(sensor: str, raw: object) -> tuple[float | None, tuple[DeadLetterCode, str] | None]:
    if isinstance(raw, bool):
        return None, (DeadLetterCode.BAD_VALUE, f"sensor {sensor!r}: {str(raw).lower()} is a boolean, not a number")
    if raw is None:
        return None, (DeadLetterCode.BAD_VALUE, f"sensor {sensor!r}: value is null")
    if not isinstance(raw, (int, float)):
        return None, (DeadLetterCode.BAD_VALUE, f"sensor {sensor!r}: expected a number, got {type(raw).__name__} {_short(raw)}")
    try:
        v = float(raw)
    except OverflowError:
        return None, (DeadLetterCode.NON_FINITE, f"sensor {sensor!r}: integer {_short(raw)} overflows a float")
    if not math.isfinite(v):
        return None, (DeadLetterCode.NON_FINITE, f"sensor {sensor!r}: value is {v}")
    return v, None


def _quality(raw: object) -> Quality:
    if isinstance(raw, str) and raw.lower() in _QUALITY_NAMES:
        return _QUALITY_NAMES[raw.lower()]
    if isinstance(raw, int) and not isinstance(raw, bool) and raw in (0, 1, 2):
        return Quality(raw)
    raise ValueError(f"'quality' must be good/uncertain/bad or 0/1/2, got {_short(raw)}")


def parse_payload(
    route: RouteMatch,
    payload: bytes,
    now: float,
    *,
    topic: str = "",
    source: str = "",
    known_sensors: Collection[str] | None = None,
    min_timestamp: float = 946684800.0,
    max_future_skew_s: float = 300.0,
    max_payload_bytes: int = 262144,
) -> tuple[list[Reading], list[DeadLetter]]:
    """Turn one MQTT message into readings, and whatever is wrong into dead letters.

    ``route`` comes from :meth:`TopicRouter.route`; ``now`` is the gateway's UNIX
    time at receipt (for the future-skew check and ``received_at``); ``topic``
    becomes each dead letter's ``source`` and ``source`` (the connector's name)
    each reading's;
    ``known_sensors`` is the sensor set the model knows for ``route.asset``
    (None accepts any name). A whole-message problem (bad JSON, bad ``ts``, bad
    ``quality``) gives one dead letter and no reading. In a multi-value payload
    each bad sensor gives its own dead letter while the good ones still pass.

    >>> one = RouteMatch("pump1", "Current", False, "plant/{asset}/{sensor}")
    >>> ok, bad = parse_payload(one, b'{"ts": 1700000000, "value": 2.4}', now=1700000001)
    >>> ok[0].asset, ok[0].sensor, ok[0].ts, ok[0].value, bad
    ('pump1', 'Current', 1700000000.0, 2.4, [])
    >>> multi = RouteMatch("pump1", None, False, "plant/{asset}/telemetry")
    >>> ok, bad = parse_payload(multi, b'{"ts": 1700000000, "values": {"Current": 2.4, "Voltage": "x"}}',
    ...                         now=1700000001)
    >>> [r.sensor for r in ok], [d.reason for d in bad]
    (['Current'], ["bad_value: sensor 'Voltage': expected a number, got str 'x'"])
    >>> parse_payload(one, b'{"ts": 1700000000, "value": NaN}', now=1700000001)[1][0].reason
    "non_finite: sensor 'Current': value is nan"
    >>> parse_payload(one, b'not json', now=1700000001)[1][0].reason
    'bad_json: Expecting value: line 1 column 1 (char 0)'
    """

    def dead(code: DeadLetterCode, detail: str) -> DeadLetter:
        return DeadLetter(source=topic, payload=bytes(payload[:DEAD_LETTER_MAX_BYTES]),
                          code=code, detail=detail, received_at=now)

    if len(payload) > max_payload_bytes:
        return [], [dead(DeadLetterCode.TOO_LARGE, f"payload is {len(payload)} bytes, limit is {max_payload_bytes}")]
    if not route.asset:
        return [], [dead(DeadLetterCode.BAD_TOPIC, f"empty asset level in pattern {route.pattern!r}")]
    if route.sensor is not None and not route.sensor:
        return [], [dead(DeadLetterCode.BAD_TOPIC, f"empty sensor level in pattern {route.pattern!r}")]
    try:
        # RFC 8259: JSON between systems is UTF-8 (a BOM is tolerated).
        text = bytes(payload).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return [], [dead(DeadLetterCode.BAD_JSON, f"not UTF-8 text ({e.reason} at byte {e.start})")]
    try:
        doc = json.loads(text)
    except RecursionError:
        return [], [dead(DeadLetterCode.BAD_JSON, "nested too deeply")]
    except ValueError as e:
        return [], [dead(DeadLetterCode.BAD_JSON, f"{e}")]
    if not isinstance(doc, dict):
        return [], [dead(DeadLetterCode.NOT_OBJECT, f"expected a JSON object, got {type(doc).__name__}")]

    if "ts" not in doc:
        return [], [dead(DeadLetterCode.MISSING_TS, "payload has no 'ts'")]
    try:
        ts = parse_timestamp(doc["ts"])
    except ValueError as e:
        return [], [dead(DeadLetterCode.BAD_TS, f"{e}")]
    if ts < min_timestamp:
        return [], [dead(DeadLetterCode.TS_TOO_OLD, f"ts {ts:.3f} ({_iso(ts)}) is before min_timestamp "
                         f"{min_timestamp:.0f} ({_iso(min_timestamp)})")]
    if ts > now + max_future_skew_s:
        hint = "; looks like milliseconds, send seconds" if ts > _MS_HINT_ABOVE else ""
        return [], [dead(DeadLetterCode.TS_IN_FUTURE, f"ts {ts:.3f} ({_iso(ts)}) is {ts - now:.0f} s ahead of the gateway "
                         f"clock, max_future_skew_s is {max_future_skew_s:g}{hint}")]

    try:
        quality = _quality(doc.get("quality", "good"))
    except ValueError as e:
        return [], [dead(DeadLetterCode.BAD_QUALITY, str(e))]
    historical = doc.get("historical", False)
    if not isinstance(historical, bool):
        return [], [dead(DeadLetterCode.BAD_HISTORICAL, f"'historical' must be true or false, got {_short(historical)}")]
    historical = historical or route.historical

    has_one, has_many = "value" in doc, "values" in doc
    if has_one and has_many:
        return [], [dead(DeadLetterCode.AMBIGUOUS_VALUE, "payload has both 'value' and 'values'")]
    if not has_one and not has_many:
        return [], [dead(DeadLetterCode.MISSING_VALUE, "payload has neither 'value' nor 'values'")]
    if has_one:
        if route.sensor is None:
            return [], [dead(DeadLetterCode.SHAPE_MISMATCH, f"single 'value' on a topic without a {{sensor}} level "
                             f"(pattern {route.pattern!r}); use 'values': {{sensor: value}}")]
        items = [(route.sensor, doc["value"])]
    else:
        if route.sensor is not None:
            return [], [dead(DeadLetterCode.SHAPE_MISMATCH, f"'values' on a per-sensor topic (pattern {route.pattern!r}, "
                             f"sensor {route.sensor!r}); use 'value'")]
        values = doc["values"]
        if not isinstance(values, dict):
            return [], [dead(DeadLetterCode.BAD_VALUE, f"'values' must be an object of sensor: number, "
                             f"got {type(values).__name__}")]
        if not values:
            return [], [dead(DeadLetterCode.EMPTY_VALUES, "'values' has no sensors")]
        items = list(values.items())

    readings: list[Reading] = []
    dead_letters: list[DeadLetter] = []
    for sensor, raw in items:
        if not sensor or len(sensor) > MAX_SENSOR_NAME:
            dead_letters.append(dead(DeadLetterCode.BAD_SENSOR_NAME, f"sensor name must be 1..{MAX_SENSOR_NAME} "
                                     f"characters, got {_short(sensor)}"))
            continue
        if known_sensors is not None and sensor not in known_sensors:
            dead_letters.append(dead(DeadLetterCode.UNKNOWN_SENSOR, f"sensor {sensor!r} is not known for asset "
                                     f"{route.asset!r}"))
            continue
        value, why = _number(sensor, raw)
        if why is not None:
            dead_letters.append(dead(*why))
            continue
        readings.append(Reading(asset=route.asset, sensor=sensor, ts=ts, value=value, quality=quality,
                                source=source, historical=historical))
    return readings, dead_letters
