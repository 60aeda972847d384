"""The dashboard in a real headless Chromium (Debian's, never a downloaded one), served by waitress over a
real store: sign in, an alarm appearing live, acknowledging it, who may approve a mitigation, signing out.

Screenshots are saved as test artifacts under the session's pytest temporary directory (the path is
printed); the copies in docs/img/ are made by scripts/screenshots.py, not here.
"""

from __future__ import annotations

import math
import re
import time
from types import SimpleNamespace
from pathlib import Path

import pytest
from playwright import sync_api

from appliance.accounts import Accounts
from appliance.actions.decide import Decider
from appliance.core import DeadLetterCode
from appliance.lifecycle.config import BacktestBounds
from appliance.lifecycle.life import ModelLifecycle
from appliance.lifecycle.shadow import ModelCommandError, ShadowBounds
from appliance.store.store import StoreReader
from tests.support.detector import StandIn
from tests.support.loop import on_loop
from tests.support.web import FAST_HASHER, PASSWORD, BookAppliance, FakeMitigation, make_user
from web.app import create_app
from web.server import serve

pytestmark = pytest.mark.integration  # a real headless Chromium

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000  # generous: two cores shared with the rest of the suite

expect = sync_api.expect
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is absent (apt-get install -y chromium); the browser tests need it")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Where this run's screenshots go (a test artifact, kept with pytest's temporary directories)."""
    d = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots: {d}")
    return d


def populate(ba: BookAppliance, with_pump1_alarm: bool = True) -> None:
    """Three pumps as a technician would find them: one alarm new, one already seen, one fine."""
    now = time.time()
    for i in range(60):
        t = now - 60 + i
        wobble = 0.08 * math.sin(i / 3)
        for s, base in (("Current", 4.0), ("Pressure", 2.0), ("Temperature", 60.0)):
            ba.reading("pump1", s, t, base + wobble * (3 if i > 50 else 1))
        ba.score("pump2", t, 0.35 + wobble, top="Pressure")
        ba.score("pump3", t, 0.4 + wobble if i < 30 else 1.6 + wobble, top="Temperature")
        if i < 50 or not with_pump1_alarm:
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


class Served:
    def __init__(self, handle, app, appliance: BookAppliance, accounts: Accounts):
        self.handle, self.app, self.appliance, self.accounts = handle, app, appliance, accounts
        self.url = handle.url


def _serve(book_appliance, store, tmp_path, with_pump1_alarm=True, poll_ms=2000) -> Served:
    populate(book_appliance, with_pump1_alarm)
    book_appliance.mitigation = FakeMitigation(armed=True)
    accounts = Accounts(tmp_path / "accounts.db", hasher=FAST_HASHER)
    for name, role in (("ana", "technician"), ("eve", "engineer"), ("vic", "viewer")):
        make_user(accounts, name, role)
    app = create_app(book_appliance, store.path, accounts=accounts)
    app.config["DASHBOARD_POLL_MS"] = poll_ms
    return Served(serve(app, "127.0.0.1", 0), app, book_appliance, accounts)


@pytest.fixture
def served(book_appliance, store, tmp_path):
    s = _serve(book_appliance, store, tmp_path)
    yield s
    s.handle.stop()


def new_page(browser, served: Served):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.requests, pg.problems = [], []
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.on("console", lambda m: pg.problems.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.problems.append(str(e)))
    return pg


def sign_in(pg, served: Served, name: str, path: str = "/") -> None:
    pg.goto(served.url + path)
    expect(pg).to_have_url(re.compile(r"/login\?next="))
    pg.fill("#name", name)
    pg.fill("#password", PASSWORD)
    pg.click("#sign-in")
    expect(pg.locator("#who")).to_have_text(name)


def sign_out(pg, served: Served) -> None:
    pg.click("#logout")
    expect(pg).to_have_url(re.compile(r"/login$"))
    pg.goto(served.url + "/")
    expect(pg).to_have_url(re.compile(r"/login\?next=/$"))


@pytest.fixture
def page(browser, served):
    pg = new_page(browser, served)
    yield pg
    pg.context.close()


