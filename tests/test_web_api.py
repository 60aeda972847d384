"""The web API with Flask's test client, over a real store and the real alarm book, signed in as a technician.

(Who may call what, CSRF and the Host check are in tests/test_web_auth.py.)
"""

from __future__ import annotations

import math
import re
import sqlite3
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from web.app import create_app
from appliance.core import AlarmState, DeadLetterCode, EventKind
from tests.support.web import BookAppliance, signed_in

T0 = 1_700_000_000.0


@pytest.fixture
def app(book_appliance, store, accounts):
    return create_app(book_appliance, store.path, accounts=accounts)


@pytest.fixture
def client(app):
    return signed_in(app, "ana", "technician")


def viewer(appliance, store_path, accounts):
    """A viewer's client on an app over ``appliance`` (a stand-in)."""
    return signed_in(create_app(appliance, store_path, accounts=accounts), "vic", "viewer")


def raise_alarm(ba: BookAppliance, asset: str = "pump1", t: float = T0, ratio: float = 3.0) -> str:
    events = ba.score(asset, t, ratio)
    assert [e.kind for e in events] == [EventKind.RAISED]
    ba.flush()
    return events[0].alarm.id


# -- status and health ----------------------------------------------------------------
def test_status_is_the_appliance_status(client, book_appliance):
    raise_alarm(book_appliance)
    r = client.get("/api/status")
    assert r.status_code == 200
    body = r.get_json()
    assert body["site"] == "test-site"
    assert body["alarms"][0]["asset"] == "pump1"
    assert body["alarms"][0]["state"] == "unacknowledged"
    assert body["alarms"][0]["peak_ratio"] == pytest.approx(3.0)
    assert body["outputs"]["store"]["write_errors"] == 0 and body["inputs"] == {}
    assert r.headers["Cache-Control"] == "no-store"


def test_status_replaces_non_finite_numbers_and_numpy_scalars(store, accounts):
    import numpy as np

    class Odd:
        def status(self):
            return {"site": "s", "model": {"threshold": np.float32(0.5), "inf": math.inf, "nan": math.nan},
                    "counters": {"readings": np.int64(7)}}

        def command(self, name, **kw):
            raise AssertionError("not called")

    r = viewer(Odd(), store.path, accounts).get("/api/status")
    assert r.status_code == 200
    assert b"NaN" not in r.data and b"Infinity" not in r.data
    body = r.get_json()
    assert body["model"] == {"threshold": 0.5, "inf": None, "nan": None}
    assert body["counters"]["readings"] == 7


def test_status_failure_is_503_and_healthz_says_why(store, accounts):
    class Broken:
        def status(self):
            raise OSError("loop gone")

        def command(self, name, **kw):
            raise AssertionError("not called")

    c = viewer(Broken(), store.path, accounts)
    r = c.get("/api/status")
    assert r.status_code == 503 and "loop gone" in r.get_json()["error"]
    r = c.get("/healthz")
    assert r.status_code == 503
    assert "appliance" in r.get_json()["problems"]


def test_status_retries_a_transient_concurrent_change(store, accounts):
    class Flaky:
        calls = 0

        def status(self):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("dictionary changed size during iteration")
            return {"site": "s"}

        def command(self, name, **kw):
            raise AssertionError("not called")

    f = Flaky()
    r = viewer(f, store.path, accounts).get("/api/status")
    assert r.status_code == 200 and f.calls == 2


def test_healthz_ok_and_missing_store(client, book_appliance, tmp_path, accounts):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    c = viewer(book_appliance, tmp_path / "nowhere.db", accounts)
    r = c.get("/healthz")
    assert r.status_code == 503
    assert "does not exist" in r.get_json()["problems"]["store"]
    r = c.get("/api/alarms")
    assert r.status_code == 503 and "nowhere.db" in r.get_json()["error"]


