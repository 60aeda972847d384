"""Bounds every input applies, so a hostile or broken publisher cannot hurt the appliance.

* :class:`Admission`: which assets and sensors are accepted, a configured list or
  at most ``max_assets`` / ``max_sensors_per_asset`` at a time, an unproductive
  idle name giving its place to a new one; the rest is refused.
  Memory downstream (windows, watchdog, alarms) grows with what is admitted here.
* :class:`ValueRange`: a value outside the physical range configured for its
  sensor (default ``|v| <= 1e12``) is refused, so no window holds a value the
  detector cannot score (float32 overflows past 3.4e38) and no score becomes inf.
* :class:`DeadLetterBag`: the dead letters of one message, collapsed by code
  (21,000 unknown sensors in one message are one record counting 21,000), with
  payload copies, sources and details capped in size.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from typing import Callable, Collection, Mapping

from appliance.core import DeadLetter, DeadLetterCode

# A dead letter keeps only the start of the raw payload, enough to see what was
# sent; a flood of large bad messages must not fill the disk through this table.
DEAD_LETTER_MAX_BYTES = 512
SOURCE_MAX_CHARS = 256
DETAIL_MAX_CHARS = 512
MAX_ASSET_NAME = 128
DEFAULT_MAX_ABS = 1e12
# Names quoted in a collapsed dead letter's detail, e.g. the first unknown sensors.
_SAMPLES = 5


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was.

    >>> clip("x" * 100, 20)
    'xxxxx... (100 chars)'
    >>> clip("short", 8)
    'short'
    """
    if len(text) <= limit:
        return text
    tail = f"... ({len(text)} chars)"
    return text[: max(0, limit - len(tail))] + tail


def dead_letter(source: str, payload: bytes, code: DeadLetterCode, detail: str, received_at: float,
                count: int = 1) -> DeadLetter:
    """A :class:`DeadLetter` with its payload copy, source and detail capped."""
    return DeadLetter(source=clip(source, SOURCE_MAX_CHARS), payload=bytes(payload[:DEAD_LETTER_MAX_BYTES]),
                      code=code, detail=clip(detail, DETAIL_MAX_CHARS), received_at=received_at, count=count)


class DeadLetterBag:
    """Dead letters of one message, at most one per code; repeats of a code are counted.

    The first refusal of each code keeps its own detail; later ones add to its
    count and, for the first few, their subject (a sensor name) to the detail.

    >>> bag = DeadLetterBag("plant/p1/telemetry", b"{...}", 1.0)
    >>> for s in ("a", "b", "c"):
    ...     bag.add(DeadLetterCode.UNKNOWN_SENSOR, f"sensor {s!r} is not known", subject=s)
    >>> [(d.code.value, d.count, d.detail) for d in bag.letters()]
    [('unknown_sensor', 3, "sensor 'a' is not known; 3 in this message: 'a', 'b', 'c'")]
    """

    __slots__ = ("source", "payload", "received_at", "_by_code")

    def __init__(self, source: str, payload: bytes, received_at: float):
        self.source = source
        self.payload = payload
        self.received_at = received_at
        self._by_code: dict[DeadLetterCode, list] = {}  # code -> [detail, count, subjects]

    def __bool__(self) -> bool:
        return bool(self._by_code)

    def add(self, code: DeadLetterCode, detail: str, subject: str | None = None) -> None:
        entry = self._by_code.get(code)
        if entry is None:
            self._by_code[code] = [detail, 1, [] if subject is None else [subject]]
            return
        entry[1] += 1
        if subject is not None and len(entry[2]) < _SAMPLES:
            entry[2].append(subject)

    def letters(self) -> list[DeadLetter]:
        out = []
        for code, (detail, count, subjects) in self._by_code.items():
            if count > 1:
                detail += f"; {count} in this message"
                if subjects:
                    shown = ", ".join(repr(clip(s, 40)) for s in subjects)
                    detail += f": {shown}" + (", ..." if count > len(subjects) else "")
            out.append(dead_letter(self.source, self.payload, code, detail, self.received_at, count))
        return out


class SensorSlots:
    """Sensor names one asset may use: the first ``limit`` seen are admitted, for good.

    Membership admits: ``name in slots`` is True for an admitted name, and admits a
    new one while there is room. It stands in for the model's sensor list when an
    input has none.
    """

    __slots__ = ("limit", "names", "refused")

    def __init__(self, limit: int):
        self.limit = limit
        self.names: set[str] = set()
        self.refused = 0

    def __contains__(self, name: object) -> bool:
        if name in self.names:
            return True
        if len(self.names) < self.limit:
            self.names.add(name)  # type: ignore[arg-type]
            return True
        self.refused += 1
        return False

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return iter(self.names)


