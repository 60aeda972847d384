"""Simulator publishing over a real Mosquitto: pump samples, faults, CSV replay, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from appliance.connectors.mqtt import MqttConnector
from firmware_sim.publisher import MqttPublisher, PublishError, run_pump
from firmware_sim.pump import SENSORS
from firmware_sim.replay import parse_speed, read_rows, replay_csv
from tests.test_mqtt_connector import MemorySink, make_cfg, start, stop, wait_for

ROOT = Path(__file__).resolve().parents[1]


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
        assert self.ready.wait(10), "subscriber not ready"

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def sub(mosquitto):
    s = Subscriber(mosquitto.port)
    yield s
    s.close()


def test_pump_publishes_every_sample_with_skab_sensors_and_fault_shows(mosquitto, sub):
    seen = []
    t0 = time.time()
    stats = run_pump("127.0.0.1", mosquitto.port, asset="pumpX", rate_hz=40, seconds=3.0, fault="bearing_wear",
                     fault_at=1.0, severity=2.0, seed=4, on_sample=lambda ts, v: seen.append(ts))
    assert stats.complete and stats.published == stats.acked == stats.samples == len(seen) > 20
    wait_for(lambda: len(sub.messages) >= stats.samples, what="all samples at the subscriber")
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
    wait_for(lambda: len(sub.messages) >= 5 * len(SENSORS), what="some samples")
    stop_event.set()
    th.join(10)
    assert not th.is_alive()
    stats = result["stats"]
    assert stats.complete and stats.published == stats.samples * len(SENSORS)
    wait_for(lambda: len(sub.messages) == stats.published, what="every message")
    assert {t for t, _ in sub.messages} == {f"plant/p2/{s}" for s in SENSORS}
    assert all(set(p) == {"ts", "value"} for _, p in sub.messages)


def test_pump_into_connector_rides_out_broker_restart(mosquitto):
    sink = MemorySink()
    conn = start(MqttConnector(make_cfg(mosquitto.port), known_sensors=lambda a: SENSORS), sink)
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
        wait_for(lambda: len({r.ts for r in sink.readings}) >= len(seen), 30, "every sample after restart")
        assert {r.ts for r in sink.readings} == set(seen)
        assert {r.sensor for r in sink.readings} == set(SENSORS) and not sink.dead
        assert conn.status()["reconnects"] >= 1
    finally:
        stop(conn)


SKAB_SAMPLE = ("datetime;Accelerometer1RMS;Current;Volume Flow RateRMS;anomaly;changepoint\n"
               "2020-03-09 10:14:33;0.0265878;1.3302;32.0;0.0;0.0\n"
               "2020-03-09 10:14:34;0.0261697;1.35399;32.0;0.0;0.0\n"
               "2020-03-09 10:14:36;0.026;;31.5;1.0;1.0\n")


def test_replay_doctests():
    import doctest

    from firmware_sim import replay

    assert doctest.testmod(replay).failed == 0


def test_read_rows_formats_and_errors(tmp_path):
    import io

    rows = list(read_rows(io.StringIO(SKAB_SAMPLE), "s.csv"))
    t0 = datetime(2020, 3, 9, 10, 14, 33, tzinfo=timezone.utc).timestamp()
    assert [ts for ts, _ in rows] == [t0, t0 + 1, t0 + 3]
    assert rows[2][1] == {"Accelerometer1RMS": 0.026, "Volume Flow RateRMS": 31.5}
    comma = "ts,a,b\n1700000000.5,1,2\n1700000001.5,3,nan\n"
    assert list(read_rows(io.StringIO(comma))) == [(1700000000.5, {"a": 1.0, "b": 2.0}),
                                                   (1700000001.5, {"a": 3.0})]
    with pytest.raises(ValueError, match=r"x.csv:3: column 'a': 'oops' is not a number"):
        list(read_rows(io.StringIO("ts,a\n1700000000,1\n1700000001,oops\n"), "x.csv"))
    with pytest.raises(ValueError, match=r"x.csv:2: time 'noon'"):
        list(read_rows(io.StringIO("ts,a\nnoon,1\n"), "x.csv"))
    with pytest.raises(ValueError, match="fields"):
        list(read_rows(io.StringIO("ts,a\n1700000000,1,2\n"), "x.csv"))
    with pytest.raises(ValueError, match="empty"):
        list(read_rows(io.StringIO(""), "x.csv"))
    assert parse_speed("max") == 0.0 and parse_speed(2) == 2.0
    with pytest.raises(ValueError):
        parse_speed("-1")


def test_replay_skab_file_publishes_every_row_with_original_timestamps(mosquitto, sub, skab_dir):
    path = skab_dir / "valve1" / "0.csv"
    with path.open() as f:
        expected = list(read_rows(f, str(path)))
    stats = replay_csv(path, "127.0.0.1", mosquitto.port, asset="pump9", speed="max")
    assert stats.complete and stats.samples == stats.published == len(expected) == 1147
    wait_for(lambda: len(sub.messages) >= len(expected), what="every row")
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
    conn = start(MqttConnector(make_cfg(mosquitto.port), known_sensors=lambda a: SENSORS), sink)
    try:
        t = time.monotonic()
        stats = replay_csv(path, "127.0.0.1", mosquitto.port, asset="pump1", speed=10)
        elapsed = time.monotonic() - t
        assert elapsed >= 3 / 10 * 0.95  # the file spans 3 s; at 10x that is 0.3 s at least
        assert stats.complete and stats.samples == 3
        wait_for(lambda: len(sink.readings) == 8, what="8 readings")
        assert all(r.historical for r in sink.readings)
        t0 = datetime(2020, 3, 9, 10, 14, 33, tzinfo=timezone.utc).timestamp()
        assert sorted({r.ts for r in sink.readings}) == [t0, t0 + 1, t0 + 3]
        # Rebased replay is live data starting now.
        sink.readings.clear()
        now = time.time()
        replay_csv(path, "127.0.0.1", mosquitto.port, asset="pump1", speed=0, rebase=True)
        wait_for(lambda: len(sink.readings) == 8, what="rebased readings")
        assert not any(r.historical for r in sink.readings)
        assert min(r.ts for r in sink.readings) >= now - 1
    finally:
        stop(conn)


def test_unreachable_broker_is_a_clear_error():
    from tests.support.mosquitto import free_port

    pub = MqttPublisher("127.0.0.1", free_port())
    with pytest.raises(PublishError, match="could not connect"):
        pub.connect(timeout=0.5)


def _cli(*args, timeout=60):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "firmware_sim.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_cli_pump_and_replay(mosquitto, sub, tmp_path):
    r = _cli("pump", "--port", str(mosquitto.port), "--asset", "cli1", "--rate", "20", "--seconds", "1",
             "--fault", "cavitation", "--fault-at", "0.5", "--seed", "3", "--log-level", "WARNING")
    assert r.returncode == 0, r.stderr
    n = int(r.stdout.split("published=")[1].split()[0])
    assert n > 5 and f"acked={n}" in r.stdout and "fault=cavitation" in r.stdout
    path = tmp_path / "skab.csv"
    path.write_text(SKAB_SAMPLE)
    r = _cli("replay", str(path), "--port", str(mosquitto.port), "--asset", "cli2", "--speed", "max")
    assert r.returncode == 0, r.stderr
    assert "published=3 acked=3" in r.stdout
    wait_for(lambda: len(sub.messages) == n + 3, what="CLI messages")
    bad = tmp_path / "bad.csv"
    bad.write_text("ts,a\nnoon,1\n")
    r = _cli("replay", str(bad), "--port", str(mosquitto.port))
    assert r.returncode == 2 and "time 'noon'" in r.stderr
    r = _cli("pump", "--fault", "sensor_drift", "--severity", "7")
    assert r.returncode == 2 and "severity" in r.stderr
