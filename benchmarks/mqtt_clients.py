"""Python MQTT clients side by side on the peer rig's workload: msg/s flat out and CPU per 1,000 messages, QoS 1.

    .venv/bin/python benchmarks/mqtt_clients.py [--n 50000] [--runs 3] [--clients paho connector gmqtt ...]
    .venv/bin/python benchmarks/mqtt_clients.py --site /tmp/mqtt-clients   # candidates installed there

A private Mosquitto on a free loopback port, configured as the peer rig's
(``max_inflight_messages 20``, Mosquitto's default; no queue limit;
``set_tcp_nodelay true``). For each client and run, a fresh subscriber process
subscribes ``plant/+/+`` at QoS 1; a lean publisher in this process (raw MQTT
3.1.1 on a socket, at most 1,000 unacknowledged: the rig's) sends ``n`` messages
``{"ts": epoch_ms, "value": v}`` over 32 topics flat out. The subscriber counts
every message (and reads its payload) and the library acknowledges it as it
does by default; its rate is from its first message to its last, its CPU
(user + system, every thread) over the same span.

Clients (a client whose package is not importable is skipped, and said so):

* ``paho``: paho-mqtt as pinned in pyproject.toml, stock ``Client`` on its
  network thread (``loop_start``), ``on_message``, acknowledgement by paho;
* ``connector``: the same paho-mqtt through the MQTT connector's own client
  subclass (read-ahead buffer, no per-topic matching, acknowledgements queued
  and written together once a burst is read) on an asyncio loop watching its
  socket, as the connector runs it, minus the store;
* ``gmqtt``, ``aiomqtt`` (asyncio around paho), ``amqtt``: asyncio clients
  (gmqtt with its default ``optimistic_acknowledgement``: PUBACK before ``on_message``);
* ``mqttools`` is not measured: it subscribes at QoS 0 only (and speaks MQTT 5 only).

The candidates are not dependencies of the appliance: install them outside the
project (``pip install --target DIR gmqtt aiomqtt amqtt``) and pass ``--site
DIR``; it is appended to the subscriber's path, so the venv's own packages (and
its paho-mqtt) come first.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, parser, write_results  # noqa: E402

CLIENTS = ("paho", "connector", "gmqtt", "aiomqtt", "amqtt")
MODULES = {"paho": "paho.mqtt", "connector": "paho.mqtt", "gmqtt": "gmqtt", "aiomqtt": "aiomqtt", "amqtt": "amqtt"}
NOT_MEASURED = {"mqttools": "subscribes at QoS 0 only (MQTT 5 only); no release since 2021-12"}
SITE_ENV = "MQTT_CLIENTS_SITE"
TOPICS = [f"plant/asset{a}/s{s}" for a in range(4) for s in range(8)]
VALUES = [20.0 + 5.0 * ((i * 7919) % 101) / 101 for i in range(4096)]


# ============================================================================ the subscriber (its own process)

class Meter:
    """Counts messages; notes time and process CPU at the first and the last."""

    def __init__(self, n: int):
        self.n = n
        self.count = 0
        self.bytes = 0
        self.first: tuple[float, float] | None = None
        self.last: tuple[float, float] | None = None

    @staticmethod
    def _now() -> tuple[float, float]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return time.perf_counter(), ru.ru_utime + ru.ru_stime

    def message(self, payload: bytes) -> bool:
        """Count one message; True once all ``n`` arrived."""
        if self.count == 0:
            self.first = self._now()
        self.count += 1
        self.bytes += len(payload)
        if self.count == self.n:
            self.last = self._now()
            return True
        return False

    def result(self) -> dict:
        if self.first is None or self.last is None:
            return {"ok": False, "received": self.count}
        wall, cpu = self.last[0] - self.first[0], self.last[1] - self.first[1]
        # The first message's own cost is outside the span: n - 1 messages in it.
        per = max(1, self.n - 1)
        return {"ok": True, "received": self.count, "msg_s": per / wall if wall > 0 else None,
                "cpu_ms_per_1k": 1e6 * cpu / per, "wall_s": wall, "cpu_s": cpu}


def ready() -> None:
    print("READY", flush=True)


def sub_paho(host: str, port: int, meter: Meter) -> None:
    import threading

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    done = threading.Event()
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"bench-{os.getpid()}",
                         protocol=paho.MQTTv311)

    def on_message(c, userdata, msg):
        if meter.message(msg.payload):
            done.set()
    subscribed = threading.Event()
    client.on_message = on_message
    client.on_connect = lambda c, *a: c.subscribe("plant/+/+", qos=1)
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect(host, port, keepalive=60)
    client.loop_start()
    if not subscribed.wait(30):
        raise RuntimeError("no SUBACK")
    ready()
    done.wait(600)
    client.disconnect()
    client.loop_stop()


async def sub_connector(host: str, port: int, meter: Meter) -> None:
    """paho through the connector's ``_Client`` on an asyncio loop, as the connector runs it (issue 13):
    the socket opened in a worker thread and watched by the loop, each burst's PUBACKs written together
    after the read (the connector writes them after the store's commit; here at once)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from appliance.connectors.mqtt_session import _Client

    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    subscribed = asyncio.Event()
    client = _Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"bench-{os.getpid()}",
                     protocol=paho.MQTTv311, manual_ack=True)
    mids: list[int] = []

    def on_message(c, userdata, msg):
        if meter.message(msg.payload):
            done.set()
        mids.append(msg.mid)

    def after_read():
        if mids:
            client.send_acks(mids[:])
            mids.clear()

    client.on_message = on_message
    client.after_read = after_read
    client.on_connect = lambda c, *a: c.subscribe("plant/+/+", qos=1)
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_socket_open = lambda c, u, sock: loop.add_reader(sock, client.loop_read)
    client.on_socket_close = lambda c, u, sock: (loop.remove_reader(sock), loop.remove_writer(sock))
    client.on_socket_register_write = lambda c, u, sock: loop.add_writer(sock, client.loop_write)
    client.on_socket_unregister_write = lambda c, u, sock: loop.remove_writer(sock)
    client.connect_async(host, port, keepalive=60)
    client.adopt(await asyncio.to_thread(client.open_socket))
    client.reconnect()  # registers the adopted socket (on_socket_open) and queues CONNECT
    await asyncio.wait_for(subscribed.wait(), 30)
    ready()
    await asyncio.wait_for(done.wait(), 600)
    client.disconnect()


