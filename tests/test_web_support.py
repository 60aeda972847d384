"""Shared pieces of the web tests (the test_web_* modules import from here).

:class:`BookAppliance` puts the real :class:`AlarmBook` and the real
:class:`Store` behind the two calls the dashboard makes, so a command sent from
the page really changes an alarm's state and really lands in the store, without
starting the whole runtime.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
import json

import pytest

from appliance.actions.alarms import AlarmBook
from appliance.actions.decide import Decider
from appliance.core import Counters, DeadLetter, Reading, Score
from appliance.runtime import MODE_EVENTS
from appliance.store import Store
from appliance.watchdog import SensorWatchdog

SENSORS = ("Current", "Pressure", "Temperature")


class ManualClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class BookAppliance:
    def __init__(self, store: Store, site: str = "test-site", silence_s: float = 10.0):
        self.store = store
        self.site = site
        self.book = AlarmBook(Decider(raise_k=1, raise_n=1, clear_n=1))
        self.counters = Counters()
        self.dead_by_reason = Counters()
        self.watchdog_clock = ManualClock()
        self.watchdog = SensorWatchdog(SENSORS, silence_s, clock=self.watchdog_clock)
        self.started_at = time.time()
        self.commands: list[tuple[str, dict]] = []
        self._lock = threading.Lock()

    # -- feeding data, as the runtime would ----------------------------------------
    def reading(self, asset: str, sensor: str, ts: float, value: float) -> None:
        with self._lock:
            self.counters.inc("readings")
            self.store.put_reading(Reading(asset, sensor, ts, value))
            self.watchdog.seen(asset, sensor)

    def score(self, asset: str, t_end: float, ratio: float, top: str = "Current") -> list:
        contrib = {s: 0.1 for s in SENSORS}
        contrib[top] = 0.8
        s = Score(asset, t_end, ratio, 1.0, contrib, "test-model-1")
        with self._lock:
            self.counters.inc("windows_scored")
            self.store.put_score(s)
            events = self.book.on_score(s)
            self._emit(events)
        return events

    def dead_letter(self, source: str, payload: bytes, reason: str) -> None:
        with self._lock:
            self.counters.inc("dead_letters")
            self.dead_by_reason.inc(reason.split(":")[0])
            self.store.put_dead_letter(DeadLetter(source, payload, reason, time.time()))

    def _emit(self, events) -> None:
        for e in events:
            self.counters.inc(f"alarm_{e.kind}")
            self.store.put_alarm_event(e)
            if e.kind in MODE_EVENTS:
                self.store.put_point_mode(e.alarm.asset, self.book.modes()[e.alarm.asset], e.alarm.shelved_until)

    # -- what the dashboard calls ----------------------------------------------------
    def status(self) -> dict:
        with self._lock:
            return {
                "site": self.site,
                "uptime_s": round(time.time() - self.started_at, 1),
                "model": {"version": "test-model-1", "sensors": list(SENSORS), "window": 8, "threshold": 1.0},
                "counters": dict(self.counters.values),
                "dead_letters_by_reason": dict(self.dead_by_reason.values),
                "windows": {"rows": 0, "windows": self.counters.get("windows_scored"), "late_readings": 0,
                            "unknown_sensor": 0, "gaps": 0},
                "latency": {},
                "in_flight": {"now": 0, "peak": 0, "limit": 1000, "store_queue": self.store.queued()},
                "silent_sensors": self.watchdog.silent(),
                "alarms": [a.to_dict() for a in self.book.alarms()],
                "point_modes": self.book.modes(),
                "connectors": {}, "notifiers": {}, "history": None, "mitigation": None,
            }

    def command(self, name: str, **kwargs):
        if name not in ("acknowledge", "shelve", "set_mode"):
            raise ValueError(f"unknown command {name!r}")
        with self._lock:
            self.commands.append((name, kwargs))
            events = getattr(self.book, name)(**kwargs)
            self._emit(events)
        # The real runtime answers once the command is applied; the store follows
        # on its writer thread. Flushing here lets tests read the store at once.
        self.store.flush()
        return events

    def flush(self) -> None:
        assert self.store.flush(30), "store did not flush"


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store.db")
    s.start()
    yield s
    s.close()


@pytest.fixture
def book_appliance(store):
    return BookAppliance(store)


def http(method: str, url: str, body: dict | None = None, headers: dict | None = None, timeout: float = 10.0):
    """(status, parsed JSON or text, headers) over a real socket."""
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw, rh = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as err:
        status, raw, rh = err.code, err.read(), err.headers
    if (rh.get("Content-Type") or "").startswith("application/json"):
        return status, json.loads(raw), rh
    return status, raw.decode("utf-8", "replace"), rh


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last={last!r})")