# -- the whole story -------------------------------------------------------------------------
def test_sign_in_see_an_alarm_arrive_live_acknowledge_it_and_sign_out(browser, book_appliance, store, tmp_path,
                                                                    shots):
    # The page polls only every 10 minutes here: what shows up at once came over the live event stream.
    served = _serve(book_appliance, store, tmp_path, with_pump1_alarm=False, poll_ms=600_000)
    pg = new_page(browser, served)
    try:
        pg.goto(served.url + "/login")
        pg.fill("#name", "ana")
        pg.fill("#password", "not the password")
        pg.click("#sign-in")
        expect(pg.locator("#login-error")).to_have_text("wrong user name or password")
        pg.screenshot(path=str(shots / "login-refused.png"))
        assert pg.problems == ["Failed to load resource: the server responded with a status of 401 (UNAUTHORIZED)"]
        pg.problems.clear()
        sign_in(pg, served, "ana")
        card = pg.locator('.card[data-asset="pump1"]')
        expect(card).to_have_attribute("data-state", "normal")
        expect(pg.locator("body")).to_have_attribute("data-live", "open")

        # A bearing fault: the scores climb over the threshold, the alarm book raises.
        t = time.time()
        for i in range(8):
            book_appliance.score("pump1", t + i * 0.1, 1.3 + 0.4 * i)
        expect(card).to_have_attribute("data-state", "unacknowledged", timeout=10_000)
        expect(card.locator(".state-label")).to_have_text("Unacknowledged")
        expect(card.locator(".level-badge")).to_have_text("critical")
        expect(card.locator(".f-peak")).to_have_text(re.compile(r"^\d{2,3} \((alarm|high|critical)\)$"))
        expect(card.locator(".f-top")).to_contain_text("Current")
        pg.screenshot(path=str(shots / "overview-alarm.png"), full_page=True)

        pg.fill("#note", "bearing noise, maintenance called")
        card.get_by_role("button", name="Acknowledge").click()
        expect(card).to_have_attribute("data-state", "acknowledged")
        expect(card.locator(".f-acked")).to_have_text("ana")
        expect(pg.locator("#toast")).to_contain_text("Acknowledged: pump1 (ana)")
        # In the store, in the signed-in user's name.
        reader = StoreReader(store.path)
        (alarm,) = [a for a in reader.alarms() if a["asset"] == "pump1"]
        assert (alarm["state"], alarm["acked_by"]) == ("acknowledged", "ana")
        acks = [e for e in reader.alarm_events(alarm["id"]) if e["kind"] == "acknowledged"]
        assert [(e["user"], e["note"]) for e in acks] == [("ana", "bearing noise, maintenance called")]
        pg.screenshot(path=str(shots / "overview-acknowledged.png"), full_page=True)

        sign_out(pg, served)
        assert [e["event"] for e in served.accounts.auth_log()[:3]] == ["logout", "login", "login_failed"]
        assert all(u.startswith(served.url + "/") or u.startswith("data:") for u in pg.requests), pg.requests
        assert pg.problems == []
    finally:
        pg.context.close()
        served.handle.stop()


def test_a_technician_cannot_approve_a_mitigation_and_an_engineer_can(page, served, shots):
    served.appliance.mitigation.propose("p1", asset="pump1")
    sign_in(page, served, "ana", "/mitigation")
    row = page.locator('tr.proposal[data-proposal="p1"]')
    expect(row).to_be_visible()
    approve = row.get_by_role("button", name="Approve")
    expect(approve).to_be_disabled()
    expect(approve).to_have_attribute("title", "Needs the engineer role")
    # Even past the page, the gateway refuses: the role is checked on the server.
    answer = page.evaluate("""async () => {
        const csrf = document.querySelector('meta[name="csrf-token"]').content;
        const r = await fetch('/api/actions/p1/approve', {method: 'POST', body: '{}',
            headers: {'Content-Type': 'application/json', 'X-CSRFToken': csrf}});
        return [r.status, (await r.json()).error];
    }""")
    assert answer == [403, "this needs the engineer role; ana is technician"]
    assert page.problems == ["Failed to load resource: the server responded with a status of 403 (FORBIDDEN)"]
    page.problems.clear()
    assert served.appliance.mitigation.pending and served.appliance.commands[-1][0] != "approve_action"
    page.screenshot(path=str(shots / "mitigation-technician.png"), full_page=True)
    sign_out(page, served)

    sign_in(page, served, "eve", "/mitigation")
    row = page.locator('tr.proposal[data-proposal="p1"]')
    page.once("dialog", lambda d: d.accept())
    row.get_by_role("button", name="Approve").click()
    expect(page.locator("#toast")).to_contain_text("Approved: slow-down on pump1 → written")
    expect(row).to_have_count(0)
    expect(page.locator('#audit-rows tr[data-status="written"] .actor')).to_have_text("eve")
    assert served.appliance.commands[-1] == ("approve_action", {"proposal_id": "p1", "user": "eve", "role": "engineer"})
    page.screenshot(path=str(shots / "mitigation-engineer.png"), full_page=True)
    assert page.problems == []


