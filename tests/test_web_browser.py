"""The dashboard in a real headless Chromium (Debian's, never a downloaded one), over a real store."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest
from playwright import sync_api

from web.app import create_app
from web.server import serve
from appliance.core import DeadLetterCode
from appliance.store.store import StoreReader
from tests.support.web import BookAppliance

pytestmark = pytest.mark.integration  # a real headless Chromium

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path("/tmp/dashboard.png")
TIMEOUT_MS = 30_000  # generous: two cores shared with the rest of the suite

expect = sync_api.expect


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is absent (apt-get install -y chromium); the browser tests need it")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def populate(ba: BookAppliance) -> None:
    """Three pumps as a technician would find them: one alarm new, one already seen, one fine."""
    now = time.time()
    for i in range(60):
        t = now - 60 + i
        wobble = 0.08 * math.sin(i / 3)
        ba.score("pump2", t, 0.35 + wobble, top="Pressure")
        ba.score("pump3", t, 0.4 + wobble if i < 30 else 1.6 + wobble, top="Temperature")
        if i < 50:
            ba.score("pump1", t, 0.3 + wobble)
        else:
            ba.score("pump1", t, 1.2 + 0.15 * (i - 50))  # a bearing going: raised, then critical peak
    ba.command("acknowledge", asset="pump3", user="bo", note="temperature known high")
    for s in ("Current", "Pressure", "Temperature"):
        ba.reading("pump2", s, now - 30, 1.0)
    ba.watchdog_clock.t = 25.0
    for s in ("Current", "Pressure"):
        ba.reading("pump2", s, now, 1.0)
    ba.watchdog.check()  # pump2's Temperature is now silent
    ba.dead_letter("mqtt:plant/pump1/Current", b'{"ts": 1700000000, "value": NaN}', DeadLetterCode.NON_FINITE,
                   "value is not finite")
    ba.dead_letter("mqtt:plant/pump9/telemetry", b"\x00\x01garbage", DeadLetterCode.BAD_JSON, "invalid start byte")
    ba.flush()


@pytest.fixture
def served(book_appliance, store):
    populate(book_appliance)
    handle = serve(create_app(book_appliance, store.path), "127.0.0.1", 0)
    yield handle
    handle.stop()


@pytest.fixture
def page(browser, served):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.requests = []
    pg.problems = []
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.on("console", lambda m: pg.problems.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.problems.append(str(e)))
    pg.goto(served.url + "/")
    yield pg
    context.close()


def test_acknowledge_from_the_page(page, served, book_appliance, store):
    card = page.locator('.card[data-asset="pump1"]')
    expect(card).to_have_attribute("data-state", "unacknowledged")
    expect(card.locator(".state-label")).to_have_text("Unacknowledged")
    expect(card.locator(".level-badge")).to_have_text("critical")
    expect(card.locator(".f-peak")).to_have_text(re.compile(r"^\d+\.\d\d × threshold$"))
    expect(card.locator(".f-top")).to_contain_text("Current")
    expect(card.locator(".f-end")).to_have_text("still active")
    expect(card.locator(".spark-line")).to_have_attribute("points", re.compile(r"\d+(\.\d+)?,\d"))
    expect(card.locator(".spark-cap")).to_contain_text("last 60 windows")

    expect(page.locator('.card[data-asset="pump3"]')).to_have_attribute("data-state", "acknowledged")
    expect(page.locator('.card[data-asset="pump2"]')).to_have_attribute("data-state", "normal")
    expect(page.locator("#site")).to_have_text("test-site")
    expect(page.locator("#model-version")).to_have_text("test-model-1")
    expect(page.locator("#c-windows")).to_have_text("180")
    expect(page.locator("#c-dead")).to_have_text("2")
    expect(page.locator("#silent-list")).to_contain_text("pump2 / Temperature")
    expect(page.locator("#dead-rows")).to_contain_text("non_finite: value is not finite")
    expect(page.locator("#dead-rows")).to_contain_text("bad_json: invalid start byte")
    expect(page.locator("#alarm-rows tr")).to_have_count(2)
    expect(page.locator("#link")).to_have_text("Live")

    page.screenshot(path=str(SCREENSHOT.with_name("dashboard-unacknowledged.png")), full_page=True)

    # Without a name the page refuses before anything reaches the gateway.
    ack = card.get_by_role("button", name="Acknowledge")
    ack.click()
    expect(page.locator("#toast")).to_contain_text("Enter your name")
    assert book_appliance.commands == [("acknowledge", {"asset": "pump3", "user": "bo",
                                                        "note": "temperature known high"})]

    page.fill("#user", "ana")
    page.fill("#note", "bearing noise, maintenance called")
    ack.click()
    expect(card).to_have_attribute("data-state", "acknowledged")
    expect(card.locator(".state-label")).to_have_text("Acknowledged")
    expect(card.locator(".f-acked")).to_have_text("ana")
    expect(ack).to_be_disabled()
    expect(page.locator("#toast")).to_contain_text("Acknowledged: pump1 (ana)")
    expect(page.locator("#note")).to_have_value("")

    # The command went through the real alarm book and into the store.
    assert book_appliance.book.current("pump1").acked_by == "ana"
    reader = StoreReader(store.path)
    (alarm,) = [a for a in reader.alarms() if a["asset"] == "pump1"]
    assert (alarm["state"], alarm["acked_by"]) == ("acknowledged", "ana")
    acks = [e for e in reader.alarm_events(alarm["id"]) if e["kind"] == "acknowledged"]
    assert [(e["user"], e["note"]) for e in acks] == [("ana", "bearing noise, maintenance called")]

    # Wait for a poll after the change so the screenshot shows the steady page.
    expect(page.locator("#alarm-rows")).to_contain_text("ana")
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    assert all(u.startswith(served.url + "/") or u.startswith("data:") for u in page.requests), page.requests
    assert page.problems == []


def test_shelve_and_return_to_service_from_the_page(page, book_appliance):
    page.fill("#user", "bo")
    card = page.locator('.card[data-asset="pump1"]')
    expect(card).to_have_attribute("data-state", "unacknowledged")
    card.locator(".shelve-dur").select_option("14400")
    before = time.time()
    card.get_by_role("button", name="Shelve").click()
    expect(card).to_have_attribute("data-state", "shelved")
    after = time.time()
    expect(card.locator(".f-mode")).to_contain_text("Shelved until")
    # Who shelved it comes from the store's mode changes.
    expect(card.locator(".f-mode")).to_contain_text(" by bo")
    until = book_appliance.book.current("pump1").shelved_until
    assert before + 14400 <= until <= after + 14400
    # Someone else shelves it again from another tablet: the next poll names them.
    book_appliance.command("shelve", asset="pump1", user="carla", duration_s=900, note="extended")
    expect(card.locator(".f-mode")).to_contain_text(" by carla")
    expect(card.locator(".f-mode")).to_have_attribute("title", "extended")

    rts = card.get_by_role("button", name="Return to service")
    expect(rts).to_be_enabled()
    rts.click()
    expect(card).to_have_attribute("data-state", "unacknowledged")
    expect(rts).to_be_disabled()
    expect(card.locator(".f-mode")).to_have_text("In service")
    assert [c[0] for c in book_appliance.commands[-2:]] == ["shelve", "set_mode"]
    assert page.problems == []


def test_a_refused_command_is_shown_not_swallowed(page, book_appliance):
    card = page.locator('.card[data-asset="pump1"]')
    expect(card).to_have_attribute("data-state", "unacknowledged")
    # Someone else acknowledges from another tablet before this page's next poll.
    book_appliance.command("acknowledge", asset="pump1", user="carla")
    page.fill("#user", "ana")
    # The button may already be disabled if a poll arrived; force the stale click either way.
    card.get_by_role("button", name="Acknowledge").evaluate("b => { b.disabled = false; b.click(); }")
    expect(page.locator("#toast")).to_contain_text("no unacknowledged alarm")
    expect(card.locator(".f-acked")).to_have_text("carla")


def test_gateway_gone_shows_offline(page, served):
    expect(page.locator("#link")).to_have_text("Live")
    served.stop()
    expect(page.locator("#offline")).to_be_visible()
    expect(page.locator("#offline")).to_contain_text("out of date")
    expect(page.locator("#link")).to_have_text("Offline")
