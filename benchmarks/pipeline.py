"""End-to-end pipeline benchmark against a real Mosquitto and a real appliance process.

Measures, in one run on this machine:

* latency from a reading's publish to the alarm event's arrival on the MQTT alarm
  topic (publisher, broker, connector, windows, INT8 detector, decision, store
  queue, notifier, broker, subscriber): median, p99 and maximum over many raise
  cycles (p99 only from at least 100 of them: below that it would be the maximum);
* readings per second one appliance process sustains, from the first publish to
  the last reading committed to its SQLite store (multi-value payloads, QoS 1).

The appliance runs as its own process (`appliance run`), as in the field.

    .venv/bin/python benchmarks/pipeline.py [--bundle DIR] [--cycles 300] [--rows 20000]

Writes benchmarks/results/pipeline.json (machine and library versions in front).
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.broker import Mosquitto  # noqa: E402
from appliance.detector.train import read_csv_rows, train_bundle  # noqa: E402
from appliance.eval.datasets import skab_dir  # noqa: E402
from benchmarks.common import RESULTS, machine, parser, write_results  # noqa: E402
from rigs.store_peek import count_rows  # noqa: E402

SKAB_FREE = skab_dir() / "anomaly-free" / "anomaly-free.csv"


def start_appliance(tmp: Path, port: int, bundle: Path) -> subprocess.Popen:
    cfg = tmp / "bench.toml"
    cfg.write_text(f"""
data_dir = "{tmp / 'data'}"
log_level = "WARNING"
[connections.mqtt]
port = {port}
[detector]
bundle = "{bundle}"
[store]
max_in_flight = 50000
[web]
enabled = false
[outputs.history]
enabled = false
""")
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "--config", str(cfg)], cwd=ROOT)
    online = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-status")
    sub.on_message = lambda c, u, m: json.loads(m.payload).get("state") == "online" and online.set()
    sub.connect("127.0.0.1", port)
    sub.subscribe("appliance/status", qos=1)
    sub.loop_start()
    if not online.wait(120):
        proc.kill()
        raise SystemExit("appliance did not come online")
    sub.disconnect()
    sub.loop_stop()
    return proc


def stored_readings(db: Path) -> int:
    return count_rows(db, "readings")


def publisher(port: int, client_id: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.max_inflight_messages_set(200)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def payload(ts: float, sensors, row) -> str:
    return json.dumps({"ts": ts, "values": {s: float(v) for s, v in zip(sensors, row)}})


def measure_latency(port: int, sensors, rows, cycles: int, row_interval_s: float) -> list[float]:
    """Repeated fault episodes; latency of each 'raised' event from its triggering reading's publish."""
    published: dict[float, float] = {}
    latencies: list[float] = []
    done = threading.Event()

    def on_alarm(c, u, m):
        now = time.perf_counter()
        doc = json.loads(m.payload)
        if doc.get("event") == "raised":
            t_pub = published.get(doc["alarm"]["start"])
            if t_pub is not None:
                latencies.append(now - t_pub)
            if len(latencies) >= cycles:
                done.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-alarms")
    sub.on_message = on_alarm
    sub.connect("127.0.0.1", port)
    sub.subscribe("appliance/alarms/+/events", qos=1)
    sub.loop_start()
    pub = publisher(port, "bench-latency")
    fault_col = list(sensors).index("Accelerometer1RMS")
    scale = float(np.std(rows[:, fault_col]) or 1.0)
    ts0 = float(int(time.time()) - 86400)  # in the past: valid, and never in the future
    i = 0
    next_t = time.perf_counter()
    for _ in range(cycles):
        episode = [False] * 40 + [True] * 10 + [False] * 45
        for faulty in episode:
            row = rows[i % len(rows)].copy()
            if faulty:
                row[fault_col] += 40 * scale
            ts = ts0 + i
            next_t += row_interval_s
            time.sleep(max(0.0, next_t - time.perf_counter()))
            published[ts] = time.perf_counter()
            pub.publish("plant/bench/telemetry", payload(ts, sensors, row), qos=1)
            i += 1
    done.wait(30)
    pub.disconnect()
    pub.loop_stop()
    sub.disconnect()
    sub.loop_stop()
    return latencies


