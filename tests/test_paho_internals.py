"""The private parts of paho-mqtt the MQTT connector stands on are still there (issue 23).

``appliance/connectors/mqtt_session.py``'s ``_Client`` overrides and calls private
methods of ``paho.mqtt.client.Client`` (read-ahead buffering, one PUBACK packet for
many acks, a socket opened in a worker thread and adopted on the loop). paho does not
promise them between releases, so ``pyproject.toml`` pins the range they were tested
with. Before the pin is widened this module says, by name, what a new paho removed,
renamed or stopped calling; the connector tests would fail too, but far less readably.

The first test keeps the table honest: it reads ``_Client`` and fails when it uses a
private name the table does not list, so a new dependency on paho's insides is
declared here the day it is written.
"""

from __future__ import annotations

import ast
import collections
import inspect
import select
import socket
import struct
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt import __version__ as paho_version
from paho.mqtt.enums import CallbackAPIVersion

from appliance.connectors import mqtt_session as mqtt_connector
from appliance.connectors.mqtt_session import _Client

ROOT = Path(__file__).resolve().parents[1]
PAHO = f"paho-mqtt {paho_version}"
ADVICE = ("appliance/connectors/mqtt_session.py relies on it; adapt _Client to this paho "
          "(or keep paho-mqtt in the range pinned in pyproject.toml)")

# Private methods of paho's Client the connector overrides or calls: name -> the parameters after
# self ("*args" for a variadic one), as the override or the call passes them.
PRIVATE_METHODS = {
    "_create_socket": [],                 # overridden: reconnect() adopts the socket opened in a worker thread
    "_sock_recv": ["bufsize"],            # overridden: the 64 KiB read-ahead
    "_packet_read": [],                   # called: one packet, from loop_read
    "_loop_rc_handle": ["rc"],            # called: what loop_read does with an error
    "_handle_on_message": ["message"],    # overridden: on_message without topic matching
    "_easy_log": ["level", "fmt", "*args"],
    "_sock_close": [],                    # called by the connector to drop a connection
}
# Public methods _Client overrides: their parameters must stay what the override accepts.
OVERRIDDEN_METHODS = {
    "loop_read": ["max_packets"],
    "message_callback_add": ["sub", "callback"],
}
# Private instance attributes of a Client the connector reads or appends to.
PRIVATE_ATTRIBUTES = ["_sock", "_out_packet", "_in_callback_mutex", "_userdata", "_in_packet"]
# The keys of paho's packet being read that the header bound reads or shortens (to_process).
IN_PACKET_KEYS = ["command", "have_remaining", "remaining_length", "to_process", "packet"]
# Private attributes of a received message (its raw topic, for a topic that is not UTF-8).
MESSAGE_ATTRIBUTES = ["_topic"]
# _Client's own state: not paho's.
OWN = {"_rsock", "_rbuf", "_rpos", "_drained", "_adopted", "_buffered", "_skip", "_oversize",
       "_packet_body_starts", "_drop_skipped"}


def _private_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "name", None)
        if isinstance(node, (ast.Attribute, ast.FunctionDef)) and name.startswith("_") and not name.startswith("__"):
            names.add(name)
    return names


def _not_through_self(tree: ast.AST) -> set[str]:
    """Private attributes read off something other than ``self`` (a paho client, a message)."""
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id == "self")
            and not isinstance(node.value, ast.Call)}  # super()._x is _Client's, read above


def test_the_table_lists_every_private_paho_name_the_connector_uses():
    module = ast.parse(Path(inspect.getsourcefile(mqtt_connector)).read_text())
    client_class = next(n for n in module.body if isinstance(n, ast.ClassDef) and n.name == "_Client")
    declared = set(PRIVATE_METHODS) | set(PRIVATE_ATTRIBUTES) | set(MESSAGE_ATTRIBUTES)
    undeclared = (_private_names(client_class) | _not_through_self(module)) - declared - OWN
    assert not undeclared, (f"the MQTT connector uses private names {sorted(undeclared)} this test does not "
                            "check: add paho's to the tables above, _Client's own to OWN")


