"""Verdicts and alarm KPIs through the dashboard's API: who may give a verdict, how it is refused,
how a change by someone else is caught, and the KPIs, the live load and /metrics read back.

The appliance is the web tests' stand-in over a real alarm book and a real store
(tests/support/web.py), so a verdict given here really goes through the store's
``set_verdict`` command and is read back from SQLite.
"""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.core import EventKind
from tests.support.web import BookAppliance, signed_in
from web.app import create_app
from web.config import KpiConfig, WebConfig


@pytest.fixture
def app(book_appliance, store, accounts):
    # No cache: each read sees what the test just did.
    return create_app(book_appliance, store.path, accounts=accounts, config=WebConfig(kpis=KpiConfig(cache_s=0)))


def raise_alarm(ba: BookAppliance, asset: str, t: float) -> str:
    events = ba.score(asset, t, 3.0)  # (an earlier one returned to normal unacknowledged is superseded)
    assert events[-1].kind is EventKind.RAISED
    ba.flush()
    return events[-1].alarm.id


def cycle(ba: BookAppliance, asset: str, t: float) -> str:
    """One raise and clear of ``asset``'s alarm at source time ``t``."""
    alarm_id = raise_alarm(ba, asset, t)
    assert EventKind.CLEARED in [e.kind for e in ba.score(asset, t + 20, 0.1)]
    ba.flush()
    return alarm_id


def test_a_technician_gives_a_verdict_and_an_engineer_changes_it_a_viewer_may_not(app, book_appliance):
    alarm_id = raise_alarm(book_appliance, "pump1", time.time() - 60)
    tech, eng, vic = signed_in(app, "ana", "technician"), signed_in(app, "eve", "engineer"), signed_in(app, "vic", "viewer")
    r = vic.post(f"/api/alarms/{alarm_id}/verdict", json={"verdict": "false_alarm"})
    assert r.status_code == 403
    r = tech.post(f"/api/alarms/{alarm_id}/verdict",
                  json={"verdict": "fault", "cause": "bearing", "note": "grease gone", "replaces": None})
    assert r.status_code == 200, r.get_json()
    (given,) = r.get_json()["records"]
    assert (given["user"], given["verdict"], given["cause"], given["note"]) == ("ana", "fault", "bearing", "grease gone")
    seq = vic.get(f"/api/alarms/{alarm_id}/verdicts").get_json()["verdict"]["seq"]
    r = eng.post(f"/api/alarms/{alarm_id}/verdict", json={"verdict": "maintenance", "replaces": seq})
    assert r.status_code == 200, r.get_json()
    # Every verdict is kept, the latest labels the episode; two people disagreed.
    body = vic.get(f"/api/alarms/{alarm_id}/verdicts").get_json()
    assert [(v["user"], v["verdict"]) for v in body["verdicts"]] == [("ana", "fault"), ("eve", "maintenance")]
    assert body["verdict"]["user"] == "eve" and body["disputed"] is True
    (row,) = vic.get("/api/alarms?asset=pump1").get_json()["alarms"]
    assert row["verdict"]["verdict"] == "maintenance" and len(row["verdicts"]) == 2 and row["disputed"]
    entries = vic.get(f"/api/alarms/{alarm_id}/journal").get_json()["entries"]
    assert [(e["what"], e["user"]) for e in entries if e["type"] == "verdict"] == [
        ("verdict fault (bearing)", "ana"), ("verdict maintenance", "eve")]


def test_a_verdict_changed_meanwhile_is_refused_with_what_the_colleague_said(app, book_appliance):
    alarm_id = raise_alarm(book_appliance, "pump1", time.time() - 60)
    ana, bo = signed_in(app, "ana", "technician"), signed_in(app, "bo", "technician")
    assert ana.post(f"/api/alarms/{alarm_id}/verdict", json={"verdict": "false_alarm", "replaces": None}).status_code == 200
    # Bo's page still showed no verdict.
    r = bo.post(f"/api/alarms/{alarm_id}/verdict", json={"verdict": "fault", "cause": "sensor", "replaces": None})
    assert r.status_code == 409
    assert r.get_json()["field"] == "replaces" and "ana said false alarm" in r.get_json()["error"]
    assert [v["user"] for v in bo.get(f"/api/alarms/{alarm_id}/verdicts").get_json()["verdicts"]] == ["ana"]


