"""Simulator publishing over a real Mosquitto: pump samples, faults, CSV replay; the CLI, also as a child process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from appliance.broker import free_port
from appliance.connections.config import MqttBroker
from appliance.connectors.mqtt.config import MqttInputConfig
from appliance.connectors.mqtt.connector import MqttConnector
from appliance.settings import BackoffConfig
from firmware_sim.publisher import MqttPublisher, run_pump
from firmware_sim.pump import SENSORS
from firmware_sim.replay import read_rows, replay_csv
from tests.support.fakes import MemorySink
from tests.support.loop import on_loop
from tests.support.sim import ROOT, SKAB_SAMPLE, run_cli
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration  # a real Mosquitto per test; the PLC simulator in one


def start_connector(port: int, sink: MemorySink) -> MqttConnector:
    """The appliance's MQTT input on the test broker, subscribed (fast reconnects: the tests restart brokers)."""
    broker = MqttBroker(host="127.0.0.1", port=port, keepalive_s=5,
                        reconnect=BackoffConfig(initial_s=0.05, max_s=0.5))
    conn = MqttConnector(MqttInputConfig(client_id="sim-test-ingest"), broker, known_sensors=lambda a: SENSORS)
    on_loop(conn.start(sink))  # the connector runs on the loop that started it
    wait_until(lambda: conn.status()["subscribed"], what="connector to connect and subscribe")
    return conn


def stop_connector(conn: MqttConnector) -> None:
    on_loop(conn.stop())