async def sub_gmqtt(host: str, port: int, meter: Meter) -> None:
    import gmqtt
    from gmqtt.mqtt.constants import MQTTv311

    done = asyncio.Event()
    subscribed = asyncio.Event()
    client = gmqtt.Client(f"bench-{os.getpid()}")

    def on_message(client, topic, payload, qos, properties):
        if meter.message(payload):
            done.set()
        return 0  # PUBACK reason code: success

    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    await client.connect(host, port, version=MQTTv311)
    client.subscribe("plant/+/+", qos=1)
    await asyncio.wait_for(subscribed.wait(), 30)
    ready()
    await asyncio.wait_for(done.wait(), 600)
    await client.disconnect()


async def sub_aiomqtt(host: str, port: int, meter: Meter) -> None:
    import aiomqtt

    async with aiomqtt.Client(host, port=port, identifier=f"bench-{os.getpid()}",
                              protocol=aiomqtt.ProtocolVersion.V311) as client:
        await client.subscribe("plant/+/+", qos=1)
        ready()
        async for message in client.messages:
            if meter.message(message.payload):
                break


async def sub_amqtt(host: str, port: int, meter: Meter) -> None:
    from amqtt.client import MQTTClient
    from amqtt.mqtt.constants import QOS_1

    client = MQTTClient(client_id=f"bench-{os.getpid()}", config={"auto_reconnect": False})
    await client.connect(f"mqtt://{host}:{port}/")
    await client.subscribe([("plant/+/+", QOS_1)])
    ready()
    while True:
        message = await client.deliver_message()
        if meter.message(bytes(message.data)):
            break
    await client.disconnect()