@pytest.mark.parametrize("body, field, status", [
    ({"verdict": "broken"}, "verdict", 400),
    ({}, "verdict", 400),
    ({"verdict": "fault"}, "cause", 400),
    ({"verdict": "fault", "cause": "gremlins"}, "cause", 400),
    ({"verdict": "fault", "cause": 3}, "cause", 400),
    ({"verdict": "false_alarm", "replaces": "x"}, "replaces", 400),
])
def test_bad_verdicts_are_400_naming_the_field(app, book_appliance, body, field, status):
    alarm_id = raise_alarm(book_appliance, "pump1", time.time() - 60)
    r = signed_in(app).post(f"/api/alarms/{alarm_id}/verdict", json=body)
    assert (r.status_code, r.get_json().get("field")) == (status, field), r.get_json()


def test_a_verdict_on_an_unknown_alarm_is_404_and_the_causes_are_listed(app):
    c = signed_in(app)
    assert c.post("/api/alarms/nope/verdict", json={"verdict": "false_alarm"}).status_code == 404
    body = c.get("/api/verdicts/causes").get_json()
    assert body["verdicts"] == ["fault", "false_alarm", "maintenance"] and "bearing" in body["causes"]


def test_kpis_count_alarms_verdicts_and_acknowledgements(app, book_appliance):
    now = time.time()
    a1 = cycle(book_appliance, "pump1", now - 3000)
    a2 = cycle(book_appliance, "pump2", now - 2000)
    raise_alarm(book_appliance, "pump1", now - 100)
    tech = signed_in(app)
    assert tech.post("/api/alarms/pump1/ack", json={}).status_code == 200
    tech.post(f"/api/alarms/{a1}/verdict", json={"verdict": "false_alarm"})
    tech.post(f"/api/alarms/{a2}/verdict", json={"verdict": "fault", "cause": "cavitation"})
    rep = signed_in(app, "vic", "viewer").get("/api/kpis").get_json()
    day = rep["spans"]["24h"]
    g = day["gateway"]
    assert (g["alarms"], g["per_day"], g["false_alarm_share"], g["without_verdict"], g["acknowledged"]) == \
        (3, 3.0, 0.5, 1, 1)
    assert g["ack_median_s"] is not None and g["ack_median_s"] >= 0
    assert day["assets"]["pump1"]["alarms"] == 2 and day["assets"]["pump2"]["verdicts"] == {"fault": 1}
    assert day["bad_actors"][0] == {"asset": "pump1", "alarms": 2, "share": 0.667}
    assert rep["spans"]["30d"]["gateway"]["per_day"] == pytest.approx(0.1)
    assert day["floods"] == [] and day["chattering_assets"] == [] and rep["live"]["flood"] is False


def test_chattering_and_a_flood_show_in_the_live_load_and_in_metrics(app, book_appliance):
    now = time.time()
    for k in range(3):  # pump1 raised and cleared three times within ten minutes
        cycle(book_appliance, "pump1", now - 400 + 60 * k)
    vic = signed_in(app, "vic", "viewer")
    live = vic.get("/api/alarm-load").get_json()
    assert [c["asset"] for c in live["chattering"]] == ["pump1"] and live["flood"] is False
    for k in range(9):  # ten alarms within ten minutes across the gateway: a flood
        raise_alarm(book_appliance, f"fan{k}", now - 300 + k)
    live = vic.get("/api/alarm-load").get_json()
    assert live["flood"] is True and live["raised_in_flood_window"] == 12
    day = vic.get("/api/kpis").get_json()["spans"]["24h"]
    assert day["chattering_assets"] == ["pump1"] and len(day["floods"]) == 1 and day["floods"][0]["alarms"] == 12
    text = vic.get("/metrics").get_data(as_text=True)
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["appliance_alarm_flood_active"].samples[0].value == 1.0
    assert [s.labels["asset"] for s in fams["appliance_alarm_chattering"].samples] == ["pump1"]
    per_day = {(s.labels["span"], s.labels["scope"], s.labels["asset"]): s.value
               for s in fams["appliance_alarm_kpi_alarms_per_day"].samples}
    assert per_day[("24h", "gateway", "")] == 12.0 and per_day[("24h", "asset", "pump1")] == 3.0
    # The status' metrics are still there.
    assert "appliance_info" in fams


def test_the_kpi_page_and_the_banner_are_served(app):
    c = signed_in(app, "vic", "viewer")
    page = c.get("/kpis").get_data(as_text=True)
    assert 'id="kpi-tiles"' in page and "kpis.js" in page and 'id="alarm-load"' in page
    assert 'href="/kpis"' in c.get("/alarms").get_data(as_text=True)
