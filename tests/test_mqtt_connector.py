"""MQTT input connector against a real Mosquitto broker on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from appliance.broker import Mosquitto, free_port
from appliance.connections.config import MqttBroker
from appliance.connectors.mqtt.config import MqttInputConfig, MqttTopic
from appliance.settings import BackoffConfig, TlsConfig
from appliance.connectors import mqtt_session as mqtt_module
from appliance.connectors.mqtt.connector import MqttConnector
from rigs.tls_server import make_tls
from tests.support.fakes import MemorySink
from tests.support.loop import on_loop
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration  # a real Mosquitto per test

ROOT = Path(__file__).resolve().parents[1]
SKAB = ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
        "Thermocouple", "Voltage", "Volume Flow RateRMS")


class Publisher:
    """Test-side device: QoS 1 publishes, counts PUBACKs, rides out broker restarts."""

    def __init__(self, port: int, client_id: str = "test-device"):
        self.acked = 0
        self._lock = threading.Lock()
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.on_publish = self._on_publish
        self.connected = threading.Event()
        self.client.on_connect = lambda *a: self.connected.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(30), "test publisher could not connect"
        self.sent = 0

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._lock:
            self.acked += 1

    def publish(self, topic, payload, retain=False):
        if not isinstance(payload, (bytes, str)):
            payload = json.dumps(payload)
        self.client.publish(topic, payload, qos=1, retain=retain)
        self.sent += 1

    def flush(self, timeout=30.0):
        wait_until(lambda: self.acked >= self.sent, timeout, f"PUBACKs for {self.sent} messages",
                   detail=lambda: f"{self.acked} acknowledged")

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def make_cfg(port: int, client_id: str = "test-ingest", **kw) -> tuple[MqttInputConfig, MqttBroker]:
    """The connector's two arguments: its own section and the shared broker connection."""
    broker = kw.pop("broker", None) or MqttBroker(
        host="127.0.0.1", port=port, keepalive_s=5, reconnect=BackoffConfig(initial_s=0.05, max_s=0.5))
    return MqttInputConfig(client_id=client_id, **kw), broker


def start(conn, sink, wait_connected=True):
    on_loop(conn.start(sink))  # the connector runs on the loop that started it
    if wait_connected:
        wait_until(lambda: conn.status()["subscribed"], what="connector to connect and subscribe")
        # Subscriptions are sent right after CONNACK; a retained probe proves they are active.
    return conn


def stop(conn):
    on_loop(conn.stop())


def subscribed(conn, pub: Publisher, sink: MemorySink):
    """Block until the broker routes to the connector's subscriptions."""
    n = len(sink.dead)
    pub.publish("plant/probe/telemetry", b"probe")
    wait_until(lambda: len(sink.dead) > n, what="subscription to become active")


def assert_only_new_messages(port: int, pub: Publisher) -> None:
    """A new session of the default client gets what is published now and nothing from before."""
    sink = MemorySink()
    conn = start(MqttConnector(*make_cfg(port)), sink)
    try:
        pub.publish("plant/pump1/Current", {"ts": time.time(), "value": 99})
        wait_until(lambda: sink.values() == [99.0], what="only the new message")
        time.sleep(0.3)  # a late redelivery would land after the new message
        assert sink.values() == [99.0]
    finally:
        stop(conn)


def assert_redelivered(port: int, client_id: str, must, only, what: str) -> None:
    """The session of ``client_id``, started again, gets every value in ``must`` and none outside ``only``."""
    sink = MemorySink()
    conn = start(MqttConnector(*make_cfg(port, client_id=client_id)), sink)
    try:
        wait_until(lambda: set(sink.values()) >= set(must), what=what)
        assert set(sink.values()) <= set(only)
    finally:
        stop(conn)


@pytest.fixture
def pub(mosquitto):
    p = Publisher(mosquitto.port)
    yield p
    p.close()


