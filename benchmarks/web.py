"""The dashboard: how long its main pages take to load in a browser, and how much memory the web side adds.

    .venv/bin/python benchmarks/web.py [--loads 7] [--rounds 2] [--settle 20] [--model DIR] [--out ...]

The rig is the demo's, without the demo: a private Mosquitto, the pump simulator
publishing at 10 Hz (a bearing-wear fault after ``--fault-at`` s, so there is an
alarm on every page), and two appliance processes started as ``appliance run``
starts one, side by side on the same broker, the same model and the same
config except ``[web] enabled`` (each with its own data dir and MQTT client
ids). Both receive every message, score every window and raise the same alarm;
one of them also serves the dashboard (waitress, on its own threads).

Page load: Debian's headless Chromium (``/usr/bin/chromium`` through Playwright,
never a downloaded browser) signs in as an engineer made with ``appliance user
add``, then loads each main page (overview, asset, alarms, mitigation, model,
system) ``--loads`` times with an empty browser cache ("cold": what a tablet's
first visit costs; the cache is cleared over CDP before each load) and
``--loads`` times with the cache warm (every later visit: static files carry a
content hash and are cached for a day). The figures are the browser's own
navigation timing (``PerformanceNavigationTiming``): time to first byte,
``domContentLoadedEventEnd`` and ``loadEventEnd``, from the start of the
navigation, median over the loads; and the requests and bytes the browser fetched up
to ``load`` (the page, its static files and the API calls done by then; a cache hit
counts 0 bytes). Server-rendered shells load most of their data from the JSON API
after that; the figures say how soon a page stands, not when every number on it has
arrived.

Memory: RSS (``VmRSS``) and PSS (``/proc/PID/smaps_rollup``) of both processes,
the median of ``--samples`` samples one second apart, before any page was
loaded and after each of ``--rounds`` rounds of all those loads (browser closed),
so growth that levels off (caches, allocator arenas) shows apart from growth that
does not. The web side's cost is the difference between the two processes, which
saw the same messages over the same minutes; each side's min and max over the
samples are in the JSON.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.broker import Mosquitto, free_port, stop_process  # noqa: E402
from benchmarks.common import RESULTS, parser, write_results  # noqa: E402
from rigs.browser import CHROMIUM, HEADLESS_ARGS  # noqa: E402
from rigs.store_peek import count_rows  # noqa: E402

CHROMIUM_ARGS = [*HEADLESS_ARGS, "--disable-quic"]
ASSET = "pump1"
PAGES = {"overview": "/", "asset": f"/assets/{ASSET}", "alarms": "/alarms", "mitigation": "/mitigation",
         "model": "/model", "system": "/system"}
USER = "bench"
PASSWORD = "bench-password-0123"
TIMEOUT_S = 120.0


# ============================================================================ the rig

def ensure_model(work: Path, model: Path | None) -> Path:
    """The demo's model (trained on simulated normal pump data, as the demo trains it) or ``model`` if given."""
    if model is not None:
        if not (model / "bundle.json").exists():
            raise SystemExit(f"{model} holds no bundle.json")
        return model
    from appliance.config import parse_config
    from appliance.demo import ensure_demo_model

    print("training the demo's model on simulated normal operation (reuse it with --model) ...", flush=True)
    return ensure_demo_model(parse_config({"data_dir": str(work / "model-data")}, "bench"))


class ApplianceProcess:
    """One ``appliance run`` process with its own data dir; the dashboard on ``web_port`` or off."""

    def __init__(self, work: Path, name: str, broker_port: int, bundle: Path, web_port: int | None):
        self.name = name
        self.dir = work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.web_port = web_port
        self.config = self.dir / "appliance.toml"
        web = (f'[web]\nenabled = true\nport = {web_port}\n' if web_port is not None else "[web]\nenabled = false\n")
        # Everything but [web] is the same for both; the client ids differ, or the broker would
        # disconnect one when the other connects.
        self.config.write_text(f"""
data_dir = "{self.dir / 'data'}"
log_level = "WARNING"
[connections.mqtt]
host = "127.0.0.1"
port = {broker_port}
[inputs.mqtt]
client_id = "bench-{name}-ingest"
[outputs.mqtt_alarm]
client_id = "bench-{name}-alarms"
[outputs.history]
enabled = false
[detector]
bundle = "{bundle}"
{web}""")
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "appliance.log"
        self.store = self.dir / "data" / "appliance.db"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def add_user(self, name: str, role: str, password: str) -> None:
        pw = self.dir / "password"
        pw.write_text(password + "\n")
        subprocess.run([sys.executable, "-m", "appliance.cli", "user", "add", name, "--role", role,
                        "--password-file", str(pw), "--config", str(self.config)],
                       check=True, cwd=ROOT, capture_output=True, text=True)
        pw.unlink()

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "--config", str(self.config)],
                                         cwd=ROOT, stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        stop_process(self.proc, timeout=30)
        self.proc = None

    def alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise SystemExit(f"appliance {self.name} is not running; see {self.log}:\n{self.log.read_text()[-2000:]}")

    def wait_web(self, timeout: float = TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.alive()
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=5) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise SystemExit(f"the dashboard of {self.name} did not answer in {timeout:.0f}s")

    def scores(self) -> int:
        return count_rows(self.store, "scores")

    def alarms(self) -> int:
        return count_rows(self.store, "alarms")

    def memory(self) -> dict:
        """RSS, PSS (MiB) and threads of the process now."""
        out = {}
        pid = self.proc.pid
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == "VmRSS":
                    out["rss_mib"] = int(value.split()[0]) / 1024
                elif key == "Threads":
                    out["threads"] = int(value)
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        out["pss_mib"] = int(line.split()[1]) / 1024
        except OSError:
            pass
        return out


