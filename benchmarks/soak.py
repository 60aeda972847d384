"""Soak: the appliance for a long run at a steady rate, with broker restarts and kill -9 (not part of CI).

    .venv/bin/python benchmarks/soak.py [--minutes 30] [--rate N | --fraction 0.8] [--out soak.json]

A private Mosquitto (persistence on, no queue limit) and the appliance (the real
runtime built from a config, as ``appliance run`` builds it: MQTT connector,
SQLite store, windows, INT8 scoring, alarms) run as their own processes. A
publisher sends ``{"ts": epoch_ms, "value": v}`` at QoS 1 on 32 topics (the peer
rig's shape) at ``--rate`` msg/s; without it, at ``--fraction`` of the rate the
appliance sustained in a probe first (as fast as it stores, with the backlog
held under 20,000 messages: a deep backlog measures Mosquitto's persistence
instead; the probe is also bounded by the paho publisher, ~18,000 msg/s here). Every ``--broker-every`` minutes
the broker is restarted (SIGTERM, as a service manager does), and every
``--kill-every`` minutes, offset by half that, the appliance is killed with
SIGKILL and started again.

Reported (and written as JSON): messages published and stored (every
published message has a unique (asset, sensor, ts), so lost = published -
stored); messages the appliance handled more than once (redeliveries after a
kill -9 or a lost connection, stored once: approximate, from its status
snapshots, which are at most a second old when it is killed); RSS over time;
and each disruption's recovery time: until the appliance is connected again,
and until it has caught up (its store holds everything published before the
disruption ended).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.broker import Mosquitto, free_port, stop_process  # noqa: E402
from benchmarks.common import RESULTS, parser, write_results  # noqa: E402

ASSETS = [f"asset{a}" for a in range(4)]
SENSORS = [f"s{s}" for s in range(8)]
TOPICS = [f"plant/{a}/{s}" for a in ASSETS for s in SENSORS]


# ============================================================================ the appliance under test

def subject_main(args) -> None:
    """The appliance, as ``appliance run`` builds it, writing a status snapshot every second."""
    import asyncio

    from appliance.config import load_config
    from appliance.runtime import build

    cfg = load_config(args.config)
    snapshot = Path(args.snapshot)

    async def main():
        app = build(cfg)
        await app.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            mqtt_status = app.inputs[0].status()
            doc = {"t": time.time(), "messages": mqtt_status["messages"], "connected": mqtt_status["connected"],
                   "gaps": (mqtt_status.get("gaps") or {}).get("gaps"), "pid": os.getpid()}
            tmp = snapshot.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc))
            tmp.replace(snapshot)
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
        await app.shutdown()

    asyncio.run(main())


class Subject:
    def __init__(self, work: Path, port: int, bundle: Path):
        self.work = work
        self.config = work / "appliance.toml"
        self.config.write_text(f"""
data_dir = "{work / 'data'}"
log_level = "WARNING"
[connections.mqtt]
port = {port}
[inputs.mqtt]
client_id = "appliance-soak"
topics = [{{pattern = "plant/{{asset}}/{{sensor}}"}}]
[detector]
bundle = "{bundle}"
[windows]
period_s = 0.1
[store]
max_readings = 1000000000     # a soak counts every reading: retention must not drop any
[web]
enabled = false
[outputs.history]
enabled = false
""")
        self.snapshot = work / "status.json"
        self.proc: subprocess.Popen | None = None
        self.lives: list[dict] = []  # the last snapshot of each life
        self.log = open(work / "appliance.log", "ab")

    @property
    def db(self) -> Path:
        return self.work / "data" / "appliance.db"

    def start(self) -> None:
        self.snapshot.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "subject", "--config",
                                      str(self.config), "--snapshot", str(self.snapshot)],
                                     cwd=ROOT, stdout=self.log, stderr=self.log)

    def status(self) -> dict | None:
        try:
            return json.loads(self.snapshot.read_text())
        except (OSError, ValueError):
            return None

    def end_life(self, sig: int) -> None:
        last = self.status()
        stop_process(self.proc, sig, 60)
        after = self.status()  # a clean stop may write one more
        self.lives.append(after or last or {"messages": 0})
        self.proc = None

    def rss_mib(self) -> float | None:
        if self.proc is None:
            return None
        try:
            for line in open(f"/proc/{self.proc.pid}/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None


def stored(db: Path, exact: bool = False) -> int:
    """Readings in the store: the highest row id (rows are never deleted here, and a duplicate takes
    no id), or with ``exact`` a full count."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            sql = "SELECT COUNT(*) FROM readings" if exact else "SELECT COALESCE(MAX(id), 0) FROM readings"
            return conn.execute(sql).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


