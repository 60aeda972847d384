#!/usr/bin/env python3
"""Screenshots of the technician's story for the README (verdicts and alarm KPIs), into docs/img/.

    .venv/bin/python scripts/screenshots_verdicts.py [--out docs/img] [--width 1280 --height 800]

The scene: a month of alarm history on eight pumps (``rigs/alarm_history.py``,
40 alarms a day), and now, on the live alarm book, pump1 raised and cleared three
times in the last eight minutes (chattering) and a bearing alarm on pump2. Ana,
a technician, signs in, sees the banner, acknowledges pump2's alarm in the
journal and gives it the verdict "fault (bearing)", looks at pump2's page and at
the KPI page. Served over a real store by waitress, photographed in Debian's
headless Chromium (as scripts/screenshots.py does for the other pages):
``verdict-journal.png``, ``verdict-asset.png``, ``kpis.png``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rigs.alarm_history import fill_alarm_history  # noqa: E402
from rigs.browser import CHROMIUM, HEADLESS_ARGS  # noqa: E402

ARGS = [*HEADLESS_ARGS, "--hide-scrollbars"]


def scene(ba, store) -> str:
    """The month behind, then the live minutes; pump2's alarm id."""
    now = time.time()
    fill_alarm_history(store, now - 3600, 30, 40, assets=8)
    for k in range(3):
        t = now - 480 + 120 * k
        ba.score("pump1", t, 1.6, top="Pressure")
        ba.score("pump1", t + 40, 0.2, top="Pressure")
    for i in range(30):
        ba.score("pump2", now - 90 + 3 * i, 0.4 + 0.1 * i, top="Current")
    ba.flush()
    return ba.book.current("pump2").id


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "img"))
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=800)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    from appliance.accounts import Accounts
    from appliance.store import Store
    from tests.support.web import FAST_HASHER, PASSWORD, BookAppliance
    from web.app import create_app
    from web.server import serve

    tmp = Path(tempfile.mkdtemp(prefix="screenshots-verdicts-"))
    store = Store(tmp / "store.db")
    store.start()
    ba = BookAppliance(store, site="line-3 pumps")
    print("building the scene (a month of alarms, and the last minutes) ...", flush=True)
    alarm_id = scene(ba, store)
    accounts = Accounts(tmp / "accounts.db", hasher=FAST_HASHER)
    accounts.add_user("ana", "technician", PASSWORD)
    app = create_app(ba, store.path, accounts=accounts)
    handle = serve(app, "127.0.0.1", 0)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_context(viewport={"width": args.width, "height": args.height}).new_page()
            page.set_default_timeout(60_000)
            page.goto(handle.url + "/alarms")
            page.fill("#name", "ana")
            page.fill("#password", PASSWORD)
            page.click("#sign-in")
            page.wait_for_selector("#load-chatter:not([hidden])")
            row = page.locator(f'tr.alarm-row[data-alarm-id="{alarm_id}"]')
            row.locator(".btn-open").click()
            detail = page.locator(f'tr.detail-row[data-alarm-id="{alarm_id}"]')
            detail.locator(".d-note").fill("on site, bearing housing hot")
            detail.locator(".btn-ack").click()
            page.wait_for_selector(f'tr.detail-row[data-alarm-id="{alarm_id}"] .entry-transition >> text=acknowledged')
            detail = page.locator(f'tr.detail-row[data-alarm-id="{alarm_id}"]')
            detail.locator(".v-kind").select_option("fault")
            detail.locator(".v-cause").select_option("bearing")
            detail.locator(".v-note").fill("outer race pitted, bearing replaced")
            detail.locator(".btn-verdict").click()
            page.wait_for_selector(f'tr.alarm-row[data-alarm-id="{alarm_id}"] .verdict')
            page.wait_for_selector(f'tr.detail-row[data-alarm-id="{alarm_id}"] .entry-verdict')
            page.wait_for_timeout(400)
            page.screenshot(path=str(out / "verdict-journal.png"))
            print("  verdict-journal.png", flush=True)
            page.goto(handle.url + "/assets/pump2?range=1h")
            page.wait_for_selector('#asset-page[data-loaded="1"]')
            page.wait_for_selector("#asset-alarms .verdict")
            page.wait_for_timeout(400)
            page.screenshot(path=str(out / "verdict-asset.png"), full_page=True)
            print("  verdict-asset.png", flush=True)
            page.goto(handle.url + "/kpis")
            page.wait_for_selector('#kpi-page[data-loaded="1"]')
            page.click('.span-btn[data-span="7d"]')
            page.wait_for_selector('#kpi-page[data-span="7d"]')
            page.wait_for_timeout(400)
            page.screenshot(path=str(out / "kpis.png"), full_page=True)
            print("  kpis.png", flush=True)
            browser.close()
    finally:
        handle.stop()
        store.close()
    print(f"screenshots in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
