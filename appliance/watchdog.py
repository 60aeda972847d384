"""Data-arrival watchdog: a silent sensor is reported, not just a dropped socket.

Every expected sensor of every asset seen is tracked on the monotonic clock. A
sensor that has sent nothing for ``silence_s`` (or never sent anything since its
asset appeared) is reported once as silent, and once again when it resumes.

>>> wd = SensorWatchdog(("a", "b"), silence_s=5, clock=lambda: 0.0)
>>> wd.seen("pump", "a", now=0.0); wd.seen("pump", "b", now=0.0)
>>> wd.check(now=4.0)
[]
>>> wd.seen("pump", "a", now=6.0)
>>> [(h.sensor, h.silent) for h in wd.check(now=6.0)]
[('b', True)]
>>> wd.seen("pump", "b", now=7.0)
>>> [(h.sensor, h.silent) for h in wd.check(now=7.0)]
[('b', False)]
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from pydantic import Field

from appliance.core import SensorHealth
from appliance.settings import DAY_S, Section


class WatchdogConfig(Section):
    """``[watchdog]``: when a sensor counts as silent."""

    silence_s: float = Field(10.0, ge=0.1, le=DAY_S, description="a sensor silent this long is reported "
                                                                 "(at least 0.1 s: the watchdog checks every second)")


class SensorWatchdog:
    def __init__(self, expected_sensors: Iterable[str], silence_s: float,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        if silence_s <= 0:
            raise ValueError("silence_s must be > 0")
        self.expected = tuple(expected_sensors)
        self.silence_s = silence_s
        self._clock = clock
        self._wall = wall
        self._last: dict[tuple[str, str], float] = {}
        self._silent: dict[tuple[str, str], float] = {}
        self._assets: set[str] = set()
        self._declared: dict[tuple[str, str], float] = {}  # silenced by their source, and since when

    def seen(self, asset: str, sensor: str, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        if asset not in self._assets:
            self._assets.add(asset)
            for s in self.expected:  # a new asset: every expected sensor is on the clock now
                self._last.setdefault((asset, s), now)
        self._last[(asset, sensor)] = now
        if self._declared:
            self._declared.pop((asset, sensor), None)

    def silence(self, asset: str, sensor: str, now: float | None = None) -> None:
        """The source declared the sensor gone (a Sparkplug death): silent at the next check, not
        ``silence_s`` later, until it sends again."""
        now = self._clock() if now is None else now
        self._assets.add(asset)
        self._last.setdefault((asset, sensor), now)
        self._declared[(asset, sensor)] = now

    def forget(self, asset: str) -> None:
        """Stop watching an asset (its input stopped admitting it)."""
        if asset not in self._assets:
            return
        extras = len(self._last) > len(self._assets) * len(self.expected)  # sensors besides the expected
        self._assets.discard(asset)
        keys = [k for k in self._last if k[0] == asset] if extras else [(asset, s) for s in self.expected]
        for key in keys:
            self._last.pop(key, None)
            self._silent.pop(key, None)
            self._declared.pop(key, None)

    def check(self, now: float | None = None) -> list[SensorHealth]:
        now = self._clock() if now is None else now
        changes = []
        declared = self._declared
        for key, last in self._last.items():
            silent = now - last >= self.silence_s or key in declared
            if silent and key not in self._silent:
                self._silent[key] = last
                changes.append(SensorHealth(key[0], key[1], True, self._wall() - (now - last), self._wall()))
            elif not silent and key in self._silent:
                del self._silent[key]
                changes.append(SensorHealth(key[0], key[1], False, self._wall(), self._wall()))
        return changes

    def silent(self) -> list[dict]:
        now = self._clock()
        return [{"asset": a, "sensor": s, "silent_for_s": round(now - last, 1)}
                for (a, s), last in sorted(self._silent.items())]