def test_healthz_names_a_store_of_another_schema(book_appliance, tmp_path, accounts):
    path = tmp_path / "foreign.db"
    sqlite3.connect(path).execute("CREATE TABLE unrelated (x)").connection.commit()
    r = viewer(book_appliance, path, accounts).get("/healthz")
    assert r.status_code == 503 and "schema version 0" in r.get_json()["problems"]["store"]


# -- store-backed lists -----------------------------------------------------------------
def test_alarms_active_filter_and_limit(client, book_appliance):
    raise_alarm(book_appliance, "pump1", T0)
    book_appliance.score("pump1", T0 + 1, 0.1)  # clears pump1
    raise_alarm(book_appliance, "pump2", T0 + 2)
    raise_alarm(book_appliance, "pump3", T0 + 3)
    book_appliance.flush()

    everything = client.get("/api/alarms").get_json()
    assert [a["asset"] for a in everything["alarms"]] == ["pump3", "pump2", "pump1"]
    active = client.get("/api/alarms?active=1").get_json()["alarms"]
    assert {a["asset"] for a in active} == {"pump2", "pump3"}
    assert all(a["active"] is True and isinstance(a["top_sensors"], list) for a in active)
    assert all(a["peak_ratio"] == pytest.approx(3.0) and "peak_score" not in a for a in active)
    inactive = client.get("/api/alarms?active=0").get_json()["alarms"]
    assert [(a["asset"], a["state"], a["end"]) for a in inactive] == [("pump1", "returned_unacknowledged", T0 + 1)]
    assert len(client.get("/api/alarms?limit=1").get_json()["alarms"]) == 1


def test_mode_changes_are_listed_per_asset_not_as_alarms(client, book_appliance):
    book_appliance.book.ensure("pump9")
    before = time.time()
    book_appliance.command("shelve", asset="pump9", user="ana", duration_s=60, note="cleaning")
    after = time.time()
    book_appliance.command("set_mode", asset="pump9", user="bo", mode="out_of_service")
    alarm_id = raise_alarm(book_appliance, "pump1")
    book_appliance.command("set_mode", asset="pump1", user="carla", mode="suppressed")
    assert [a["asset"] for a in client.get("/api/alarms").get_json()["alarms"]] == ["pump1"]

    body = client.get("/api/assets/pump9/modes").get_json()
    assert body["asset"] == "pump9" and body["count"] == 2
    assert [(m["event"], m["mode"], m["previous"], m["user"], m["alarm_id"]) for m in body["mode_changes"]] == [
        ("removed_from_service", "out_of_service", "shelved", "bo", None),
        ("shelved", "shelved", "in_service", "ana", None)]
    shelved = body["mode_changes"][1]
    assert shelved["note"] == "cleaning" and before + 60 <= shelved["shelved_until"] <= after + 60
    latest = client.get("/api/assets/pump9/modes?limit=1").get_json()["mode_changes"]
    assert [m["user"] for m in latest] == ["bo"]
    # A change of a point with an alarm names the occurrence; the alarm's own journal stays its own.
    (change,) = client.get("/api/assets/pump1/modes").get_json()["mode_changes"]
    assert (change["event"], change["alarm_id"]) == ("suppressed", alarm_id)
    assert [e["kind"] for e in client.get(f"/api/alarms/{alarm_id}/events").get_json()["events"]] == ["raised"]
    assert client.get("/api/assets/nosuch/modes").get_json() == {"asset": "nosuch", "mode_changes": [], "count": 0}
    assert client.get("/api/alarms/point-pump9/events").status_code == 404


def test_alarm_events_history(client, book_appliance):
    alarm_id = raise_alarm(book_appliance)
    book_appliance.command("acknowledge", asset="pump1", user="ana", note="bearing noisy")
    r = client.get(f"/api/alarms/{alarm_id}/events")
    assert r.status_code == 200
    ev = r.get_json()["events"]
    assert [e["kind"] for e in ev] == ["raised", "acknowledged"]
    assert ev[1]["user"] == "ana" and ev[1]["note"] == "bearing noisy"
    assert ev[1]["alarm"]["state"] == "acknowledged"
    r = client.get("/api/alarms/0123456789abcdef/events")
    assert r.status_code == 404 and r.get_json()["field"] == "alarm_id"


