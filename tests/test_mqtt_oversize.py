"""Messages over ``max_payload_bytes`` are refused by every MQTT input alike (no broker: the session's callback).

The header check refuses a PUBLISH whose packet is over ``max_payload_bytes`` plus room for a topic of
up to 64 KiB (tests/test_security_mqtt.py); a payload between the two is read whole, and must be
refused all the same: a too_large dead letter, and for Sparkplug a refused birth backs off its node's
rebirth requests as one refused from its header does.
"""

from __future__ import annotations

import json

import paho.mqtt.client as paho
import pytest

from appliance.connections.config import MqttBroker
from appliance.connections.sparkplug import DataType, Payload
from appliance.connectors.mqtt.config import MqttInputConfig
from appliance.connectors.mqtt.connector import MqttConnector
from appliance.connectors.sparkplug.config import SparkplugInputConfig
from appliance.connectors.sparkplug.connector import SparkplugConnector
from appliance.core import DeadLetterCode

LIMIT = 1024
BROKER = MqttBroker(host="127.0.0.1", port=1)  # never connected: messages are handed to the callback


class ReadWhole:
    """The session's client after reading a whole message (none refused from its header)."""
    oversize = 0


def message(topic: str, payload: bytes) -> paho.MQTTMessage:
    msg = paho.MQTTMessage(mid=1, topic=topic.encode())
    msg.payload, msg.qos = payload, 1
    return msg


def received(conn, topic: str, payload: bytes) -> tuple[list, list]:
    conn._on_message(ReadWhole(), None, message(topic, payload))
    burst, conn._burst = conn._burst, None
    return burst.readings, burst.dead


def sparkplug_birth(metrics: int) -> bytes:
    birth = Payload(timestamp=1_700_000_000_000, seq=0)
    for i in range(metrics):
        birth.metrics.add(name=f"line3/pump/metric-{i:04d}", alias=i, datatype=DataType.Double, double_value=1.0)
    return birth.SerializeToString()


def test_a_sparkplug_birth_over_the_limit_but_within_the_headers_allowance_is_refused_and_backs_off():
    conn = SparkplugConnector(SparkplugInputConfig(enabled=True, client_id="sp", max_payload_bytes=LIMIT), BROKER)
    birth = sparkplug_birth(60)
    assert LIMIT < len(birth) < LIMIT + 65539  # the header check would let it through
    readings, dead = received(conn, "spBv1.0/plant1/NBIRTH/gw8", birth)
    assert readings == [] and [(d.code, d.detail) for d in dead] == [
        (DeadLetterCode.TOO_LARGE, f"payload is {len(birth)} bytes, limit is {LIMIT}")]
    node = conn.host.nodes[("plant1", "gw8")]
    assert node.too_big == {None} and node.refusals == 1  # its rebirth requests back off
    assert conn.status()["refused_from_header"] == 0  # read, not refused from its header


def test_a_sparkplug_birth_at_the_limit_is_read():
    conn = SparkplugConnector(SparkplugInputConfig(enabled=True, client_id="sp", max_payload_bytes=LIMIT), BROKER)
    birth = sparkplug_birth(3)
    assert len(birth) <= LIMIT
    _, dead = received(conn, "spBv1.0/plant1/NBIRTH/gw8", birth)
    assert dead == [] and conn.host.nodes[("plant1", "gw8")].refusals == 0


@pytest.mark.parametrize("extra, refused", [(0, False), (1, True)])
def test_the_json_input_refuses_the_same_way(extra, refused):
    conn = MqttConnector(MqttInputConfig(client_id="gw", max_payload_bytes=LIMIT), BROKER)
    payload = json.dumps({"ts": 1_700_000_000, "value": 1.5, "pad": ""}).encode()
    payload = payload[:-2] + b" " * (LIMIT + extra - len(payload)) + payload[-2:]
    _, dead = received(conn, "plant/pump1/Current", payload)
    assert [d.code for d in dead] == ([DeadLetterCode.TOO_LARGE] if refused else [])