class Rig:
    """Broker, pump simulator and the two appliances (``web`` with the dashboard, ``noweb`` without)."""

    def __init__(self, work: Path, bundle: Path, fault_at: float):
        self.work = work
        self.bundle = bundle
        self.fault_at = fault_at
        self.broker: Mosquitto | None = None
        self.sim: subprocess.Popen | None = None
        self.web: ApplianceProcess | None = None
        self.noweb: ApplianceProcess | None = None

    def __enter__(self) -> "Rig":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.broker = Mosquitto(self.work / "broker", port=free_port()).start()
        self.web = ApplianceProcess(self.work, "web", self.broker.port, self.bundle, free_port())
        self.noweb = ApplianceProcess(self.work, "noweb", self.broker.port, self.bundle, None)
        self.web.add_user(USER, "engineer", PASSWORD)
        self.noweb.add_user(USER, "engineer", PASSWORD)  # the same files on disk on both sides
        self.web.start()
        self.noweb.start()
        self.web.wait_web()
        from appliance.demo import DEMO_RATE_HZ

        # Both are subscribed once the web one answers and the other has had as long to start; the
        # simulator's first seconds are the training's normal operation either way.
        time.sleep(2.0)
        self.noweb.alive()
        with open(self.work / "sim.log", "ab") as log:
            self.sim = subprocess.Popen(
                [sys.executable, "-m", "firmware_sim.cli", "pump", "--host", "127.0.0.1", "--port",
                 str(self.broker.port), "--asset", ASSET, "--rate", repr(DEMO_RATE_HZ), "--fault", "bearing_wear",
                 "--fault-at", repr(self.fault_at), "--seed", "7", "--log-level", "WARNING"],
                cwd=ROOT, stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def wait_scoring(self, timeout: float = TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.web.alive()
            self.noweb.alive()
            if self.web.scores() > 0 and self.noweb.scores() > 0:
                return
            time.sleep(0.5)
        raise SystemExit("the appliances scored no window; see their logs under " + str(self.work))

    def wait_alarm(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.web.alarms() > 0 and self.noweb.alarms() > 0:
                return True
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        stop_process(self.sim)
        self.sim = None
        for a in (self.web, self.noweb):
            if a is not None:
                a.stop()
        if self.broker is not None:
            self.broker.stop()


# ============================================================================ measuring

NAV_TIMING = """() => {
    const n = performance.getEntriesByType('navigation')[0];
    const files = performance.getEntriesByType('resource').filter(r => r.responseEnd <= n.loadEventEnd);
    return {ttfb: n.responseStart - n.startTime, dcl: n.domContentLoadedEventEnd - n.startTime,
            load: n.loadEventEnd - n.startTime, requests: 1 + files.length,
            bytes: n.transferSize + files.reduce((sum, r) => sum + r.transferSize, 0)};
}"""


def sign_in(page, url: str) -> None:
    page.goto(url + "/login")
    page.fill("#name", USER)
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    page.wait_for_selector("#who")
    who = page.inner_text("#who").strip()
    if who != USER:
        raise SystemExit(f"signed in as {who!r}, not {USER}")


def load_once(page, url: str) -> dict:
    page.goto(url, wait_until="load")
    page.wait_for_function("() => performance.getEntriesByType('navigation')[0].loadEventEnd > 0")
    if "/login" in page.url:
        raise SystemExit(f"{url} sent the browser to the sign-in page: the session ended")
    return page.evaluate(NAV_TIMING)


def page_loads(url: str, loads: int) -> dict:
    from playwright.sync_api import sync_playwright

    out: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_S * 1000)
            cdp = context.new_cdp_session(page)
            sign_in(page, url)
            for name, path in PAGES.items():
                cold, warm = [], []
                for _ in range(loads):
                    cdp.send("Network.clearBrowserCache")
                    cold.append(load_once(page, url + path))
                load_once(page, url + path)  # fills the cache again
                for _ in range(loads):
                    warm.append(load_once(page, url + path))
                out[name] = {"path": path, "cold": _medians(cold), "warm": _medians(warm),
                             "cold_loads": cold, "warm_loads": warm}
                print(f"  {name:<11} cold load {out[name]['cold']['load_ms']:7.1f} ms   "
                      f"warm load {out[name]['warm']['load_ms']:7.1f} ms", flush=True)
            context.close()
        finally:
            browser.close()
    return out


def _medians(samples: list[dict]) -> dict:
    return {"ttfb_ms": round(statistics.median(s["ttfb"] for s in samples), 1),
            "dom_content_loaded_ms": round(statistics.median(s["dcl"] for s in samples), 1),
            "load_ms": round(statistics.median(s["load"] for s in samples), 1),
            "load_max_ms": round(max(s["load"] for s in samples), 1),
            "requests": int(statistics.median(s["requests"] for s in samples)),
            "transfer_bytes": int(statistics.median(s["bytes"] for s in samples))}


def memory(rig: Rig, samples: int) -> dict:
    series = {"web": [], "noweb": []}
    for i in range(samples):
        for key, proc in (("web", rig.web), ("noweb", rig.noweb)):
            series[key].append(proc.memory())
        if i < samples - 1:
            time.sleep(1.0)
    out = {}
    for key, rows in series.items():
        out[key] = {m: round(statistics.median(r[m] for r in rows), 1) for m in ("rss_mib", "pss_mib", "threads")
                    if all(m in r for r in rows)}
        out[key]["rss_range_mib"] = [round(min(r["rss_mib"] for r in rows), 1),
                                     round(max(r["rss_mib"] for r in rows), 1)]
    out["web_adds_rss_mib"] = round(out["web"]["rss_mib"] - out["noweb"]["rss_mib"], 1)
    if "pss_mib" in out["web"] and "pss_mib" in out["noweb"]:
        out["web_adds_pss_mib"] = round(out["web"]["pss_mib"] - out["noweb"]["pss_mib"], 1)
    out["web_adds_threads"] = out["web"]["threads"] - out["noweb"]["threads"]
    return out


def main(argv=None) -> int:
    ap = parser(__doc__, RESULTS / "web.json")
    ap.add_argument("--loads", type=int, default=7, help="loads of each page, cold and warm each (default 7)")
    ap.add_argument("--settle", type=float, default=20.0,
                    help="seconds both appliances run before the first memory sample (default 20)")
    ap.add_argument("--samples", type=int, default=5, help="memory samples, one a second (default 5)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds of page loads, memory measured after each: does it level off? (default 2; "
                         "the load times are the first round's)")
    ap.add_argument("--fault-at", type=float, default=15.0, help="bearing-wear fault after this many seconds")
    ap.add_argument("--model", type=Path, default=None, help="a trained bundle to use (default: train the demo's)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, stores)")
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is absent (apt-get install -y chromium)")

    work = Path(tempfile.mkdtemp(prefix="bench-web-"))
    try:
        bundle = ensure_model(work, args.model)
        with Rig(work, bundle, args.fault_at) as rig:
            rig.wait_scoring()
            time.sleep(max(0.0, args.settle))
            alarm = rig.wait_alarm(TIMEOUT_S)
            print(f"appliances scoring (alarm raised: {alarm}); memory before any page load ...", flush=True)
            before = memory(rig, args.samples)
            rounds: list[dict] = []
            pages: dict = {}
            for i in range(max(1, args.rounds)):
                print(f"page loads, round {i + 1} ({args.loads} cold, {args.loads} warm each) ...", flush=True)
                loads = page_loads(rig.web.url, args.loads)
                pages = pages or loads
                time.sleep(2.0)  # the browser's connections and live stream closed
                rounds.append(memory(rig, args.samples))
            after = rounds[-1]
            rig.web.alive()
            rig.noweb.alive()
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'page':<11} {'path':<14} {'cold DCL':>9} {'cold load':>10} {'warm DCL':>9} {'warm load':>10} "
          f"{'warm TTFB':>10} {'cold req/bytes':>15} {'warm bytes':>11}   (ms, median of {args.loads})")
    for name, r in pages.items():
        print(f"{name:<11} {r['path']:<14} {r['cold']['dom_content_loaded_ms']:9.1f} {r['cold']['load_ms']:10.1f} "
              f"{r['warm']['dom_content_loaded_ms']:9.1f} {r['warm']['load_ms']:10.1f} {r['warm']['ttfb_ms']:10.1f} "
              f"{r['cold']['requests']:5d} {r['cold']['transfer_bytes']:9d} {r['warm']['transfer_bytes']:11d}")
    print()
    print(f"{'memory':<26} {'web RSS':>8} {'no-web RSS':>11} {'adds RSS':>9} {'adds PSS':>9} {'adds threads':>13}")
    labels = [("before any page load", before)] + [
        (f"after {(i + 1) * args.loads * 2 * len(PAGES)} page loads", m) for i, m in enumerate(rounds)]
    for label, m in labels:
        print(f"{label:<26} {m['web']['rss_mib']:8.1f} {m['noweb']['rss_mib']:11.1f} {m['web_adds_rss_mib']:9.1f} "
              f"{m.get('web_adds_pss_mib', float('nan')):9.1f} {m['web_adds_threads']:13d}   (MiB)")
    path = write_results(args.out, {
        "benchmark": "web", "loads": args.loads, "settle_s": args.settle, "samples": args.samples,
        "browser": CHROMIUM, "viewport": [1280, 800], "alarm_raised": alarm,
        "pages": pages, "rounds": len(rounds),
        "memory": {"before_page_loads": before, "after_page_loads": after, "after_each_round": rounds},
    })
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
