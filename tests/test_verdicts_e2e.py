"""The technician's loop on the real runtime: the pump simulator's faults over a real Mosquitto, the trained
detector raising and clearing real alarms, verdicts given on the dashboard by a signed-in technician in
headless Chromium, the KPIs read back from the page, the API and /metrics, and the chattering pump and the
alarm flood shown on every page while they last.

The pumps' data is published with its own timestamps (a few simulated minutes, sent as fast as the broker
takes them), so the alarms are a few minutes old when the page opens. The live windows of the chattering
and flood rules are widened to 30 min here (``[web.kpis]``) so that a slow, shared machine cannot let the
flood end before the page shows it; the counts that make them (3 cycles, 10 alarms) are the defaults.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from playwright import sync_api
from prometheus_client.parser import text_string_to_metric_families

from appliance.accounts import Accounts
from appliance.detector.train import TrainSettings, train_bundle
from appliance.runtime import start_web
from firmware_sim.pump import PumpModel
from tests.support.appliance import Publisher, RunningAppliance, make_config
from tests.support.browser import CHROMIUM, HEADLESS_ARGS
from tests.support.web import FAST_HASHER, PASSWORD, make_user
from web.client import DashboardClient

pytestmark = pytest.mark.integration  # a real Mosquitto, the whole appliance, headless Chromium

TIMEOUT_MS = 60_000  # generous: two cores shared with the rest of the suite
expect = sync_api.expect
OTHERS = [f"pump{k}" for k in range(2, 9)]  # seven more pumps, one fault each: with pump1's three, a flood
CYCLE_S = 65        # pump1: a valve blockage of FAULT_S seconds every CYCLE_S seconds, three times
FAULT_S = 15
SPAN_S = 330        # simulated seconds of data per pump, ending a few seconds before the test's start
SENSORS = 8


def pump_bundle(out: Path) -> Path:
    """A small model of the pump simulator's normal running at 1 Hz (a few seconds to train)."""
    pump = PumpModel(seed=7)
    rows = []
    for _ in range(1500):
        values = pump.step(1.0)
        rows.append(list(values.values()))
    sensors = list(values)
    ts = 1.7e9 + np.arange(len(rows), dtype=float)
    return train_bundle(np.array(rows), sensors, out, TrainSettings(period_s=1.0, window=8, hidden=(16, 4),
                                                                      max_iter=40, seed=2), ts=ts)


def fault_times(asset: str) -> list[int]:
    """Offsets (simulated seconds into the span) where a fault starts on ``asset``."""
    if asset == "pump1":
        return [20 + k * CYCLE_S for k in range(3)]
    return [170]


def publish_plant(pub: Publisher, t0: float) -> None:
    """Every pump's readings, one telemetry message per second of simulated time, faults injected."""
    for seed, asset in enumerate(["pump1", *OTHERS], start=11):
        pump = PumpModel(seed=seed)
        starts = fault_times(asset)
        for i in range(SPAN_S):
            if i in starts:
                pump.inject("valve_blockage", 2.0)
            elif any(i == s + FAULT_S for s in starts):
                pump.clear_faults()
            values = pump.step(1.0)
            pub.publish(f"plant/{asset}/telemetry", {"ts": t0 + i, "values": values})
    pub.wait_all(timeout=300)


def raised(ra: RunningAppliance) -> list:
    return [e.alarm for e in ra.events if getattr(e, "kind", None) == "raised"]


def pump1_cycled(ra: RunningAppliance) -> bool:
    """Pump1's three faults raised and cleared (the detector may add an alarm of its own on noise)."""
    cleared = {e.alarm.id for e in ra.events if getattr(e, "kind", None) == "cleared"}
    return sum(a.asset == "pump1" and a.id in cleared for a in raised(ra)) >= 3


def give_verdict(pg, alarm_id: str, verdict: str, cause: str | None = None) -> None:
    """Open the alarm's journal, give the verdict, and wait until the row shows it."""
    row = pg.locator(f'tr.alarm-row[data-alarm-id="{alarm_id}"]')
    row.locator(".btn-open").click()
    detail = pg.locator(f'tr.detail-row[data-alarm-id="{alarm_id}"]')
    detail.locator(".v-kind").select_option(verdict)
    if cause:
        detail.locator(".v-cause").select_option(cause)
    detail.locator(".btn-verdict").click()
    expect(row.locator(".verdict")).to_have_text(re.compile(verdict.replace("_", " ")))
    row.locator(".btn-open").click()  # close it again