def test_scores_filter_since_limit_newest_first(client, book_appliance):
    for i in range(10):
        book_appliance.score("pump1", T0 + i, 0.1 * (i + 1))
        book_appliance.score("pump2", T0 + i, 0.05)
    book_appliance.flush()
    rows = client.get("/api/scores?asset=pump1&limit=3").get_json()["scores"]
    assert [r["t_end"] for r in rows] == [T0 + 9, T0 + 8, T0 + 7]
    assert rows[0]["ratio"] == pytest.approx(1.0)
    assert rows[0]["contributions"]["Current"] == pytest.approx(0.8)
    since = client.get(f"/api/scores?asset=pump1&since={T0 + 6}").get_json()["scores"]
    assert [r["t_end"] for r in since] == [T0 + 9, T0 + 8, T0 + 7]
    both = client.get("/api/scores?limit=1000").get_json()["scores"]
    assert len(both) == 20 and {r["asset"] for r in both} == {"pump1", "pump2"}


def test_readings_filters(client, book_appliance):
    for i in range(5):
        for s in ("Current", "Pressure"):
            book_appliance.reading("pump1", s, T0 + i, float(i))
        book_appliance.reading("pump2", "Current", T0 + i, -1.0)
    book_appliance.flush()
    rows = client.get("/api/readings?asset=pump1&sensor=Pressure&limit=2").get_json()["readings"]
    assert [(r["sensor"], r["ts"], r["value"]) for r in rows] == [("Pressure", T0 + 4, 4.0), ("Pressure", T0 + 3, 3.0)]
    rows = client.get("/api/readings?asset=pump1").get_json()["readings"]
    assert len(rows) == 10 and {r["asset"] for r in rows} == {"pump1"}
    rows = client.get(f"/api/readings?sensor=Current&since={T0 + 2}").get_json()["readings"]
    assert sorted((r["asset"], r["ts"]) for r in rows) == sorted(
        (a, T0 + i) for a in ("pump1", "pump2") for i in (3, 4))


def test_dead_letters_show_a_safe_preview(client, book_appliance):
    book_appliance.dead_letter("mqtt:plant/pump1/Current", b"\xff\xfenot json", DeadLetterCode.BAD_JSON,
                               "invalid start byte")
    book_appliance.dead_letter("mqtt:plant/pump1/telemetry", b"x" * 5000, DeadLetterCode.TOO_LARGE)
    book_appliance.flush()
    rows = client.get("/api/dead-letters").get_json()["dead_letters"]
    assert [(r["code"], r["detail"]) for r in rows] == [("too_large", ""), ("bad_json", "invalid start byte")]
    assert rows[0]["size"] == 5000 and rows[0]["truncated"] is True and len(rows[0]["payload"]) == 300
    assert rows[1]["payload"].endswith("not json") and rows[1]["truncated"] is False and rows[1]["size"] == 10
    assert len(client.get("/api/dead-letters?limit=1").get_json()["dead_letters"]) == 1


def test_dead_letters_filter_by_code(client, book_appliance):
    for i in range(3):
        book_appliance.dead_letter("mqtt:plant/pump1/Current", b"{", DeadLetterCode.BAD_JSON, f"eof {i}")
        book_appliance.dead_letter("mqtt:plant/pump1/Current", b"{}", DeadLetterCode.MISSING_TS)
    book_appliance.flush()
    body = client.get("/api/dead-letters?code=bad_json&limit=2").get_json()
    assert [(r["code"], r["detail"]) for r in body["dead_letters"]] == [("bad_json", "eof 2"), ("bad_json", "eof 1")]
    assert client.get("/api/dead-letters?code=ts_too_old").get_json()["count"] == 0
    r = client.get("/api/dead-letters?code=not_json")
    assert r.status_code == 400 and r.get_json()["field"] == "code" and "bad_json" in r.get_json()["error"]


