"""A cloud-side stand-in: receives the appliance's uplink and stores the anomalies, once each.

Where engineers would look in a real deployment (an IoT rule writing to a
database). It subscribes with QoS 1 in a persistent session on the cloud
broker (TLS, client certificate) and, optionally, accepts the same batches as
HTTPS POSTs. Each batch is unpacked, each item decompressed and stored in its
own SQLite file with ``INSERT OR IGNORE`` on the item's id, so a batch delivered
twice (a lost PUBACK, an uploader killed before it deleted what was sent) is
stored once; the duplicates are counted, not hidden.

It knows only the wire format, not the appliance's code (the decoder below is
its own), as a real cloud would::

    batch := b"AEU2" zlib((u16 key length | key | u32 length | JSON)*)        big-endian
           | b"AEU1" (u16 key length | key | u32 body length | zlib(JSON))*

The query functions (:meth:`IntakeStore.episodes`, :meth:`IntakeStore.readings`
...) are what the tests ask.

    appliance-sim cloud-intake --host 127.0.0.1 --port 8883 --ca ca.pem --cert intake.pem --key intake.key \\
        --db cloud.db [--https-port 8443 --https-cert server.pem --https-key server.key]
"""

from __future__ import annotations

import json
import logging
import sqlite3
import ssl
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger(__name__)