def test_faults_verdicts_kpis_chattering_and_a_flood_on_the_real_runtime(tmp_path, mosquitto, request):
    bundle = pump_bundle(tmp_path / "bundle")
    cfg = make_config(tmp_path, mosquitto.port, bundle,
                      web__kpis={"cache_s": 0.0, "flood_window_s": 1800.0, "chatter_window_s": 1800.0})
    accounts = Accounts(cfg.path("accounts.db"), hasher=FAST_HASHER)
    make_user(accounts, "ana", "technician")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    t0 = time.time() - SPAN_S - 5
    with RunningAppliance(cfg) as ra:
        pub = Publisher(mosquitto.port)
        publish_plant(pub, t0)
        pub.close()
        total = SPAN_S * SENSORS * (1 + len(OTHERS))
        ra.wait_until(lambda: ra.counter("readings") == total, timeout=300, what=f"{total} readings")
        # Every window scored (the grid closes a row when the next one comes: the last row stays open).
        windows = (SPAN_S - 1 - (ra.app.detector.window - 1)) * (1 + len(OTHERS))
        ra.wait_until(lambda: ra.counter("windows_scored") == windows, timeout=300, what=f"{windows} windows")
        ra.wait_until(lambda: pump1_cycled(ra), timeout=300, what="pump1's three alarms raised and cleared")
        assert ra.app.store.flush()
        alarms = raised(ra)
        n = len(alarms)  # ten injected faults, and any alarm the detector raised on noise
        pump1 = [a.id for a in alarms if a.asset == "pump1"]
        assert n >= 10 and {a.asset for a in alarms} == {"pump1", *OTHERS}
        web = start_web(ra.app, "127.0.0.1", 0)
        try:
            with sync_api.sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=HEADLESS_ARGS, headless=True)
                try:
                    pg = browser.new_page(viewport={"width": 1280, "height": 900})
                    pg.set_default_timeout(TIMEOUT_MS)
                    expect.set_options(timeout=TIMEOUT_MS)
                    problems: list[str] = []
                    pg.on("pageerror", lambda e: problems.append(str(e)))
                    pg.goto(web.url + "/alarms")
                    pg.fill("#name", "ana")
                    pg.fill("#password", PASSWORD)
                    pg.click("#sign-in")
                    expect(pg.locator("tr.alarm-row")).to_have_count(n)
                    # The flood and the chattering pump, on the banner of every page.
                    banner = pg.locator("#alarm-load")
                    expect(banner).to_be_visible()
                    expect(pg.locator("#load-flood")).to_have_text(re.compile(rf"Alarm flood: {n} alarms"))
                    expect(pg.locator("#load-chatter")).to_have_text(re.compile(r"Chattering: pump1 \(\d+ raise/clear"))
                    pg.screenshot(path=str(shots / "alarms-flood.png"))
                    give_verdict(pg, pump1[0], "fault", "process_upset")
                    give_verdict(pg, pump1[1], "false_alarm")
                    give_verdict(pg, pump1[2], "false_alarm")
                    other = [a.id for a in alarms if a.asset == "pump2"][-1]
                    give_verdict(pg, other, "maintenance")
                    # Pump2's alarm returned to normal unacknowledged: acknowledged from its journal.
                    row = pg.locator(f'tr.alarm-row[data-alarm-id="{other}"]')
                    row.locator(".btn-open").click()
                    pg.locator(f'tr.detail-row[data-alarm-id="{other}"] .btn-ack').click()
                    expect(row.locator("td").nth(7)).to_have_text("ana")  # acknowledged by
                    pg.screenshot(path=str(shots / "alarms-verdicts.png"))

                    # The KPI page reads them back.
                    pg.goto(web.url + "/kpis")
                    expect(pg.locator("#kpi-page")).to_have_attribute("data-loaded", "1")
                    expect(pg.locator("#k-alarms")).to_have_text(str(n))
                    expect(pg.locator("#k-false")).to_have_text("50 %")   # 2 of the 4 verdicts
                    expect(pg.locator("#k-unjudged")).to_have_text(str(n - 4))
                    expect(pg.locator("#k-floods")).to_have_text("1")
                    expect(pg.locator("#k-chatter")).to_have_text("1")
                    expect(pg.locator("#k-ack-med")).not_to_have_text("–")
                    expect(pg.locator("#bad-actors tr").first).to_contain_text("pump1")
                    expect(pg.locator('#kpi-assets tr[data-asset="pump1"]')).to_contain_text("burst")
                    expect(pg.locator("#load-flood")).to_be_visible()
                    pg.screenshot(path=str(shots / "kpis.png"), full_page=True)

                    # The asset page: the chattering line, and the verdicts with their history.
                    pg.goto(web.url + "/assets/pump1")
                    expect(pg.locator("#asset-load")).to_have_text(re.compile(r"Chattering: \d+ raise/clear cycles"))
                    expect(pg.locator(f'#asset-alarms tr[data-alarm-id="{pump1[0]}"] .verdict')).to_have_text(
                        "fault (process upset)")
                    pg.screenshot(path=str(shots / "asset-pump1.png"), full_page=True)
                    assert problems == []
                finally:
                    browser.close()
            # The same figures through the API and /metrics, as a script or a scraper reads them.
            client = DashboardClient(web.url)
            client.login("ana", PASSWORD)
            status, rep = client.get("/api/kpis")
            assert status == 200
            g = rep["spans"]["24h"]["gateway"]
            assert (g["alarms"], g["without_verdict"], g["false_alarm_share"], g["acknowledged"]) == (n, n - 4, 0.5, 1)
            assert g["verdicts"] == {"fault": 1, "false_alarm": 2, "maintenance": 1}
            assert rep["spans"]["24h"]["chattering_assets"] == ["pump1"]
            status, text = client.get("/metrics")
            fams = {f.name: f for f in text_string_to_metric_families(text)}
            assert fams["appliance_alarm_flood_active"].samples[0].value == 1.0
            assert [s.labels["asset"] for s in fams["appliance_alarm_chattering"].samples] == ["pump1"]
            assert "appliance_readings" in fams  # the runtime's own metrics are still there
        finally:
            web.stop()
    print(f"\nscreenshots: {shots}")