def test_shelve_and_return_to_service_from_the_page(page, served):
    sign_in(page, served, "ana")
    card = page.locator('.card[data-asset="pump1"]')
    expect(card).to_have_attribute("data-state", "unacknowledged")
    card.locator(".shelve-dur").select_option("14400")
    before = time.time()
    card.get_by_role("button", name="Shelve").click()
    expect(card).to_have_attribute("data-state", "shelved")
    after = time.time()
    expect(card.locator(".f-mode")).to_contain_text("Shelved until")
    expect(card.locator(".f-mode")).to_contain_text(" by ana")
    until = served.appliance.book.current("pump1").shelved_until
    assert before + 14400 <= until <= after + 14400
    # Someone else shelves it again from another tablet: the live stream brings the change, naming them.
    served.appliance.command("shelve", asset="pump1", user="carla", duration_s=900, note="extended")
    expect(card.locator(".f-mode")).to_contain_text(" by carla")
    expect(card.locator(".f-mode")).to_have_attribute("title", "extended")
    rts = card.get_by_role("button", name="Return to service")
    rts.click()
    expect(card).to_have_attribute("data-state", "unacknowledged")
    expect(rts).to_be_disabled()
    expect(card.locator(".f-mode")).to_have_text("In service")
    # Out of service is an engineer's call: a technician's button says so.
    oos = card.get_by_role("button", name="Out of service")
    expect(oos).to_be_disabled()
    assert [c[0] for c in served.appliance.commands[-2:]] == ["shelve", "set_mode"]
    assert page.problems == []


def test_a_refused_command_is_shown_not_swallowed(page, served):
    sign_in(page, served, "ana")
    card = page.locator('.card[data-asset="pump1"]')
    expect(card).to_have_attribute("data-state", "unacknowledged")
    served.appliance.command("acknowledge", asset="pump1", user="carla")
    # The button may already be disabled if the change arrived; force the stale click either way.
    card.get_by_role("button", name="Acknowledge").evaluate("b => { b.disabled = false; b.click(); }")
    expect(page.locator("#toast")).to_contain_text("no unacknowledged alarm")
    expect(card.locator(".f-acked")).to_have_text("carla")


def test_a_viewer_reads_but_has_no_command(page, served):
    sign_in(page, served, "vic")
    card = page.locator('.card[data-asset="pump1"]')
    expect(card).to_have_attribute("data-state", "unacknowledged")
    for name in ("Acknowledge", "Shelve", "Out of service"):
        expect(card.get_by_role("button", name=name)).to_be_disabled()
    page.goto(served.url + "/system")
    expect(page.locator("#s-auth-panel")).to_be_hidden()
    assert page.problems == []


def test_the_asset_page_charts_the_trend_with_the_alarm_shaded(page, served, shots):
    sign_in(page, served, "ana", "/assets/pump1")
    root = page.locator("#asset-page")
    expect(root).to_have_attribute("data-loaded", "1")
    expect(page.locator("#sev-now")).to_have_text(re.compile(r"^\d+$"))
    expect(page.locator("#band-now")).to_have_text(re.compile("alarm|high|critical"))
    expect(page.locator("#top-sensors li").first).to_contain_text("Current")
    expect(page.locator("#chart-score canvas")).to_have_count(1)
    expect(page.locator(".sensor-chart canvas")).to_have_count(3)
    expect(page.locator('.sensor-chart[data-sensor="Temperature"] .u-title')).to_have_text("Temperature")
    expect(page.locator("#trend-source")).to_contain_text("from the store")
    expect(page.locator("#asset-alarms tr")).to_have_count(1)
    page.screenshot(path=str(shots / "asset-pump1.png"), full_page=True)
    page.get_by_role("button", name="15m").click()
    expect(page).to_have_url(re.compile(r"range=15m$"))
    expect(page.locator("#trend-source")).to_contain_text("1.5 s per point")
    assert page.problems == []