def test_single_and_multi_payloads_arrive_once(mosquitto, pub):
    sink = MemorySink()
    conn = start(MqttConnector(*make_cfg(mosquitto.port), known_sensors=lambda asset: SKAB), sink)
    try:
        subscribed(conn, pub, sink)
        now = time.time()
        pub.publish("plant/pump1/Current", {"ts": now, "value": 2.5})
        pub.publish("plant/pump1/telemetry", {"ts": now, "values": {"Voltage": 231.0, "Pressure": 0.05},
                                              "quality": "uncertain"})
        pub.publish("plant/pump2/Temperature", {"ts": "2024-01-01T00:00:00Z", "value": 70})
        pub.flush()
        wait_until(lambda: len(sink.readings) >= 4, what="4 readings")
        time.sleep(0.3)  # a duplicate from overlapping subscriptions would land by now
        got = sorted((r.asset, r.sensor, r.value, r.quality.name) for r in sink.readings)
        assert got == [("pump1", "Current", 2.5, "GOOD"), ("pump1", "Pressure", 0.05, "UNCERTAIN"),
                       ("pump1", "Voltage", 231.0, "UNCERTAIN"), ("pump2", "Temperature", 70.0, "GOOD")]
        assert {r.source for r in sink.readings} == {"mqtt"}
        st = conn.status()
        assert st["messages"] == 4 and st["readings"] == 4
        assert st["dead_letters"] == {"bad_json": 1}  # the subscription probe
        assert st["subscriptions"] == ["plant/+/+"]
        wait_until(lambda: conn.status()["acks"] == 4 and conn.status()["acks_pending"] == 0, what="acks")
    finally:
        stop(conn)
    assert not conn.status()["connected"]


def test_thousand_malformed_payloads_dead_lettered_while_good_ones_flow(mosquitto, pub):
    sink = MemorySink()
    conn = start(MqttConnector(*make_cfg(mosquitto.port), known_sensors=lambda asset: SKAB), sink)
    try:
        subscribed(conn, pub, sink)
        sink.dead.clear()
        now = time.time()
        bad_kinds = [
            b"not json", b"[1,2,3]", b'{"value": 1}', b'{"ts": "soon", "value": 1}',
            json.dumps({"ts": 12.0, "value": 1}).encode(),
            json.dumps({"ts": now + 86400, "value": 1}).encode(),
            b'{"ts": %f, "value": NaN}' % now, b'{"ts": %f, "value": Infinity}' % now,
            json.dumps({"ts": now, "value": True}).encode(),
        ]
        good = 0
        for i in range(1000):
            # Bad ones on the per-sensor route, unknown sensors on the multi route.
            if i % 10 == 9:
                pub.publish("plant/pump1/telemetry", {"ts": now, "values": {"Bogus": 1.0}})
            else:
                pub.publish("plant/pump1/Current", bad_kinds[i % len(bad_kinds)])
            if i % 5 == 0:
                pub.publish("plant/pump1/telemetry", {"ts": now + i * 1e-3, "values": {"Current": float(i),
                                                                                        "Voltage": 230.0}})
                good += 1
        pub.flush(60)
        wait_until(lambda: len(sink.dead) >= 1000 and len(sink.readings) >= 2 * good, 60,
                   "all dead letters and good readings")
        assert len(sink.dead) == 1000
        assert sorted(sink.values("Current")) == [float(i) for i in range(0, 1000, 5)]
        st = conn.status()
        assert st["dead_letters_total"] == 1001 and st["connected"]  # with the subscription probe
        assert st["dead_letters"] == {"bad_json": 101, "not_object": 100, "missing_ts": 100, "bad_ts": 100,
                                      "ts_too_old": 100, "ts_in_future": 100, "non_finite": 200,
                                      "bad_value": 100, "unknown_sensor": 100}
        assert {d.source for d in sink.dead} == {"plant/pump1/Current", "plant/pump1/telemetry"}
        assert {d.code.value for d in sink.dead} == set(st["dead_letters"])
    finally:
        stop(conn)