def _parameters(function) -> list[str]:
    shown = []
    for p in list(inspect.signature(function).parameters.values())[1:]:  # without self
        shown.append({p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name)
    return shown


@pytest.mark.parametrize("name", sorted(PRIVATE_METHODS) + sorted(OVERRIDDEN_METHODS))
def test_paho_client_has_the_method_with_the_expected_parameters(name):
    expected = {**PRIVATE_METHODS, **OVERRIDDEN_METHODS}[name]
    method = paho.Client.__dict__.get(name)
    assert callable(method), f"{PAHO}: paho.mqtt.client.Client.{name} is gone; {ADVICE}"
    got = _parameters(method)
    assert got == expected, (f"{PAHO}: Client.{name} takes (self, {', '.join(got)}), the connector expects "
                             f"(self, {', '.join(expected)}); {ADVICE}")


def test_a_paho_client_has_the_private_attributes_the_connector_uses():
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    missing = [a for a in PRIVATE_ATTRIBUTES if not hasattr(client, a)]
    missing += [f"_in_packet[{k!r}]" for k in IN_PACKET_KEYS if k not in getattr(client, "_in_packet", {})]
    assert not missing, f"{PAHO}: a Client has no {missing}; {ADVICE}"
    assert client._sock is None, f"{PAHO}: Client._sock is not None before connecting; {ADVICE}"
    assert isinstance(client._out_packet, collections.deque), f"{PAHO}: Client._out_packet is no deque; {ADVICE}"
    with client._in_callback_mutex:  # the connector holds it around on_message, as paho does
        pass
    message = paho.MQTTMessage(mid=1, topic=b"plant/p1/Current")
    missing = [a for a in MESSAGE_ATTRIBUTES if not hasattr(message, a)]
    assert not missing, f"{PAHO}: an MQTTMessage has no {missing}; {ADVICE}"


# -- what paho does with the overrides: over a loopback socket, no broker ----------------------

def _publish_packet(topic: bytes, payload: bytes, mid: int) -> bytes:
    body = struct.pack("!H", len(topic)) + topic + struct.pack("!H", mid) + payload
    assert len(body) < 128  # one byte of remaining length
    return bytes([0x32, len(body)]) + body  # PUBLISH, QoS 1


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "the client closed the connection"
        data += chunk
    return data


def _read_connect(broker: socket.socket) -> None:
    assert _recv_exactly(broker, 1) == b"\x10", "no CONNECT on the adopted socket"
    remaining = _recv_exactly(broker, 1)[0]
    assert remaining < 128  # one byte of remaining length: no will, a short client id
    _recv_exactly(broker, remaining)


@pytest.fixture
def wired():
    """A connector's paho client connected, the connector's way, to a socket the test holds as the broker."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(30)
    client = _Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="paho-internals",
                     clean_session=False, protocol=paho.MQTTv311, manual_ack=True, reconnect_on_failure=False)
    client.connect_async("127.0.0.1", server.getsockname()[1], keepalive=30)
    sock = client.open_socket()  # paho's own _create_socket, as the worker thread calls it
    broker, _ = server.accept()
    broker.settimeout(30)
    client.adopt(sock)
    try:
        yield client, broker, sock
    finally:
        client._sock_close()
        broker.close()
        server.close()


def test_reconnect_opens_its_connection_on_the_adopted_socket(wired):
    client, broker, sock = wired
    client.reconnect()
    assert client._sock is sock, f"{PAHO}: reconnect() did not take its socket from _create_socket(); {ADVICE}"
    _read_connect(broker)


def test_a_read_goes_through_the_read_ahead_to_on_message_and_acks_leave_in_one_packet(wired):
    client, broker, sock = wired
    client.reconnect()
    _read_connect(broker)
    got = []
    client.on_message = lambda c, userdata, message: got.append((message.topic, message.payload, message.mid))
    broker.sendall(_publish_packet(b"plant/p1/Current", b"1.5", 7) + _publish_packet(b"plant/p1/Voltage", b"2", 8))
    select.select([sock], [], [], 30)
    client.loop_read()
    assert got == [("plant/p1/Current", b"1.5", 7), ("plant/p1/Voltage", b"2", 8)], (
        f"{PAHO}: loop_read did not hand both PUBLISH packets to on_message; {ADVICE}")
    assert client._rsock is sock, f"{PAHO}: _packet_read no longer reads through _sock_recv; {ADVICE}"

    client.send_acks([7, 8])
    assert _recv_exactly(broker, 8) == b"\x40\x02\x00\x07\x40\x02\x00\x08", (
        f"{PAHO}: an acknowledgement appended to _out_packet was not written by loop_write; {ADVICE}")


def test_a_connection_closed_by_the_connector_is_closed_for_paho(wired):
    client, broker, sock = wired
    client.reconnect()
    _read_connect(broker)
    client._sock_close()
    assert client._sock is None and client.socket() is None
    assert broker.recv(1) == b"", "the connection is still open"
