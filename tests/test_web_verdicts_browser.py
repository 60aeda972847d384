"""The verdict controls, the KPI page and the alarm-load banner in a real headless Chromium, over the web
tests' stand-in appliance (a real alarm book and store): who may give a verdict, a verdict a colleague
changed meanwhile refused on the page, the history on the asset page, the spans of the KPI page, and no
request leaving the gateway (everything the pages load is served by the dashboard itself)."""

from __future__ import annotations

import re
import time

import pytest
from playwright import sync_api

from appliance.accounts import Accounts
from appliance.core import EventKind
from tests.support.browser import CHROMIUM, HEADLESS_ARGS
from tests.support.web import FAST_HASHER, PASSWORD, BookAppliance, make_user
from web.app import create_app
from web.config import KpiConfig, WebConfig
from web.server import serve

pytestmark = pytest.mark.integration  # a real headless Chromium

TIMEOUT_MS = 30_000  # generous: two cores shared with the rest of the suite
expect = sync_api.expect


def cycle(ba: BookAppliance, asset: str, t: float) -> str:
    alarm_id = ba.score(asset, t, 3.0)[-1].alarm.id
    assert EventKind.CLEARED in [e.kind for e in ba.score(asset, t + 20, 0.1)]
    return alarm_id


@pytest.fixture
def served(book_appliance, store, tmp_path):
    now = time.time()
    ids = [cycle(book_appliance, "pump1", now - 500 + 90 * k) for k in range(3)]  # chattering
    ids.append(book_appliance.score("pump2", now - 60, 3.0)[-1].alarm.id)       # active
    book_appliance.flush()
    accounts = Accounts(tmp_path / "accounts.db", hasher=FAST_HASHER)
    for name, role in (("ana", "technician"), ("bo", "technician"), ("vic", "viewer")):
        make_user(accounts, name, role)
    app = create_app(book_appliance, store.path, accounts=accounts, config=WebConfig(kpis=KpiConfig(cache_s=0)))
    app.config["DASHBOARD_POLL_MS"] = 500
    handle = serve(app, "127.0.0.1", 0)
    yield handle, ids
    handle.stop()


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=HEADLESS_ARGS, headless=True)
        yield b
        b.close()


def signed_in_page(browser, url: str, name: str, path: str):
    pg = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    pg.requests, pg.problems = [], []
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.on("pageerror", lambda e: pg.problems.append(str(e)))
    pg.goto(url + path)
    pg.fill("#name", name)
    pg.fill("#password", PASSWORD)
    pg.click("#sign-in")
    return pg


def open_journal(pg, alarm_id: str):
    pg.locator(f'tr.alarm-row[data-alarm-id="{alarm_id}"] .btn-open').click()
    return pg.locator(f'tr.detail-row[data-alarm-id="{alarm_id}"]')


def test_a_viewer_sees_the_verdict_but_may_not_give_one(served, browser):
    handle, ids = served
    pg = signed_in_page(browser, handle.url, "vic", "/alarms")
    detail = open_journal(pg, ids[0])
    expect(detail.locator(".v-kind")).to_be_disabled()
    expect(detail.locator(".btn-verdict")).to_be_disabled()
    expect(detail.locator(".btn-verdict")).to_have_attribute("title", "Needs the technician role")
    assert pg.problems == []


def test_a_verdict_changed_meanwhile_is_refused_on_the_page_and_the_history_shows_both(served, browser):
    handle, ids = served
    ana = signed_in_page(browser, handle.url, "ana", "/alarms")
    bo = signed_in_page(browser, handle.url, "bo", "/alarms")
    detail = open_journal(ana, ids[0])
    detail.locator(".v-kind").select_option("false_alarm")
    # Bo gives his verdict while Ana's form is open.
    bo_detail = open_journal(bo, ids[0])
    bo_detail.locator(".v-kind").select_option("fault")
    expect(bo_detail.locator(".v-cause")).to_be_enabled()
    bo_detail.locator(".v-cause").select_option("cavitation")
    bo_detail.locator(".btn-verdict").click()
    expect(bo.locator(f'tr.alarm-row[data-alarm-id="{ids[0]}"] .verdict')).to_have_text("fault (cavitation)")
    detail.locator(".btn-verdict").click()
    expect(ana.locator("#toast")).to_have_text(re.compile(r"changed meanwhile: bo said fault \(cavitation\)"))
    # Her page now shows Bo's verdict; she gives hers again, knowingly.
    detail = ana.locator(f'tr.detail-row[data-alarm-id="{ids[0]}"]')
    expect(detail.locator(".verdict-now")).to_contain_text("fault (cavitation)")
    detail.locator(".v-kind").select_option("false_alarm")
    detail.locator(".btn-verdict").click()
    row = ana.locator(f'tr.alarm-row[data-alarm-id="{ids[0]}"]')
    expect(row.locator(".verdict")).to_have_text("false alarm")
    expect(row.locator(".disputed")).to_be_visible()
    # The asset page: the current verdict, who and when, and the earlier one under it.
    ana.goto(handle.url + "/assets/pump1")
    cell = ana.locator(f'#asset-alarms tr[data-alarm-id="{ids[0]}"]')
    expect(cell.locator(".verdict")).to_have_text("false alarm")
    expect(cell.locator(".verdict-history li")).to_have_text([re.compile(r"bo: fault \(cavitation\)")])
    expect(ana.locator("#asset-load")).to_have_text(re.compile(r"Chattering: 3 raise/clear cycles"))
    assert ana.problems == [] and bo.problems == []
    for pg in (ana, bo):
        assert all(u.startswith(handle.url) for u in pg.requests), "a request left the gateway"


def test_the_kpi_page_switches_spans_and_the_banner_names_the_chattering_pump(served, browser):
    handle, ids = served
    pg = signed_in_page(browser, handle.url, "vic", "/kpis")
    expect(pg.locator("#kpi-page")).to_have_attribute("data-loaded", "1")
    expect(pg.locator("#k-alarms")).to_have_text("4")
    expect(pg.locator("#k-chatter")).to_have_text("1")
    expect(pg.locator("#load-chatter")).to_have_text(re.compile(r"Chattering: pump1 \(3 raise/clear cycles\)"))
    expect(pg.locator("#load-flood")).to_be_hidden()
    pg.click('.span-btn[data-span="30d"]')
    expect(pg.locator("#kpi-page")).to_have_attribute("data-span", "30d")
    expect(pg.locator("#k-per-day")).to_have_text("0.13")  # 4 alarms in 30 days
    expect(pg.locator('#kpi-assets tr[data-asset="pump1"]')).to_contain_text("1 burst(s)")
    assert pg.problems == []
    assert all(u.startswith(handle.url) for u in pg.requests), "a request left the gateway"