@pytest.mark.parametrize("url, field", [
    ("/api/alarms?limit=0", "limit"),
    ("/api/alarms?limit=5000", "limit"),
    ("/api/alarms?limit=ten", "limit"),
    ("/api/alarms?active=maybe", "active"),
    ("/api/scores?since=yesterday", "since"),
    ("/api/scores?since=nan", "since"),
    ("/api/readings?asset=%20%20", "asset"),
    ("/api/readings?sensor=" + "s" * 300, "sensor"),
    ("/api/dead-letters?limit=-1", "limit"),
    ("/api/dead-letters?code=BAD%20JSON", "code"),
    ("/api/assets/pump1/modes?limit=0", "limit"),
])
def test_bad_query_parameters_are_400_naming_the_field(client, url, field):
    r = client.get(url)
    assert r.status_code == 400
    body = r.get_json()
    assert body["field"] == field and field in body["error"]


def test_store_with_bad_schema_is_503_not_a_crash(book_appliance, tmp_path, accounts):
    path = tmp_path / "other.db"
    sqlite3.connect(path).execute("CREATE TABLE unrelated (x)").connection.commit()
    r = viewer(book_appliance, path, accounts).get("/api/scores")
    assert r.status_code == 503 and "no such table" in r.get_json()["error"]


# -- commands ---------------------------------------------------------------------------
def test_acknowledge_changes_the_alarm_and_is_stored(client, book_appliance, store):
    alarm_id = raise_alarm(book_appliance)
    r = client.post("/api/alarms/pump1/ack", json={"note": "on my way"})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["ok"] is True and [e["event"] for e in body["records"]] == ["acknowledged"]
    assert body["records"][0]["alarm"]["acked_by"] == "ana"
    assert book_appliance.book.current("pump1").acked_by == "ana"
    stored = client.get("/api/alarms?active=1").get_json()["alarms"]
    assert [(a["id"], a["state"], a["acked_by"]) for a in stored] == [(alarm_id, "acknowledged", "ana")]
    # Nothing left to acknowledge: the alarm book refuses, the API says so.
    r = client.post("/api/alarms/pump1/ack", json={})
    assert r.status_code == 409
    assert "no unacknowledged alarm" in r.get_json()["error"]


def test_shelve_and_return_to_service(client, app, book_appliance):
    raise_alarm(book_appliance)
    before = time.time()
    r = client.post("/api/alarms/pump1/shelve", json={"duration_s": 3600, "note": "known leak"})
    after = time.time()
    assert r.status_code == 200
    a = client.get("/api/status").get_json()["alarms"][0]
    assert a["state"] == "shelved" and before + 3600 <= a["shelved_until"] <= after + 3600
    assert client.get("/api/status").get_json()["point_modes"]["pump1"] == "shelved"
    r = client.post("/api/alarms/pump1/mode", json={"mode": "in_service"})
    assert r.status_code == 200
    (change,) = r.get_json()["records"]
    assert (change["event"], change["mode"], change["previous"], change["user"]) == (
        "unshelved", "in_service", "shelved", "ana")
    assert client.get("/api/status").get_json()["alarms"][0]["state"] == "unacknowledged"
    # Taking a point out of service is an engineer's call.
    r = client.post("/api/alarms/pump1/mode", json={"mode": "out_of_service"})
    assert r.status_code == 403 and r.get_json()["field"] == "mode"
    r = signed_in(app, "eve", "engineer").post("/api/alarms/pump1/mode", json={"mode": "out_of_service"})
    assert r.status_code == 200 and r.get_json()["records"][0]["user"] == "eve"
    assert client.get("/api/status").get_json()["alarms"][0]["state"] == "out_of_service"