# ============================================================================ the publisher

class Publisher:
    """QoS 1 at a steady rate; a persistent session, so a broker restart loses nothing on this side."""

    def __init__(self, port: int):
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-publisher", clean_session=False)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.1, 1.0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_ms = 0.0

    def start(self, rate: float, backlog: Callable[[], int] | None = None, max_backlog: int = 20_000) -> None:
        """Publish at ``rate`` msg/s until :meth:`stop`; with ``rate`` 0 as fast as the appliance
        keeps up: pausing while ``backlog()`` (published, not yet stored) is over ``max_backlog``."""
        self.stop()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(rate, backlog, max_backlog), daemon=True)
        self._thread.start()

    def _run(self, rate: float, backlog: Callable[[], int] | None, max_backlog: int) -> None:
        first = self.sent
        t0 = time.perf_counter()
        while not self._stop.is_set():
            i = self.sent
            if rate > 0:
                due = first + int((time.perf_counter() - t0) * rate)
            elif backlog is not None and backlog() > max_backlog:
                due = i  # a backlog in the broker measures the broker's persistence, not the appliance
            else:
                due = i + 500
            if due <= i:
                time.sleep(0.001 if rate > 0 else 0.02)
                continue
            for i in range(i, min(due, i + 500)):
                # A unique ts (a microsecond apart at least, never far ahead of the clock),
                # so lost = published - stored.
                ts = max(time.time() * 1000.0, self._last_ms + 0.001)
                self._last_ms = ts
                self.client.publish(TOPICS[i % len(TOPICS)], b'{"ts":%.3f,"value":%.4f}' % (ts, (i % 1000) / 10.0),
                                    qos=1)
                with self._lock:
                    self.sent += 1

    def published(self) -> int:
        with self._lock:
            return self.sent

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ============================================================================ the run

def caught_up(subject: Subject, publisher: Publisher, timeout: float) -> tuple[float | None, float | None]:
    """Seconds until the appliance is connected again, and until its store holds as many readings
    as had been published when the disruption ended (the broker delivers a session's queue in order)."""
    t0 = time.monotonic()
    n = publisher.published()
    connected_at = None
    while time.monotonic() - t0 < timeout:
        st = subject.status()
        if connected_at is None and st and st.get("connected") and st.get("pid") == getattr(subject.proc, "pid", None):
            connected_at = round(time.monotonic() - t0, 2)
        if stored(subject.db) >= n:
            return connected_at if connected_at is not None else round(time.monotonic() - t0, 2), \
                round(time.monotonic() - t0, 2)
        time.sleep(0.2)
    return connected_at, None


def probe_rate(subject: Subject, publisher: Publisher, seconds: float) -> float:
    """As fast as the appliance keeps up (a bounded backlog) for ``seconds``: the rate it stored at."""
    base = stored(subject.db) - publisher.published()
    publisher.start(0, backlog=lambda: publisher.published() - (stored(subject.db) - base))
    time.sleep(2)  # the backlog fills
    t0, before = time.monotonic(), stored(subject.db)
    time.sleep(seconds)
    rate = (stored(subject.db) - before) / (time.monotonic() - t0)
    publisher.stop()
    n = publisher.published()
    while stored(subject.db) - base < n and time.monotonic() - t0 < seconds + 300:
        time.sleep(0.2)
    return rate


