#!/usr/bin/env python3
"""Screenshots of the dashboard's main pages for the README, into docs/img/ (run from the repository root).

    .venv/bin/python scripts/screenshots.py [--out docs/img] [--width 1280 --height 800]

A scene like a shift on a pump line: three pumps with two hours of history,
one bearing going (an unacknowledged critical alarm), one known-hot pump
acknowledged by a technician with a comment, a mitigation proposal waiting for
an engineer, a silent sensor and two rejected payloads. It is served over a
real store by waitress and photographed in Debian's headless Chromium
(/usr/bin/chromium; never a downloaded browser) at a 10-inch tablet's size.
It also prints how long each page took to load and how much memory the web
side adds to the process.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rigs.browser import CHROMIUM, HEADLESS_ARGS  # noqa: E402

ARGS = [*HEADLESS_ARGS, "--hide-scrollbars"]


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scene(ba, hours: float = 2.0) -> None:
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
    from tests.support.web import FAST_HASHER, PASSWORD, BookAppliance, FakeMitigation

    tmp = Path(tempfile.mkdtemp(prefix="screenshots-"))
    print("training a small model for the model page ...", flush=True)
    detector = small_model(tmp / "model")
    store = Store(tmp / "store.db")
    store.start()

    class SceneAppliance(BookAppliance):
        def status(self) -> dict:
            st = super().status()
            st["model"] = {**st["model"], "version": detector.version, "threshold": detector.threshold}
            return st

    ba = SceneAppliance(store, site="line-3 pumps")
    ba.detector = detector
    ba.mitigation = FakeMitigation(armed=True)
    print("building the scene (two hours of three pumps) ...", flush=True)
    scene(ba)
    ba.mitigation.propose("7f3a9c01", asset="pump1", rule="reduce-speed-on-bearing-wear")

    before = rss_mib()
    from web.app import create_app
    from web.server import serve

    accounts = Accounts(tmp / "accounts.db", hasher=FAST_HASHER)
    for name, role in (("ana", "technician"), ("eve", "engineer")):
        accounts.add_user(name, role, PASSWORD)
    app = create_app(ba, store.path, accounts=accounts)
    handle = serve(app, "127.0.0.1", 0)
    timings: dict[str, float] = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            ctx = browser.new_context(viewport={"width": args.width, "height": args.height})
            page = ctx.new_page()
            page.set_default_timeout(30_000)
            page.goto(handle.url + "/login")
            page.fill("#name", "eve")
            page.fill("#password", PASSWORD)
            page.screenshot(path=str(out / "login.png"))
            page.click("#sign-in")
            page.wait_for_selector('.card[data-asset="pump1"][data-severity]')
            page.wait_for_selector("#link.link-ok")

            def shot(name: str, path: str, ready: str, full: bool = True, before_shot=None) -> None:
                t0 = time.perf_counter()
                page.goto(handle.url + path)
                page.wait_for_selector(ready)
                timings[path] = time.perf_counter() - t0
                if before_shot:
                    before_shot()
                page.wait_for_timeout(400)
                page.screenshot(path=str(out / f"{name}.png"), full_page=full)
                print(f"  {name}.png  ({path} ready in {timings[path] * 1000:.0f} ms)", flush=True)

            shot("overview", "/", '.card[data-asset="pump1"][data-severity]')
            shot("asset", "/assets/pump1?range=1h", '#asset-page[data-loaded="1"]')

            def open_journal():
                page.locator('tr.alarm-row[data-asset="pump3"] .btn-open').click()
                page.wait_for_selector("tr.detail-row .entry")
                page.locator("tr.detail-row .d-comment").fill("fan bearing replaced, watching the temperature")
                page.locator("tr.detail-row .btn-comment").click()
                page.wait_for_selector("tr.detail-row .entry-comment")
            shot("alarms", "/alarms", "tr.alarm-row", before_shot=open_journal)
            shot("mitigation", "/mitigation", "tr.proposal")
            shot("system", "/system", "#s-auth tr td")
            shot("model", "/model", "#m-facts dd")
            browser.close()
    finally:
        handle.stop()
        store.close()
    after = rss_mib()
    print("page ready times: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items()))
    print(f"memory: the process held {before:.0f} MiB before the web app was imported and served, "
          f"{after:.0f} MiB after serving these pages (+{after - before:.0f} MiB)")
    print(f"screenshots in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
