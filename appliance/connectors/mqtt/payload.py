"""Pure parsing of MQTT topics and JSON payloads into readings and dead letters.

Nothing here does I/O, so every rule the MQTT connector applies to its input can
be tested (and read) in isolation. Two payload shapes are accepted:

* one reading on a topic with a ``{sensor}`` level:
  ``{"ts": 1700000000.5, "value": 1.3}``
* several sensors at once on a topic without one:
  ``{"ts": "2024-05-01T12:00:00Z", "values": {"Current": 1.3, "Voltage": 229.1}}``

``ts`` is epoch seconds, milliseconds, microseconds or nanoseconds (the unit set
in config, or ``auto``: taken from the magnitude) or an ISO-8601 string.
Optional keys: ``"quality"`` (``"good"``/``"uncertain"``/``"bad"`` or 0/1/2) and
``"historical"`` (true for replayed data). Unknown keys are ignored so devices can
add fields (sequence numbers, firmware version) without being rejected.

Every refusal is a :class:`~appliance.core.DeadLetter` with a stable
:class:`~appliance.core.DeadLetterCode` (``bad_json``, ``ts_in_future``, ...) to
count by, and a precise human explanation in ``detail``. One message gives at
most one dead letter per code (repeats are counted in it), with its payload copy
capped at ``DEAD_LETTER_MAX_BYTES``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Collection, Sequence

from appliance.connectors.guard import DEAD_LETTER_MAX_BYTES, DeadLetterBag, ValueRange, dead_letter
from appliance.core import DeadLetter, DeadLetterCode, Quality, Reading
from appliance.core.compat import fromisoformat
from appliance.core.records import new_reading

try:  # a tenth of the standard library's decoding time on small payloads (measured: benchmarks/peer.py)
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson is a dependency; the standard library still works
    _fast_loads = json.loads

__all__ = ["DEAD_LETTER_MAX_BYTES", "MAX_SENSOR_NAME", "TS_UNITS", "RouteMatch", "TopicRoute", "TopicRouter",
           "parse_payload", "parse_timestamp", "ts_unit_of"]

MAX_SENSOR_NAME = 128
# Topics whose route is remembered; past this many different ones the memory starts over.
ROUTE_CACHE_SIZE = 4096

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
        self._cache: dict[str, RouteMatch | None] = {}

    def route(self, topic: str) -> RouteMatch | None:
        """The route of ``topic`` (remembered: a device sends on the same few topics all day)."""
        try:
            return self._cache[topic]
        except KeyError:
            pass
        found = None
        for r in self._ranked:
            found = r.match(topic)
            if found is not None:
                break
        if len(self._cache) >= ROUTE_CACHE_SIZE:
            self._cache.clear()  # a stream of ever-new topics costs matching, never memory
        self._cache[topic] = found
        return found


TS_UNITS = ("auto", "s", "ms", "us", "ns")
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_NOT_PARSED = object()
_GOOD = Quality.GOOD


def ts_unit_of(number: float) -> str:
    """The unit ``auto`` reads an epoch number in: the finest whose date is before year 5138.

    Epoch seconds stay below 1e11 until the year 5138, milliseconds below 1e14 and
    microseconds below 1e17; so every date from 1973 to 5138 is unambiguous, and
    readings older than ``min_timestamp`` (2000) are refused anyway.

    >>> [ts_unit_of(x) for x in (1.7e9, 1.7e12, 1.7e15, 1.7e18)]
    ['s', 'ms', 'us', 'ns']
    """
    a = abs(number)
    if a < 1e11:
        return "s"
    if a < 1e14:
        return "ms"
    if a < 1e17:
        return "us"
    return "ns"


def _iso(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "out of range"


def _short(v: object, limit: int = 40) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_timestamp(raw: object, unit: str = "auto") -> float:
    """UNIX seconds from an epoch number in ``unit`` or an ISO-8601 string; ValueError says why not.

    ``unit`` is ``s``, ``ms``, ``us``, ``ns`` or ``auto`` (see :func:`ts_unit_of`).
    Naive ISO strings (no offset) are taken as UTC, the only zone a gateway can
    assume without configuration.

    >>> parse_timestamp(1700000000)
    1700000000.0
    >>> parse_timestamp(1700000000250), parse_timestamp(1700000000250000), parse_timestamp(1700000000250000000)
    (1700000000.25, 1700000000.25, 1700000000.25)
    >>> parse_timestamp(1700000000250, unit="ms"), parse_timestamp(1700000000, unit="ms")
    (1700000000.25, 1700000.0)
    >>> parse_timestamp("2023-11-14T22:13:20Z")
    1700000000.0
    >>> parse_timestamp("2023-11-14 23:13:20.5+01:00")
    1700000000.5
    >>> parse_timestamp(True)
    Traceback (most recent call last):
    ValueError: 'ts' must be an epoch number or an ISO-8601 string, got bool
    """
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ValueError(f"'ts' must be an epoch number or an ISO-8601 string, got {type(raw).__name__}")
    if isinstance(raw, str):
        try:
            dt = fromisoformat(raw.strip())
        except ValueError:
            raise ValueError(f"'ts' string {_short(raw)} is not ISO-8601") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    try:
        if unit == "auto":
            unit = ts_unit_of(raw)
        # An int divided by an int is rounded once, exactly: nanoseconds keep every bit a float can.
        ts = raw / _PER_SECOND[unit] if unit != "s" else float(raw)
    except OverflowError:
        raise ValueError(f"'ts' {_short(raw)} is out of range") from None
    except KeyError:
        raise ValueError(f"unknown ts unit {unit!r}, expected one of {TS_UNITS}") from None
    if ts - ts != 0:  # NaN or infinite
        raise ValueError(f"'ts' is {ts}")
    return ts


def _number(sensor: str, raw: object) -> tuple[float | None, tuple[DeadLetterCode, str] | None]:
    if isinstance(raw, bool):
        return None, (DeadLetterCode.BAD_VALUE, f"sensor {sensor!r}: {str(raw).lower()} is a boolean, not a number")
    if raw is None:
        return None, (DeadLetterCode.BAD_VALUE, f"sensor {sensor!r}: value is null")
    if not isinstance(raw, (int, float)):
        return None, (DeadLetterCode.BAD_VALUE,
                      f"sensor {sensor!r}: expected a number, got {type(raw).__name__} {_short(raw)}")
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


def _decode(payload: bytes) -> tuple[object, tuple[DeadLetterCode, str] | None]:
    """The JSON document of ``payload`` (strict UTF-8, a BOM tolerated), or why not.

    The fast decoder takes standard JSON in UTF-8; anything it refuses (NaN and
    Infinity literals, integers past 64 bits, a BOM, bad UTF-8, deep nesting) goes
    through the standard library, which says precisely what is wrong, or reads
    the number for the value checks to refuse it with the right code.
    """
    try:
        return _fast_loads(payload), None
    except (ValueError, RecursionError):
        pass  # the careful path below says why
    try:
        # RFC 8259: JSON between systems is UTF-8 (a BOM is tolerated).
        text = bytes(payload).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return _NOT_PARSED, (DeadLetterCode.BAD_JSON, f"not UTF-8 text ({e.reason} at byte {e.start})")
    try:
        return json.loads(text), None
    except RecursionError:
        return _NOT_PARSED, (DeadLetterCode.BAD_JSON, "nested too deeply")
    except ValueError as e:
        return _NOT_PARSED, (DeadLetterCode.BAD_JSON, f"{e}")


def _refuse(topic: str, payload: bytes, now: float, code: DeadLetterCode,
            detail: str) -> tuple[list[Reading], list[DeadLetter]]:
    return [], [dead_letter(topic, payload, code, detail, now)]


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
    ts_unit: str = "auto",
    value_range: ValueRange | None = None,
    observe_ts: Callable[[str, float], float] | None = None,
) -> tuple[list[Reading], list[DeadLetter]]:
    """Turn one MQTT message into readings, and whatever is wrong into dead letters.

    ``route`` comes from :meth:`TopicRouter.route`; ``now`` is the gateway's UNIX
    time at receipt (for the future-skew check and ``received_at``); ``topic``
    becomes each dead letter's ``source`` and ``source`` (the connector's name)
    each reading's;
    ``known_sensors`` is the sensor set the model knows for ``route.asset``
    (None accepts any name); ``ts_unit`` the unit of numeric timestamps
    (:data:`TS_UNITS`); ``value_range`` the physical range of each sensor (None:
    any finite value); ``observe_ts`` (the gateway clock's
    :meth:`~appliance.core.timebase.GatewayClock.observe`) is shown each live
    message's ``(asset, ts)`` before the future check and returns the time to judge
    it against: the data's own time while the gateway clock is known to be behind.
    A whole-message problem (bad JSON, bad ``ts``, bad
    ``quality``) gives one dead letter and no reading. In a multi-value payload
    the bad sensors are refused while the good ones still pass; refusals of one
    code are one dead letter whose ``count`` says how many.

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

    if len(payload) > max_payload_bytes:
        return _refuse(topic, payload, now, DeadLetterCode.TOO_LARGE,
                       f"payload is {len(payload)} bytes, limit is {max_payload_bytes}")
    asset = route.asset
    if not asset:
        return _refuse(topic, payload, now, DeadLetterCode.BAD_TOPIC,
                       f"empty asset level in pattern {route.pattern!r}")
    if route.sensor is not None and not route.sensor:
        return _refuse(topic, payload, now, DeadLetterCode.BAD_TOPIC,
                       f"empty sensor level in pattern {route.pattern!r}")
    doc, why = _decode(payload)
    if why is not None:
        return _refuse(topic, payload, now, *why)
    if type(doc) is not dict:
        return _refuse(topic, payload, now, DeadLetterCode.NOT_OBJECT,
                       f"expected a JSON object, got {type(doc).__name__}")

    raw_ts = doc.get("ts", _NOT_PARSED)
    if raw_ts is _NOT_PARSED:
        return _refuse(topic, payload, now, DeadLetterCode.MISSING_TS, "payload has no 'ts'")
    try:
        ts = parse_timestamp(raw_ts, ts_unit)
    except ValueError as e:
        return _refuse(topic, payload, now, DeadLetterCode.BAD_TS, f"{e}")
    if ts < min_timestamp:
        return _refuse(topic, payload, now, DeadLetterCode.TS_TOO_OLD,
                       f"ts {ts:.3f} ({_iso(ts)}) is before min_timestamp {min_timestamp:.0f} ({_iso(min_timestamp)})")
    if observe_ts is not None and not (route.historical or doc.get("historical") is True):
        now = observe_ts(asset, ts)  # replayed data says nothing about the clock
    if ts > now + max_future_skew_s:
        hint = ""
        if ts_unit != "auto" and not isinstance(raw_ts, str) and ts_unit_of(raw_ts) != ts_unit:
            hint = f"; looks like {ts_unit_of(raw_ts)}, but ts_unit is {ts_unit!r} (\"auto\" reads any)"
        return _refuse(topic, payload, now, DeadLetterCode.TS_IN_FUTURE,
                       f"ts {ts:.3f} ({_iso(ts)}) is {ts - now:.0f} s ahead of the gateway clock, "
                       f"max_future_skew_s is {max_future_skew_s:g}{hint}")

    quality = _GOOD
    if "quality" in doc:
        try:
            quality = _quality(doc["quality"])
        except ValueError as e:
            return _refuse(topic, payload, now, DeadLetterCode.BAD_QUALITY, str(e))
    historical = doc.get("historical", False)
    if historical is not False and historical is not True:
        return _refuse(topic, payload, now, DeadLetterCode.BAD_HISTORICAL,
                       f"'historical' must be true or false, got {_short(historical)}")
    historical = historical or route.historical

    has_one, has_many = "value" in doc, "values" in doc
    if has_one and has_many:
        return _refuse(topic, payload, now, DeadLetterCode.AMBIGUOUS_VALUE, "payload has both 'value' and 'values'")
    if has_one:
        if route.sensor is None:
            return _refuse(topic, payload, now, DeadLetterCode.SHAPE_MISMATCH,
                           f"single 'value' on a topic without a {{sensor}} level (pattern {route.pattern!r}); "
                           "use 'values': {sensor: value}")
        items = ((route.sensor, doc["value"]),)
    elif has_many:
        if route.sensor is not None:
            return _refuse(topic, payload, now, DeadLetterCode.SHAPE_MISMATCH,
                           f"'values' on a per-sensor topic (pattern {route.pattern!r}, sensor {route.sensor!r}); "
                           "use 'value'")
        values = doc["values"]
        if type(values) is not dict:
            return _refuse(topic, payload, now, DeadLetterCode.BAD_VALUE,
                           f"'values' must be an object of sensor: number, got {type(values).__name__}")
        if not values:
            return _refuse(topic, payload, now, DeadLetterCode.EMPTY_VALUES, "'values' has no sensors")
        items = values.items()
    else:
        return _refuse(topic, payload, now, DeadLetterCode.MISSING_VALUE, "payload has neither 'value' nor 'values'")

    readings: list[Reading] = []
    bag: DeadLetterBag | None = None
    for sensor, raw in items:
        why = None
        if not sensor or len(sensor) > MAX_SENSOR_NAME:
            why = (DeadLetterCode.BAD_SENSOR_NAME, f"sensor name must be 1..{MAX_SENSOR_NAME} characters, "
                   f"got {_short(sensor)}")
        elif known_sensors is not None and sensor not in known_sensors:
            why = (DeadLetterCode.UNKNOWN_SENSOR, f"sensor {_short(sensor, 60)} is not known for asset {asset!r}")
        else:
            if type(raw) is float and raw - raw == 0:  # the common case: a finite float
                value = raw
            else:
                value, why = _number(sensor, raw)
            if why is None and value_range is not None:
                out = value_range.check(asset, sensor, value)
                if out is not None:
                    why = (DeadLetterCode.OUT_OF_RANGE, f"sensor {sensor!r}: {out}")
            if why is None:
                readings.append(new_reading(asset, sensor, ts, value, quality, source, historical))
                continue
        if bag is None:
            bag = DeadLetterBag(topic, payload, now)
        bag.add(why[0], why[1], subject=sensor)
    return readings, (bag.letters() if bag is not None else [])
