"""The alarm KPI page on a month of alarm history: how long the KPIs take to compute, to serve and to show.

    .venv/bin/python benchmarks/kpi_page.py [--per-day 300 3000] [--days 30] [--loads 7] [--out ...]

For each rate, a store is filled with ``--days`` days of alarms ending now
(``rigs/alarm_history.py``: 20 assets, a few bad actors, 80 % acknowledged, 60 %
with a verdict, some changed once), as a gateway on a badly tuned line holds
after a month (EEMUA 191 calls more than 288 alarms a day per operator
"over-demanding"; 3000 a day is a line in a permanent flood). Then:

* ``compute``: :class:`web.kpi_source.KpiSource` ``report()`` uncached (the store's
  episode query and every KPI over 24 h, 7 d and 30 d, per asset and in total),
  median of ``--loads`` runs;
* ``api``: ``GET /api/kpis`` over loopback from the dashboard (waitress), with the
  report cache off (``[web.kpis] cache_s = 0``, every request computes), median;
* ``page``: the KPI page in Debian's headless Chromium, signed in, browser cache
  warm: from the start of the navigation until the numbers are on the page (the
  page records ``performance.now()`` when its first report is drawn: the time
  a technician waits), median and max of ``--loads`` loads.

The default cache (10 s) makes every request after the first within the interval
cost only the JSON encoding; the figures here are the uncached worst case.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, parser, write_results  # noqa: E402
from rigs.alarm_history import alarm_history_store  # noqa: E402
from rigs.browser import CHROMIUM, HEADLESS_ARGS  # noqa: E402

USER, PASSWORD = "ana", "benchmark password 1"


class QuietAppliance:
    """What the dashboard asks of a running appliance, for a gateway whose live side is idle."""

    def status(self) -> dict:
        return {"site": "benchmark", "alarms": [], "point_modes": {}, "counters": {},
                "model": {"version": "none", "sensors": [], "threshold": 1.0}}

    def command(self, name: str, **kwargs):
        raise ValueError(f"unknown command {name!r}")

    def output(self, name: str):
        return None


def serve_dashboard(store_path: Path, work: Path):
    from argon2 import PasswordHasher

    from appliance.accounts import Accounts
    from web.app import create_app
    from web.config import KpiConfig, WebConfig
    from web.server import serve

    accounts = Accounts(work / "accounts.db", hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    accounts.add_user(USER, "technician", PASSWORD)
    app = create_app(QuietAppliance(), store_path, accounts=accounts, config=WebConfig(kpis=KpiConfig(cache_s=0)))
    return serve(app, "127.0.0.1", 0)


def time_compute(store_path: Path, loads: int) -> dict:
    from appliance.store import StoreReader
    from appliance.store.kpis import KpiThresholds
    from web.kpi_source import KpiSource

    source = KpiSource(StoreReader(store_path), KpiThresholds(), time.time, cache_s=0)
    runs = []
    for _ in range(loads):
        t0 = time.perf_counter()
        rep = source.report()
        runs.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": round(statistics.median(runs), 1), "max_ms": round(max(runs), 1),
            "alarms_30d": rep["spans"]["30d"]["gateway"]["alarms"]}


def time_api(url: str, loads: int) -> dict:
    from web.client import DashboardClient

    client = DashboardClient(url, timeout=120)
    client.login(USER, PASSWORD)
    runs, size = [], 0
    for _ in range(loads):
        t0 = time.perf_counter()
        status, body, _ = client.request("GET", "/api/kpis")
        runs.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            raise SystemExit(f"/api/kpis answered {status}: {str(body)[:300]}")
    with client._opener.open(urllib.request.Request(url + "/api/kpis"), timeout=120) as resp:
        size = len(resp.read())
    return {"median_ms": round(statistics.median(runs), 1), "max_ms": round(max(runs), 1), "bytes": size}


def time_page(url: str, loads: int) -> dict:
    from playwright.sync_api import sync_playwright

    runs = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=HEADLESS_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(300_000)
            page.goto(url + "/login")
            page.fill("#name", USER)
            page.fill("#password", PASSWORD)
            page.click("#sign-in")
            page.wait_for_selector("#who")
            page.goto(url + "/kpis")  # warms the cache
            page.wait_for_selector('#kpi-page[data-loaded="1"]')
            for _ in range(loads):
                page.goto(url + "/kpis")
                page.wait_for_selector('#kpi-page[data-loaded="1"]')
                runs.append(float(page.get_attribute("#kpi-page", "data-first-report-ms")))
        finally:
            browser.close()
    return {"median_ms": round(statistics.median(runs), 1), "max_ms": round(max(runs), 1)}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, RESULTS / "kpi_page.json")
    ap.add_argument("--per-day", type=float, nargs="+", default=[300.0, 3000.0])
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--loads", type=int, default=7)
    args = ap.parse_args(argv)
    results = []
    print(f"{'alarms/day':>10} {'alarms':>7} {'compute ms':>11} {'api ms':>8} {'page ms':>8} {'page max':>9}")
    for per_day in args.per_day:
        with tempfile.TemporaryDirectory(prefix="kpi-bench-") as tmp:
            work = Path(tmp)
            t0 = time.perf_counter()
            n = alarm_history_store(work / "store.db", time.time(), args.days, per_day)
            filled_s = time.perf_counter() - t0
            compute = time_compute(work / "store.db", args.loads)
            handle = serve_dashboard(work / "store.db", work)
            try:
                api = time_api(handle.url, args.loads)
                page = time_page(handle.url, args.loads)
            finally:
                handle.stop()
            size = (work / "store.db").stat().st_size
        row = {"per_day": per_day, "days": args.days, "alarms": n, "store_bytes": size,
               "fill_s": round(filled_s, 1), "compute": compute, "api": api, "page": page}
        results.append(row)
        print(f"{per_day:>10.0f} {n:>7} {compute['median_ms']:>11.1f} {api['median_ms']:>8.1f} "
              f"{page['median_ms']:>8.1f} {page['max_ms']:>9.1f}", flush=True)
    out = write_results(args.out, {"benchmark": "kpi_page", "loads": args.loads, "runs": results},
                        libraries=("flask", "waitress", "playwright"))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