def subscriber_main(args) -> None:
    site = os.environ.get(SITE_ENV)
    if site:
        sys.path.append(site)  # after the venv's packages: its paho-mqtt (and the rest) come first
    meter = Meter(args.n)
    host = "127.0.0.1"
    if args.client == "paho":
        sub_paho(host, args.port, meter)
    else:
        coro = {"connector": sub_connector, "gmqtt": sub_gmqtt, "aiomqtt": sub_aiomqtt,
                "amqtt": sub_amqtt}[args.client]
        asyncio.run(coro(host, args.port, meter))
    print("RESULT " + json.dumps(meter.result()), flush=True)


# ============================================================================ publisher, broker, runs

def remaining_length(n: int) -> bytes:
    """An MQTT packet's remaining length field (a varint of 7-bit groups)."""
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return buf


def connect_raw(port: int, client_id: str, clean: bool = True, keepalive_s: int = 0) -> socket.socket:
    """An MQTT 3.1.1 connection to the loopback broker on ``port``, written by hand (CONNECT, CONNACK read);
    ``clean`` False: the broker keeps (or resumes) the session of ``client_id``."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cid = client_id.encode()
    body = (struct.pack("!H", 4) + b"MQTT" + bytes([4, 0x02 if clean else 0x00]) + struct.pack("!H", keepalive_s)
            + struct.pack("!H", len(cid)) + cid)
    s.sendall(b"\x10" + remaining_length(len(body)) + body)
    ack = recv_exactly(s, 4)
    if ack[0] != 0x20 or ack[3] != 0:
        raise RuntimeError(f"connection refused: {ack!r}")
    return s


class LeanPublisher:
    """Raw MQTT 3.1.1 QoS 1 publishing on a socket, a bounded number unacknowledged (the rig's publisher)."""

    def __init__(self, port: int, window: int = 1000):
        self.s = connect_raw(port, f"lean-pub-{os.getpid()}")
        self.s.settimeout(None)  # blocking sendall; acks are read with MSG_DONTWAIT
        self.window = window
        self.sent = 0
        self._acked_bytes = 0
        self._mid = 0

    @property
    def acked(self) -> int:
        return self._acked_bytes // 4  # only PUBACKs (4 bytes) come on this connection

    def _read_acks(self, wait_s: float = 0.0) -> None:
        if wait_s and not select.select([self.s], [], [], wait_s)[0]:
            return
        while True:
            try:
                data = self.s.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            if not data:
                raise RuntimeError("broker closed the publisher's connection")
            self._acked_bytes += len(data)

    def publish(self, n: int, batch: int = 64) -> None:
        i = 0
        while i < n:
            self._read_acks()
            while self.sent - self.acked > self.window - batch:
                self._read_acks(0.01)
            k = min(batch, n - i)
            packets = []
            for j in range(i, i + k):
                self._mid = self._mid % 65535 + 1
                topic = TOPICS[j % len(TOPICS)].encode()
                payload = b'{"ts":%.3f,"value":%.4f}' % (time.time() * 1000.0, VALUES[j & 4095])
                packets.append(b"\x32" + remaining_length(2 + len(topic) + 2 + len(payload)) + struct.pack("!H", len(topic))
                               + topic + struct.pack("!H", self._mid) + payload)
            self.s.sendall(b"".join(packets))
            self.sent += k
            i += k

    def close(self, timeout: float = 60.0) -> None:
        # Every PUBACK read first: closing with unread data resets the connection, and the
        # broker may then drop what it has not read yet.
        deadline = time.monotonic() + timeout
        while self.acked < self.sent and time.monotonic() < deadline:
            self._read_acks(0.01)
        try:
            self.s.sendall(b"\xe0\x00")
        except OSError:
            pass
        self.s.close()


def start_broker(work: Path) -> tuple[subprocess.Popen, int]:
    from appliance.broker import find_mosquitto, free_port, wait_port

    binary = find_mosquitto()
    if binary is None:
        raise SystemExit("mosquitto is not installed (Debian: apt-get install -y mosquitto)")
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n"
                    "max_inflight_messages 20\nset_tcp_nodelay true\nlog_dest stderr\nlog_type error\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=open(work / "mosquitto.log", "ab"))
    wait_port(port)
    return proc, port


def _probe(code: str, site: str | None) -> subprocess.CompletedProcess:
    prefix = f"import sys; sys.path.append({site!r}); " if site else ""
    return subprocess.run([sys.executable, "-c", prefix + code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def installed(client: str, site: str | None) -> str | None:
    """None when the client's package imports in a subscriber process; else why not."""
    res = _probe(f"import {MODULES[client]}", site)
    return None if res.returncode == 0 else (res.stderr.strip().splitlines() or ["import failed"])[-1]


def version(client: str, site: str | None) -> str:
    dist = {"paho": "paho-mqtt", "connector": "paho-mqtt"}.get(client, client)
    return _probe(f"import importlib.metadata as m; print(m.version({dist!r}))", site).stdout.strip() or "?"


def one_run(client: str, port: int, n: int, site: str | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "subscriber", "--client", client, "--port", str(port),
           "--n", str(n)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), **({SITE_ENV: site} if site else {}))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        if line.strip() != "READY":
            proc.kill()
            return {"ok": False, "error": (line + proc.stderr.read())[-500:]}
        pub = LeanPublisher(port)
        try:
            pub.publish(n)
        finally:
            pub.close()
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"ok": False, "error": "timed out"}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"ok": False, "error": err[-500:]}