def test_command_on_unknown_asset_is_409(client):
    r = client.post("/api/alarms/nosuch/ack", json={})
    assert r.status_code == 409 and "unknown asset" in r.get_json()["error"]


@pytest.mark.parametrize("path, body, field", [
    ("ack", {"user": "somebody-else"}, "user"),  # the acting user is the one signed in, never a field
    ("ack", {"note": ["x"]}, "note"),
    ("ack", {"note": "n" * 501}, "note"),
    ("shelve", {}, "duration_s"),
    ("shelve", {"duration_s": "3600"}, "duration_s"),
    ("shelve", {"duration_s": True}, "duration_s"),
    ("shelve", {"duration_s": 0}, "duration_s"),
    ("shelve", {"duration_s": 8 * 86400}, "duration_s"),
    ("mode", {}, "mode"),
    ("mode", {"mode": "shelved"}, "mode"),
    ("mode", {"mode": "off"}, "mode"),
    ("mode", {"mode": ["in_service"]}, "mode"),
])
def test_bad_command_bodies_are_400_naming_the_field(client, book_appliance, path, body, field):
    raise_alarm(book_appliance)
    r = client.post(f"/api/alarms/pump1/{path}", json=body)
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["field"] == field
    assert book_appliance.commands == []  # rejected at the edge, never reached the alarm book