def test_the_alarm_journal_takes_a_comment(page, served, shots):
    sign_in(page, served, "ana", "/alarms")
    row = page.locator('tr.alarm-row[data-asset="pump1"]')
    row.get_by_role("button", name="Journal").click()
    detail = page.locator("tr.detail-row")
    expect(detail.locator(".entry-transition")).to_have_count(2)
    expect(detail.locator(".entry-transition").first).to_contain_text("raised")
    expect(detail.locator(".entry-transition").nth(1)).to_contain_text("escalated")
    detail.locator(".d-comment").fill("bearing at 82 degC, grease ordered")
    detail.get_by_role("button", name="Add comment").click()
    expect(page.locator("#toast")).to_contain_text("Comment added (ana)")
    expect(page.locator("tr.detail-row .entry-comment")).to_contain_text("bearing at 82 degC, grease ordered")
    expect(page.locator("tr.detail-row .entry-comment")).to_contain_text("by ana")
    # It is the store's: with the alarm, by the signed-in technician.
    (alarm,) = [a for a in served.appliance.book.alarms() if a.asset == "pump1"]
    (stored,) = served.appliance.store.reader.alarm_comments(alarm.id)
    assert (stored["user"], stored["text"]) == ("ana", "bearing at 82 degC, grease ordered")
    page.screenshot(path=str(shots / "alarm-journal.png"), full_page=True)
    assert page.problems == []


def test_model_and_system_pages(page, served, shots):
    sign_in(page, served, "eve", "/model")
    expect(page.locator("#m-version")).to_have_text("test-model-1")
    expect(page.locator("#m-promote")).to_be_disabled()  # no candidate in shadow
    expect(page.locator("#m-backtest")).to_have_text("None since the gateway started.")
    page.goto(served.url + "/system")
    expect(page.locator("#s-rss")).to_have_text(re.compile(r"MiB"))
    expect(page.locator("#s-silent")).to_contain_text("pump2 / Temperature")
    expect(page.locator("#s-auth tr").first).to_contain_text("login")
    page.screenshot(path=str(shots / "system.png"), full_page=True)
    assert page.problems == []


TABLET = {"landscape": {"width": 1280, "height": 800}, "portrait": {"width": 800, "height": 1280}}
LAYOUT = """() => {
    const wide = document.scrollingElement.scrollWidth - window.innerWidth;
    const small = [...document.querySelectorAll('button, select, input:not([type=hidden]), textarea')]
        .filter(e => e.offsetParent !== null)
        // A checkbox is tapped through its label: the label is the target.
        .map(e => [e.id || e.className || e.tagName,
                   (e.type === 'checkbox' && e.closest('label') || e).getBoundingClientRect().height])
        .filter(([, h]) => h < 40);
    return {overflow_px: wide, small_targets: small,
            font_px: parseFloat(getComputedStyle(document.body).fontSize)};
}"""


@pytest.mark.parametrize("orientation", TABLET)
def test_every_main_page_fits_a_ten_inch_tablet(browser, served, orientation):
    """No sideways scrolling, text at least 16 px, every control at least 40 px tall (a gloved finger)."""
    context = browser.new_context(viewport=TABLET[orientation], has_touch=True)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    try:
        sign_in(pg, served, "eve")
        for path in ("/", "/assets/pump1", "/alarms", "/mitigation", "/model", "/system"):
            pg.goto(served.url + path)
            expect(pg.locator("#who")).to_have_text("eve")
            pg.wait_for_load_state("load")
            pg.wait_for_timeout(500)  # the page's first data has been drawn
            got = pg.evaluate(LAYOUT)
            assert got["overflow_px"] <= 0 and got["small_targets"] == [] and got["font_px"] >= 16, (path, got)
    finally:
        context.close()


def test_gateway_gone_shows_offline(page, served):
    sign_in(page, served, "vic")
    expect(page.locator("#link")).to_have_text("Live")
    served.handle.stop()
    expect(page.locator("#offline")).to_be_visible()
    expect(page.locator("#offline")).to_contain_text("out of date")
    expect(page.locator("#link")).to_have_text("Offline")


# -- the model page: the last back-test --------------------------------------------------------------------------
class LiveStandIn(StandIn):
    sensors = ("Current", "Pressure", "Temperature")
    version = "test-model-1"


class WithLifecycle(BookAppliance):
    """The stand-in appliance with a real model lifecycle, whose status joins the ``model`` section as the
    runtime's does."""

    def __init__(self, store, models: ModelLifecycle):
        super().__init__(store)
        self.models = models

    def status(self) -> dict:
        st = super().status()
        st["model"] = {**st["model"], **self.models.status()}
        return st