def test_persistent_session_delivers_what_was_published_while_stopped(mosquitto, pub):
    sink = MemorySink()
    conn = start(MqttConnector(*make_cfg(mosquitto.port)), sink)
    subscribed(conn, pub, sink)
    stop(conn)
    now = time.time()
    for i in range(50):
        pub.publish("plant/pump1/Current", {"ts": now + i, "value": i})
    pub.flush()
    sink2 = MemorySink()
    conn2 = start(MqttConnector(*make_cfg(mosquitto.port)), sink2)
    try:
        wait_until(lambda: len(sink2.readings) >= 50, what="queued messages after restart")
        assert sorted(sink2.values()) == list(range(50))
        assert [r.ts for r in sink2.readings] == sorted(r.ts for r in sink2.readings)  # broker keeps order
    finally:
        stop(conn2)


def test_broker_restart_mid_stream_loses_nothing(mosquitto, pub):
    sink = MemorySink()
    conn = start(MqttConnector(*make_cfg(mosquitto.port)), sink)
    try:
        subscribed(conn, pub, sink)
        n = 600
        now = time.time()
        restart = threading.Thread(target=mosquitto.restart, kwargs={"down_s": 0.5})
        for i in range(n):
            # Keep publishing while the broker goes down and comes back: what the
            # broker had queued is persisted, what it had not taken paho resends.
            pub.publish("plant/pump1/telemetry", {"ts": now + i * 1e-3, "values": {"Current": i, "Voltage": 1}})
            if i == n // 3:
                restart.start()
            time.sleep(0.002)
        restart.join()
        pub.flush(60)
        wait_until(lambda: len(set(sink.values())) >= n, 60, "every message after the restart")
        assert set(sink.values()) == set(range(n))
        st = conn.status()
        assert st["reconnects"] >= 1 and st["disconnects"] >= 1 and st["connected"]
    finally:
        stop(conn)


def test_unacked_messages_are_redelivered_after_reconnect_and_stale_acks_dropped(mosquitto, pub):
    holding = MemorySink(ack=False)
    conn = start(MqttConnector(*make_cfg(mosquitto.port)), holding)
    try:
        subscribed(conn, pub, holding)
        now = time.time()
        for i in range(20):
            pub.publish("plant/pump1/Current", {"ts": now + i, "value": i})
        pub.flush()
        wait_until(lambda: len(holding.values()) >= 20, what="first delivery")
        assert conn.status()["acks_pending"] == 21  # 20 + probe, none stored yet
        first_gen = list(holding.held)  # one callback per burst the network thread read
        mosquitto.restart()
        wait_until(lambda: conn.status()["reconnects"] >= 1, what="reconnect")
        # The broker redelivers what was never acknowledged.
        wait_until(lambda: len(holding.values()) >= 40, what="redelivery after broker restart")
        assert sorted(holding.values()) == sorted(list(range(20)) * 2)
        # Storing the first-generation copies now must not ack anything on the new connection.
        for cb in first_gen:
            cb()
        assert conn.status()["acks_stale"] == 21 and conn.status()["acks"] == 0
        wait_until(lambda: conn.status()["acks_pending"] == 21, what="the redelivered 21 held")
        for cb in holding.held[len(first_gen):]:
            cb()
        wait_until(lambda: conn.status()["acks_pending"] == 0, what="acks of second generation")
        assert conn.status()["acks"] == 21
    finally:
        stop(conn)
    # Everything acknowledged: a new session start gets nothing old.
    assert_only_new_messages(mosquitto.port, pub)


