"""One MQTT message cannot take the gateway's memory: a PUBLISH over the bound is refused from its header.

Issue 24, item 5: ``max_payload_bytes`` used to apply after the whole message
was read; three 250 MB messages took the appliance from 100 MB to 874 MB RSS.
The publisher here streams its payload from one reused 64 KiB chunk, so this
process's peak RSS measures the connector alone.
"""

from __future__ import annotations

import json
import resource
import socket
import struct
import time

import pytest

from appliance.broker import Mosquitto
from appliance.connections.config import MqttBroker
from appliance.connectors.mqtt.config import MqttInputConfig
from appliance.connectors.mqtt.connector import MqttConnector
from appliance.core import DeadLetterCode
from appliance.settings import BackoffConfig
from tests.support.fakes import MemorySink
from tests.support.loop import on_loop
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration  # a real Mosquitto

MIB = 1024 * 1024
HUGE = 50 * MIB


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (128 if n else 0))
        if not n:
            return bytes(out)


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return data


def stream_publish(port: int, topic: str, size: int, mid: int = 1, payload: bytes | None = None,
                   retain: bool = False) -> None:
    """Publish at QoS 1 over a raw socket, the payload (``size`` bytes of 'x') sent in chunks, never held whole."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        client_id = f"streamer-{mid}".encode()
        body = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack("!H", len(client_id)) + client_id
        s.sendall(b"\x10" + _varint(len(body)) + body)
        assert _read_exactly(s, 4)[:2] == b"\x20\x02", "no CONNACK"
        t = topic.encode()
        if payload is not None:
            size = len(payload)
        header = bytes([0x33 if retain else 0x32]) + _varint(2 + len(t) + 2 + size)
        s.sendall(header + struct.pack("!H", len(t)) + t + struct.pack("!H", mid))
        if payload is not None:
            s.sendall(payload)
        else:
            chunk = b"x" * 65536
            left = size
            while left:
                n = min(left, len(chunk))
                s.sendall(chunk if n == len(chunk) else chunk[:n])
                left -= n
        assert _read_exactly(s, 4) == b"\x40\x02" + struct.pack("!H", mid), "no PUBACK"
        s.sendall(b"\xe0\x00")  # DISCONNECT


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


@pytest.fixture
def big_broker(tmp_path):
    # The broker lets the huge message through (its own bound is the deployment's first line): the
    # connector must hold its own.
    broker = Mosquitto(tmp_path / "mosquitto", max_packet_size=64 * MIB).start()
    yield broker
    broker.stop()


def connector(port: int, retained_refusals=None) -> MqttConnector:
    broker = MqttBroker(host="127.0.0.1", port=port, keepalive_s=5, reconnect=BackoffConfig(initial_s=0.05, max_s=0.5))
    return MqttConnector(MqttInputConfig(client_id="gateway"), broker, retained_refusals=retained_refusals)


def test_a_huge_message_is_refused_from_its_header_without_buffering_it(big_broker):
    sink = MemorySink()
    conn = connector(big_broker.port)
    on_loop(conn.start(sink))
    try:
        wait_until(lambda: conn.status()["subscribed"], what="connector subscribed")
        before = peak_rss_bytes()
        stream_publish(big_broker.port, "plant/pump1/Current", HUGE, mid=1)
        good = json.dumps({"ts": time.time(), "value": 1.5}).encode()
        stream_publish(big_broker.port, "plant/pump1/Current", 0, mid=2, payload=good)
        # The good message after it is stored ...
        wait_until(lambda: sink.values() == [1.5], what="the good message after the huge one")
        # ... the huge one is one dead letter, without its payload, and acknowledged (not delivered again),
        (dead,) = sink.dead
        assert dead.code is DeadLetterCode.TOO_LARGE and dead.payload == b"" and str(HUGE + 4 + 19) in dead.detail
        status = conn.status()
        assert status["refused_from_header"] == 1 and status["dead_letters"] == {"too_large": 1}
        wait_until(lambda: conn.status()["acks"] == 2, what="both messages acknowledged")
        # and the connector never held more than a packet's header of it, nor did the process grow by it.
        assert status["largest_packet_bytes"] < MIB
        grew = peak_rss_bytes() - before
        assert grew < HUGE / 4, f"peak RSS grew by {grew / MIB:.1f} MiB for a {HUGE / MIB:.0f} MiB message"
    finally:
        on_loop(conn.stop())
    # A new connection of the same session gets nothing again: the refusal was acknowledged.
    again = MemorySink()
    conn = connector(big_broker.port)
    on_loop(conn.start(again))
    try:
        wait_until(lambda: conn.status()["subscribed"], what="connector subscribed again")
        good = json.dumps({"ts": time.time(), "value": 2.5}).encode()
        stream_publish(big_broker.port, "plant/pump1/Current", 0, mid=3, payload=good)
        wait_until(lambda: again.values() == [2.5], what="the next message")
        assert again.dead == []
    finally:
        on_loop(conn.stop())


def test_the_demo_broker_refuses_a_packet_over_its_bound(tmp_path):
    with Mosquitto(tmp_path / "mosquitto") as broker:  # the demo's settings: max_packet_size 1 MiB
        with pytest.raises(ConnectionError):
            stream_publish(broker.port, "plant/pump1/Current", 2 * MIB)


# -- retained messages refused once, not at every restart ------------------------------------------
RETAINED_BAD = 50


def run_once(port: int, path, until) -> tuple[MemorySink, dict]:
    """One run of the appliance's connector: start, wait for ``until(sink, status)``, stop."""
    sink = MemorySink()
    conn = connector(port, retained_refusals=path)
    on_loop(conn.start(sink))
    try:
        wait_until(lambda: until(sink, conn.status()), what="the retained messages",
                   detail=lambda: f"dead={[(d.source, d.code.value) for d in sink.dead][:5]} n_dead={len(sink.dead)} "
                                  f"readings={sink.count()} repeated={conn.status()['retained_refusals_repeated']}")
        return sink, conn.status()
    finally:
        on_loop(conn.stop())