def test_commands_must_be_json_objects(client, book_appliance):
    raise_alarm(book_appliance)
    r = client.post("/api/alarms/pump1/ack", data="note=x", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 415 and r.get_json()["field"] == "body"
    r = client.post("/api/alarms/pump1/ack", data="[1, 2]", content_type="application/json")
    assert r.status_code == 400 and r.get_json()["field"] == "body"
    r = client.post("/api/alarms/pump1/ack", data="{not json", content_type="application/json")
    assert r.status_code == 400
    assert client.get("/api/alarms/pump1/ack").status_code == 405
    assert book_appliance.commands == []


def test_command_timeout_is_503(store, accounts):
    class Slow:
        def status(self):
            return {}

        def command(self, name, **kw):
            raise TimeoutError()

    r = signed_in(create_app(Slow(), store.path, accounts=accounts)).post("/api/alarms/p/ack", json={})
    assert r.status_code == 503 and "may still apply" in r.get_json()["error"]


def test_unexpected_command_failure_is_a_json_500(store, accounts):
    class Buggy:
        def status(self):
            return {}

        def command(self, name, **kw):
            raise KeyError("oops")

    r = signed_in(create_app(Buggy(), store.path, accounts=accounts)).post("/api/alarms/p/ack", json={})
    assert r.status_code == 500 and r.get_json()["error"] == "internal error: KeyError"


# -- metrics ----------------------------------------------------------------------------
def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_from_status(client, book_appliance):
    raise_alarm(book_appliance, "pump1")
    book_appliance.score("pump2", T0, 0.2)
    book_appliance.dead_letter("mqtt:x", b"{", DeadLetterCode.BAD_JSON, "eof")
    book_appliance.reading("pump1", "Current", T0, 1.0)
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    fams = _families(r.get_data(as_text=True))
    samples = lambda name: {tuple(sorted(s.labels.items())): s.value for s in fams[name].samples}  # noqa: E731
    assert samples("appliance_readings") == {(): 1.0}
    assert samples("appliance_windows_scored") == {(): 2.0}
    assert samples("appliance_alarm_raised") == {(): 1.0}
    assert samples("appliance_dead_letters_by_reason") == {(("reason", "bad_json"),): 1.0}
    state = samples("appliance_alarm_state")
    assert {dict(k)["state"] for k in state if dict(k)["asset"] == "pump1"} == {s.value for s in AlarmState}
    assert state[(("asset", "pump1"), ("state", "unacknowledged"))] == 1.0
    assert state[(("asset", "pump1"), ("state", "acknowledged"))] == 0.0
    assert state[(("asset", "pump2"), ("state", "normal"))] == 1.0
    assert samples("appliance_info") == {(("model_version", "test-model-1"), ("site", "test-site")): 1.0}
    assert samples("appliance_alarm_peak_ratio") == {(("asset", "pump1"),): 3.0}
    components = samples("appliance_component_stat")
    assert components[(("component", "output"), ("key", "write_errors"), ("name", "store"))] == 0.0
    # After an acknowledge the next scrape follows.
    book_appliance.command("acknowledge", asset="pump1", user="ana")
    state = {tuple(sorted(s.labels.items())): s.value
             for s in _families(client.get("/metrics").get_data(as_text=True))["appliance_alarm_state"].samples}
    assert state[(("asset", "pump1"), ("state", "acknowledged"))] == 1.0


def test_metrics_state_of_a_point_without_an_alarm_follows_its_mode(client, book_appliance):
    book_appliance.book.ensure("pump9")
    book_appliance.command("set_mode", asset="pump9", user="bo", mode="out_of_service")
    fams = _families(client.get("/metrics").get_data(as_text=True))
    state = {s.labels["state"]: s.value for s in fams["appliance_alarm_state"].samples if s.labels["asset"] == "pump9"}
    assert state == {s.value: float(s is AlarmState.OUT_OF_SERVICE) for s in AlarmState}


def test_metrics_silent_sensors(client, book_appliance):
    for s in ("Current", "Pressure", "Temperature"):
        book_appliance.reading("pump1", s, T0, 1.0)
    book_appliance.watchdog_clock.t = 30.0
    book_appliance.reading("pump1", "Current", T0 + 30, 1.0)
    book_appliance.watchdog.check()
    fams = _families(client.get("/metrics").get_data(as_text=True))
    silent = {s.labels["sensor"]: s.value for s in fams["appliance_sensor_silent_seconds"].samples}
    assert silent == {"Pressure": 30.0, "Temperature": 30.0}


def test_metrics_name_clash_keeps_exposition_valid(store, accounts):
    class Clash:
        def status(self):
            return {"site": "s", "uptime_s": 5.0, "counters": {"uptime_seconds": 3, "weird-name!": 2, "9lives": 1}}

        def command(self, name, **kw):
            raise AssertionError("not called")

    text = viewer(Clash(), store.path, accounts).get("/metrics").get_data(as_text=True)
    fams = _families(text)  # the parser raises on an invalid exposition
    assert fams["appliance_weird_name"].samples[0].value == 2.0
    assert fams["appliance__9lives"].samples[0].value == 1.0
    assert fams["appliance_uptime_seconds"].samples[0].value in (3.0, 5.0)


def test_metrics_provider_is_used_when_given(book_appliance, store, accounts):
    app = create_app(book_appliance, store.path, metrics_provider=lambda: "custom_metric 42\n", accounts=accounts)
    r = signed_in(app, "vic", "viewer").get("/metrics")
    text = r.get_data(as_text=True)
    # The provider's text first, then the dashboard's alarm KPIs (web.kpi_source).
    assert r.status_code == 200 and text.startswith("custom_metric 42\n")
    assert "appliance_alarm_kpi_alarms_per_day" in _families(text)


# -- the pages ----------------------------------------------------------------------------
PAGES = ("/", "/assets/pump1", "/alarms", "/mitigation", "/model", "/system")


@pytest.mark.parametrize("path", PAGES)
def test_every_page_uses_only_local_assets(client, book_appliance, path):
    raise_alarm(book_appliance)
    r = client.get(path)
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    assert "/static/dashboard.css" in html and "/static/common.js" in html
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert 'data-user="ana"' in html and 'data-role="technician"' in html
    for src in re.findall(r'(?:src|href)="(/static/[^"?]+)', html):
        s = client.get(src)
        assert s.status_code == 200, src
        if "/vendor/" not in src:  # our own files: small, and nothing fetched from elsewhere
            assert len(s.data) < 40_000 and b"http://" not in s.data and b"https://" not in s.data, src
        s.close()


def test_the_chart_library_is_vendored_with_its_licence(client):
    r = client.get("/assets/pump1")
    assert "/static/vendor/uplot/uPlot.iife.min.js" in r.get_data(as_text=True)
    lic = client.get("/static/vendor/uplot/LICENSE")
    assert lic.status_code == 200 and b"MIT License" in lic.data
    lic.close()


def test_scores_and_alarms_carry_a_severity_not_just_a_ratio(client, book_appliance):
    from appliance.core.severity import band, severity

    raise_alarm(book_appliance, ratio=416.0)
    (a,) = client.get("/api/alarms").get_json()["alarms"]
    assert a["peak_ratio"] == pytest.approx(416.0)
    assert (a["peak_severity"], a["peak_band"]) == (severity(416.0), band(severity(416.0))) == (100, "critical")
    st = client.get("/api/status").get_json()["alarms"][0]
    assert st["peak_severity"] == 100
    (s,) = client.get("/api/scores?asset=pump1").get_json()["scores"]
    assert (s["severity"], s["band"]) == (100, "critical")
    scale = client.get("/api/severity").get_json()
    assert scale["threshold_severity"] == severity(1.0) and "threshold" in scale["explanation"]


def test_asset_trend_buckets_the_store_and_shades_alarm_episodes(client, book_appliance):
    now = time.time()
    for i in range(120):
        t = now - 120 + i
        for k, sensor in enumerate(("Current", "Pressure")):
            book_appliance.reading("pump1", sensor, t, float(i % 10) + k)
        book_appliance.score("pump1", t, 0.3 if i < 100 else 2.5)
    book_appliance.flush()
    body = client.get("/api/assets/pump1/trend?range=15m").get_json()
    assert body["source"] == "store" and body["bucket_s"] == 1.5 and body["threshold_severity"] == 50
    cur = body["sensors"]["Current"]
    assert 60 <= len(cur["t"]) <= 120 and min(cur["min"]) == 0.0 and max(cur["max"]) == 9.0
    assert all(lo <= m <= hi for lo, m, hi in zip(cur["min"], cur["mean"], cur["max"]))
    assert body["sensors"]["Temperature"]["t"] == []  # no readings: an empty series, not an error
    assert max(body["score"]["severity"]) == 82 and min(body["score"]["severity"]) == 19
    (ep,) = body["episodes"]
    assert ep["end"] is None and ep["severity"] == 82 and body["latest"]["severity"] == 82
    assert body["top_sensors"][0] == {"sensor": "Current", "share": 0.8}
    r = client.get("/api/assets/pump1/trend?range=2y")
    assert r.status_code == 400 and r.get_json()["field"] == "range"
    assert client.get("/api/assets/nosuch/trend?range=7d").get_json()["score"]["t"] == []


class LocalHistoryOutput:
    """The history output's shape as the dashboard reads it (``output("history").history.local``)."""

    def __init__(self, local):
        self.history = type("History", (), {"local": local})()

    def status(self) -> dict:
        return {"local": self.history.local.stats()}


def test_asset_trend_reads_the_local_history_minutes_before_the_store_and_past_six_hours(
        client, book_appliance, tmp_path):
    from appliance.core import Reading, Score
    from appliance.history.local import LocalHistory

    local = LocalHistory(tmp_path / "local.db", raw_retention_s=86400, rollup_retention_s=30 * 86400)
    book_appliance.outputs["history"] = LocalHistoryOutput(local)
    now = time.time()
    t0 = now - 3 * 3600  # three hours at 1 Hz in the local history's minutes
    readings = [Reading("pump1", "Current", t0 + i, float(i % 60)) for i in range(3 * 3600)]
    scores = [Score("pump1", t0 + i, 2.0 if 3 * 3600 - 300 <= i < 3 * 3600 - 240 else 0.2, 1.0,
                    {"Current": 1.0}, "m1") for i in range(3 * 3600)]
    local.insert(readings, scores, now=now)
    try:
        # The store holds no reading: every range comes from the minutes.
        hour = client.get("/api/assets/pump1/trend?range=1h").get_json()
        assert hour["source"] == "local history (1m)" and hour["bucket_s"] == 6.0
        assert 59 <= len(hour["sensors"]["Current"]["t"]) <= 61  # the minutes overlapping the hour
        # The store holds two minutes from now on (received now): raw from it there, the minutes before.
        for i in range(120):
            book_appliance.reading("pump1", "Current", now + 1 + i, 100.0 + i % 2)
        book_appliance.flush()
        quarter = client.get(f"/api/assets/pump1/trend?range=15m&until={now + 600}").get_json()
        assert quarter["source"] == "local history (1m) and the store" and quarter["bucket_s"] == 1.5
        cur = quarter["sensors"]["Current"]
        recent = [m for t, m in zip(cur["t"], cur["mean"]) if t > now + 61]  # past the first minute received
        older = [m for t, m in zip(cur["t"], cur["mean"]) if t < now - 90]
        assert len(recent) > 30 and all(100.0 <= m <= 101.0 for m in recent)  # the store's buckets of 1.5 s
        assert 2 <= len(older) <= 4 and all(m == pytest.approx(29.5) for m in older)  # a point per local minute
        assert max(quarter["score"]["severity"]) == 75
        # Past six hours the rollups alone: each minute's mean, min and max, and the minute's worst score.
        day = client.get("/api/assets/pump1/trend?range=24h").get_json()
        assert day["source"] == "local history (1m)" and day["bucket_s"] == 144.0
        cur = day["sensors"]["Current"]
        assert 70 <= len(cur["t"]) <= 80 and min(cur["min"]) == 0.0 and max(cur["max"]) == 59.0
        # Whole minutes of a 0..59 ramp; only the first and last bucket hold a part of one.
        assert all(m == pytest.approx(29.5) for m in cur["mean"][1:-1]), cur["mean"]
        assert max(day["score"]["severity"]) == 75  # one alarm minute is not averaged away
        assert day["sensors"]["Pressure"]["t"] == []
    finally:
        local.close()


def test_alarm_journal_interleaves_transitions_mode_changes_and_comments(client, app, book_appliance):
    alarm_id = raise_alarm(book_appliance)
    client.post("/api/alarms/pump1/ack", json={"note": "on my way"})
    r = client.post(f"/api/alarms/{alarm_id}/comments", json={"text": "bearing at 80 degC, greased"})
    assert r.status_code == 200 and r.get_json()["records"][0]["user"] == "ana"
    client.post("/api/alarms/pump1/shelve", json={"duration_s": 600, "note": "waiting for parts"})
    entries = client.get(f"/api/alarms/{alarm_id}/journal").get_json()["entries"]
    assert [(e["type"], e["what"].split()[0], e["user"]) for e in entries] == [
        ("transition", "raised", None), ("transition", "acknowledged", "ana"), ("comment", "comment", "ana"),
        ("mode", "shelved", "ana")]
    assert entries[2]["note"] == "bearing at 80 degC, greased" and entries[3]["shelved_until"] > time.time()
    assert client.post(f"/api/alarms/{alarm_id}/comments", json={"text": "  "}).status_code == 400
    assert client.post("/api/alarms/0123456789abcdef/comments", json={"text": "x"}).status_code == 404
    assert client.get("/api/alarms/0123456789abcdef/journal").status_code == 404


def test_model_and_system_pages_data(client, book_appliance):
    raise_alarm(book_appliance)
    m = client.get("/api/model").get_json()
    assert m["model"]["version"] == "test-model-1" and m["changes"] == [] and m["model"]["bundle"] is None
    s = client.get("/api/system").get_json()
    assert s["site"] == "test-site" and s["store_rows"]["alarms"] == 1
    assert s["process"]["process_rss_bytes"] > 10_000_000 and s["live"]["max_streams"] >= 1
