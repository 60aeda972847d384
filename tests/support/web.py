"""The web tests' stand-in appliance, accounts and clients (the fixtures are registered in tests/conftest.py).

:class:`BookAppliance` puts the real :class:`AlarmBook` and the real
:class:`Store` (through its real :class:`StoreOutput`) behind the calls the
dashboard makes, so a command sent from the page really changes an alarm's
state and really lands in the store, without starting the whole runtime.

Accounts are real (:class:`~appliance.accounts.Accounts`), with a cheap Argon2
setting so that a test can make a dozen users in milliseconds; :func:`signed_in`
signs a Flask test client in through the real ``/login`` (CSRF token and all)
and sends the session's CSRF token with every later request.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from argon2 import PasswordHasher

from appliance.accounts import Accounts
from appliance.actions.alarms import AlarmBook, AlarmCommandError
from appliance.actions.decide import Decider
from appliance.actions.mitigation.mitigator import MitigationError
from appliance.core import (AlarmEvent, Counters, DeadLetter, DeadLetterCode, MitigationAction, ModeChange, Output,
                            Reading, Score)
from appliance.runtime import ALARM_COMMANDS
from appliance.store import Store
from appliance.store.output import StoreOutput
from appliance.watchdog import SensorWatchdog

SENSORS = ("Current", "Pressure", "Temperature")
# Argon2id at its cheapest: the tests check the accounts' logic, not the hash's cost.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "correct horse battery"


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
        self.listeners: list = []
        self.mitigation: FakeMitigation | None = None
        self._lock = threading.Lock()

    def add_event_listener(self, fn) -> None:
        """As the runtime: called for each alarm event and mode change (the dashboard's live view)."""
        self.listeners.append(fn)

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
            for fn in self.listeners:
                fn(c)

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
                "outputs": {**{name: o.status() for name, o in self.outputs.items()},
                            **({"mitigation": self.mitigation.status()} if self.mitigation else {})},
            }

    def output(self, name: str) -> Output | None:
        if name == "mitigation":
            return self.mitigation
        return self.outputs.get(name)

    def command(self, name: str, **kwargs):
        if name in ("approve_action", "reject_action"):
            if self.mitigation is None:
                raise AlarmCommandError("mitigation is not enabled")  # as the runtime says without the output
            with self._lock:
                self.commands.append((name, kwargs))
            return self.mitigation.decide(name, **kwargs)
        store_commands = self.store_output.commands()
        if name in store_commands:  # add_comment: answered once committed, as on the runtime's loop
            with self._lock:
                self.commands.append((name, kwargs))
            return asyncio.run(store_commands[name](**kwargs))
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


class FakeMitigation:
    """Mitigation as the dashboard sees it: pending proposals in the status, decisions in an audit log.

    (The real mitigator, its guards and its PLC writes are tested in tests/test_mitigation_*.py.)
    """

    def __init__(self, armed: bool = True):
        self.armed = armed
        self.pending: list[dict] = []
        self.log: list[dict] = []
        self.mitigator = self  # the API reads output.mitigator.audit_log(limit)

    def propose(self, proposal_id: str, asset: str = "pump1", rule: str = "slow-down",
                node: str = "ns=2;s=Speed") -> None:
        p = {"proposal_id": proposal_id, "rule": rule, "asset": asset, "alarm_id": "a1", "node": node,
             "reason": f"alarm on {asset}", "expires_in_s": 840.0}
        self.pending.append(p)
        self._audit(p, "pending_approval", "appliance", 80.0, 70.0)

    def _audit(self, p: dict, status: str, actor: str, old, new) -> MitigationAction:
        a = MitigationAction(proposal_id=p["proposal_id"], ts=time.time(), kind="mitigate", status=status,
                             actor=actor, rule=p["rule"], asset=p["asset"], alarm_id=p["alarm_id"], node=p["node"],
                             old_value=old, new_value=new, reason=p["reason"], armed=self.armed)
        self.log.append({"seq": len(self.log) + 1, **a.to_dict()})
        return a

    def decide(self, name: str, proposal_id: str, user: str, note: str = "", role: str = "") -> list[MitigationAction]:
        p = next((x for x in self.pending if x["proposal_id"] == proposal_id), None)
        if p is None:
            raise MitigationError(f"no pending proposal {proposal_id!r} (unknown, decided or expired)")
        self.pending.remove(p)
        if name == "approve_action":
            return [self._audit(p, "written" if self.armed else "advised", user, 80.0, 70.0)]
        return [self._audit(p, "rejected", user, 80.0, None)]

    def audit_log(self, limit: int = 100) -> list[dict]:
        return list(reversed(self.log))[:limit]

    def status(self) -> dict:
        return {"enabled": True, "armed": self.armed, "pending_approval": list(self.pending)}


@pytest.fixture
def accounts(tmp_path):
    """The test's accounts file, beside its store, with a cheap hash."""
    return Accounts(tmp_path / "accounts.db", hasher=FAST_HASHER)


def make_user(accounts: Accounts, name: str, role: str, password: str = PASSWORD) -> None:
    if accounts.user(name) is None:
        accounts.add_user(name, role, password)


def signed_in(app, name: str = "ana", role: str = "technician", password: str = PASSWORD):
    """A Flask test client signed in as ``name`` (made with ``role`` if new), sending its CSRF token."""
    make_user(app.extensions["appliance_auth"].accounts, name, role, password)
    c = app.test_client()
    token = c.get("/api/session").get_json()["csrf_token"]
    r = c.post("/login", json={"name": name, "password": password}, headers={"X-CSRFToken": token})
    assert r.status_code == 200, r.get_data(as_text=True)
    c.environ_base["HTTP_X_CSRFTOKEN"] = c.get("/api/session").get_json()["csrf_token"]
    return c


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