def test_retained_messages_refused_once_are_not_dead_lettered_again_at_each_restart(mosquitto, tmp_path):
    path = tmp_path / "refusals.bin"
    for i in range(RETAINED_BAD):
        stream_publish(mosquitto.port, f"plant/pump{i}/Current", 0, mid=i + 1, payload=b"{not json", retain=True)
    good = json.dumps({"ts": time.time(), "value": 7.0}).encode()
    stream_publish(mosquitto.port, "plant/good/Current", 0, mid=999, payload=good, retain=True)

    sink, _ = run_once(mosquitto.port, path, lambda k, st: len(k.dead) == RETAINED_BAD and k.count() == 1)
    assert {d.code for d in sink.dead} == {DeadLetterCode.BAD_JSON}
    # A restart: the broker sends every retained message again; the refusals are not kept again,
    # the good reading still is (the store keeps it once), and everything is acknowledged.
    sink, status = run_once(mosquitto.port, path,
                            lambda k, st: st["retained_refusals_repeated"] == RETAINED_BAD and k.count() == 1)
    assert sink.dead == [] and sink.values() == [7.0]
    # A new payload on a retained topic is a new refusal, kept in turn: the copy the broker queued for
    # the absent session (a live message) and the retained copy sent on subscribing, then never again.
    stream_publish(mosquitto.port, "plant/pump0/Current", 0, mid=1000, payload=b"[still bad", retain=True)
    sink, status = run_once(mosquitto.port, path,
                            lambda k, st: st["retained_refusals_repeated"] == RETAINED_BAD - 1 and len(k.dead) == 2)
    assert [d.payload for d in sink.dead] == [b"[still bad"] * 2
    sink, status = run_once(mosquitto.port, path, lambda k, st: st["retained_refusals_repeated"] == RETAINED_BAD)
    assert sink.dead == []


def test_the_record_of_refused_retained_messages_is_bounded_and_survives_a_torn_write(tmp_path):
    from appliance.connectors.retained import RetainedRefusals, refusal_key

    path = tmp_path / "refusals.bin"
    seen = RetainedRefusals(path, max_keys=100)
    keys = [refusal_key(f"t/{i}".encode(), b"x") for i in range(250)]
    assert all(seen.first_time(k) for k in keys) and not seen.first_time(keys[-1])
    seen.save()
    assert len(seen) == 100 and path.stat().st_size <= 2 * 100 * 8  # rewritten when it outgrows twice the bound
    with open(path, "ab") as f:
        f.write(b"\x01\x02\x03")  # a write cut short by a power cut
    again = RetainedRefusals(path, max_keys=100)
    assert len(again) == 100
    assert not again.first_time(keys[-1]) and again.first_time(keys[0])  # the newest kept, the oldest forgotten
    assert refusal_key(b"t", b"", 5) != refusal_key(b"t", b"") != refusal_key(b"t\x00", b"")
