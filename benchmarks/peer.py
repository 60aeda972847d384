"""The appliance side by side with Node-RED on the peer rig's workload, in one invocation.

The rig (``../shared/bench/peer_nodered/``, its README says everything) publishes
``{"ts": epoch_ms, "value": v}`` at QoS 1 on 32 topics through a private
Mosquitto on loopback: a warm-up, 20 s at 1,000 msg/s for latency, then N
messages flat out. This script installs what the rig needs (its ``setup.sh``:
Mosquitto, Node-RED 4.1.8 from npm into a cache directory outside the
repository), then runs each subject ``--runs`` times, alternating, and prints
both side by side and writes the JSON:

    .venv/bin/python benchmarks/peer.py [--runs 3] [--n 200000] [--out benchmarks/results/peer.json]

Node-RED runs the rig's flow (a 60-value window per topic, mean and mean
squared deviation per message). The appliance runs what a deployment runs: the
MQTT connector (persistent session, PUBACK only once stored), the SQLite store
(``synchronous=FULL``), windows, INT8 scoring of every window, decisions and
alarms (stored, and published by the MQTT alarm notifier). A message counts as
processed when its reading is committed to the store; the latency echo for
``plant/lat/*`` is published as soon as the reading went through the detection
path (windows, scoring, decision): publish-to-decision.

The table's rows: msg/s flat out, CPU per 1,000 messages flat out, peak and
idle RSS, latency p50/p99 and CPU % of one core during the paced 1,000 msg/s
phase (the cost of a moderate steady rate, where per-message wake-ups rather
than parsing dominate), the subject's voluntary context switches per message in
that phase (how many thread hand-offs a message costs; see :class:`Wakeups`),
and how busy the machine was before each run.

The appliance subject is this file too (``peer.py subject``), started by the
rig with ``SUBJECT_CMD``; it speaks the rig's subject contract (``bench/out``,
``bench/count``, ``bench/ctl``, ``bench/lat``) through a small output plugin
whose MQTT traffic runs on the appliance's event loop, as Node-RED's runs on its
one JavaScript thread (see :class:`BenchOutput` and :class:`EchoWriter`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.core import Output  # noqa: E402
from benchmarks.common import RESULTS, parser, subject_or_side_by_side, write_results  # noqa: E402

RIG = ROOT.parent / "shared" / "bench" / "peer_nodered"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-appliance-bench"
SENSORS = [f"s{i}" for i in range(8)]  # the rig's plant/<asset>/s0..s7
# The rig's value generator (load.py), to train a model on what it will see.
VALUES = [20.0 + 5.0 * math.sin(i * 0.05) + 0.37 * ((i * 7919) % 13 - 6) for i in range(4096)]


# ============================================================================ the appliance as a rig subject

class CountingSink:
    """Between the MQTT connector and the appliance: counts a message once its readings are stored."""

    def __init__(self, app, bench: "BenchOutput"):
        self.app = app
        self.bench = bench

    def submit(self, readings, dead_letters=(), on_stored=None):
        n = len(readings) + len(dead_letters)
        bench = self.bench

        def stored():
            bench.processed(n)
            if on_stored is not None:
                on_stored()

        self.app.submit(readings, dead_letters, on_stored=stored)


class EchoWriter:
    """The latency echo's own MQTT 3.1.1 connection: QoS 1 PUBLISH packets written straight to the socket.

    The same wire traffic as a client library's publish, for ~1/5 of paho's CPU
    per message (the rig's own publisher does the same, see its README); the
    broker's PUBACKs are read in bulk once a second rather than waking the loop
    for each. The echo is the benchmark's instrument, not the appliance's work:
    it should cost no more than Node-RED's echo does (one call into its MQTT
    client on its event loop).
    """

    def __init__(self, host: str, port: int, client_id: str):
        import socket
        import struct

        self._struct = struct
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = (struct.pack("!H", 4) + b"MQTT" + bytes([4, 0x02]) + struct.pack("!H", 0)  # 3.1.1, clean, no keepalive
                + struct.pack("!H", len(client_id)) + client_id.encode())
        self.sock.sendall(bytes([0x10, len(body)]) + body)
        ack = self.sock.recv(4)
        if len(ack) < 4 or ack[0] != 0x20 or ack[3] != 0:
            raise RuntimeError(f"echo connection refused: {ack!r}")
        self.sock.setblocking(False)
        self._mid = 0
        self._pending = b""

    def publish(self, topic: bytes, payload: bytes) -> None:
        self._mid = self._mid % 65535 + 1
        rest = 2 + len(topic) + 2 + len(payload)  # < 128: a one-byte remaining length
        pack = self._struct.pack
        self.flush(bytes([0x32, rest]) + pack("!H", len(topic)) + topic + pack("!H", self._mid) + payload)

    def flush(self, packet: bytes = b"") -> None:
        data = self._pending + packet
        try:
            sent = self.sock.send(data) if data else 0
        except BlockingIOError:
            sent = 0
        self._pending = data[sent:]  # what the socket did not take goes with the next write

    def read_acks(self) -> None:
        while True:
            try:
                if not self.sock.recv(65536):
                    return
            except (BlockingIOError, InterruptedError):
                return

    def close(self) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.sendall(self._pending + b"\xe0\x00")  # DISCONNECT
        except OSError:
            pass
        self.sock.close()


class BenchOutput(Output):
    """The rig's subject contract: counts, resets, echoes (see the rig's README).

    Its paho client runs on the appliance's event loop (paho's external-loop
    mode: the socket is watched with ``add_reader``), not on a thread of its own:
    the echo is published on the loop where the decision was made, as Node-RED
    echoes on its one JavaScript thread, instead of costing two thread wake-ups
    per message (the publish, then its PUBACK) that no deployment pays.
    """

    name = "bench"

    def __init__(self, host: str, port: int):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.host, self.port = host, port
        self.count = 0
        self._lock = threading.Lock()
        self._loop = None
        self._tasks: list = []
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=f"appliance-bench-{os.getpid()}", protocol=paho.MQTTv311)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = lambda c, *a: c.subscribe("bench/ctl", 1)
        self.client.on_message = self._on_ctl
        self.client.on_socket_open = self._socket_open
        self.client.on_socket_close = self._socket_close
        self.echo = EchoWriter(host, port, f"appliance-echo-{os.getpid()}")

    async def start(self, ctx) -> None:
        self._loop = asyncio.get_running_loop()
        self.client.connect(self.host, self.port, keepalive=60)
        self._tasks = [asyncio.create_task(self._report(), name="bench-count")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        self.client.disconnect()
        self.echo.close()

    # -- paho on the event loop
    def _socket_open(self, client, userdata, sock) -> None:
        self._loop.add_reader(sock, client.loop_read)

    def _socket_close(self, client, userdata, sock) -> None:
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)

    def _flush_writes(self) -> None:
        # publish() writes at once when it can; what the socket did not take is written when it can.
        client = self.client
        client.loop_write()
        sock = client.socket()
        if sock is not None and not client.want_write():
            self._loop.remove_writer(sock)

    def _publish(self, topic: str, doc: dict) -> None:
        client = self.client
        client.publish(topic, json.dumps(doc), qos=1)
        sock = client.socket()
        if sock is not None and client.want_write():
            self._loop.add_writer(sock, self._flush_writes)

    # -- counting (the store writer thread calls this after each commit)
    def processed(self, n: int) -> None:
        with self._lock:
            before = self.count
            self.count = after = before + n
        if after // 1000 != before // 1000:
            self._loop.call_soon_threadsafe(self._publish, "bench/out",
                                            {"count": after - after % 1000, "t": time.time() * 1000.0})

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.client.loop_misc()  # keepalive
            self.echo.read_acks()
            self.echo.flush()
            with self._lock:
                n = self.count
            self._publish("bench/count", {"count": n, "t": time.time() * 1000.0, "ctl": None})

    def _on_ctl(self, client, userdata, msg) -> None:
        if msg.payload == b"reset":
            with self._lock:
                self.count = 0
            self._publish("bench/count", {"count": 0, "t": time.time() * 1000.0, "ctl": "reset"})

    # -- latency echo, after the detection path handled the reading (on the event loop)
    def on_reading(self, reading) -> None:
        if reading.asset == "lat":
            self.echo.publish(b"bench/lat", b'{"ts":%r}' % (reading.ts * 1000.0))

    def on_dead_letter(self, dead) -> None:
        if dead.source.startswith("plant/lat/"):  # the rig's readiness probe (sensor 'probe')
            try:
                ts = json.loads(dead.payload)["ts"]
            except (ValueError, KeyError, TypeError):
                return
            self.echo.publish(b"bench/lat", json.dumps({"ts": ts}).encode())


def subject_config(data: Path, host: str, port: int, bundle: Path, period_s: float, store: dict | None = None):
    from appliance.config import parse_config

    return parse_config({
        "store": store or {},
        "data_dir": str(data),
        "log_level": "WARNING",
        "connections": {"mqtt": {"host": host, "port": port, "keepalive_s": 30}},
        "inputs": {"mqtt": {"client_id": "appliance-peer-bench", "topics": [{"pattern": "plant/{asset}/{sensor}"}]}},
        "detector": {"bundle": str(bundle), "precision": "int8"},
        "windows": {"period_s": period_s},
        "web": {"enabled": False},
        "outputs": {"history": {"enabled": False}},
    }, "peer-bench")


async def run_subject(args) -> None:
    from appliance.core import PluginEnv
    from appliance.detector.scorer import Detector
    from appliance.registry import build_inputs, build_outputs
    from appliance.runtime import Appliance
    from appliance.store import Store

    host, port = os.environ.get("MQTT_HOST", "127.0.0.1"), int(os.environ["MQTT_PORT"])
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    store = {} if args.commit_linger_ms is None else {"commit_linger_ms": args.commit_linger_ms}
    cfg = subject_config(data, host, port, Path(args.bundle), args.period, store)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    detector = Detector.load(cfg.path(cfg.detector.bundle), precision="int8", threads=1)
    store = Store.from_config(cfg.store, cfg.path(cfg.store.path))
    env = PluginEnv(config=cfg, data_dir=cfg.path("."), sensors=tuple(detector.sensors))
    inputs = build_inputs(cfg.inputs, env)
    bench = BenchOutput(host, port)
    app = Appliance(cfg, detector, store, inputs=[], outputs=[*build_outputs(cfg.outputs, env), bench])
    await app.start()
    sink = CountingSink(app, bench)
    for c in inputs:
        await c.start(sink)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for c in inputs:
        await c.stop()
    await app.shutdown()
    print(json.dumps({"summary": app.summary(), "counters": app.counters.values,
                      "store": {"commits": store.committed_batches, "lingers": store.lingers},
                      "inputs": {c.name: c.status() for c in inputs}}, default=str), flush=True)


# ============================================================================ the side-by-side run

def ensure_bundle(window: int, period_s: float) -> Path:
    """A model of the rig's eight sensors (cached): the data the generator sends, on the appliance's grid."""
    import numpy as np

    from appliance.detector.train import TrainSettings, train_bundle

    out = CACHE / f"bundle-w{window}-p{period_s:g}"
    if (out / "bundle.json").exists():
        return out
    # Message i goes to topic i % 32 with VALUES[i & 4095]; asset0's sensor j sees i = 32 r + j.
    rows = np.array([[VALUES[(32 * r + j) & 4095] for j in range(8)] for r in range(4000)])
    tmp = out.with_suffix(".tmp")
    train_bundle(rows, SENSORS, tmp, TrainSettings(period_s=period_s, window=window, max_iter=30, seed=1))
    tmp.rename(out)
    return out


def setup(nodered_dir: Path) -> None:
    env = dict(os.environ, NODE_RED_DIR=str(nodered_dir), PY=sys.executable)
    subprocess.run(["bash", str(RIG / "setup.sh")], env=env, check=True)


def one_run(label: str, out: Path, args, bundle: Path, nodered_dir: Path) -> dict:
    env = dict(os.environ, RUNS="1", N=str(args.n), OUT=str(out), NODE_RED_DIR=str(nodered_dir), PY=sys.executable,
               LAT_SECS=str(args.lat_secs), LAT_RATE=str(args.lat_rate), WARMUP=str(args.warmup),
               SUBJECT_LABEL=label)
    env.pop("SUBJECT_CMD", None)
    if label == "appliance":
        env["SUBJECT_CMD"] = (f"{sys.executable} {Path(__file__).resolve()} subject --bundle {bundle} "
                              f"--data {out / 'data'} --period {args.period}")
        env["PYTHONPATH"] = str(ROOT)
    print(f"== {label}: {out}", flush=True)
    rig = subprocess.Popen(["bash", str(RIG / "run_bench.sh")], env=env)
    wakeups = Wakeups(rig.pid)
    wakeups.start()
    try:
        rig.wait(timeout=args.n / 200 + 1200)
    except subprocess.TimeoutExpired:
        rig.kill()
        rig.wait()
    wakeups.stop()
    result_file = out / "run1.json"
    res = json.loads(result_file.read_text()) if result_file.exists() else {"error": "no result", "phases": []}
    env_txt = out / "env.txt"
    for line in env_txt.read_text().splitlines() if env_txt.exists() else ():
        if "background_busy_pct=" in line:  # other jobs on the machine depress every figure
            res["background_busy_pct"] = float(line.rsplit("=", 1)[1])
    res["wakeups"] = wakeups.result()
    if label == "appliance":
        db = out / "data" / "appliance.db"
        if db.exists():
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            res["store"] = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                            for t in ("readings", "scores", "alarms", "dead_letters")}
            conn.close()
    return res


def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                kids.append(int(d))
    return kids


def _switches(pid: int) -> tuple[int, int] | None:
    """Voluntary and involuntary context switches of all the threads of ``pid`` so far."""
    vol = invol = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for t in tasks:
        try:
            for line in Path(f"/proc/{pid}/task/{t}/status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    vol += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    invol += int(line.split()[1])
        except OSError:
            continue
    return vol, invol


class Wakeups(threading.Thread):
    """The subject's context switches over the rig's paced phase (its ``plant/lat/s*`` messages).

    Every thread a message passes through is woken for it at a moderate rate, so
    voluntary context switches per message say how many hand-offs the ingest path
    makes (read from ``/proc/<pid>/task/*/status`` 20 times a second). The phase's
    first and last message are seen by a QoS 0 subscriber of our own on the rig's
    broker (found in the subject's environment), which costs the broker the same
    in both subjects' runs.
    """

    def __init__(self, rig_pid: int):
        super().__init__(name="wakeups", daemon=True)
        self.rig_pid = rig_pid
        self.samples: list[tuple[float, int, int]] = []
        self.first: float | None = None
        self.last: float | None = None
        self.n = 0
        self._stop_flag = threading.Event()
        self._client = None

    def _subject(self) -> int | None:
        level, found = [self.rig_pid], []
        for _ in range(3):  # the rig's shell, a subshell, the exec'd subject
            level = [kid for parent in level for kid in _children(parent)]
            found += level
        for pid in found:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"red.js" in cmd or b"peer.py\x00subject" in cmd:
                return pid
        return None

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic != "plant/lat/probe":
            now = time.time()
            if self.first is None:
                self.first = now
            self.last = now
            self.n += 1

    def run(self) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        pid = None
        while pid is None and not self._stop_flag.wait(0.2):
            pid = self._subject()
        if pid is None:
            return
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\x00")
        port = int(next(e for e in env if e.startswith(b"MQTT_PORT=")).split(b"=", 1)[1])
        client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"wakeups-{os.getpid()}")
        client.on_connect = lambda c, *a: c.subscribe("plant/lat/+", 0)
        client.on_message = self._on_message
        client.connect("127.0.0.1", port)
        client.loop_start()
        self._client = client
        while not self._stop_flag.wait(0.05):
            sw = _switches(pid)
            if sw is None:
                break
            self.samples.append((time.time(), *sw))

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(10)
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()

    def result(self) -> dict | None:
        if self.first is None or self.last is None or self.last - self.first < 1 or len(self.samples) < 2:
            return None
        inside = [s for s in self.samples if self.first <= s[0] <= self.last]
        if len(inside) < 2:
            return None
        (t0, v0, i0), (t1, v1, i1) = inside[0], inside[-1]
        msgs = self.n * (t1 - t0) / (self.last - self.first)  # the messages of the sampled span
        return {"seconds": round(t1 - t0, 2), "messages": round(msgs), "voluntary_per_s": round((v1 - v0) / (t1 - t0)),
                "involuntary_per_s": round((i1 - i0) / (t1 - t0)), "voluntary_per_msg": round((v1 - v0) / msgs, 2)}


def phase(res: dict, name: str) -> dict:
    return next((p for p in res.get("phases", []) if p.get("phase") == name), {})


# A subject whose latency echo took longer than this was starved of CPU by other jobs in the paced phase:
# it handled backlogs instead of single messages, so its switches per message say nothing about hand-offs.
WAKEUPS_VALID_P99_MS = 1000.0


def figures(res: dict) -> dict:
    th, lat = phase(res, "throughput"), phase(res, "latency")
    wakeups = res.get("wakeups") or {}
    if (lat.get("p99_ms") or 0.0) > WAKEUPS_VALID_P99_MS:
        wakeups = {}
    return {
        "ok": bool(th.get("ok")) and bool(lat.get("ok")),
        "msg_s": th.get("rate"),
        "cpu_ms_per_1k": None if th.get("subj_cpu_s_per_1k_msgs") is None else 1000 * th["subj_cpu_s_per_1k_msgs"],
        "peak_rss_mib": (res.get("subject_end") or {}).get("hwm_mib"),
        "idle_rss_mib": (res.get("subject_idle") or {}).get("rss_mib"),
        "lat_p50_ms": lat.get("p50_ms"),
        "lat_p99_ms": lat.get("p99_ms"),
        "cpu_pct_at_lat_rate": (lat.get("proc") or {}).get("subj_cpu_pct"),
        "final_count": th.get("final_count"),
        "background_busy_pct": res.get("background_busy_pct"),
        "store": res.get("store"),
        "ctx_switches_per_msg_at_lat_rate": wakeups.get("voluntary_per_msg"),
        "ctx_switches_per_s_at_lat_rate": wakeups.get("voluntary_per_s"),
    }


ROWS = [("msg/s", "msg_s", "{:,.0f}"), ("CPU ms per 1k msgs", "cpu_ms_per_1k", "{:.1f}"),
        ("peak RSS MiB", "peak_rss_mib", "{:.0f}"), ("idle RSS MiB", "idle_rss_mib", "{:.0f}"),
        ("latency p50 ms @1k msg/s", "lat_p50_ms", "{:.2f}"), ("latency p99 ms @1k msg/s", "lat_p99_ms", "{:.2f}"),
        ("CPU % of a core @1k msg/s", "cpu_pct_at_lat_rate", "{:.1f}"),
        ("voluntary context switches per msg @1k msg/s (runs with p99 < 1 s)", "ctx_switches_per_msg_at_lat_rate",
         "{:.2f}"),
        ("machine busy % before the run (other jobs)", "background_busy_pct", "{:.0f}")]


def cell(values: list, fmt: str) -> str:
    vals = [v for v in values if isinstance(v, (int, float))]
    if not vals:
        return "n/a"
    med = statistics.median(vals)
    if len(vals) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(vals))}-{fmt.format(max(vals))})"


def table(summary: dict) -> str:
    labels = list(summary)
    lines = ["| median (min-max) | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for title, key, fmt in ROWS:
        lines.append(f"| {title} | " + " | ".join(cell([f[key] for f in summary[lb]], fmt) for lb in labels) + " |")
    lines.append("| runs ok (exact count, every echo) | " + " | ".join(
        f"{sum(f['ok'] for f in summary[lb])}/{len(summary[lb])}" for lb in labels) + " |")
    return "\n".join(lines)


def run_side_by_side(args) -> int:
    nodered_dir = Path(args.nodered_dir)
    setup(nodered_dir)
    bundle = ensure_bundle(args.window, args.period)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="peer-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    raw: dict[str, list] = {label: [] for label in args.subjects}
    for i in range(args.runs):
        # Alternating order: a slow drift of the machine costs both subjects alike.
        order = args.subjects if i % 2 == 0 else list(reversed(args.subjects))
        for label in order:
            raw[label].append(one_run(label, work / f"{label}-run{i + 1}", args, bundle, nodered_dir))
    summary = {label: [figures(r) for r in runs] for label, runs in raw.items()}
    text = table(summary)
    print()
    print(text)
    doc = {"params": {"runs": args.runs, "n": args.n, "warmup": args.warmup, "lat_rate": args.lat_rate,
                      "lat_secs": args.lat_secs, "appliance_window": args.window, "appliance_period_s": args.period},
           "summary": summary, "table": text, "runs": raw, "work_dir": str(work)}
    write_results(args.out, doc)
    print(f"\nJSON: {args.out}   rig output: {work}")
    return 0 if all(f["ok"] for runs in summary.values() for f in runs) else 2


def main(argv=None) -> int:
    ap = parser(__doc__, RESULTS / "peer.json")
    sub = ap.add_subparsers(dest="cmd")
    s = sub.add_parser("subject", help="(internal) the appliance as the rig's subject")
    s.add_argument("--bundle", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--period", type=float, default=0.1)
    s.add_argument("--commit-linger-ms", type=float, help="[store] commit_linger_ms (default: the store's)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n", type=int, default=200_000, help="messages in each throughput phase (multiple of 1000)")
    ap.add_argument("--warmup", type=int, default=20_000)
    ap.add_argument("--lat-rate", type=float, default=1000.0)
    ap.add_argument("--lat-secs", type=float, default=20.0)
    ap.add_argument("--window", type=int, default=60, help="appliance model window (rows), as Node-RED's 60 values")
    ap.add_argument("--period", type=float, default=0.1, help="appliance grid period (s): 60 rows = 6 s of process")
    ap.add_argument("--subjects", nargs="+", default=["nodered", "appliance"], choices=["nodered", "appliance"])
    ap.add_argument("--nodered-dir", default=str(CACHE / "nodered"), help="where npm installs Node-RED")
    ap.add_argument("--work", help="where the rig's per-run output goes (default: a new temp dir)")
    return subject_or_side_by_side(ap, argv, run_subject, run_side_by_side)


if __name__ == "__main__":
    sys.exit(main())
