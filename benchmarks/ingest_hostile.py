"""How long the MQTT connector holds the event loop under issue 13's attack (not part of CI).

A private Mosquitto and an appliance (built from a config in this process, as
``rigs/appliance.py`` runs it: connector, store, windows, scoring)
receive ``--messages`` hostile messages of about 230 KB, each naming 21,000
unknown sensors, with two rows of good data from another asset after each. Before
the fix one such burst cost 6.47 GB and a lost connection.

Reported: the longest the connector's socket callbacks held the event loop
(``callback_max_ms``: parsing a burst and handing it to the store; while it runs
neither the detection path nor keepalives do), how many took longer than the
connector's own ``SLOW_CALLBACK_S`` (1 s, logged as ``slow_callback``), the
disconnects (the broker drops a client silent for 1.5 keepalives: 5 s here), and
the wall time from the first publish to every refusal counted. These are figures
of this machine, not pass/fail: ``tests/test_ingest_mqtt.py`` checks what the
attack costs in rows and disk, with no bound on time.

    .venv/bin/python benchmarks/ingest_hostile.py [--messages 40] [--out benchmarks/results/ingest_hostile.json]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.broker import Mosquitto  # noqa: E402
from appliance.connectors.mqtt_session import SLOW_CALLBACK_S  # noqa: E402
from appliance.detector.train import TrainSettings, train_bundle  # noqa: E402
from benchmarks.common import RESULTS, parser, write_results  # noqa: E402
from rigs.appliance import Publisher, RunningAppliance, make_config  # noqa: E402

SENSORS = ["a", "b", "c"]
UNKNOWN_SENSORS = 21_000
KEEPALIVE_S = 5


def normal(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return np.stack([np.sin(t / 9.0), np.cos(t / 9.0) + 0.05 * rng.standard_normal(n),
                     0.1 * rng.standard_normal(n)], axis=1)


def hostile_payload(now: float) -> str:
    return json.dumps({"ts": now, "values": {f"u{i:05d}": 1 for i in range(UNKNOWN_SENSORS)}},
                      separators=(",", ":"))


def good_rows(pub: Publisher, t0: float, seed: int) -> None:
    for i, row in enumerate(normal(2, seed)):
        pub.publish("plant/pump2/telemetry",
                    json.dumps({"ts": t0 + i, "values": {s: float(v) for s, v in zip(SENSORS, row)}}))


def attack(ra: RunningAppliance, port: int, messages: int) -> float:
    """Publish the attack; the seconds until every refusal and every good reading is counted."""
    pub = Publisher(port)
    try:
        now = time.time()
        hostile = hostile_payload(now)
        started = time.monotonic()
        for k in range(messages):
            pub.publish("plant/pump1/telemetry", hostile)
            good_rows(pub, now - 100 + 2 * k, k)
        pub.wait_all(600)
        ra.wait_until(lambda: ra.counter("dead_letters") >= messages * UNKNOWN_SENSORS
                      and ra.counter("readings") >= messages * 2 * len(SENSORS), 600, "every message handled")
        return time.monotonic() - started
    finally:
        pub.close()


def run(messages: int, work: Path) -> dict:
    bundle = train_bundle(normal(1200), SENSORS, work / "bundle",
                          TrainSettings(window=8, hidden=(16, 4), max_iter=30, seed=2))
    broker = Mosquitto(work / "mosquitto").start()
    try:
        cfg = make_config(work, broker.port, bundle, connections__mqtt__keepalive_s=KEEPALIVE_S)
        with RunningAppliance(cfg) as ra:
            wall_s = attack(ra, broker.port, messages)
            st = ra.app.status()["inputs"]["mqtt"]
    finally:
        broker.stop()
    return {"messages": messages, "payload_bytes": len(hostile_payload(time.time())),
            "unknown_sensors_per_message": UNKNOWN_SENSORS, "keepalive_s": KEEPALIVE_S,
            "callback_max_ms": st["callback_max_ms"], "slow_callbacks": st["slow_callbacks"],
            "slow_callback_s": SLOW_CALLBACK_S, "disconnects": st["disconnects"],
            "dead_letters": st["dead_letters"], "wall_s": round(wall_s, 2)}


def main(argv=None) -> int:
    ap = parser(__doc__, RESULTS / "ingest_hostile.json")
    ap.add_argument("--messages", type=int, default=40, help="hostile messages (the issue sent 40)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ingest-hostile-") as tmp:
        res = run(args.messages, Path(tmp))
    print(f"{res['messages']} x {res['payload_bytes']:,} B, {UNKNOWN_SENSORS:,} unknown sensors each: "
          f"longest loop callback {res['callback_max_ms']:.1f} ms, "
          f"{res['slow_callbacks']} over {SLOW_CALLBACK_S:g} s, {res['disconnects']} disconnects, "
          f"all handled in {res['wall_s']:.1f} s")
    print(f"written {write_results(args.out, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