def cell(values: list, fmt: str) -> str:
    vals = [v for v in values if isinstance(v, (int, float))]
    if not vals:
        return "n/a"
    return f"{fmt.format(statistics.median(vals))} ({fmt.format(min(vals))}-{fmt.format(max(vals))})"


def main(argv=None) -> int:
    ap = parser(__doc__, RESULTS / "mqtt_clients.json")
    sub = ap.add_subparsers(dest="cmd")
    s = sub.add_parser("subscriber", help="(internal) one client's subscriber")
    s.add_argument("--client", required=True, choices=CLIENTS)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--n", type=int, required=True)
    ap.add_argument("--n", type=int, default=50_000, help="messages per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", nargs="+", default=list(CLIENTS), choices=CLIENTS)
    ap.add_argument("--site", help="a directory where the candidate clients are installed (pip install --target)")
    args = ap.parse_args(argv)
    if args.cmd == "subscriber":
        subscriber_main(args)
        return 0

    skipped = dict(NOT_MEASURED)
    clients = []
    for c in args.clients:
        why = installed(c, args.site)
        if why is None:
            clients.append(c)
        else:
            skipped[c] = f"not installed: {why}"
            print(f"skipping {c}: not installed ({why})", flush=True)
    versions = {c: version(c, args.site) for c in clients}
    runs: dict[str, list] = {c: [] for c in clients}
    with tempfile.TemporaryDirectory(prefix="mqtt-clients-") as d:
        broker, port = start_broker(Path(d))
        try:
            for i in range(args.runs):
                # Alternating order: a drift of the machine's load costs every client alike.
                for c in (clients if i % 2 == 0 else list(reversed(clients))):
                    r = one_run(c, port, args.n, args.site)
                    runs[c].append(r)
                    print(f"  run {i + 1} {c}: " + (f"{r['msg_s']:,.0f} msg/s, {r['cpu_ms_per_1k']:.1f} CPU ms/1k"
                                                    if r.get("ok") else f"failed: {r.get('error')}"), flush=True)
        finally:
            broker.terminate()
            broker.wait(10)
    lines = [f"| client ({args.n:,} msgs, QoS 1, median (min-max) of {args.runs}) | version | msg/s "
             "| CPU ms per 1k msgs |",
             "|---|---|---|---|"]
    for c in clients:
        ok = [r for r in runs[c] if r.get("ok")]
        lines.append(f"| {c} | {versions[c]} | {cell([r['msg_s'] for r in ok], '{:,.0f}')} | "
                     f"{cell([r['cpu_ms_per_1k'] for r in ok], '{:.1f}')} |")
    for c, why in skipped.items():
        lines.append(f"| {c} | | skipped: {why} | |")
    text = "\n".join(lines)
    print()
    print(text)
    out = write_results(args.out, {"params": {"n": args.n, "runs": args.runs, "qos": 1, "broker_max_inflight": 20},
                                   "versions": versions, "skipped": skipped, "runs": runs, "table": text},
                        libraries=("paho-mqtt",))
    print(f"\nJSON: {out}")
    return 0 if all(r.get("ok") for rs in runs.values() for r in rs) else 2


if __name__ == "__main__":
    sys.exit(main())
