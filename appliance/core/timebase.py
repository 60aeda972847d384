"""The gateway's "now": its wall clock, or the data's time while that clock is known wrong.

A Raspberry Pi has no real-time clock. After a power cut on a plant LAN with no time
server it boots at the time it last saved (or its image's date) and stays there, a
day or months behind, while the PLC and the sensors stamp their readings with the
true time. Judged against that clock every reading looks "in the future".

:class:`GatewayClock` is the one place the live path reads the wall time from (the
MQTT connector's future check, dead letters' receive time, alarm events). It asks
the system whether the clock is synchronised (:func:`system_synchronised`: the
kernel's NTP state through ``adjtimex``, and systemd-timesyncd's flag file). While
the clock is synchronised, or nobody can say, it is the wall clock and nothing
more. While it is not, every live reading's own timestamp is compared with it
(:meth:`GatewayClock.observe`), an :class:`OffsetEstimator` keeps the robust offset
of the data's clocks against ours, and once that offset is ahead by more than
``min_offset_s`` (the future tolerance) "now" is the wall clock plus the offset.

Only a clock *behind* the data is corrected: that is what a clock without a battery
does, while data *older* than the clock is normal (buffered, replayed, late) and no
evidence that the clock is wrong. Readings keep their own timestamps throughout;
windows and gap detection run on those timestamps alone and never read the clock.

The estimate is dropped as soon as the clock is synchronised, or when the wall clock
steps (the offsets measured before the step no longer apply); then "now" is the wall
clock again, which by then reads about what the estimate said: nothing jumps.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import deque
from pathlib import Path
from statistics import median
from typing import Callable

from appliance.core.clock import StepDetector

log = logging.getLogger(__name__)

# <sys/timex.h>: adjtimex returns TIME_ERROR, and sets STA_UNSYNC in status, while no
# time daemon has said the kernel's clock is synchronised.
TIME_ERROR = 5
STA_UNSYNC = 0x0040
# systemd-timesyncd creates this file once it has synchronised the clock (systemd >= 239).
TIMESYNCD_DIR = Path("/run/systemd/timesync")


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """``struct timex`` of glibc (``long`` fields, so it fits 32- and 64-bit ARM as well as x86)."""

    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long),
                ("jitter", ctypes.c_long), ("shift", ctypes.c_int), ("stabil", ctypes.c_long),
                ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long),
                ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
                # The kernel's reserved tail, and room to spare: it writes the whole struct.
                ("_reserved", ctypes.c_int * 32)]


_adjtimex: Callable | None = None


def kernel_synchronised() -> bool | None:
    """The kernel's NTP state: True, False (``STA_UNSYNC`` / ``TIME_ERROR``), or None where unknown.

    ``adjtimex`` with ``modes = 0`` only reads, so it needs no privilege. A time daemon
    (chrony, ntpd, systemd-timesyncd) clears ``STA_UNSYNC`` once it has set the clock.
    """
    global _adjtimex
    if _adjtimex is None:
        try:
            _adjtimex = ctypes.CDLL(None, use_errno=True).adjtimex
        except (OSError, AttributeError):  # not Linux
            return None
    tx = _Timex()  # zeroed: modes = 0, read only
    state = _adjtimex(ctypes.byref(tx))
    if state < 0:
        return None
    return not (state == TIME_ERROR or tx.status & STA_UNSYNC)


def timesyncd_synchronised(directory: Path = TIMESYNCD_DIR) -> bool | None:
    """True once systemd-timesyncd has synchronised the clock; False while it runs and has not;
    None where it does not run (its flag says nothing then)."""
    if (directory / "synchronized").exists():
        return True
    return False if directory.is_dir() else None


def system_synchronised() -> bool | None:
    """Whether the system clock is synchronised: True if timesyncd or the kernel says so, False if
    either says it is not, None if neither can tell (then the clock is trusted, as it always was)."""
    timesyncd = timesyncd_synchronised()
    if timesyncd:
        return True
    kernel = kernel_synchronised()
    if kernel is not None:
        return kernel
    return timesyncd


class OffsetEstimator:
    """How far the data's clocks are ahead of the gateway's, robust to a lying source.

    Each source (an asset, a PLC) keeps its last ``window`` offsets (its timestamp minus
    the gateway clock at receipt); its offset is their median, so a burst of buffered
    readings or a slow network does not move it. The estimate is the median over the
    sources, the lower of the two middle ones when their number is even: with three
    sources or more one source with a wrong clock cannot move it, and with two, the
    one further ahead cannot pull the gateway's time forward.

    >>> est = OffsetEstimator()
    >>> for source, offset in [("pump1", 86400.0), ("pump2", 86400.5), ("liar", 3e7), ("pump1", 86401.0)]:
    ...     est.add(source, offset)
    >>> est.estimate(), est.sources()
    (86400.5, 3)
    """

    def __init__(self, window: int = 32, max_sources: int = 256):
        if window < 1 or max_sources < 1:
            raise ValueError("window and max_sources must be >= 1")
        self.window = window
        self.max_sources = max_sources
        self._offsets: dict[str, deque[float]] = {}
        self.untracked = 0  # readings of sources past max_sources (not followed)

    def add(self, source: str, offset: float) -> None:
        q = self._offsets.get(source)
        if q is None:
            if len(self._offsets) >= self.max_sources:
                self.untracked += 1
                return
            q = self._offsets[source] = deque(maxlen=self.window)
        q.append(offset)

    def per_source(self) -> dict[str, float]:
        return {source: median(q) for source, q in self._offsets.items()}

    def estimate(self) -> float | None:
        """The robust offset in seconds (positive: the data is ahead), None before any reading."""
        offsets = sorted(self.per_source().values())
        if not offsets:
            return None
        return offsets[(len(offsets) - 1) // 2]

    def sources(self) -> int:
        return len(self._offsets)

    def readings(self) -> int:
        return sum(len(q) for q in self._offsets.values())

    def clear(self) -> None:
        self._offsets.clear()


def format_offset(seconds: float) -> str:
    """An offset as a technician reads it.

    >>> format_offset(86400.0), format_offset(-5400.0), format_offset(420.0)
    ('+24.0 h', '-1.5 h', '+7 min')
    """
    if abs(seconds) >= 3600:
        return f"{seconds / 3600:+.1f} h"
    return f"{seconds / 60:+.0f} min"


class GatewayClock:
    """The wall clock, corrected by the data's time while it is unsynchronised and behind.

    ``wall``, ``monotonic`` and ``synchronised`` are injectable (tests set a clock a day
    back and say "unsynchronised"). ``synchronised()`` is asked every ``check_every_s``;
    it returns True, False or None (unknown: trusted). ``min_offset_s`` is how far the data
    must be ahead before its time is used (the inputs' future tolerance). ``enabled=False``
    makes it the wall clock, always. Thread-safe; :meth:`now` is one addition.

    >>> wall = [1_000_000.0]; mono = [0.0]
    >>> clock = GatewayClock(wall=lambda: wall[0], monotonic=lambda: mono[0], synchronised=lambda: False)
    >>> clock.observe("pump1", 1_000_000.0 + 86400)   # the data is a day ahead of the clock
    1086400.0
    >>> clock.status()["message"]
    'gateway clock unsynchronised; using time from data (offset +24.0 h)'
    """

    def __init__(self, wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 synchronised: Callable[[], bool | None] = system_synchronised, *, min_offset_s: float = 300.0,
                 check_every_s: float = 5.0, refresh_every_s: float = 1.0, window: int = 32,
                 max_sources: int = 256, enabled: bool = True):
        self._wall, self._mono, self._synchronised = wall, monotonic, synchronised
        self.min_offset_s = float(min_offset_s)
        self.check_every_s = float(check_every_s)
        self.refresh_every_s = float(refresh_every_s)
        self.enabled = enabled
        self._estimator = OffsetEstimator(window, max_sources)
        self._steps = StepDetector(wall, monotonic)
        self._lock = threading.Lock()
        self._offset = 0.0           # what now() adds to the wall clock
        self._synced: bool | None = None
        self._trusted = True         # the wall clock is taken as it is (synchronised, unknown or disabled)
        self._next_check = -float("inf")
        self._next_refresh = -float("inf")
        self.estimates_dropped = 0   # estimates given up: the clock synchronised or stepped
        self.steps = 0

    def now(self) -> float:
        """UNIX time: the wall clock, plus the data's offset while that is in use."""
        return self._wall() + self._offset

    def wall(self) -> float:
        """The wall clock as it is (for what is measured against itself, such as uptime)."""
        return self._wall()

    @property
    def using_data_time(self) -> bool:
        return self._offset != 0.0

    def observe(self, source: str, ts: float) -> float:
        """Take a live reading's own timestamp from ``source``; return "now" to judge it against.

        Call it before checking the reading for a timestamp in the future, so the very
        first readings after a boot with a clock a day behind are judged by their own time.
        Replayed (historical) data says nothing about the clock: do not pass it here.
        """
        mono = self._mono()
        if self._trusted and mono < self._next_check:
            return self._wall()  # the common case, a synchronised clock: no lock, nothing kept
        with self._lock:
            if mono >= self._next_check:
                self._check(mono)
            if self._trusted:
                return self._wall()
            wall = self._wall()
            self._estimator.add(source, ts - wall)
            if mono >= self._next_refresh or (self._offset == 0.0 and ts - wall > self.min_offset_s):
                self._refresh(mono)
            return wall + self._offset

    def _check(self, mono: float) -> None:
        """Ask whether the clock is synchronised, and whether it stepped, every ``check_every_s``."""
        self._next_check = mono + self.check_every_s
        self._synced = self._synchronised() if self.enabled else None
        trusted = self._synced is not False
        step = self._steps.check()
        if step:
            self.steps += 1
        if (trusted and not self._trusted) or step:
            self._drop(f"clock {'stepped %+.0f s' % step if step else 'synchronised'}")
        self._trusted = trusted

    def _drop(self, why: str) -> None:
        if self._offset:
            self.estimates_dropped += 1
            log.info("gateway clock: %s; time from data dropped (offset was %s)", why,
                     format_offset(self._offset))
        self._offset = 0.0
        self._estimator.clear()
        self._next_refresh = -float("inf")

    def _refresh(self, mono: float) -> None:
        self._next_refresh = mono + self.refresh_every_s
        estimate = self._estimator.estimate()
        offset = estimate if estimate is not None and estimate > self.min_offset_s else 0.0
        if offset and not self._offset:
            log.warning("gateway clock unsynchronised and behind the data: using time from data offset=%s "
                        "sources=%d", format_offset(offset), self._estimator.sources())
        elif self._offset and not offset:
            self.estimates_dropped += 1
            log.info("gateway clock: the data agrees with it again; time from data dropped")
        self._offset = offset

    def status(self) -> dict:
        """The clock's state for the status API, /metrics and the dashboard's banner."""
        with self._lock:
            mono = self._mono()
            if mono >= self._next_check:
                self._check(mono)
            estimate = self._estimator.estimate()
            offset = self._offset
            message = (f"gateway clock unsynchronised; using time from data (offset {format_offset(offset)})"
                       if offset else None)
            return {"synchronised": self._synced, "data_time": bool(offset), "offset_s": round(offset, 3),
                    "estimate_s": None if estimate is None else round(estimate, 3),
                    "sources": self._estimator.sources(), "readings": self._estimator.readings(),
                    "estimates_dropped": self.estimates_dropped, "steps": self.steps, "message": message}