def measure_throughput(port: int, db: Path, sensors, rows, n_rows: int) -> tuple[float, int]:
    before = stored_readings(db)
    pub = publisher(port, "bench-throughput")
    ts0 = float(int(time.time()) - 3 * 86400)
    t0 = time.perf_counter()
    for i in range(n_rows):
        pub.publish("plant/bulk/telemetry", payload(ts0 + i, sensors, rows[i % len(rows)]), qos=1)
    target = before + n_rows * len(sensors)
    deadline = time.monotonic() + 600
    while stored_readings(db) < target and time.monotonic() < deadline:
        time.sleep(0.05)
    elapsed = time.perf_counter() - t0
    got = stored_readings(db) - before
    pub.disconnect()
    pub.loop_stop()
    return got / elapsed, got


P99_MIN_SAMPLES = 100  # with fewer, the 99th percentile by nearest rank is the maximum
LIBRARIES = ("onnxruntime", "paho-mqtt", "scikit-learn", "orjson")


def latency_summary(latencies_s: list[float]) -> dict:
    """n, median, p99 (nearest rank; None below ``P99_MIN_SAMPLES`` samples) and maximum, in ms."""
    ms = sorted(x * 1000 for x in latencies_s)
    if not ms:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    p99 = ms[-(-99 * len(ms) // 100) - 1] if len(ms) >= P99_MIN_SAMPLES else None
    return {"n": len(ms), "p50": round(statistics.median(ms), 2), "p99": round(p99, 2) if p99 is not None else None,
            "max": round(ms[-1], 2)}


def print_table(result: dict) -> None:
    m = machine(LIBRARIES)
    print(f"CPU: {m['cpu']} ({m['machine']}, {m['cores']} cores), load average {m['load_average']}")
    print(f"{'measure':45s} {'value':>12s}")
    L = result["latency_publish_to_alarm_ms"]
    print(f"{'publish -> alarm event, p50 (ms)':45s} {L['p50']!s:>12s}")
    print(f"{'publish -> alarm event, p99 (ms)':45s} {L['p99'] if L['p99'] is not None else 'too few':>12}")
    print(f"{'publish -> alarm event, max (ms)':45s} {L['max']!s:>12s}")
    print(f"{'raise events measured':45s} {L['n']:>12d}")
    print(f"{'sustained readings/s (broker -> SQLite)':45s} {result['throughput_readings_per_s']:>12.0f}")


def main() -> int:
    ap = parser(__doc__, RESULTS / "pipeline.json")
    ap.add_argument("--bundle", type=Path, help="model bundle (default: train one on SKAB anomaly-free)")
    ap.add_argument("--cycles", type=int, default=300, help="fault episodes for the latency measurement "
                    f"(a p99 needs at least {P99_MIN_SAMPLES}; each takes about 2 s)")
    ap.add_argument("--row-interval", type=float, default=0.02, help="seconds between rows while measuring latency")
    ap.add_argument("--rows", type=int, default=20000, help="rows (x8 readings) for the throughput measurement")
    args = ap.parse_args()

    sensors, _, rows = read_csv_rows([SKAB_FREE])
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bundle = args.bundle
        if bundle is None:
            _, ts, _ = read_csv_rows([SKAB_FREE])
            bundle = train_bundle(rows, sensors, tmp / "bundle", ts=ts)
        with Mosquitto(tmp / "broker") as broker:
            proc = start_appliance(tmp, broker.port, bundle)
            try:
                lat = measure_latency(broker.port, sensors, rows, args.cycles, args.row_interval)
                rate, n = measure_throughput(broker.port, tmp / "data" / "appliance.db", sensors, rows, args.rows)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    result = {
        "params": {"cycles": args.cycles, "row_interval_s": args.row_interval, "throughput_rows": args.rows,
                   "bundle": str(args.bundle) if args.bundle else f"trained on {SKAB_FREE.name}"},
        "latency_publish_to_alarm_ms": latency_summary(lat),
        "throughput_readings_per_s": round(rate, 1), "throughput_readings": n,
    }
    print_table(result)
    write_results(args.out, result, libraries=LIBRARIES)
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
