#!/usr/bin/env python3
"""Screenshots of the dashboard for the README, into docs/img/ (run from the repository root).

    .venv/bin/python scripts/screenshots.py [--scene pumps|verdicts|all] [--out docs/img] [--width 1280 --height 800]

Each scene is served over a real store by waitress and photographed in Debian's
headless Chromium (/usr/bin/chromium; never a downloaded browser) at a 10-inch
tablet's size.

``pumps``, the main pages (``login``, ``overview``, ``asset``, ``alarms``,
``mitigation``, ``system``, ``model``): a shift on a pump line, three pumps with two
hours of history, one bearing going (an unacknowledged critical alarm), one
known-hot pump acknowledged by a technician with a comment, a mitigation proposal
waiting for an engineer, a silent sensor and two rejected payloads. It also prints
how long each page took to load and how much memory the web side adds to the
process (run it first, or alone, for that figure).

``verdicts``, the technician's story (``verdict-journal``, ``verdict-asset``,
``kpis``): a month of alarm history on eight pumps (``rigs/alarm_history.py``,
40 alarms a day), and now, on the live alarm book, pump1 raised and cleared three
times in the last eight minutes (chattering) and a bearing alarm on pump2. Ana, a
technician, signs in, sees the banner, acknowledges pump2's alarm in the journal
and gives it the verdict "fault (bearing)", looks at pump2's page and at the KPI
page.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rigs.alarm_history import fill_alarm_history  # noqa: E402
from rigs.browser import CHROMIUM, HEADLESS_ARGS  # noqa: E402

ARGS = [*HEADLESS_ARGS, "--hide-scrollbars"]
SCENES = ("pumps", "verdicts")


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- what both scenes share: a served dashboard and a signed-in browser page ------------------------------

@contextmanager
def served(appliance, store, users: dict[str, str], tmp: Path) -> Iterator[str]:
    """The dashboard over ``appliance`` and ``store`` with ``users`` (name: role), served by waitress: its URL."""
    from appliance.accounts import Accounts
    from tests.support.web import FAST_HASHER, PASSWORD
    from web.app import create_app
    from web.server import serve

    accounts = Accounts(tmp / "accounts.db", hasher=FAST_HASHER)
    for name, role in users.items():
        accounts.add_user(name, role, PASSWORD)
    handle = serve(create_app(appliance, store.path, accounts=accounts), "127.0.0.1", 0)
    try:
        yield handle.url
    finally:
        handle.stop()


@contextmanager
def running_store(tmp: Path) -> Iterator:
    """A real store in ``tmp``, started, closed at the end."""
    from appliance.store import Store

    store = Store(tmp / "store.db")
    store.start()
    try:
        yield store
    finally:
        store.close()


@contextmanager
def browser_page(args, timeout_ms: int) -> Iterator:
    """A page of Debian's headless Chromium at the size asked for."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_context(viewport={"width": args.width, "height": args.height}).new_page()
            page.set_default_timeout(timeout_ms)
            yield page
        finally:
            browser.close()


def fill_sign_in(page, url: str, name: str) -> None:
    """The login form filled in (not sent), so the login page can be photographed as a user sees it."""
    from tests.support.web import PASSWORD

    page.goto(url)
    page.fill("#name", name)
    page.fill("#password", PASSWORD)


def snap(page, out: Path, name: str, full: bool = True) -> None:
    page.wait_for_timeout(400)  # let transitions and charts settle
    page.screenshot(path=str(out / f"{name}.png"), full_page=full)


# -- the pumps scene: the main pages -------------------------------------------------------------------------