class Subscriber:
    """Collects every message on a filter, in arrival order."""

    def __init__(self, port: int, topic: str = "plant/#"):
        self.messages: list[tuple[str, dict]] = []
        self.ready = threading.Event()
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="sim-test-sub")
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, json.loads(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.ready.wait(30), "subscriber not ready"

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def sub(mosquitto):
    s = Subscriber(mosquitto.port)
    yield s
    s.close()


def test_pump_publishes_every_sample_with_skab_sensors_and_fault_shows(mosquitto, sub):
    seen, calls = [], []
    t0 = time.time()
    stats = run_pump("127.0.0.1", mosquitto.port, asset="pumpX", rate_hz=40, seconds=3.0, fault="bearing_wear",
                     fault_at=1.0, severity=2.0, seed=4, on_sample=lambda ts, v: seen.append(ts),
                     on_started=lambda ts: calls.append(("started", ts, len(seen))),
                     on_fault=lambda after_s: calls.append(("fault", after_s, len(seen))))
    # Started once the first sample is out; the fault reported once, fault_at or later into the run.
    assert [c[0] for c in calls] == ["started", "fault"] and calls[0][1:] == (seen[0], 1)
    assert calls[1][1] >= 1.0 and seen[calls[1][2] - 1] >= stats.fault_injected_ts
    assert stats.complete and stats.published == stats.acked == stats.samples == len(seen) > 20
    wait_until(lambda: len(sub.messages) >= stats.samples, what="all samples at the subscriber")
    assert len(sub.messages) == stats.samples
    assert {t for t, _ in sub.messages} == {"plant/pumpX/telemetry"}
    payloads = [p for _, p in sub.messages]
    assert all(tuple(p["values"]) == SENSORS and "historical" not in p for p in payloads)
    ts = [p["ts"] for p in payloads]
    assert ts == sorted(ts) and ts == seen and t0 <= ts[0] and ts[-1] <= time.time()
    assert stats.fault == "bearing_wear" and ts[0] < stats.fault_injected_ts < ts[-1]
    acc = np.array([p["values"]["Accelerometer1RMS"] for p in payloads])
    before = acc[np.array(ts) < stats.fault_injected_ts]
    assert acc[-10:].mean() > before.mean() + 10 * before.std()


def test_pump_per_sensor_topics_and_stop_event(mosquitto, sub):
    stop_event = threading.Event()
    result = {}
    th = threading.Thread(target=lambda: result.update(stats=run_pump(
        "127.0.0.1", mosquitto.port, asset="p2", rate_hz=20, topic="plant/{asset}/{sensor}",
        stop_event=stop_event)))
    th.start()
    wait_until(lambda: len(sub.messages) >= 5 * len(SENSORS), what="some samples")
    stop_event.set()
    th.join(60)
    assert not th.is_alive(), "the pump did not stop when asked"
    stats = result["stats"]
    assert stats.complete and stats.published == stats.samples * len(SENSORS)
    wait_until(lambda: len(sub.messages) == stats.published, what="every message")
    assert {t for t, _ in sub.messages} == {f"plant/p2/{s}" for s in SENSORS}
    assert all(set(p) == {"ts", "value"} for _, p in sub.messages)


def test_pump_into_connector_rides_out_broker_restart(mosquitto):
    sink = MemorySink()
    conn = start_connector(mosquitto.port, sink)
    try:
        pub = MqttPublisher("127.0.0.1", mosquitto.port)
        pub.connect()
        restarted = threading.Event()

        def on_sample(ts, values):
            if not restarted.is_set() and len(seen) == 40:
                restarted.set()
                threading.Thread(target=mosquitto.restart).start()
            seen.append(ts)

        seen: list[float] = []
        stats = run_pump(publisher=pub, asset="pump1", rate_hz=50, seconds=3.0, seed=1, on_sample=on_sample,
                         flush_timeout=30)
        pub.close()
        assert restarted.is_set() and stats.complete
        wait_until(lambda: len({r.ts for r in sink.readings}) >= len(seen), 30, "every sample after restart")
        assert {r.ts for r in sink.readings} == set(seen)
        assert {r.sensor for r in sink.readings} == set(SENSORS) and not sink.dead
        assert conn.status()["reconnects"] >= 1
    finally:
        stop_connector(conn)


def test_replay_skab_file_publishes_every_row_with_original_timestamps(mosquitto, sub, skab_dir):
    path = skab_dir / "valve1" / "0.csv"
    with path.open() as f:
        expected = list(read_rows(f, str(path)))
    stats = replay_csv(path, "127.0.0.1", mosquitto.port, asset="pump9", speed="max")
    assert stats.complete and stats.samples == stats.published == len(expected) == 1147
    wait_until(lambda: len(sub.messages) >= len(expected), what="every row")
    got = [p for _, p in sub.messages]
    assert len(got) == len(expected)
    assert [(p["ts"], p["values"]) for p in got] == expected
    assert all(p["historical"] is True for p in got)
    assert set(got[0]["values"]) == set(SENSORS)  # label columns are not sensors
    first = datetime.fromtimestamp(got[0]["ts"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    assert first == path.read_text().splitlines()[1].split(";")[0]


def test_replay_paces_by_file_time_and_feeds_connector_as_historical(mosquitto, tmp_path):
    path = tmp_path / "short.csv"
    path.write_text(SKAB_SAMPLE)
    sink = MemorySink()
    conn = start_connector(mosquitto.port, sink)
    try:
        t = time.monotonic()
        stats = replay_csv(path, "127.0.0.1", mosquitto.port, asset="pump1", speed=10)
        elapsed = time.monotonic() - t
        assert elapsed >= 3 / 10 * 0.95  # the file spans 3 s; at 10x that is 0.3 s at least
        assert stats.complete and stats.samples == 3
        wait_until(lambda: len(sink.readings) == 8, what="8 readings")
        assert all(r.historical for r in sink.readings)
        t0 = datetime(2020, 3, 9, 10, 14, 33, tzinfo=timezone.utc).timestamp()
        assert sorted({r.ts for r in sink.readings}) == [t0, t0 + 1, t0 + 3]
        # Rebased replay is live data starting now.
        sink.readings.clear()
        now = time.time()
        replay_csv(path, "127.0.0.1", mosquitto.port, asset="pump1", speed=0, rebase=True)
        wait_until(lambda: len(sink.readings) == 8, what="rebased readings")
        assert not any(r.historical for r in sink.readings)
        assert min(r.ts for r in sink.readings) >= now - 1
    finally:
        stop_connector(conn)


def test_cli_pump_and_replay(mosquitto, sub, tmp_path):
    r = run_cli("pump", "--port", str(mosquitto.port), "--asset", "cli1", "--rate", "20", "--seconds", "1",
             "--fault", "cavitation", "--fault-at", "0.5", "--seed", "3", "--log-level", "WARNING")
    assert r.returncode == 0, r.stderr
    n = int(r.stdout.split("published=")[1].split()[0])
    assert n > 5 and f"acked={n}" in r.stdout and "fault=cavitation" in r.stdout
    # A supervising process learns from stdout when publishing starts and when the fault goes in.
    lines = r.stdout.splitlines()
    assert lines[0] == f"appliance-sim pump: publishing asset=cli1 rate_hz=20 broker=127.0.0.1:{mosquitto.port}"
    assert lines[1].startswith("appliance-sim pump: fault_injected fault=cavitation severity=1 after_s=")
    assert float(lines[1].rsplit("after_s=", 1)[1]) >= 0.5
    assert lines[2].startswith("appliance-sim pump: published=") and len(lines) == 3
    path = tmp_path / "skab.csv"
    path.write_text(SKAB_SAMPLE)
    r = run_cli("replay", str(path), "--port", str(mosquitto.port), "--asset", "cli2", "--speed", "max")
    assert r.returncode == 0, r.stderr
    assert "published=3 acked=3" in r.stdout
    wait_until(lambda: len(sub.messages) == n + 3, what="CLI messages")
    bad = tmp_path / "bad.csv"
    bad.write_text("ts,a\nnoon,1\n")
    r = run_cli("replay", str(bad), "--port", str(mosquitto.port))
    assert r.returncode == 2 and "time 'noon'" in r.stderr
    r = run_cli("pump", "--fault", "sensor_drift", "--severity", "7")
    assert r.returncode == 2 and "severity" in r.stderr


def _child(*args) -> subprocess.Popen:
    """The CLI as a supervised child: stdin a pipe the test never writes, stdout read line by line."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "firmware_sim.cli", *args, "--stop-on-stdin-eof"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)


def _read_until(proc: subprocess.Popen, prefix: str) -> str:
    for line in proc.stdout:
        if line.startswith(prefix):
            return line.rstrip("\n")
    proc.wait()
    raise AssertionError(f"no line starting {prefix!r}; exit {proc.returncode}; stderr:\n{proc.stderr.read()[-3000:]}")


def _finish(proc: subprocess.Popen) -> tuple[str, str]:
    """The rest of the child's output once it has exited (killed if it is still running after a minute)."""
    try:
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.stdout.read(), proc.stderr.read()


def test_cli_pump_stops_cleanly_when_its_parent_closes_stdin(mosquitto, sub):
    proc = _child("pump", "--port", str(mosquitto.port), "--asset", "child1", "--rate", "20", "--log-level", "WARNING")
    try:
        _read_until(proc, "appliance-sim pump: publishing asset=child1")
        wait_until(lambda: len(sub.messages) >= 3, what="samples from the child")
        proc.stdin.close()  # what the kernel does when the parent dies, however it dies
    finally:
        out, err = _finish(proc)
    assert proc.returncode == 0, err
    n = int(out.split("published=")[1].split()[0])
    assert n >= 3 and f"acked={n}" in out
    wait_until(lambda: len(sub.messages) == n, what="every message the child published")


def test_cli_plc_injects_the_fault_at_the_given_time_and_stops_when_stdin_closes(tmp_path):
    from asyncua import Client

    port = free_port()
    proc = _child("plc", "--port", str(port), "--security", "none", "--period", "0.1", "--seed", "11",
                  "--fault", "bearing_wear:1", "--fault-at", "1.5", "--log-level", "WARNING")
    try:
        assert _read_until(proc, "PLC simulator listening on ") == \
            f"PLC simulator listening on opc.tcp://127.0.0.1:{port}/appliance/plc"
        line = _read_until(proc, "PLC simulator: fault_injected ")
        assert line.startswith("PLC simulator: fault_injected fault=bearing_wear severity=1 after_s=")
        assert float(line.rsplit("after_s=", 1)[1]) >= 1.5

        async def active_fault() -> str:
            async with Client(f"opc.tcp://127.0.0.1:{port}/appliance/plc", timeout=10) as c:
                return await c.get_node("ns=2;s=Pump1.ActiveFault").read_value()

        # The scan publishes the model's faults every period; the next scan after injection shows it.
        wait_until(lambda: asyncio.run(active_fault()) == "bearing_wear", 30, "ActiveFault on the PLC")
        proc.stdin.close()
    finally:
        out, err = _finish(proc)
    assert proc.returncode == 0, err