class Admission:
    """The assets (and, without a model's list, sensors) an input accepts.

    With ``assets`` configured only those are accepted. Otherwise up to
    ``max_assets`` names are admitted, but not first-come for ever: a name proven
    to be a real asset (it produced a complete window, has an alarm, or is in the
    store from before: :meth:`prove`) is kept, and an unproven name not seen for
    ``idle_s`` gives its place to a new name when the table is full (least
    recently seen first). A publisher inventing names so only holds places as
    long as it keeps repeating them, and a real asset that appears later gets in.
    Names longer than ``MAX_ASSET_NAME`` are refused either way. Refusals are
    counted and the last few names kept for the dashboard.

    One input thread asks; :meth:`prove` may be called from another thread (a set
    add, read back here on the input thread).

    >>> t = [0.0]
    >>> a = Admission(max_assets=2, idle_s=60, clock=lambda: t[0])
    >>> [a.asset(n) is None for n in ("p1", "p2", "p3", "p1")]
    [True, True, False, True]
    >>> print(a.asset("p3"))
    asset limit reached: 2 assets admitted (max_assets), none idle for 60 s; 'p3' is not one of them
    >>> t[0] = 61.0; a.asset("p3") is None, a.evicted()  # p2 idle longest: its place goes to p3
    (True, ['p2'])
    """

    def __init__(self, assets: Collection[str] = (), max_assets: int = 1000, max_sensors_per_asset: int = 256,
                 idle_s: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.listed = frozenset(assets)
        self.max_assets = max_assets
        self.max_sensors = max_sensors_per_asset
        self.idle_s = idle_s
        self._clock = clock
        self._assets: dict[str, SensorSlots] = {}
        # Unproven admitted names, least recently seen first, with when they were last seen.
        self._unproven: OrderedDict[str, float] = OrderedDict()
        self._proven: set[str] = set()
        self._evicted: list[str] = []
        self.refused_assets = 0
        self.evictions = 0
        self.last_refused: deque[str] = deque(maxlen=_SAMPLES)

    def prove(self, name: str) -> None:
        """``name`` is a real asset (a complete window, an alarm, stored before): never evicted."""
        self._proven.add(name)

    def asset(self, name: str) -> str | None:
        """None if ``name`` is admitted (admitting it if there is room), else why not."""
        if name in self._assets:
            self._touch(name)
            return None
        if len(name) > MAX_ASSET_NAME:
            why = f"asset name is {len(name)} characters, the limit is {MAX_ASSET_NAME}: {clip(repr(name), 60)}"
        elif self.listed and name not in self.listed:
            why = f"asset {clip(repr(name), 80)} is not in the configured list of assets"
        elif not self.listed and len(self._assets) >= self.max_assets and not self._make_room(name):
            why = (f"asset limit reached: {len(self._assets)} assets admitted (max_assets), none idle for "
                   f"{self.idle_s:g} s; {clip(repr(name), 80)} is not one of them")
        else:
            self._assets[name] = SensorSlots(self.max_sensors)
            self._touch(name)
            return None
        self.refused_assets += 1
        self.last_refused.append(clip(name, 40))
        return why

    def _touch(self, name: str) -> None:
        if name in self._proven:
            self._unproven.pop(name, None)
        else:
            self._unproven[name] = self._clock()
            self._unproven.move_to_end(name)

    def _make_room(self, name: str) -> bool:
        """Evict the unproven name idle longest, if idle ``idle_s`` (any unproven one for a proven ``name``)."""
        now = self._clock()
        while self._unproven:
            oldest, seen = next(iter(self._unproven.items()))
            if oldest in self._proven:  # proven since its last message: kept
                del self._unproven[oldest]
                continue
            if now - seen < self.idle_s and name not in self._proven:
                return False
            del self._unproven[oldest]
            del self._assets[oldest]
            self._evicted.append(oldest)
            self.evictions += 1
            return True
        return False

    def evicted(self) -> list[str]:
        """Names evicted since the last call (their state downstream can go)."""
        out, self._evicted = self._evicted, []
        return out

    def sensors(self, asset: str) -> SensorSlots:
        """The sensor slots of an admitted asset."""
        return self._assets[asset]

    def status(self) -> dict:
        return {"assets": len(self._assets), "assets_refused": self.refused_assets,
                "assets_evicted": self.evictions, "last_refused": list(self.last_refused),
                "sensors": sum(len(s) for s in self._assets.values()),
                "sensors_refused": sum(s.refused for s in self._assets.values())}


class ValueRange:
    """The physical range of each sensor's values; a value outside it is refused.

    ``ranges`` maps ``"sensor"`` or ``"asset/sensor"`` to ``(low, high)`` (the
    asset-qualified key wins); every other sensor gets ``-max_abs .. max_abs``.

    >>> vr = ValueRange(max_abs=1e12, ranges={"Current": (0.0, 50.0)})
    >>> vr.check("p1", "Voltage", 230.0) is None, vr.check("p1", "Current", 51.0)
    (True, '51.0 is outside the range [0, 50] configured for Current')
    >>> vr.check("p1", "Voltage", -1e308)
    '-1e+308 is outside the range [-1e+12, 1e+12] (max_abs_value)'
    """

    def __init__(self, max_abs: float = DEFAULT_MAX_ABS, ranges: Mapping[str, tuple[float, float]] | None = None):
        if not (max_abs > 0 and math.isfinite(max_abs)):
            raise ValueError(f"max_abs must be finite and > 0, got {max_abs!r}")
        self.max_abs = max_abs
        self.ranges = {k: (float(lo), float(hi)) for k, (lo, hi) in (ranges or {}).items()}
        self.refused = 0

    def bounds(self, asset: str, sensor: str) -> tuple[float, float]:
        """``(low, high)`` for the sensor: what :meth:`check` accepts, for an input that checks many
        values of one sensor itself (and calls :meth:`check` for the reason of a refusal)."""
        if self.ranges:
            b = self.ranges.get(f"{asset}/{sensor}") or self.ranges.get(sensor)
            if b is not None:
                return b
        return -self.max_abs, self.max_abs

    def check(self, asset: str, sensor: str, value: float) -> str | None:
        """None if ``value`` is in range, else why not."""
        if self.ranges:
            key = f"{asset}/{sensor}"
            bounds = self.ranges.get(key)
            if bounds is None:
                key = sensor
                bounds = self.ranges.get(sensor)
            if bounds is not None:
                if bounds[0] <= value <= bounds[1]:
                    return None
                self.refused += 1
                return f"{value!r} is outside the range [{bounds[0]:g}, {bounds[1]:g}] configured for {key}"
        if -self.max_abs <= value <= self.max_abs:
            return None
        self.refused += 1
        return f"{value!r} is outside the range [{-self.max_abs:g}, {self.max_abs:g}] (max_abs_value)"