def main_run(args) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import peer  # the peer benchmark's model of the rig's eight sensors

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what was started, on the way out
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = peer.ensure_bundle(60, 0.1)
    port = free_port()
    broker = Mosquitto(work / "broker", port=port).start()
    subject = Subject(work, port, bundle)
    subject.start()
    publisher = Publisher(port)
    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "minutes": args.minutes,
                    "disruptions": [], "rss": []}
    try:
        t_online = time.monotonic()
        while not (subject.status() or {}).get("connected"):
            if time.monotonic() - t_online > 120:
                raise SystemExit("the appliance did not connect")
            time.sleep(0.2)
        if args.rate:
            rate = args.rate
        else:
            sustained = probe_rate(subject, publisher, args.probe_s)
            rate = args.fraction * sustained
            report["sustained_rate"] = round(sustained, 1)
        report["rate"] = round(rate, 1)
        print(f"soak: {rate:.0f} msg/s for {args.minutes:g} min; broker restart every {args.broker_every:g} min, "
              f"kill -9 every {args.kill_every:g} min", flush=True)
        publisher.start(rate)
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        next_broker = t0 + args.broker_every * 60
        next_kill = t0 + args.kill_every * 30
        next_rss = t0
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_rss:
                report["rss"].append({"t_s": round(now - t0, 1), "rss_mib": subject.rss_mib(),
                                      "stored": stored(subject.db), "published": publisher.published()})
                next_rss = now + args.rss_every
            if now >= next_broker:
                next_broker += args.broker_every * 60
                t = time.monotonic()
                broker.restart(down_s=args.down_s)
                connected, drained = caught_up(subject, publisher, 300)
                report["disruptions"].append({"kind": "broker restart", "t_s": round(t - t0, 1), "down_s": args.down_s,
                                              "reconnected_s": connected, "caught_up_s": drained})
                print(f"  broker restart at {t - t0:.0f} s: caught up after {drained} s", flush=True)
            elif now >= next_kill:
                next_kill += args.kill_every * 60
                t = time.monotonic()
                subject.end_life(signal.SIGKILL)
                subject.start()
                connected, drained = caught_up(subject, publisher, 300)
                report["disruptions"].append({"kind": "kill -9", "t_s": round(t - t0, 1), "reconnected_s": connected,
                                              "caught_up_s": drained})
                print(f"  kill -9 at {t - t0:.0f} s: connected after {connected} s, caught up after {drained} s",
                      flush=True)
            time.sleep(0.5)
        publisher.stop()
        n = publisher.published()
        deadline = time.monotonic() + 300
        while stored(subject.db) < n and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)
        total_stored = stored(subject.db, exact=True)
        subject.end_life(signal.SIGTERM)
        handled = sum(life.get("messages", 0) for life in subject.lives)
        report.update({
            "published": n, "stored": total_stored, "lost": n - total_stored,
            "redelivered_approx": max(0, handled - total_stored),
            "rss_max_mib": max((r["rss_mib"] or 0) for r in report["rss"]) if report["rss"] else None,
            "gaps_seen_last_life": (subject.lives[-1] or {}).get("gaps"),
        })
    finally:
        publisher.stop()
        publisher.close()
        if subject.proc is not None:
            subject.end_life(signal.SIGTERM)
        broker.stop()
    print(json.dumps({k: v for k, v in report.items() if k != "rss"}, indent=2))
    write_results(args.out, report)
    print(f"JSON: {args.out}  work: {work}")
    return 0 if report.get("lost") == 0 else 2


def main(argv=None) -> int:
    ap = parser(__doc__, RESULTS / "soak.json")
    sub = ap.add_subparsers(dest="cmd")
    s = sub.add_parser("subject", help="(internal) the appliance under test")
    s.add_argument("--config", required=True)
    s.add_argument("--snapshot", required=True)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, help="msg/s (default: --fraction of a flat-out probe)")
    ap.add_argument("--fraction", type=float, default=0.8)
    ap.add_argument("--probe-s", type=float, default=20.0)
    ap.add_argument("--broker-every", type=float, default=5.0, help="minutes between broker restarts")
    ap.add_argument("--kill-every", type=float, default=5.0, help="minutes between kill -9 (offset by half)")
    ap.add_argument("--down-s", type=float, default=2.0, help="how long the broker stays down")
    ap.add_argument("--rss-every", type=float, default=10.0, help="seconds between RSS samples")
    ap.add_argument("--work")
    args = ap.parse_args(argv)
    if args.cmd == "subject":
        subject_main(args)
        return 0
    return main_run(args)


if __name__ == "__main__":
    sys.exit(main())
