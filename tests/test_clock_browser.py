"""The overview's banner in a real headless Chromium while the gateway's clock is a day behind its data
(issue 22, item 8), and gone once the clock is synchronised."""

from __future__ import annotations

import re
import time

import pytest
from playwright import sync_api

from appliance.accounts import Accounts
from appliance.core.timebase import GatewayClock
from tests.support.browser import CHROMIUM, HEADLESS_ARGS
from tests.support.web import FAST_HASHER, PASSWORD, make_user
from web.app import create_app
from web.server import serve

pytestmark = pytest.mark.integration  # a real headless Chromium

DAY = 86400.0
TIMEOUT_MS = 30_000  # generous: two cores shared with the rest of the suite


def test_overview_says_the_data_time_is_in_use_and_stops_saying_it(book_appliance, store, tmp_path, monkeypatch):
    state = {"synced": False}
    clock = GatewayClock(synchronised=lambda: state["synced"], check_every_s=0.1)
    clock.observe("pump1", time.time() + DAY)  # this process's clock plays the one a day behind
    plain = book_appliance.status
    monkeypatch.setattr(book_appliance, "status", lambda: {**plain(), "clock": clock.status()})
    accounts = Accounts(tmp_path / "accounts.db", hasher=FAST_HASHER)
    make_user(accounts, "vic", "viewer")
    app = create_app(book_appliance, store.path, accounts=accounts)
    app.config["DASHBOARD_POLL_MS"] = 200
    handle = serve(app, "127.0.0.1", 0)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=HEADLESS_ARGS, headless=True)
            try:
                page = browser.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(handle.url + "/")
                page.fill("#name", "vic")
                page.fill("#password", PASSWORD)
                page.click("#sign-in")
                banner = page.locator("#clock-banner")
                sync_api.expect(banner).to_be_visible(timeout=TIMEOUT_MS)
                sync_api.expect(banner).to_have_text(
                    re.compile(r"gateway clock unsynchronised; using time from data \(offset \+24\.0 h\)"))
                state["synced"] = True  # the clock is set and synchronised: the estimate is dropped
                sync_api.expect(banner).to_be_hidden(timeout=TIMEOUT_MS)
            finally:
                browser.close()
    finally:
        handle.stop()