def test_acks_go_out_in_receive_order_even_if_stored_out_of_order(mosquitto, pub):
    holding = MemorySink(ack=False)
    conn = start(MqttConnector(*make_cfg(mosquitto.port)), holding)
    try:
        subscribed(conn, pub, holding)
        for i in range(5):
            pub.publish("plant/pump1/Current", {"ts": time.time(), "value": i})
            pub.flush()  # one at a time: each message its own burst, its own callback
            wait_until(lambda: len(holding.held) == i + 2, what=f"message {i} held")
        assert conn.status()["acks_pending"] == 6
        for cb in reversed(holding.held[1:]):
            cb()
        assert conn.status()["acks"] == 0 and conn.status()["acks_pending"] == 6  # head still unstored
        holding.held[0]()
        wait_until(lambda: conn.status()["acks"] == 6, what="acks")
        assert conn.status()["acks_pending"] == 0
    finally:
        stop(conn)


_KILL9_CHILD = r"""
import asyncio, json, sys
from appliance.broker import Mosquitto, free_port
from appliance.connections.config import MqttBroker
from appliance.connectors.mqtt.config import MqttInputConfig
from appliance.settings import BackoffConfig
from appliance.connectors.mqtt.connector import MqttConnector

port, ack_first = int(sys.argv[1]), int(sys.argv[2])


def acks_written(conn):
    # Every PUBACK released so far is past the connector and paho: in the kernel, which delivers
    # it to the broker even if this process is killed the next instant.
    return not conn._ack_out and not conn._client.want_write()

class Sink:
    n = 0  # messages seen; a burst is acknowledged only if it ends within the first ack_first
    def submit(self, readings, dead_letters=(), on_stored=None):
        Sink.n += len(readings)
        for r in readings:
            print(json.dumps(r.value), flush=True)
        if on_stored and Sink.n <= ack_first:
            on_stored()

async def main():
    cfg = MqttInputConfig(client_id="kill9-ingest")
    broker = MqttBroker(port=port, reconnect=BackoffConfig(initial_s=0.05, max_s=0.5))
    conn = MqttConnector(cfg, broker)
    await conn.start(Sink())
    while Sink.n < 30 or not acks_written(conn):
        await asyncio.sleep(0.01)
    print('"ACKS WRITTEN"', flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


class StatusWatcher:
    def __init__(self, port, topic="appliance/status"):
        self.states = []
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="status-watch")
        self.client.on_message = lambda c, u, m: self.states.append((m.retain, json.loads(m.payload)))
        self.client.on_connect = lambda c, *a: c.subscribe(topic, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def last(self):
        return self.states[-1][1] if self.states else {}

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def test_kill9_redelivers_unstored_messages_and_fires_last_will(mosquitto, pub):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen([sys.executable, "-c", _KILL9_CHILD, str(mosquitto.port), "10"],
                             stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    seen: list = []
    reader = threading.Thread(target=lambda: seen.extend(json.loads(line) for line in child.stdout), daemon=True)
    reader.start()
    watcher = StatusWatcher(mosquitto.port)
    try:
        wait_until(lambda: watcher.last().get("state") == "online", what="online status")
        assert watcher.last()["client_id"] == "kill9-ingest"
        now = time.time()
        for i in range(30):
            pub.publish("plant/pump1/Current", {"ts": now + i, "value": i})
        pub.flush()
        wait_until(lambda: "ACKS WRITTEN" in seen, what="the child to receive all 30 and write its PUBACKs")
        assert seen == list(range(30)) + ["ACKS WRITTEN"]
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        wait_until(lambda: watcher.last().get("state") == "offline", what="last will")
        assert watcher.last()["reason"] == "connection lost"
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        reader.join(5)  # EOF after the child is gone
        child.stdout.close()
    watcher.close()
    # A late subscriber sees the retained offline state.
    late = StatusWatcher(mosquitto.port)
    try:
        wait_until(lambda: late.states, what="retained status")
        assert late.states[0][0] is True and late.states[0][1]["state"] == "offline"
    finally:
        late.close()
    assert_redelivered(mosquitto.port, "kill9-ingest", must=range(10, 30), only=range(30),
                       what="redelivery after kill -9")


def test_online_status_retained_and_graceful_stop_says_stopped(mosquitto):
    watcher = StatusWatcher(mosquitto.port, topic="site/gw/status")
    conn = start(MqttConnector(*make_cfg(mosquitto.port, status_topic="site/gw/status")), MemorySink())
    try:
        wait_until(lambda: watcher.last().get("state") == "online", what="online")
    finally:
        stop(conn)
    wait_until(lambda: watcher.last().get("state") == "offline", what="offline on stop")
    assert watcher.last()["reason"] == "stopped"
    watcher.close()


def test_reconnect_backoff_is_jittered_and_connects_when_broker_appears(tmp_path, monkeypatch):
    delays = []
    real_backoff = mqtt_module.jittered_backoff

    def recording_backoff(initial_s, max_s):
        for d in real_backoff(initial_s, max_s):
            delays.append(d)
            yield d

    monkeypatch.setattr(mqtt_module, "jittered_backoff", recording_backoff)
    port = free_port()
    broker_cfg = MqttBroker(port=port, reconnect=BackoffConfig(initial_s=0.05, max_s=0.2))
    sink = MemorySink()
    conn = start(MqttConnector(*make_cfg(port, broker=broker_cfg)), sink, wait_connected=False)
    try:
        wait_until(lambda: conn.status()["connect_failures"] >= 8, what="failed attempts")
        st = conn.status()
        assert not st["connected"] and "failed" in st["last_error"]
        assert all(0.025 <= d <= 0.2 for d in delays)
        assert len(set(delays)) == len(delays)  # jittered, never a fixed schedule
        broker = Mosquitto(tmp_path / "late", port=port).start()
        try:
            wait_until(lambda: conn.status()["connected"], what="connect once the broker is up")
            assert conn.status()["reconnects"] == 0 and conn.status()["connects"] == 1
        finally:
            stop(conn)
            broker.stop()
    finally:
        if conn._task is not None:
            stop(conn)


def test_tls_with_username_password(tmp_path):
    # rigs' CA, whose certificates carry key identifiers: Python 3.13 verifies strictly (VERIFY_X509_STRICT)
    pki = make_tls(tmp_path / "pki")
    ca, cert, key = pki.ca_file, pki.cert_file, pki.key_file
    pwfile = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "gateway", "s3cret"], check=True,
                   capture_output=True)
    os.chmod(pwfile, 0o600)
    tls_port = free_port()
    broker = Mosquitto(tmp_path / "tlsbroker", extra_conf=(
        f"listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
        f"allow_anonymous false\npassword_file {pwfile}\n")).start()
    try:
        def cfg(password, tls):
            return make_cfg(tls_port, broker=MqttBroker(
                host="localhost", port=tls_port, username="gateway", password=password, tls=tls,
                reconnect=BackoffConfig(initial_s=0.05, max_s=0.2)))

        verified = TlsConfig(enabled=True, ca_file=str(ca))
        sink = MemorySink()
        conn = start(MqttConnector(*cfg("s3cret", verified)), sink)
        try:
            dev = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
            dev.username_pw_set("gateway", "s3cret")
            dev.tls_set(ca_certs=str(ca))
            dev.connect("localhost", tls_port)
            dev.loop_start()
            dev.publish("plant/pump1/Current", json.dumps({"ts": time.time(), "value": 1.5}), qos=1)
            wait_until(lambda: sink.values() == [1.5], what="reading over TLS")
            dev.disconnect()
            dev.loop_stop()
        finally:
            stop(conn)

        bad = start(MqttConnector(*cfg("wrong", verified)), MemorySink(), wait_connected=False)
        try:
            wait_until(lambda: bad.status()["connect_failures"] >= 2, what="refused attempts")
            assert "refused" in bad.status()["last_error"] and not bad.status()["connected"]
        finally:
            stop(bad)

        # Without the CA the server certificate cannot be verified ...
        untrusted = start(MqttConnector(*cfg("s3cret", TlsConfig(enabled=True))), MemorySink(),
                          wait_connected=False)
        try:
            wait_until(lambda: untrusted.status()["connect_failures"] >= 1, what="verification failure")
            assert "CERTIFICATE_VERIFY_FAILED" in untrusted.status()["last_error"]
        finally:
            stop(untrusted)
        # ... unless verification is explicitly switched off.
        insecure = start(MqttConnector(*cfg("s3cret", TlsConfig(enabled=True, insecure_skip_verify=True))),
                         MemorySink())
        stop(insecure)
    finally:
        broker.stop()


def test_bad_tls_files_are_reported_at_construction(tmp_path):
    with pytest.raises(ValueError, match="tls.ca_file"):
        MqttConnector(*make_cfg(1883, broker=MqttBroker(tls=TlsConfig(enabled=True,
                                                                      ca_file=str(tmp_path / "nope.pem")))))


def test_sink_failure_forces_reconnect_and_redelivery(mosquitto, pub):
    class FlakySink(MemorySink):
        failed = False

        def submit(self, readings, dead_letters=(), on_stored=None):
            if readings and not FlakySink.failed:
                FlakySink.failed = True
                raise RuntimeError("disk full")
            super().submit(readings, dead_letters, on_stored)

    sink = FlakySink()
    conn = start(MqttConnector(*make_cfg(mosquitto.port)), sink)
    try:
        subscribed(conn, pub, sink)
        pub.publish("plant/pump1/Current", {"ts": time.time(), "value": 7})
        wait_until(lambda: sink.values() == [7.0], what="redelivery after sink failure")
        st = conn.status()
        assert st["sink_errors"] == 1 and st["reconnects"] >= 1 and "disk full" in st["last_error"]
    finally:
        stop(conn)


def test_known_sensors_callback_failure_becomes_dead_letter(mosquitto, pub):
    def broken(asset):
        raise KeyError(asset)

    sink = MemorySink()
    conn = start(MqttConnector(*make_cfg(mosquitto.port), known_sensors=broken), sink)
    try:
        pub.publish("plant/pump1/Current", {"ts": time.time(), "value": 7})
        wait_until(lambda: any(d.reason.startswith("internal_error") for d in sink.dead), what="internal error")
        wait_until(lambda: conn.status()["acks_pending"] == 0, what="acked")
        assert conn.status()["internal_errors"] >= 1 and conn.status()["connected"]
    finally:
        stop(conn)


def test_fixed_asset_and_historical_topic(mosquitto, pub):
    topics = (MqttTopic(pattern="replay/line3/{sensor}", asset="press7", historical=True),)
    sink = MemorySink()
    conn = start(MqttConnector(*make_cfg(mosquitto.port, topics=topics)), sink)
    try:
        pub.publish("replay/line3/Pressure", {"ts": "2020-03-09T10:14:33", "value": 0.38})
        wait_until(lambda: sink.readings, what="reading")
        r = sink.readings[0]
        assert (r.asset, r.sensor, r.value, r.historical) == ("press7", "Pressure", 0.38, True)
        assert r.ts == 1583748873.0
    finally:
        stop(conn)


def test_backpressure_stops_reading_until_the_sink_has_stored_half(mosquitto, pub):
    # max_unstored=3: after three readings handed on and not stored, the socket is not read.
    holding = MemorySink(ack=False)
    conn = start(MqttConnector(*make_cfg(mosquitto.port, max_unstored=3)), holding)
    try:
        now = time.time()
        for i in range(3):  # one at a time: one burst each
            pub.publish("plant/pump1/Current", {"ts": now + i, "value": i})
            wait_until(lambda: len(holding.values()) == i + 1, what=f"message {i}")
        st = conn.status()
        assert st["reading_paused"] and st["backpressure_pauses"] == 1 and st["unstored"] == 3
        for i in range(3, 6):
            pub.publish("plant/pump1/Current", {"ts": now + i, "value": i})
        pub.flush()  # the broker has them; the connector does not read them
        holding.held[0]()  # 2 unstored: above half of 3, still paused
        wait_until(lambda: conn.status()["acks"] == 1, what="the first ack")
        time.sleep(0.3)
        assert holding.values() == [0.0, 1.0, 2.0] and conn.status()["reading_paused"]
        holding.held[1]()  # 1 unstored: reading resumes, and what waited arrives
        wait_until(lambda: len(holding.values()) == 6, what="the messages held back by the broker")
        assert holding.values() == [float(i) for i in range(6)]
        for cb in holding.held[2:]:
            cb()
        wait_until(lambda: conn.status()["acks"] == 6, what="every ack")
        st = conn.status()
        assert st["acks_pending"] == 0 and st["unstored"] == 0 and st["unstored_peak"] >= 3
    finally:
        stop(conn)
    # Everything was acknowledged: nothing comes again.
    assert_only_new_messages(mosquitto.port, pub)


_KILL9_STORE_CHILD = r"""
import asyncio, json, sys
from appliance.connections.config import MqttBroker
from appliance.connectors.mqtt.config import MqttInputConfig
from appliance.settings import BackoffConfig
from appliance.connectors.mqtt.connector import MqttConnector
from appliance.store import Store

