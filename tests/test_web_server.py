"""The dashboard served by waitress over real loopback sockets, alone and next to a running appliance."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from web.app import create_app
from web.server import serve
from appliance.config import parse_config
from appliance.core import DeadLetter, DeadLetterCode, Reading, Score
from appliance.runtime import build
from tests.support.detector import StandIn
from tests.support.wait import wait_until
from tests.support.web import PASSWORD, http, make_user
from web.client import DashboardClient


@pytest.fixture
def served(book_appliance, store, accounts):
    handle = serve(create_app(book_appliance, store.path, accounts=accounts), "127.0.0.1", 0)
    yield handle
    handle.stop()


def signed_in(url: str, accounts, name: str = "ana", role: str = "technician") -> DashboardClient:
    make_user(accounts, name, role)
    c = DashboardClient(url)
    c.login(name, PASSWORD)
    return c


def test_serve_on_port_zero_and_stop(served, book_appliance, accounts):
    assert served.port > 0 and served.url == f"http://127.0.0.1:{served.port}"
    status, body, headers = http("GET", served.url + "/healthz")
    assert (status, body) == (200, {"status": "ok"}) and headers["Server"] == "appliance"
    book_appliance.score("pump1", 1e9, 5.0)
    c = signed_in(served.url, accounts)
    status, body = c.post("/api/alarms/pump1/ack", {})
    assert status == 200 and book_appliance.book.current("pump1").acked_by == "ana"
    status, page, headers = c.request("GET", "/")
    assert status == 200 and "overview.js" in page and headers["X-Content-Type-Options"] == "nosniff"
    # The session cookie: not readable by scripts, never sent along from another site.
    (cookie,) = [k for k in c.cookies if k.name == "appliance_session"]
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.get_nonstandard_attr("SameSite") == "Strict"
    assert not cookie.secure  # plain HTTP on loopback; Secure over TLS (see test_web_auth)
    served.stop()
    assert not served.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", served.port), timeout=2).close()


def test_serve_reports_a_busy_port(served, book_appliance, store, accounts):
    with pytest.raises(OSError):
        serve(create_app(book_appliance, store.path, accounts=accounts), "127.0.0.1", served.port)


def test_a_huge_or_deeply_nested_body_is_a_4xx_over_the_wire(served, book_appliance, accounts):
    book_appliance.score("pump1", 1e9, 5.0)
    c = signed_in(served.url, accounts)
    for data, want in ((b"[" * 30000 + b"]" * 30000, 400), (b'{"note": "' + b"x" * 200_000 + b'"}', 413)):
        req = urllib.request.Request(served.url + "/api/alarms/pump1/ack", data=data, method="POST",
                                     headers={"Content-Type": "application/json", "X-CSRFToken": c._csrf})
        try:
            with c._opener.open(req, timeout=30) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        assert status == want, raw[:200]
        assert "\n" not in json.loads(raw)["error"]
    assert book_appliance.book.current("pump1").acked_by is None


def _raw(port: int, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (no client library tidying them up) and read the whole answer.

    The request must be whole (nothing the server leaves unread), or closing may reset the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_what_waitress_refuses_itself_gets_a_one_line_reason_too(served):
    """Past the server's own bounds the app never runs; the answer still has one line, not a text page."""
    host = f"Host: 127.0.0.1:{served.port}\r\n".encode()
    over_body = (b"POST /api/alarms/pump1/ack HTTP/1.1\r\n" + host + b"Content-Type: application/json\r\n"
                 b"Content-Length: 3000000\r\n\r\n")
    garbled = b"GET /api/status HTTP/1.1\r\n" + host + b"Content-Length: minus one\r\n\r\n"
    # (A header block over its bound gets the same one-line 431, but the server closes with the rest of the
    # header unread, so the client may see a reset instead of the answer: not something a test can rely on.)
    for request, want in ((over_body, 413), (garbled, 400)):
        status, body = _raw(served.port, request)
        assert status == want, body[:300]
        reason = json.loads(body)["error"]
        assert reason and "\n" not in reason and "\r" not in reason, reason


