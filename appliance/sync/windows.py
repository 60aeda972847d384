"""Connectivity windows: when the gateway may talk to the cloud.

Each configured window is a recurring start (a crontab expression, or every N
seconds) and a duration. APScheduler's ``AsyncIOScheduler`` fires the starts on
the appliance's event loop; :meth:`ConnectivityWindows.sync_now` opens one by
hand (CLI, dashboard). Windows that overlap merge: the open window lasts until
the latest end. Outside a window :meth:`is_open` is False and the uploader sends
nothing.

Rules that keep the schedule predictable across restarts:

* ``every_s`` windows are aligned on the Unix epoch (``every_s = 3600``: on the
  hour, UTC), not on the process start, so a restart does not move them.
* An appliance started (or restarted) inside a scheduled window opens it at
  once, for what is left of it: a reboot at 02:10 still gets 02:10-02:30.
* A start fired late (the loop was busy, the clock stepped) still closes at its
  scheduled end; one that is later than its whole duration is skipped.

Durations are measured on the monotonic clock once a window is open, so a wall
clock step during a window neither shortens nor stretches it. The starts follow
the wall clock: a gateway with no real-time clock runs its cron windows on
whatever time it has until NTP sets it; ``sync_now`` and the uploader's queue do
not depend on it. APScheduler times its next wake-up as a delay computed on the
wall clock, so a clock stepped back would leave the schedule asleep for the size
of the step: the wall clock is checked against the monotonic one every
``CLOCK_CHECK_S``, and on a step every start is recomputed from the new time (and
a window the new time falls inside opens for what is left of it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Sequence

from appliance.core.clock import StepDetector
from appliance.sync.config import SyncWindowConfig, parse_cron

log = logging.getLogger(__name__)

# Windows kept in status() (most recent last), for the dashboard and the tests.
HISTORY = 20
# How often the wall clock is compared with the monotonic one, and the offset change that counts as a step.
CLOCK_CHECK_S = 1.0
CLOCK_STEP_S = 2.0


@dataclass
class Window:
    """One open (or past) window. Times are wall-clock UNIX seconds, for people."""

    seq: int
    reason: str          # "schedule:<index>", "startup:<index>", "clock_step:<index>" or "sync_now"
    opened_at: float
    closes_at: float
    closed_at: float | None = None


def make_trigger(w: SyncWindowConfig, tz=None):
    """The APScheduler trigger of one window's starts (``tz``: a tzinfo, None for the system's)."""
    from apscheduler.triggers.interval import IntervalTrigger

    if w.cron is not None:
        if tz is None:
            from tzlocal import get_localzone  # APScheduler's own dependency
            tz = get_localzone()
        return parse_cron(w.cron, tz)
    return IntervalTrigger(seconds=w.every_s, start_date=datetime(1970, 1, 1, tzinfo=timezone.utc),
                           timezone=timezone.utc)


def window_end(trigger, duration_s: float, now: float, max_steps: int = 10_000) -> float | None:
    """End of the window of ``trigger`` open at ``now`` (None if none is), overlapping starts merged.

    The first start at or after ``now - duration_s`` is the earliest that can
    still be open; later starts up to ``now`` extend it, so the end is the last
    of them plus ``duration_s``. At most ``max_steps`` starts are walked (a start
    every second in a day-long window); beyond, the window ends earlier and the
    next start reopens it.

    >>> from apscheduler.triggers.cron import CronTrigger
    >>> t = CronTrigger(minute=0, hour=2, timezone="UTC")          # 02:00 daily
    >>> two = datetime(2026, 3, 1, 2, 0, tzinfo=timezone.utc).timestamp()
    >>> window_end(t, 1800, two + 600) == two + 1800, window_end(t, 1800, two + 1800)
    (True, None)
    >>> every_minute = CronTrigger(minute="*", timezone="UTC")      # each open for an hour
    >>> window_end(every_minute, 3600, two + 30) == two + 3600
    True
    """
    fire = trigger.get_next_fire_time(None, datetime.fromtimestamp(now - duration_s, tz=timezone.utc))
    if fire is None or fire.timestamp() > now:
        return None
    last = fire
    for _ in range(max_steps):
        nxt = trigger.get_next_fire_time(last, last + timedelta(microseconds=1))
        if nxt is None or nxt.timestamp() > now:
            break
        last = nxt
    end = last.timestamp() + duration_s
    return end if end > now else None


class ConnectivityWindows:
    """Opens and closes the uplink's windows on the running event loop.

    ``clock`` is the wall clock (scheduling, reporting); ``monotonic`` measures
    an open window's remaining time.
    """

    def __init__(self, windows: Sequence[SyncWindowConfig], tz_name: str | None = None,
                 sync_now_s: float = 600.0, clock=time.time, monotonic=time.monotonic):
        self.configs = tuple(windows)
        self.tz_name = tz_name
        self.sync_now_s = sync_now_s
        self._clock = clock
        self._mono = monotonic
        self._triggers: list = []
        self._scheduler = None
        self._current: Window | None = None
        self._close_mono = 0.0
        self._close_timer: asyncio.TimerHandle | None = None
        self._opened: asyncio.Event | None = None
        self._closed: asyncio.Event | None = None
        self._seq = 0
        self._clock_watch: asyncio.Task | None = None
        self.clock_steps = 0
        self.history: deque[Window] = deque(maxlen=HISTORY)

    # -- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        """Schedule the configured windows; open one at once if now is inside it."""
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self._opened, self._closed = asyncio.Event(), asyncio.Event()
        self._closed.set()
        tz = None
        if self.tz_name is not None:
            from zoneinfo import ZoneInfo
            tz = ZoneInfo(self.tz_name)
        self._triggers = [make_trigger(w, tz) for w in self.configs]
        if not self._triggers:
            return
        self._scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone=tz or "UTC")
        for i, (w, trigger) in enumerate(zip(self.configs, self._triggers)):
            # An async job runs on the loop itself (a plain function would go to a thread pool).
            # A start fired later than its whole window is of no use: misfire grace = duration.
            self._scheduler.add_job(self._fire, trigger, args=(i,), id=f"sync-window-{i}", coalesce=True,
                                    max_instances=1, misfire_grace_time=max(1, int(w.duration_s)))
        self._scheduler.start()
        self._open_due("startup")
        self._clock_watch = asyncio.create_task(self._watch_clock(StepDetector(self._clock, self._mono,
                                                                               CLOCK_STEP_S)),
                                                name="sync-window-clock")

    async def stop(self) -> None:
        if self._clock_watch is not None:
            self._clock_watch.cancel()
            await asyncio.gather(self._clock_watch, return_exceptions=True)
            self._clock_watch = None
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        self._scheduler = None
        self._close("stopped")

    def _open_due(self, reason: str) -> None:
        """Open the scheduled windows that the current wall time falls inside, for what is left of them."""
        now = self._clock()
        for i, (w, trigger) in enumerate(zip(self.configs, self._triggers)):
            end = window_end(trigger, w.duration_s, now)
            if end is not None:
                self._open(f"{reason}:{i}", end - now)

    async def _watch_clock(self, detector: StepDetector) -> None:
        while True:
            await asyncio.sleep(CLOCK_CHECK_S)
            step = detector.check()
            if step:
                self.clock_stepped(step)

    def clock_stepped(self, step_s: float) -> None:
        """The wall clock moved by ``step_s`` against the monotonic one: re-anchor the schedule on it."""
        self.clock_steps += 1
        now = self._clock()
        log.warning("sync windows: wall clock stepped by %+.1f s; schedule recomputed from the new time", step_s)
        if self._current is not None and self.is_open():
            self._current.closes_at = now + self.time_left()
        if self._scheduler is None:
            return
        at = datetime.fromtimestamp(now, tz=timezone.utc)
        for i, trigger in enumerate(self._triggers):
            # modify_job wakes the scheduler, which then sleeps for a delay measured from the new time.
            self._scheduler.modify_job(f"sync-window-{i}", next_run_time=trigger.get_next_fire_time(None, at))
        self._open_due("clock_step")

    async def _fire(self, index: int) -> None:
        w = self.configs[index]
        now = self._clock()
        end = window_end(self._triggers[index], w.duration_s, now)
        if end is None:
            # Fired after its window had already ended (or the clock stepped): nothing to open.
            log.info("sync window %d fired outside its span; skipped", index)
            return
        self._open(f"schedule:{index}", end - now)

    # -- commands -------------------------------------------------------------
    def sync_now(self, duration_s: float | None = None) -> dict:
        """Open a window now for ``duration_s`` (default ``sync_now_s``); extends an open one."""
        d = self.sync_now_s if duration_s is None else float(duration_s)
        if not 0 < d <= 86400:
            raise ValueError("duration_s must be between 0 and 86400 seconds")
        self._open("sync_now", d)
        return self.status()

    def end_window(self) -> dict:
        """Close the open window now (an operator cancels a sync); the next one resumes."""
        self._close("ended")
        return self.status()

    # -- state ----------------------------------------------------------------
    def is_open(self) -> bool:
        return self._current is not None and self._mono() < self._close_mono

    def time_left(self) -> float:
        return max(0.0, self._close_mono - self._mono()) if self._current is not None else 0.0

    @property
    def current(self) -> Window | None:
        return self._current if self.is_open() else None

    async def wait_open(self) -> None:
        """Until a window is open. One whose time ran out but whose close timer has not run yet is
        not: returning for it would let a caller loop without ever yielding to that timer."""
        while True:
            await self._opened.wait()
            if self.is_open():
                return
            await self._closed.wait()  # the close timer is due; let it run

    async def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the window closes or ``timeout`` passes; True if it is closed."""
        if not self.is_open():
            return True
        try:
            await asyncio.wait_for(self._closed.wait(), timeout)
        except asyncio.TimeoutError:
            return not self.is_open()
        return True

    def next_start(self) -> float | None:
        """Wall time of the next scheduled start, if any."""
        if self._scheduler is None:
            return None
        times = [j.next_run_time.timestamp() for j in self._scheduler.get_jobs() if j.next_run_time is not None]
        return min(times) if times else None

    def status(self) -> dict:
        cur = self.current
        return {
            "open": cur is not None,
            "current": asdict(cur) if cur is not None else None,
            "time_left_s": round(self.time_left(), 3) if cur is not None else 0.0,
            "next_start": self.next_start(),
            "opened": self._seq,
            "clock_steps": self.clock_steps,
            "scheduled": [w.model_dump(exclude_none=True) for w in self.configs],
            "recent": [asdict(w) for w in self.history],
        }

    # -- internals --------------------------------------------------------------
    def _open(self, reason: str, duration_s: float) -> None:
        loop = asyncio.get_running_loop()
        now_mono, now = self._mono(), self._clock()
        until = now_mono + duration_s
        if self.is_open():
            if until <= self._close_mono:
                return
            self._close_mono = until
            self._current.closes_at = now + duration_s
            log.info("sync window extended seq=%d reason=%s closes_in_s=%.0f", self._current.seq, reason, duration_s)
        else:
            self._seq += 1
            self._current = Window(self._seq, reason, now, now + duration_s)
            self.history.append(self._current)
            self._close_mono = until
            self._closed.clear()
            self._opened.set()
            log.info("sync window open seq=%d reason=%s duration_s=%.0f", self._seq, reason, duration_s)
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._close_timer = loop.call_later(duration_s, self._expire)

    def _expire(self) -> None:
        self._close_timer = None
        if self._current is not None and self._mono() >= self._close_mono - 1e-3:
            self._close("elapsed")
        elif self._current is not None:  # extended meanwhile (timer raced the extension)
            self._close_timer = asyncio.get_running_loop().call_later(self.time_left(), self._expire)

    def _close(self, why: str) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self._current is None:
            return
        self._current.closed_at = self._clock()
        log.info("sync window closed seq=%d why=%s", self._current.seq, why)
        self._current = None
        self._close_mono = 0.0
        if self._opened is not None:
            self._opened.clear()
            self._closed.set()
