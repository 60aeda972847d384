"""The web tests' stand-in appliance and HTTP client (the fixtures are registered in tests/conftest.py).

:class:`BookAppliance` puts the real :class:`AlarmBook` and the real
:class:`Store` (through its real :class:`StoreOutput`) behind the calls the
dashboard makes, so a command sent from the page really changes an alarm's
state and really lands in the store, without starting the whole runtime.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from appliance.actions.alarms import AlarmBook, AlarmCommandError
from appliance.actions.decide import Decider
from appliance.core import AlarmEvent, Counters, DeadLetter, DeadLetterCode, ModeChange, Output, Reading, Score
from appliance.runtime import ALARM_COMMANDS
from appliance.store import Store
from appliance.store.output import StoreOutput
from appliance.watchdog import SensorWatchdog

SENSORS = ("Current", "Pressure", "Temperature")


class ManualClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class BookAppliance:
    """The runtime's status, command and output calls over a real alarm book and store, fed by hand."""

    def __init__(self, store: Store, site: str = "test-site", silence_s: float = 10.0):
        self.store = store
        self.store_output = StoreOutput(store)
        self.outputs: dict[str, Output] = {"store": self.store_output}
        self.site = site
        self.book = AlarmBook(Decider(raise_k=1, raise_n=1, clear_n=1), on_peak=self.store_output.on_alarm_peak)
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
            self.store_output.on_reading(Reading(asset, sensor, ts, value))
            self.watchdog.seen(asset, sensor)

    def score(self, asset: str, t_end: float, ratio: float, top: str = "Current") -> list:
        contrib = {s: 0.1 for s in SENSORS}
        contrib[top] = 0.8
        s = Score(asset, t_end, ratio, 1.0, contrib, "test-model-1")
        with self._lock:
            self.counters.inc("windows_scored")
            self.store_output.on_score(s)
            events = self.book.on_score(s)
            self._emit(events)
        return events

    def dead_letter(self, source: str, payload: bytes, code: DeadLetterCode, detail: str = "") -> None:
        with self._lock:
            self.counters.inc("dead_letters")
            self.dead_by_reason.inc(code.value)
            self.store_output.on_dead_letter(DeadLetter(source, payload, code, detail, time.time()))

    def _emit(self, changes: list[AlarmEvent | ModeChange]) -> None:
        # The same counters and store records as the runtime's emit path.
        for c in changes:
            if isinstance(c, ModeChange):
                self.counters.inc(f"mode_{c.name}")
                self.store_output.on_mode_change(c)
            else:
                self.counters.inc(f"alarm_{c.kind.value}")
                self.store_output.on_alarm_event(c)

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
                "point_modes": {a: m.value for a, m in self.book.modes().items()},
                "inputs": {},
                "outputs": {name: o.status() for name, o in self.outputs.items()},
            }

    def output(self, name: str) -> Output | None:
        return self.outputs.get(name)

    def command(self, name: str, **kwargs):
        if name in ("approve_action", "reject_action"):
            raise AlarmCommandError("mitigation is not enabled")  # as the runtime says without the output
        if name not in ALARM_COMMANDS:
            raise ValueError(f"unknown command {name!r}")
        with self._lock:
            self.commands.append((name, kwargs))
            changes = getattr(self.book, name)(**kwargs)
            self._emit(changes)
        # The real runtime answers once the command is applied; the store follows
        # on its writer thread. Flushing here lets tests read the store at once.
        self.store.flush()
        return changes

    def flush(self) -> None:
        assert self.store.flush(30), "store did not flush"


@pytest.fixture
def book_appliance(store):
    """A :class:`BookAppliance` over the test's store (the ``store`` fixture of tests/conftest.py)."""
    return BookAppliance(store)


def http(method: str, url: str, body: dict | None = None, headers: dict | None = None, timeout: float = 30.0):
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