def test_requests_beyond_the_bound_get_a_quick_503(store, accounts):
    entered, release = threading.Event(), threading.Event()

    class Blocking:
        def status(self):
            entered.set()
            release.wait(60)
            return {"site": "s"}

        def command(self, name, **kw):
            raise AssertionError("not called")

    handle = serve(create_app(Blocking(), store.path, accounts=accounts), "127.0.0.1", 0, max_concurrent=1)
    results = []
    try:
        t = threading.Thread(target=lambda: results.append(http("GET", handle.url + "/healthz")))
        t.start()
        assert entered.wait(30)
        status, body, headers = http("GET", handle.url + "/healthz")
        assert status == 503 and headers["Retry-After"] == "1" and "busy" in body["error"]
        release.set()
        t.join(60)
        assert results and results[0][0] == 200
        # The slot is free again.
        assert http("GET", handle.url + "/healthz")[0] == 200
    finally:
        release.set()
        handle.stop()


# -- next to the real runtime -----------------------------------------------------------
class MeanDetector(StandIn):
    """A transparent detector: the score is the window's mean absolute value.

    It stands in for the ONNX model so this test is about the web side and the
    runtime's command path, with scores fully under the test's control.
    """

    version = "mean-1"

    def score_one(self, w) -> Score:
        per_sensor = np.abs(np.asarray(w.values)).mean(axis=0)
        total = float(per_sensor.sum()) or 1.0
        return Score(w.asset, w.t_end, float(np.abs(w.values).mean()), self.threshold,
                     {s: float(v) / total for s, v in zip(self.sensors, per_sensor)}, self.version)