port, db, commit_first = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])


def acks_written(conn):
    # Every PUBACK released so far is past the connector and paho: in the kernel, which delivers
    # it to the broker even if this process is killed the next instant.
    return not conn._ack_out and not conn._client.want_write()
store = Store(db)
store.start()

class StoreSink:
    # Readings of the first commit_first messages are stored and acknowledged after their commit
    # (from the store's writer thread); the rest are "in flight" when the process dies.
    def submit(self, readings, dead_letters=(), on_stored=None):
        for r in readings:
            print(json.dumps(r.value), flush=True)
        if all(r.value < commit_first for r in readings):
            for r in readings:
                store.put_reading(r)
            if on_stored:
                store.after_commit(on_stored)

async def main():
    conn = MqttConnector(MqttInputConfig(client_id="kill9-store"),
                         MqttBroker(port=port, reconnect=BackoffConfig(initial_s=0.05, max_s=0.5)))
    await conn.start(StoreSink())
    while conn.status()["acks"] < commit_first or not acks_written(conn):
        await asyncio.sleep(0.01)
    print("ACKED", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_kill9_before_commit_redelivers_and_committed_messages_stay_acknowledged(mosquitto, pub, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    db = tmp_path / "child.db"
    child = subprocess.Popen([sys.executable, "-c", _KILL9_STORE_CHILD, str(mosquitto.port), str(db), "10"],
                             stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    lines: list = []
    reader = threading.Thread(target=lambda: lines.extend(line.strip() for line in child.stdout), daemon=True)
    reader.start()
    watcher = StatusWatcher(mosquitto.port)
    try:
        wait_until(lambda: watcher.last().get("state") == "online", what="online status")
        now = time.time()
        for i in range(10):  # these are stored and acknowledged ...
            pub.publish("plant/pump1/Current", {"ts": now + i, "value": i})
        pub.flush()
        wait_until(lambda: "ACKED" in lines, what="the child's first ten committed and acknowledged")
        for i in range(10, 30):  # ... these arrive, and the process dies before their commit
            pub.publish("plant/pump1/Current", {"ts": now + i, "value": i})
        pub.flush()
        wait_until(lambda: len(lines) >= 31, what="the child to receive all 30")
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        reader.join(5)
        child.stdout.close()
        watcher.close()
    import sqlite3

    conn_db = sqlite3.connect(db)
    stored = sorted(v for (v,) in conn_db.execute("SELECT value FROM readings"))
    conn_db.close()
    assert stored == [float(i) for i in range(10)]  # committed before their acks
    # The first ten's PUBACKs were in the kernel before the kill: the broker has them, and keeps them.
    assert_redelivered(mosquitto.port, "kill9-store", must=range(10, 30), only=range(10, 30),
                       what="redelivery of what was never committed")


class _ScriptedBroker:
    """Just enough of an MQTT 3.1.1 broker on a real socket to control how packets are cut into TCP writes."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.conn = None

    def _read_packet(self) -> tuple[int, bytes]:
        def exactly(n: int) -> bytes:
            data = b""
            while len(data) < n:
                chunk = self.conn.recv(n - len(data))
                assert chunk, "client closed the connection"
                data += chunk
            return data

        first = exactly(1)[0]
        length, shift = 0, 0
        while True:
            byte = exactly(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first >> 4, exactly(length)

    def accept_and_subscribe(self) -> None:
        self.conn, _ = self.server.accept()
        kind, _ = self._read_packet()
        assert kind == 1, f"expected CONNECT, got packet type {kind}"
        self.conn.sendall(b"\x20\x02\x00\x00")
        kind, body = self._read_packet()
        assert kind == 8, f"expected SUBSCRIBE, got packet type {kind}"
        (mid,) = struct.unpack("!H", body[:2])
        self.conn.sendall(b"\x90\x03" + struct.pack("!H", mid) + b"\x00")

    @staticmethod
    def publish_packet(topic: str, payload: bytes) -> bytes:
        body = struct.pack("!H", len(topic)) + topic.encode() + payload  # QoS 0: no packet id
        n, length = len(body), b""
        while True:
            byte, n = n & 0x7F, n >> 7
            length += bytes([byte | (0x80 if n else 0)])
            if not n:
                break
        return b"\x30" + length + body

    def close(self) -> None:
        for s in (self.conn, self.server):
            if s is not None:
                s.close()


def test_packets_cut_across_tcp_writes_and_larger_than_the_read_ahead_all_arrive():
    # A read that took less than it asked for ends the wake-up without asking the kernel again;
    # whatever arrives later (the rest of a packet, the next one) must still be read on the next one.
    broker = _ScriptedBroker()
    sink = MemorySink()
    conn = MqttConnector(*make_cfg(broker.port))
    accepting = threading.Thread(target=broker.accept_and_subscribe, daemon=True)
    accepting.start()
    try:
        start(conn, sink)
        accepting.join(30)

        def value(v: float, pad: int = 0) -> bytes:
            return json.dumps({"ts": time.time(), "value": v, "note": "x" * pad}).encode()

        a = broker.publish_packet("plant/p1/Current", value(1.0))
        b = broker.publish_packet("plant/p1/Current", value(2.0))
        c = broker.publish_packet("plant/p1/Current", value(3.0))
        big = broker.publish_packet("plant/p1/Current", value(4.0, pad=3 * mqtt_module._Client.READ_AHEAD))
        broker.conn.sendall(a + b[:3])  # a whole packet and the start of the next one's header
        wait_until(lambda: sink.values() == [1.0], what="the whole packet")
        time.sleep(0.05)
        broker.conn.sendall(b[3:] + c[:len(c) // 2])
        wait_until(lambda: sink.values() == [1.0, 2.0], what="the packet whose header was cut")
        time.sleep(0.05)
        broker.conn.sendall(c[len(c) // 2:])
        wait_until(lambda: sink.values() == [1.0, 2.0, 3.0], what="the packet cut in its payload")
        broker.conn.sendall(big + a)
        wait_until(lambda: len(sink.values()) + len(sink.dead) >= 5, what="a packet of several read-aheads and the next")
        assert sink.values()[-1] == 1.0
    finally:
        stop(conn)
        broker.close()