MAGIC = b"AEU1"        # items compressed one by one
MAGIC_JOINT = b"AEU2"  # the batch compressed as one stream
# A batch is a few hundred kilobytes; anything far larger is not one.
MAX_BATCH_BYTES = 64 * 1024 * 1024
MAX_ITEM_BYTES = 64 * 1024 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS items(
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    episode TEXT,
    site TEXT,
    body TEXT NOT NULL,
    received_at REAL NOT NULL,
    via TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_episode ON items(episode, type);
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency(key TEXT PRIMARY KEY, received_at REAL NOT NULL, response TEXT NOT NULL)
    WITHOUT ROWID;
"""


def _inflate(body: bytes, limit: int, what: str) -> bytes:
    d = zlib.decompressobj()
    try:
        raw = d.decompress(body, limit)
    except zlib.error as e:
        raise ValueError(f"{what} is not valid zlib data: {e}") from None
    if d.unconsumed_tail:
        raise ValueError(f"{what} inflates beyond {limit} bytes")
    return raw


def _records(data: bytes, start: int) -> list[tuple[str, bytes]]:
    out, i = [], start
    while i < len(data):
        try:
            (klen,) = struct.unpack_from(">H", data, i)
            key = data[i + 2:i + 2 + klen].decode()
            i += 2 + klen
            (blen,) = struct.unpack_from(">I", data, i)
        except (struct.error, UnicodeDecodeError) as e:
            raise ValueError(f"truncated or damaged batch at byte {i}: {e}") from None
        body = data[i + 4:i + 4 + blen]
        if len(body) != blen:
            raise ValueError(f"truncated batch: item {key!r} wants {blen} bytes, {len(body)} left")
        i += 4 + blen
        out.append((key, body))
    return out


def unpack(payload: bytes) -> list[tuple[str, dict]]:
    """The (id, document) pairs of one batch; ValueError names what is wrong."""
    if len(payload) > MAX_BATCH_BYTES:
        raise ValueError(f"batch of {len(payload)} bytes is larger than {MAX_BATCH_BYTES}")
    if payload[:4] == MAGIC_JOINT:
        pairs = _records(_inflate(payload[4:], MAX_ITEM_BYTES, "the batch"), 0)
    elif payload[:4] == MAGIC:
        pairs = [(key, _inflate(body, MAX_ITEM_BYTES, f"item {key!r}")) for key, body in _records(payload, 4)]
    else:
        raise ValueError("not an uplink batch (bad magic)")
    out = []
    for key, raw in pairs:
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise ValueError(f"item {key!r} is not JSON: {e}") from None
        if not isinstance(doc, dict) or doc.get("id") != key:
            raise ValueError(f"item {key!r}: its document does not carry the same id")
        out.append((key, doc))
    return out


def decode_times(doc: dict) -> list[float]:
    """``t0 + cumsum(dt_ms) / 1000``."""
    out, ms = [], 0
    for step in doc.get("dt_ms", []):
        ms += step
        out.append(doc["t0"] + ms / 1000.0)
    return out


def decode_values(col: dict) -> list[float | None]:
    """Exact values (``v``) or grid differences (``step``, ``dv``; ``None`` = missing)."""
    if "v" in col:
        return list(col["v"])
    step, q, out = col["step"], 0, []
    for d in col["dv"]:
        if d is None:
            out.append(None)
            continue
        q += d
        out.append(round(q * step, 12))
    return out


class IntakeStore:
    """The intake's SQLite file; safe from several threads (one lock, one connection)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def ingest(self, payload: bytes, via: str) -> dict:
        """Store one batch; returns ``{"stored": n, "duplicates": m}``. Committed before it returns."""
        try:
            items = unpack(payload)
        except (ValueError, zlib.error) as e:
            self._count({"bad_batches": 1})
            log.warning("intake: bad batch refused: %s", e)
            raise
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                stored, types = 0, {}
                for key, doc in items:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO items(id, type, episode, site, body, received_at, via) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (key, doc.get("type", "?"), doc.get("episode"), doc.get("site"), json.dumps(doc), now, via))
                    stored += cur.rowcount
                    types[doc.get("type", "?")] = types.get(doc.get("type", "?"), 0) + cur.rowcount
                dup = len(items) - stored
                self._add({"batches": 1, "deliveries": len(items), "stored": stored, "duplicates": dup,
                           "bytes": len(payload)})
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return {"stored": stored, "duplicates": dup, "types": {t: n for t, n in types.items() if n}}

    def remember(self, key: str, response: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO idempotency(key, received_at, response) VALUES (?, ?, ?)",
                             (key, time.time(), json.dumps(response)))

    def recall(self, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT response FROM idempotency WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    # -- queries -------------------------------------------------------------------------
    def stats(self) -> dict:
        with self._lock:
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            by_type = dict(self._db.execute("SELECT type, count(*) FROM items GROUP BY type").fetchall())
        return {"batches": counters.get("batches", 0), "deliveries": counters.get("deliveries", 0),
                "stored": counters.get("stored", 0), "duplicates": counters.get("duplicates", 0),
                "bad_batches": counters.get("bad_batches", 0), "bytes": counters.get("bytes", 0),
                "items_by_type": by_type}

    def ids(self, type: str | None = None) -> list[str]:
        sql, args = "SELECT id FROM items", ()
        if type is not None:
            sql, args = sql + " WHERE type = ?", (type,)
        with self._lock:
            return [r[0] for r in self._db.execute(sql + " ORDER BY id", args)]

    def items(self, type: str | None = None, episode: str | None = None) -> list[dict]:
        where, args = [], []
        if type is not None:
            where.append("type = ?")
            args.append(type)
        if episode is not None:
            where.append("episode = ?")
            args.append(episode)
        sql = "SELECT body FROM items" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        with self._lock:
            return [json.loads(r[0]) for r in self._db.execute(sql, args)]

    def episodes(self) -> list[dict]:
        """Episode summaries, oldest start first."""
        return sorted(self.items("episode"), key=lambda d: (d["start"], d["id"]))

    def complete(self, episode_id: str) -> bool:
        """The summary and every context item it lists have arrived."""
        summaries = self.items("episode", episode_id)
        if not summaries:
            return False
        have = set(self.ids())
        return all(k in have for k in summaries[0]["context"]["items"])

    def readings(self, episode_id: str) -> dict[str, list[tuple[float, float | None]]]:
        """The raw readings uploaded with one episode, by sensor, in time order."""
        out: dict[str, list] = {}
        for doc in self.items("readings", episode_id):
            times = [decode_times(t) for t in doc["times"]]
            for sensor, col in doc["sensors"].items():
                out.setdefault(sensor, []).extend(zip(times[col["t"]], decode_values(col["value"])))
        return {s: sorted(rows, key=lambda r: r[0]) for s, rows in out.items()}

    def scores(self, episode_id: str) -> list[tuple[float, float | None]]:
        """(t_end, value) of the episode's score series."""
        rows = []
        for doc in self.items("scores", episode_id):
            rows.extend(zip(decode_times(doc), decode_values(doc["value"])))
        return sorted(rows, key=lambda r: r[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _count(self, deltas: dict) -> None:
        with self._lock:
            self._add(deltas)

    def _add(self, deltas: dict) -> None:
        self._db.executemany("INSERT INTO counters(name, value) VALUES (?, ?) "
                             "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", list(deltas.items()))


class CloudIntake:
    """The MQTT side: a QoS 1 subscriber in a persistent session that stores each batch before its PUBACK.

    paho acknowledges a QoS 1 message after ``on_message`` returned, and the
    batch is committed inside it: a message the broker counts as delivered is on
    disk here.
    """

    def __init__(self, store: IntakeStore, host: str, port: int, ca_file: str, cert_file: str, key_file: str,
                 topic: str = "appliance/+/uplink", client_id: str = "cloud-intake", on_batch=None):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.store = store
        self.host, self.port, self.topic = host, port, topic
        self.on_batch = on_batch  # called with (topic, {"stored", "duplicates", "types"}) after each commit
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                                  protocol=mqtt.MQTTv311)
        ctx = ssl.create_default_context(cafile=ca_file)
        ctx.load_cert_chain(cert_file, key_file)
        self.client.tls_set_context(ctx)
        self.client.reconnect_delay_set(0.2, 2.0)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.messages = 0

    def start(self) -> "CloudIntake":
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        return self

    def ready(self) -> bool:
        """Connected and subscribed."""
        return self._subscribed.is_set()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.warning("intake: connect refused: %s", reason_code)
            return
        # Always subscribe again: a broker that lost its state (killed before it saved)
        # no longer knows the persistent session's subscription.
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self._subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._subscribed.clear()

    def _on_message(self, client, userdata, msg):
        self.messages += 1
        try:
            result = self.store.ingest(msg.payload, via=f"mqtt:{msg.topic}")
        except (ValueError, zlib.error):
            return  # counted as a bad batch; acknowledging it keeps it from blocking the session
        if self.on_batch is not None:
            self.on_batch(msg.topic, result)


class HttpsIntake:
    """The HTTPS side: ``POST /uplink`` over TLS with client certificates; ``Idempotency-Key`` honoured.

    A key seen before is answered with the first answer and the body is not
    stored again (the per-item ids would keep it once anyway).
    """

    def __init__(self, store: IntakeStore, port: int, ca_file: str, cert_file: str, key_file: str,
                 host: str = "127.0.0.1"):
        intake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                if self.path != "/uplink" or not 0 < length <= MAX_BATCH_BYTES:
                    self._answer(404 if self.path != "/uplink" else 413, {"error": "bad request"})
                    return
                body = self.rfile.read(length)
                key = self.headers.get("Idempotency-Key")
                if key:
                    earlier = intake.store.recall(key)
                    if earlier is not None:
                        intake.replays += 1
                        self._answer(200, earlier)
                        return
                try:
                    result = intake.store.ingest(body, via="https")
                except (ValueError, zlib.error) as e:
                    self._answer(422, {"error": str(e)})
                    return
                if key:
                    intake.store.remember(key, result)
                self._answer(200, result)

            def _answer(self, status, doc):
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, fmt, *args):
                log.debug("intake https: " + fmt, *args)

        self.store = store
        self.replays = 0
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        ctx.load_verify_locations(ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="intake-https", daemon=True)

    def start(self) -> "HttpsIntake":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def add_subcommand(sub) -> None:
    """``appliance-sim cloud-intake``: run the intake until interrupted."""
    p = sub.add_parser("cloud-intake", help="cloud-side stand-in: store uploaded anomalies (MQTT/TLS, HTTPS)")
    p.add_argument("--host", default="127.0.0.1", help="cloud broker host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8883, help="cloud broker TLS port (default 8883)")
    p.add_argument("--ca", required=True, help="CA of the broker's certificate (and of HTTPS clients)")
    p.add_argument("--cert", required=True, help="the intake's client certificate")
    p.add_argument("--key", required=True, help="the intake's client key")
    p.add_argument("--topic", default="appliance/+/uplink", help="subscription (default appliance/+/uplink)")
    p.add_argument("--client-id", default="cloud-intake")
    p.add_argument("--db", required=True, help="SQLite file the anomalies are stored in")
    p.add_argument("--https-port", type=int, help="also accept POST /uplink on this port")
    p.add_argument("--https-cert", help="server certificate for --https-port")
    p.add_argument("--https-key", help="server key for --https-port")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--print-batches", action="store_true", help="print one line per batch stored")
    p.add_argument("--stop-on-stdin-eof", action="store_true",
                   help="also stop when standard input closes (a parent that runs this as its child)")
    p.set_defaults(func=run)


def run(args) -> int:
    import signal

    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = IntakeStore(args.db)
    def printed(topic: str, result: dict) -> None:
        kinds = ",".join(f"{t}:{n}" for t, n in sorted(result["types"].items())) or "-"
        print(f"appliance-sim cloud-intake: stored {result['stored']} item(s) ({kinds}) "
              f"duplicates={result['duplicates']} from {topic}", flush=True)

    intake = CloudIntake(store, args.host, args.port, args.ca, args.cert, args.key, args.topic,
                         args.client_id, on_batch=printed if args.print_batches else None).start()
    https = None
    if args.https_port is not None:
        if not (args.https_cert and args.https_key):
            print("appliance-sim cloud-intake: --https-port needs --https-cert and --https-key")
            return 2
        https = HttpsIntake(store, args.https_port, args.ca, args.https_cert, args.https_key).start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.stop_on_stdin_eof:
        from .lifeline import watch_stdin_eof

        watch_stdin_eof(stop.set)
    print(f"appliance-sim cloud-intake: listening broker={args.host}:{args.port} topic={args.topic} db={args.db}"
          + (f" https_port={https.port}" if https else ""), flush=True)
    while not stop.wait(1.0):
        pass
    intake.stop()
    if https is not None:
        https.stop()
    print(f"appliance-sim cloud-intake: {json.dumps(store.stats())}", flush=True)
    store.close()
    return 0