def test_the_model_page_shows_the_last_backtest_of_a_rejected_candidate(browser, store, tmp_path):
    """A candidate the back-test rejects: the model page shows the back-test (candidate, running model, verdict,
    reason), not only the refusal it led to."""
    reason = ("back-test on 40 min of history, 5 labelled episodes: misses pump1 episode 4e7cd26fbe4bf0fb "
              "(fault: bearing)")
    changes = []
    life = ModelLifecycle(current=LiveStandIn, swap=lambda d: None, publish=changes.append, spawn=lambda c: None,
                          new_decider=Decider, held_rows=0, data_dir=tmp_path,
                          history=lambda cand, cur, bounds: SimpleNamespace(ok=False, reason=reason))
    candidate = LiveStandIn()
    candidate.version = "cand-2"
    with pytest.raises(ModelCommandError):
        on_loop(life.consider(candidate, ShadowBounds(), BacktestBounds()))  # the lifecycle's loop, not Playwright's
    assert [c.event for c in changes] == ["rejected"] and life.last_backtest["ok"] is False

    served = _serve(WithLifecycle(store, life), store, tmp_path)
    pg = new_page(browser, served)
    try:
        sign_in(pg, served, "eve", "/model")
        expect(pg.locator("#m-backtest")).to_contain_text(f"cand-2 against test-model-1: rejected. {reason}")
        expect(pg.locator("#m-refusal")).to_contain_text("in the back-test (backtest): cand-2: back-test on")
        assert pg.problems == []
    finally:
        pg.context.close()
        served.handle.stop()


# -- the model page: a release refused before install ---------------------------------------------------------
def test_a_tampered_release_refused_before_install_shows_in_status_and_on_the_model_page(
        browser, tmp_path, tuf_server, tls_files, release_bundles):
    """The updater refuses a release whose archive does not match its signed sha256 before installing it; the
    refusal, with its reason, is in the lifecycle's status and on the model page, as the README promises."""
    import asyncio
    import threading

    from appliance.config import parse_config
    from appliance.core import OutputContext
    from appliance.detector.scorer import Detector
    from appliance.lifecycle.shadow import ShadowBounds
    from appliance.runtime import build
    from appliance.sync.models import ModelSync
    from tests.support.tuf_repo import Publisher, gateway

    pub = Publisher(tmp_path / "engineer", www=tuf_server.root)
    pub.release(release_bundles[1], 2)
    archive = pub.served_archive(2)
    bad = bytearray(archive.read_bytes())
    bad[len(bad) // 2] ^= 0xFF  # same length, one byte changed: the signed sha256 no longer fits
    archive.write_bytes(bytes(bad))
    updater = gateway(tmp_path / "gateway", tuf_server.url, pub.root, ca_file=str(tls_files.ca_file))
    cfg = parse_config({"data_dir": str(tmp_path / "data"), "log_level": "WARNING", "web": {"enabled": False},
                        "inputs": {"mqtt": {"enabled": False}}, "detector": {"bundle": str(release_bundles[0])},
                        "outputs": {"mqtt_alarm": {"enabled": False}, "history": {"enabled": False},
                                    "sync": {"updates": {"trusted_root": str(updater.trusted_root)}}}})
    app = build(cfg, detector=Detector.load(release_bundles[0]))
    sync = ModelSync(updater, ShadowBounds())
    ctx = OutputContext(open_alarm_ids=frozenset(), publish_action=lambda a: None, spawn=lambda c: None,
                        models=app.models)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(coro):  # the runtime on its own loop, as `appliance run` has it beside the dashboard
        return asyncio.run_coroutine_threadsafe(coro, loop).result(120)

    on_loop(app.start())
    accounts = Accounts(tmp_path / "accounts.db", hasher=FAST_HASHER)
    make_user(accounts, "eve", "engineer")
    handle = serve(create_app(app, app.store.path, accounts=accounts), "127.0.0.1", 0)
    pg = None
    try:
        on_loop(sync.run_window(ctx, deadline_mono=None))
        refusal = app.status()["model"]["last_refusal"]
        assert refusal["stage"] == "updater" and refusal["kind"] == "tampered", refusal
        assert "sha256" in refusal["reason"] and sync.status()["last_refusal"] == refusal["reason"]
        assert app.status()["model"]["last_update"]["outcome"] == "refused"
        assert app.detector.version == Detector.load(release_bundles[0]).version  # it keeps its model

        served = Served(handle, None, app, accounts)
        pg = new_page(browser, served)
        sign_in(pg, served, "eve", "/model")
        expect(pg.locator("#m-refusal")).to_contain_text("before install (tampered)")
        expect(pg.locator("#m-refusal")).to_contain_text("sha256")
        expect(pg.locator("#m-update")).to_contain_text("model update refused")
        assert pg.problems == []
    finally:
        if pg is not None:
            pg.context.close()
        handle.stop()
        on_loop(app.shutdown())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