def pumps_history(ba, hours: float = 2.0) -> None:
    """Two hours of three pumps, at one reading per sensor and one score per asset every 2 seconds."""
    from appliance.core import DeadLetterCode

    now = time.time()
    n = int(hours * 3600 / 2)
    for i in range(n):
        t = now - (n - i) * 2
        w = math.sin(i / 40) * 0.5 + 0.2 * math.sin(i / 7)
        for asset, load in (("pump1", 1.0), ("pump2", 0.8), ("pump3", 1.1)):
            drift = 0.0
            if asset == "pump1" and i > n - 300:  # the last 10 minutes: a bearing going
                drift = (i - (n - 300)) / 300
            ba.reading(asset, "Current", t, 4.0 * load + 0.3 * w + 1.5 * drift)
            ba.reading(asset, "Pressure", t, 2.0 + 0.1 * w - 0.2 * drift)
            ba.reading(asset, "Temperature", t, 60 + 2 * w + 8 * drift + (6 if asset == "pump3" and i > n - 900 else 0))
        ba.score("pump1", t, 0.3 + 0.08 * w + (0 if i <= n - 300 else 2.6 * ((i - (n - 300)) / 300) ** 1.5),
                 top="Current")
        ba.score("pump2", t, 0.35 + 0.08 * w, top="Pressure")
        ba.score("pump3", t, 0.4 + 0.08 * w if i <= n - 900 else 1.5 + 0.1 * w, top="Temperature")
    ba.command("acknowledge", asset="pump3", user="ana", note="temperature known high, cooling fan on order")
    ba.watchdog_clock.t = 40.0  # 40 s on: every sensor has reported again but pump2's Temperature
    for asset in ("pump1", "pump2", "pump3"):
        for s in ("Current", "Pressure", "Temperature"):
            if (asset, s) != ("pump2", "Temperature"):
                ba.reading(asset, s, now, {"Current": 4.0, "Pressure": 2.0, "Temperature": 61.0}[s])
    ba.watchdog.check()
    ba.dead_letter("mqtt:plant/pump1/Current", b'{"ts": 1700000000, "value": NaN}', DeadLetterCode.NON_FINITE,
                   "value is not finite")
    ba.dead_letter("mqtt:plant/pump9/telemetry", b"\x00\x01garbage", DeadLetterCode.BAD_JSON, "invalid start byte")
    ba.flush()


def small_model(out: Path):
    """A real bundle (trained in a few seconds on synthetic normal rows) for the model page."""
    import numpy as np

    from appliance.detector.scorer import Detector
    from appliance.detector.train import TrainSettings, train_bundle

    rng = np.random.default_rng(7)
    t = np.arange(2400)
    rows = np.column_stack([4 + 0.3 * np.sin(t / 40) + 0.05 * rng.standard_normal(t.size),
                            2 + 0.1 * np.sin(t / 40 + 1) + 0.02 * rng.standard_normal(t.size),
                            60 + 2 * np.sin(t / 40 + 2) + 0.3 * rng.standard_normal(t.size)])
    path = train_bundle(rows, ("Current", "Pressure", "Temperature"), out, TrainSettings(period_s=2.0, max_iter=40))
    return Detector.load(path)


def pumps_appliance(store, detector):
    """The stand-in appliance, reporting the trained model in its status (the model page reads both)."""
    from tests.support.web import BookAppliance, FakeMitigation

    class PumpsAppliance(BookAppliance):
        def status(self) -> dict:
            st = super().status()
            st["model"] = {**st["model"], "version": detector.version, "threshold": detector.threshold}
            return st

    ba = PumpsAppliance(store, site="line-3 pumps")
    ba.detector = detector
    ba.mitigation = FakeMitigation(armed=True)
    return ba


def open_journal_and_comment(page) -> None:
    page.locator('tr.alarm-row[data-asset="pump3"] .btn-open').click()
    page.wait_for_selector("tr.detail-row .entry")
    page.locator("tr.detail-row .d-comment").fill("fan bearing replaced, watching the temperature")
    page.locator("tr.detail-row .btn-comment").click()
    page.wait_for_selector("tr.detail-row .entry-comment")


def pumps_scene(args, out: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="screenshots-pumps-"))
    print("training a small model for the model page ...", flush=True)
    detector = small_model(tmp / "model")
    with running_store(tmp) as store:
        pumps_pages(args, out, tmp, pumps_appliance(store, detector))