class ApplianceThread:
    """The real Appliance on its own asyncio loop, as `appliance run` has it."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.app = build(cfg, detector=MeanDetector())
        self._ready = threading.Event()
        self._loop = None
        self._stop = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self):
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self.app.start()
        self._ready.set()
        await self._stop.wait()
        await self.app.shutdown()

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(30), "appliance did not start"
        return self.app

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture
def running(tmp_path):
    from appliance.runtime import start_web

    cfg = parse_config({
        "site": "line-3", "data_dir": str(tmp_path / "data"), "log_level": "WARNING",
        "inputs": {"mqtt": {"enabled": False}},
        "outputs": {"mqtt_alarm": {"enabled": False}, "history": {"enabled": False}},
        "web": {"port": 0},
    }, "test")
    with ApplianceThread(cfg) as app:
        handle = start_web(app, "127.0.0.1", cfg.web.port)  # as `appliance run` serves it
        try:
            yield app, handle
        finally:
            handle.stop()


def engineer(app, url: str, name: str = "eve") -> DashboardClient:
    """Signed in as an engineer, in the accounts file `appliance user add` would have written."""
    from appliance.accounts import Accounts, default_path

    make_user(Accounts(default_path(app.cfg)), name, "engineer")
    c = DashboardClient(url)
    c.login(name, PASSWORD)
    return c


def feed(app, asset: str, t0: float, n: int, a: float, b: float) -> None:
    for i in range(n):
        t = t0 + i
        app.submit([Reading(asset, "a", t, a), Reading(asset, "b", t, b)])


def test_commands_through_the_real_runtime(running):
    app, handle = running
    url = handle.url
    c = engineer(app, url)
    t0 = time.time() - 600
    feed(app, "pump1", t0, 6, 0.2, 0.1)  # normal
    feed(app, "pump1", t0 + 6, 10, 6.0, 0.4)  # far over the threshold: raised by debounce
    app.submit([], [DeadLetter("mqtt:plant/pump1/a", b"{oops", DeadLetterCode.BAD_JSON, "Expecting value",
                               time.time())])

    def alarm_state():
        alarms = c.request("GET", "/api/status")[1]["alarms"]
        return alarms[0]["state"] if alarms else None

    assert wait_until(alarm_state, what="alarm raised") == "unacknowledged"
    status = c.request("GET", "/api/status")[1]
    assert status["site"] == "line-3" and status["model"]["version"] == "mean-1"
    assert status["alarms"][0]["top_sensors"][0] == "a"
    assert status["alarms"][0]["level"] == "critical"
    assert status["alarms"][0]["peak_ratio"] > 1
    assert set(status["outputs"]) == {"store"} and status["inputs"] == {}

    status_code, body, _ = c.request("POST", "/api/alarms/pump1/ack", {"note": "seen"})
    assert status_code == 200, body
    assert alarm_state() == "acknowledged"
    # The store follows on its writer thread.
    wait_until(lambda: [a["state"] for a in c.request("GET", "/api/alarms?active=1")[1]["alarms"]] == ["acknowledged"],
               what="acknowledged alarm stored")
    alarm_id = c.request("GET", "/api/alarms")[1]["alarms"][0]["id"]

    def kinds_once_acknowledged():
        kinds = [e["kind"] for e in c.request("GET", f"/api/alarms/{alarm_id}/events")[1]["events"]]
        return kinds if "acknowledged" in kinds else None

    # A peak update written after the acknowledgement in memory may carry the new state before the
    # acknowledgement's own event reaches the store.
    kinds = wait_until(kinds_once_acknowledged, what="acknowledgement event stored")
    assert kinds[:1] == ["raised"] and "acknowledged" in kinds

    assert c.request("POST", "/api/alarms/pump1/ack", {})[0] == 409
    assert c.request("POST", "/api/alarms/pump9/ack", {})[0] == 409
    status_code, body, _ = c.request("POST", "/api/alarms/pump1/shelve", {"duration_s": 600})
    assert status_code == 200 and [r["event"] for r in body["records"]] == ["shelved"]
    assert alarm_state() == "shelved"
    assert c.request("POST", "/api/alarms/pump1/mode", {"mode": "in_service"})[0] == 200
    assert alarm_state() == "acknowledged"
    # The store follows on its writer thread.
    wait_until(lambda: c.request("GET", "/api/assets/pump1/modes")[1]["count"] == 2, what="mode changes stored")
    modes = c.request("GET", "/api/assets/pump1/modes")[1]["mode_changes"]
    # Every command is the signed-in engineer's, in the store's records.
    assert [(m["event"], m["user"], m["alarm_id"]) for m in modes] == [("unshelved", "eve", alarm_id),
                                                                        ("shelved", "eve", alarm_id)]
    events = c.request("GET", f"/api/alarms/{alarm_id}/events")[1]["events"]
    assert [(e["user"], e["note"]) for e in events if e["kind"] == "acknowledged"] == [("eve", "seen")]
    # Approval needs the mitigation output, which this appliance does not have.
    status_code, body, _ = c.request("POST", "/api/actions/p1/approve", {})
    assert status_code == 409 and body["error"] == "mitigation is not enabled"
    assert c.request("GET", "/api/actions/log")[0] == 404

    dead = wait_until(lambda: c.request("GET", "/api/dead-letters?code=bad_json")[1]["dead_letters"],
                      what="dead letter stored")
    assert [(d["code"], d["detail"], d["payload"]) for d in dead] == [("bad_json", "Expecting value", "{oops")]
    scores = wait_until(lambda: c.request("GET", "/api/scores?asset=pump1&limit=5")[1]["scores"], what="scores")
    assert scores[0]["model_version"] == "mean-1" and scores[0]["ratio"] > 1
    readings = c.request("GET", "/api/readings?asset=pump1&sensor=a&limit=1")[1]["readings"]
    assert readings[0]["value"] == 6.0 and readings[0]["ts"] == pytest.approx(t0 + 15)

    text = c.request("GET", "/metrics")[1]
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["appliance_readings"].samples[0].value == app.counters.get("readings") == 32
    assert fams["appliance_alarm_acknowledged"].samples[0].value == 1.0


def test_model_and_sync_commands_through_the_real_runtime(running):
    app, handle = running
    url = handle.url
    c = engineer(app, url)
    # Sync needs the sync output, which this appliance does not have.
    status_code, body, _ = c.request("POST", "/api/sync/now", {})
    assert status_code == 409 and "sync is not enabled" in body["error"]
    status_code, body, _ = c.request("POST", "/api/model/promote", {})
    assert status_code == 409 and "no candidate" in body["error"]
    assert c.request("POST", "/api/model/explode", {})[0] == 404

    # A candidate in shadow, promoted by hand through the API, then rolled back.
    candidate = MeanDetector()
    candidate.version = "mean-2"
    loop = app._loop
    asyncio.run_coroutine_threadsafe(_begin(app, candidate), loop).result(10)
    assert c.request("GET", "/api/status")[1]["model"]["shadow"]["candidate"] == "mean-2"
    status_code, body, _ = c.request("POST", "/api/model/promote", {})
    assert status_code == 200 and body["records"] == [{"model": "mean-2"}]
    status = c.request("GET", "/api/status")[1]["model"]
    assert status["version"] == "mean-2" and status["previous"] == "mean-1" and status["shadow"] is None
    status_code, body, _ = c.request("POST", "/api/model/rollback", {"note": "back"})
    assert status_code == 200 and body["records"] == [{"model": "mean-1"}]
    wait_until(lambda: len(c.request("GET", "/api/model")[1]["changes"]) >= 3, what="model changes stored")
    changes = c.request("GET", "/api/model")[1]["changes"]
    assert [(m["event"], m["user"]) for m in changes[:2]] == [("rolled_back", "eve"), ("promoted", "eve")]


@pytest.mark.integration  # the PLC simulator
def test_an_approval_on_the_dashboard_writes_the_plc_in_the_engineers_name(fresh_plc, tmp_path):
    """The issue's own case, end to end: a proposal waiting for approval, a technician and a forged name
    refused, the engineer's approval written to the real PLC and audited in their name."""
    from appliance.accounts import Accounts, default_path
    from appliance.runtime import start_web
    from tests.support.mitigation import make_cfg
    from tests.support.plc import PASSWORD as PLC_PASSWORD, USER as PLC_USER

    mitigation = make_cfg(require_approval=True, rule_kw={"asset": "pump1", "sensors": ("a",)}).model_dump(
        mode="json")
    mitigation["plc"] = {"endpoint": fresh_plc.endpoint, "username": PLC_USER, "password": PLC_PASSWORD}
    cfg = parse_config({
        "data_dir": str(tmp_path / "data"), "log_level": "WARNING", "inputs": {"mqtt": {"enabled": False}},
        "outputs": {"mqtt_alarm": {"enabled": False}, "history": {"enabled": False}, "mitigation": mitigation},
        "web": {"port": 0},
    }, "test")
    with ApplianceThread(cfg) as app:
        handle = start_web(app, "127.0.0.1", 0)
        try:
            eve = engineer(app, handle.url)
            make_user(Accounts(default_path(app.cfg)), "ana", "technician")
            ana = DashboardClient(handle.url)
            ana.login("ana", PASSWORD)
            t0 = time.time() - 600
            feed(app, "pump1", t0, 6, 0.2, 0.1)
            feed(app, "pump1", t0 + 6, 10, 6.0, 0.4)  # raised, "a" on top: the rule proposes a slow-down
            pending = wait_until(lambda: eve.request("GET", "/api/actions/pending")[1]["pending"],
                                 what="a proposal waiting for approval")
            pid = pending[0]["proposal_id"]
            assert ana.request("POST", f"/api/actions/{pid}/approve", {})[0] == 403
            status_code, body, _ = eve.request("POST", f"/api/actions/{pid}/approve", {"user": "somebody-else"})
            assert status_code == 400 and body["field"] == "user"
            assert asyncio.run(fresh_plc.read("SpeedSetpoint")) == 100.0  # nothing written so far

            status_code, body, _ = eve.request("POST", f"/api/actions/{pid}/approve", {})
            assert status_code == 200, body
            assert [(r["status"], r["actor"], r["new_value"]) for r in body["records"]][-1] == ("written", "eve", 80.0)
            assert asyncio.run(fresh_plc.read("SpeedSetpoint")) == 80.0
            log = eve.request("GET", "/api/actions/log")[1]["actions"]
            assert [(a["status"], a["actor"]) for a in reversed(log)] == [
                ("pending_approval", "appliance"), ("approved", "eve"), ("written", "eve")]
            assert eve.request("POST", f"/api/actions/{pid}/approve", {})[0] == 409  # decided already
        finally:
            handle.stop()


