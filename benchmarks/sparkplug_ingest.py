"""The Sparkplug B input side by side with the JSON input, in one invocation: messages per second.

The workload is ``benchmarks/peer.py``'s (four assets of eight sensors, ``s0``..``s7``,
the rig's value generator, QoS 1 through a private Mosquitto on loopback), carried three ways:

* ``json``: the peer rig's messages, one ``{"ts", "value"}`` per message on
  ``plant/<asset>/<sensor>`` (the JSON input's figure in ``peer.json``);
* ``json8``: one JSON message per asset and instant with all eight values
  (``plant/<asset>/telemetry``, ``{"ts", "values": {...}}``);
* ``sparkplug``: one DDATA per asset and instant with all eight metrics by alias
  (``spBv1.0/bench/DDATA/gw1/<asset>``, seq counting on), after an NBIRTH and a
  DBIRTH per asset, encoded with the schema the tests check against Eclipse Tahu.

Each subject drains a backlog: its persistent session is made, ``--n`` messages are
queued for it at QoS 1, then the subject process starts and reads them all; msg/s is
messages over the time from its first message to its last one handled, CPU the
subject's own over that span. On a box shared with other jobs a subject gets the
share of a core the scheduler gives it (the ``busy`` row: CPU over wall time), so
msg/s follows the machine's load as much as the input's cost; CPU per message is
the steadier figure. Two depths: ``input`` (the input alone, its sink
acknowledging at once: what the input itself holds) and ``pipeline`` (what a
deployment runs: the store, windows of 60 rows at 0.1 s, INT8 scoring of every
window, decisions; a message counts once its readings are committed and its PUBACK
released). A Sparkplug message carries eight readings and completes a window; a
``json`` message carries one reading and an eighth of a window, so the pipeline
figures compare messages, not work: ``json8`` is the same work per message.

    .venv/bin/python benchmarks/sparkplug_ingest.py [--runs 3] [--n 50000] [--n-pipeline 10000] [--depth input pipeline]

Prints the table and writes ``benchmarks/results/sparkplug_ingest.json`` with the
machine, its load and the library versions (protobuf's implementation included: births
and DATA of a layout not seen yet are decoded by protobuf's C decoder, upb; DATA of a
learned layout are read from their bytes, ``appliance/connectors/sparkplug/shape.py``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, parser, subject_or_side_by_side, write_results  # noqa: E402
from benchmarks.mqtt_clients import connect_raw, recv_exactly, remaining_length  # noqa: E402
from benchmarks.peer import cell, ensure_bundle  # noqa: E402

SENSORS = [f"s{i}" for i in range(8)]
ASSETS = [f"asset{i}" for i in range(4)]
VALUES = [20.0 + 5.0 * math.sin(i * 0.05) + 0.37 * ((i * 7919) % 13 - 6) for i in range(4096)]
PERIOD_S = 0.1
CLIENT_ID = {"json": "bench-json", "json8": "bench-json8", "sparkplug": "bench-sparkplug"}
FILTERS = {"json": "plant/+/+", "json8": "plant/+/telemetry", "sparkplug": "spBv1.0/bench/#"}
GROUP, NODE = "bench", "gw1"


# ============================================================================ the messages

def readings_per_message(kind: str) -> int:
    return 1 if kind == "json" else len(SENSORS)


def messages(kind: str, n: int, t0: float) -> list[tuple[str, bytes]]:
    """The subject's backlog: births first (Sparkplug), then ``n`` data messages."""
    if kind == "json":
        out = []
        for i in range(n):  # row i // 32, asset (i // 8) % 4, sensor i % 8: every row complete
            ts = t0 + (i // 32) * PERIOD_S
            out.append((f"plant/{ASSETS[(i // 8) % 4]}/{SENSORS[i % 8]}",
                        json.dumps({"ts": round(ts * 1000), "value": VALUES[i & 4095]}).encode()))
        return out
    if kind == "json8":
        out = []
        for i in range(n):
            ts = t0 + (i // 4) * PERIOD_S
            values = {s: VALUES[(8 * i + j) & 4095] for j, s in enumerate(SENSORS)}
            out.append((f"plant/{ASSETS[i % 4]}/telemetry", json.dumps({"ts": round(ts * 1000), "values": values}).encode()))
        return out
    return sparkplug_messages(n, t0)


def sparkplug_messages(n: int, t0: float) -> list[tuple[str, bytes]]:
    from appliance.connections.sparkplug import DataType, Payload

    out = []
    seq = 0

    def payload(ts: float) -> Payload:
        nonlocal seq
        p = Payload(timestamp=round(ts * 1000), seq=seq)
        seq = (seq + 1) % 256
        return p

    birth = payload(t0 - 1)
    birth.metrics.add(name="bdSeq", datatype=DataType.UInt64, long_value=0)
    birth.metrics.add(name="Node Control/Rebirth", datatype=DataType.Boolean, boolean_value=False)
    out.append((f"spBv1.0/{GROUP}/NBIRTH/{NODE}", birth.SerializeToString()))
    for a, asset in enumerate(ASSETS):
        p = payload(t0 - 1)
        for j, s in enumerate(SENSORS):
            p.metrics.add(name=s, alias=10 * a + j, datatype=DataType.Double, double_value=VALUES[j])
        out.append((f"spBv1.0/{GROUP}/DBIRTH/{NODE}/{asset}", p.SerializeToString()))
    for i in range(n):
        a = i % 4
        p = payload(t0 + (i // 4) * PERIOD_S)
        for j in range(8):
            p.metrics.add(alias=10 * a + j, datatype=DataType.Double, double_value=VALUES[(8 * i + j) & 4095])
        out.append((f"spBv1.0/{GROUP}/DDATA/{NODE}/{ASSETS[a]}", p.SerializeToString()))
    return out


# ============================================================================ the broker side

def make_session(port: int, kind: str) -> None:
    """The subject's persistent session, subscribed at QoS 1: the broker queues its backlog."""
    sock = connect_raw(port, CLIENT_ID[kind], clean=False, keepalive_s=60)
    topic = FILTERS[kind].encode()
    body = struct.pack("!H", 1) + struct.pack("!H", len(topic)) + topic + b"\x01"
    sock.sendall(bytes([0x82]) + remaining_length(len(body)) + body)
    recv_exactly(sock, 5)  # SUBACK
    sock.sendall(b"\xe0\x00")
    sock.close()


def publish_all(port: int, msgs: list[tuple[str, bytes]]) -> None:
    """Every message at QoS 1, written in bulk; returns once the broker acknowledged them all."""
    sock = connect_raw(port, f"bench-publisher-{os.getpid()}", keepalive_s=60)
    acked = [0]

    def read_acks():
        buf = b""
        while acked[0] < len(msgs):
            chunk = sock.recv(65536)
            if not chunk:
                return
            buf += chunk
            k = len(buf) // 4  # PUBACKs only: 4 bytes each
            acked[0] += k
            buf = buf[4 * k:]

    reader = threading.Thread(target=read_acks, daemon=True)
    reader.start()
    out = bytearray()
    for mid0, (topic, payload) in enumerate(msgs):
        t = topic.encode()
        mid = mid0 % 65535 + 1
        body = struct.pack("!H", len(t)) + t + struct.pack("!H", mid) + payload
        out += bytes([0x32]) + remaining_length(len(body)) + body
        if len(out) > 1 << 20:
            sock.sendall(out)
            out = bytearray()
    sock.sendall(out)
    reader.join(600)
    if acked[0] < len(msgs):
        raise RuntimeError(f"broker acknowledged {acked[0]} of {len(msgs)} messages")
    sock.sendall(b"\xe0\x00")
    sock.close()


# ============================================================================ the subject (a process of its own)

class Counter:
    """The subject's sink in front of the appliance (or alone): when the backlog's readings are all handled."""

    def __init__(self, expected: int, inner=None):
        self.expected = expected
        self.inner = inner
        self.count = 0
        self.first_wall: float | None = None
        self.first_cpu = 0.0
        self.done = threading.Event()
        self.done_wall = 0.0
        self.done_cpu = 0.0
        self.dead = 0
        self._lock = threading.Lock()

    def submit(self, readings, dead_letters=(), on_stored=None):
        if self.first_wall is None:
            self.first_wall, self.first_cpu = time.perf_counter(), time.process_time()
        n = len(readings)
        self.dead += sum(d.count for d in dead_letters)

        def stored():
            if on_stored is not None:
                on_stored()
            with self._lock:
                self.count += n
                if self.count >= self.expected and not self.done.is_set():
                    self.done_wall, self.done_cpu = time.perf_counter(), time.process_time()
                    self.done.set()

        if self.inner is None:
            stored()
        else:
            self.inner.submit(readings, dead_letters, on_stored=stored)


def subject_config(kind: str, data: Path, port: int, bundle: Path):
    from appliance.config import parse_config

    inputs = {"mqtt": {"enabled": False}, "sparkplug": {"enabled": False}}
    if kind == "sparkplug":
        inputs["sparkplug"] = {"enabled": True, "client_id": CLIENT_ID[kind], "groups": [GROUP],
                               "max_unstored": 10_000}
    else:
        inputs["mqtt"] = {"client_id": CLIENT_ID[kind], "topics": [{"pattern": FILTERS[kind].replace(
            "+/+", "{asset}/{sensor}").replace("+/telemetry", "{asset}/telemetry")}]}
    return parse_config({
        "data_dir": str(data), "log_level": "WARNING",
        "connections": {"mqtt": {"host": "127.0.0.1", "port": port, "keepalive_s": 30}},
        "inputs": inputs,
        "detector": {"bundle": str(bundle), "precision": "int8"},
        "windows": {"period_s": PERIOD_S},
        "web": {"enabled": False},
        "outputs": {"history": {"enabled": False}},
    }, "sparkplug-bench")


async def run_subject(args) -> None:
    from appliance.core import PluginEnv
    from appliance.detector.scorer import Detector
    from appliance.registry import build_inputs
    from appliance.runtime import Appliance
    from appliance.store import Store

    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    cfg = subject_config(args.kind, data, args.port, Path(args.bundle))
    detector = Detector.load(cfg.path(cfg.detector.bundle), precision="int8", threads=1)
    env = PluginEnv(config=cfg, data_dir=cfg.path("."), sensors=tuple(detector.sensors))
    (inp,) = build_inputs(cfg.inputs, env)
    app = None
    if args.depth == "pipeline":
        store = Store.from_config(cfg.store, cfg.path(cfg.store.path))
        app = Appliance(cfg, detector, store, inputs=[], outputs=[])
        await app.start()
    counter = Counter(args.expected, inner=app)
    await inp.start(counter)
    if app is None:
        # As Appliance.start does once started: what start-up built (the model, the config, modules) is
        # moved out of the collector's sight, or every full collection walks it, at a cost that grows
        # with the objects a message allocates (eight readings a DDATA) and that no deployment pays.
        gc.freeze()
    loop = asyncio.get_running_loop()
    finished = await loop.run_in_executor(None, counter.done.wait, args.timeout)
    status = inp.status()
    await inp.stop()
    summary = None
    if app is not None:
        summary = dict(app.counters.values)
        await app.shutdown()
    span = counter.done_wall - (counter.first_wall or 0.0)
    print(json.dumps({
        "finished": bool(finished), "readings": counter.count, "dead_letters": counter.dead,
        "seconds": span if finished else None, "cpu_s": counter.done_cpu - counter.first_cpu if finished else None,
        "messages": status.get("messages"), "acks": status.get("acks"), "appliance": summary,
        "sparkplug": status.get("sparkplug"),
    }), flush=True)


# ============================================================================ the side-by-side run

def one_run(kind: str, depth: str, args, bundle: Path, work: Path) -> dict:
    from appliance.broker import Mosquitto

    t0 = time.time() - 86400  # yesterday: every timestamp in the past, none too old
    data_messages = args.n if depth == "input" else args.n_pipeline
    msgs = messages(kind, data_messages, t0)
    expected = data_messages * readings_per_message(kind) + (len(ASSETS) * len(SENSORS) if kind == "sparkplug" else 0)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto").start()
        try:
            make_session(broker.port, kind)
            publish_all(broker.port, msgs)
            cmd = [sys.executable, str(Path(__file__).resolve()), "subject", "--kind", kind, "--depth", depth,
                   "--port", str(broker.port), "--bundle", str(bundle), "--data", str(Path(tmp) / "data"),
                   "--expected", str(expected), "--timeout", str(args.timeout)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout + 120,
                                  env=dict(os.environ, PYTHONPATH=str(ROOT)))
        finally:
            broker.stop()
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"kind": kind, "depth": depth, "ok": False, "error": done.stderr[-2000:]}
    res = json.loads(lines[-1])
    ok = res["finished"] and res["dead_letters"] == 0 and (res["messages"] or 0) >= data_messages
    seconds = res["seconds"]
    return {"kind": kind, "depth": depth, "ok": bool(ok), "n": data_messages,
            "msg_s": round(data_messages / seconds, 1) if ok else None,
            "readings_s": round(res["readings"] / seconds, 1) if ok else None,
            "cpu_ms_per_1k_msgs": round(1e6 * res["cpu_s"] / data_messages, 2) if ok else None,
            "cpu_us_per_reading": round(1e6 * res["cpu_s"] / res["readings"], 2) if ok else None,
            # How much of one core the subject had while draining: on a shared box, other jobs set it.
            "busy_pct_of_core": round(100 * res["cpu_s"] / seconds, 1) if ok else None,
            "load_average_before": os.getloadavg()[0], **{k: res[k] for k in ("readings", "dead_letters", "messages",
                                                                              "acks", "appliance", "sparkplug")}}


def table(runs: list[dict], depths: list[str], kinds: list[str]) -> str:
    cols = [(d, k) for d in depths for k in kinds]
    lines = ["| median (min-max) | " + " | ".join(f"{k} ({d})" for d, k in cols) + " |", "|---|" + "---|" * len(cols)]
    for title, key, fmt in (("msg/s", "msg_s", "{:,.0f}"), ("readings/s", "readings_s", "{:,.0f}"),
                            ("CPU ms per 1k msgs", "cpu_ms_per_1k_msgs", "{:.1f}"),
                            ("CPU µs per reading", "cpu_us_per_reading", "{:.2f}"),
                            ("subject's CPU % of a core while draining", "busy_pct_of_core", "{:.0f}")):
        lines.append(f"| {title} | " + " | ".join(
            cell([r[key] for r in runs if (r["depth"], r["kind"]) == c], fmt) for c in cols) + " |")
    lines.append("| runs ok (every message, no dead letter) | " + " | ".join(
        f"{sum(r['ok'] for r in runs if (r['depth'], r['kind']) == c)}/"
        f"{sum(1 for r in runs if (r['depth'], r['kind']) == c)}" for c in cols) + " |")
    return "\n".join(lines)


def run_side_by_side(args) -> int:
    from google.protobuf.internal import api_implementation

    bundle = ensure_bundle(60, PERIOD_S)
    work = Path(tempfile.mkdtemp(prefix="sparkplug-bench-"))
    runs: list[dict] = []
    for i in range(args.runs):
        for depth in args.depth:
            # Alternating order: a drift of the machine's load costs every subject alike.
            order = args.kinds if i % 2 == 0 else list(reversed(args.kinds))
            for kind in order:
                r = one_run(kind, depth, args, bundle, work)
                print(f"run {i + 1} {depth:8s} {kind:9s} ok={r['ok']} msg/s={r.get('msg_s')} "
                      f"cpu_ms/1k={r.get('cpu_ms_per_1k_msgs')}", flush=True)
                runs.append(r)
    text = table(runs, args.depth, args.kinds)
    print()
    print(text)
    doc = {"params": {"runs": args.runs, "n": args.n, "n_pipeline": args.n_pipeline, "depths": args.depth, "kinds": args.kinds,
                      "period_s": PERIOD_S, "window": 60, "assets": len(ASSETS), "sensors": len(SENSORS)},
           "protobuf_implementation": api_implementation.Type(), "table": text, "runs": runs}
    write_results(args.out, doc, libraries=("protobuf", "paho-mqtt", "onnxruntime"))
    print(f"\nJSON: {args.out}")
    return 0 if all(r["ok"] for r in runs) else 2


def main(argv=None) -> int:
    ap = parser(__doc__, RESULTS / "sparkplug_ingest.json")
    sub = ap.add_subparsers(dest="cmd")
    s = sub.add_parser("subject", help="(internal) one subject draining its backlog")
    s.add_argument("--kind", choices=list(CLIENT_ID), required=True)
    s.add_argument("--depth", choices=["input", "pipeline"], required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--bundle", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--expected", type=int, required=True)
    s.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n", type=int, default=50_000, help="data messages per subject and run, input depth")
    ap.add_argument("--n-pipeline", type=int, default=10_000,
                    help="data messages per subject and run, pipeline depth (every Sparkplug or json8 message "
                         "is a window to score)")
    ap.add_argument("--depth", nargs="+", default=["input", "pipeline"], choices=["input", "pipeline"])
    ap.add_argument("--kinds", nargs="+", default=["json", "json8", "sparkplug"], choices=list(CLIENT_ID))
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds a subject may take to drain")
    return subject_or_side_by_side(ap, argv, run_subject, run_side_by_side)


if __name__ == "__main__":
    sys.exit(main())