def pumps_pages(args, out: Path, tmp: Path, ba) -> None:
    print("building the scene (two hours of three pumps) ...", flush=True)
    pumps_history(ba)
    ba.mitigation.propose("7f3a9c01", asset="pump1", rule="reduce-speed-on-bearing-wear")

    before = rss_mib()
    import web.app  # noqa: F401 - imported here so the memory figure counts it

    timings: dict[str, float] = {}
    with served(ba, ba.store, {"ana": "technician", "eve": "engineer"}, tmp) as url, \
            browser_page(args, 30_000) as page:
        fill_sign_in(page, url + "/login", "eve")
        page.screenshot(path=str(out / "login.png"))
        page.click("#sign-in")
        page.wait_for_selector('.card[data-asset="pump1"][data-severity]')
        page.wait_for_selector("#link.link-ok")

        def shot(name: str, path: str, ready: str, before_shot=None) -> None:
            t0 = time.perf_counter()
            page.goto(url + path)
            page.wait_for_selector(ready)
            timings[path] = time.perf_counter() - t0
            if before_shot:
                before_shot(page)
            snap(page, out, name)
            print(f"  {name}.png  ({path} ready in {timings[path] * 1000:.0f} ms)", flush=True)

        shot("overview", "/", '.card[data-asset="pump1"][data-severity]')
        shot("asset", "/assets/pump1?range=1h", '#asset-page[data-loaded="1"]')
        shot("alarms", "/alarms", "tr.alarm-row", before_shot=open_journal_and_comment)
        shot("mitigation", "/mitigation", "tr.proposal")
        shot("system", "/system", "#s-auth tr td")
        shot("model", "/model", "#m-facts dd")
    after = rss_mib()
    print("page ready times: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items()))
    print(f"memory: the process held {before:.0f} MiB before the web app was imported and served, "
          f"{after:.0f} MiB after serving these pages (+{after - before:.0f} MiB)")


# -- the verdicts scene: the technician's story ---------------------------------------------------------------

def verdicts_history(ba, store) -> str:
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


def acknowledge_and_judge(page, alarm_id: str) -> None:
    """Ana acknowledges pump2's alarm in the journal, then gives it the verdict "fault (bearing)"."""
    page.locator(f'tr.alarm-row[data-alarm-id="{alarm_id}"]').locator(".btn-open").click()
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


def verdicts_scene(args, out: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="screenshots-verdicts-"))
    with running_store(tmp) as store:
        verdicts_pages(args, out, tmp, store)


def verdicts_pages(args, out: Path, tmp: Path, store) -> None:
    from tests.support.web import BookAppliance

    ba = BookAppliance(store, site="line-3 pumps")
    print("building the scene (a month of alarms, and the last minutes) ...", flush=True)
    alarm_id = verdicts_history(ba, store)
    with served(ba, store, {"ana": "technician"}, tmp) as url, browser_page(args, 60_000) as page:
        fill_sign_in(page, url + "/alarms", "ana")
        page.click("#sign-in")
        page.wait_for_selector("#load-chatter:not([hidden])")
        acknowledge_and_judge(page, alarm_id)
        snap(page, out, "verdict-journal", full=False)
        print("  verdict-journal.png", flush=True)
        page.goto(url + "/assets/pump2?range=1h")
        page.wait_for_selector('#asset-page[data-loaded="1"]')
        page.wait_for_selector("#asset-alarms .verdict")
        snap(page, out, "verdict-asset")
        print("  verdict-asset.png", flush=True)
        page.goto(url + "/kpis")
        page.wait_for_selector('#kpi-page[data-loaded="1"]')
        page.click('.span-btn[data-span="7d"]')
        page.wait_for_selector('#kpi-page[data-span="7d"]')
        snap(page, out, "kpis")
        print("  kpis.png", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scene", choices=(*SCENES, "all"), default="all")
    p.add_argument("--out", default=str(ROOT / "docs" / "img"))
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=800)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scenes = {"pumps": pumps_scene, "verdicts": verdicts_scene}
    for name in (SCENES if args.scene == "all" else (args.scene,)):
        scenes[name](args, out)
    print(f"screenshots in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