async def _begin(app, candidate):
    from appliance.lifecycle.shadow import ShadowBounds

    app.models.begin_shadow(candidate, ShadowBounds(duration_s=3600), user="eve")


def test_sync_now_from_the_cli_asks_the_running_appliance(running, capsys, tmp_path):
    from appliance.cli import main

    app, handle = running
    engineer(app, handle.url, "eve")
    secret = tmp_path / "eve.pw"
    secret.write_text(PASSWORD + "\n")
    args = ["sync", "now", "--url", handle.url, "--user", "eve", "--password-file", str(secret)]
    assert main(args) == 1
    assert "sync now refused: sync is not enabled" in capsys.readouterr().err
    secret.write_text("not the password\n")
    assert main(args) == 1
    assert "sign-in refused: wrong user name or password" in capsys.readouterr().err
    handle.stop()
    assert main(args) == 2
    assert "did not answer" in capsys.readouterr().err


def test_the_model_commands_of_the_cli_go_to_the_running_appliances_lifecycle(running, capsys, tmp_path):
    from appliance.cli import main

    app, handle = running
    engineer(app, handle.url, "eve")
    secret = tmp_path / "eve.pw"
    secret.write_text(PASSWORD + "\n")
    login = ["--url", handle.url, "--user", "eve", "--password-file", str(secret)]
    assert main(["model", "promote", *login]) == 1
    assert "model promote refused: no candidate model is running in shadow" in capsys.readouterr().err
    candidate = MeanDetector()
    candidate.version = "mean-2"
    asyncio.run_coroutine_threadsafe(_begin(app, candidate), app._loop).result(10)
    assert main(["model", "status", *login]) == 0
    assert "shadow: mean-2 after" in capsys.readouterr().out
    assert main(["model", "promote", "--note", "field trial", *login]) == 0
    assert '"model": "mean-2"' in capsys.readouterr().out and app.detector is candidate
    assert main(["model", "status", *login]) == 0
    assert "model mean-2 (previous: mean-1)" in capsys.readouterr().out
    assert main(["model", "rollback", *login]) == 0
    assert app.detector.version == "mean-1"


def test_one_client_in_turn_is_served_by_few_warm_workers_not_the_whole_pool():
    # Waking the longest-idle worker spread even sequential requests over every
    # worker, each warming its own stack and malloc arena (RSS crept up with the
    # request count); the most recently idle one is woken now.
    served_by: list[int] = []

    def app(environ, start_response):
        served_by.append(threading.get_ident())
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    handle = serve(app, "127.0.0.1", 0, threads=16)
    try:
        for _ in range(64):
            with urllib.request.urlopen(handle.url + "/", timeout=30) as r:
                assert r.read() == b"ok"
    finally:
        handle.stop()
    assert len(served_by) == 64
    # In turn, one worker suffices; a few more may take over while the first is still
    # finishing its write (6 seen on a loaded 2-core machine). The stock dispatcher used all 16.
    assert len(set(served_by)) <= 8, len(set(served_by))
