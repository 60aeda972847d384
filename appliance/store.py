"""The local store: SQLite in WAL mode, the source of truth on the gateway.

Writes go through one writer thread (:class:`Store.put` never waits on disk), in
batched transactions. After a batch commits, the callbacks queued with it run in
order: that is when a connector acknowledges the messages to its source, so a
reading acknowledged upstream is on disk.

Durability: ``synchronous=FULL`` in WAL mode, so a committed batch survives a
power cut, and a ``kill -9`` at any moment leaves a consistent database (SQLite's
journal guarantees it). What can be lost is only what was queued and not yet
committed; the source still holds those (they were not acknowledged).

Readings are unique per (asset, sensor, ts): a message delivered twice (QoS 1
after a crash) is stored once. Retention keeps the newest ``max_readings`` rows
and drops rows received more than ``retention_days`` ago.

Readers (dashboard, tests, CLI) open their own connection with :func:`open_reader`.
"""

from __future__ import annotations

import copy
import json
import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from appliance.core import Alarm, AlarmEvent, AlarmState, DeadLetter, Level, Reading, Score

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY,
    asset TEXT NOT NULL, sensor TEXT NOT NULL, ts REAL NOT NULL, value REAL,
    quality INTEGER NOT NULL, historical INTEGER NOT NULL, received REAL NOT NULL,
    UNIQUE (asset, sensor, ts)
);
CREATE TABLE IF NOT EXISTS scores (
    id INTEGER PRIMARY KEY,
    asset TEXT NOT NULL, t_end REAL NOT NULL, value REAL NOT NULL, threshold REAL NOT NULL,
    contributions TEXT NOT NULL, model_version TEXT NOT NULL, historical INTEGER NOT NULL,
    received REAL NOT NULL,
    UNIQUE (asset, t_end)
);
CREATE TABLE IF NOT EXISTS alarms (
    id TEXT PRIMARY KEY, asset TEXT NOT NULL, level TEXT NOT NULL, state TEXT NOT NULL,
    active INTEGER NOT NULL, start REAL NOT NULL, end REAL, peak_score REAL NOT NULL,
    top_sensors TEXT NOT NULL, acked_by TEXT, shelved_until REAL, historical INTEGER NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS alarms_asset ON alarms (asset, start);
CREATE TABLE IF NOT EXISTS alarm_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    alarm_id TEXT NOT NULL, kind TEXT NOT NULL, ts REAL NOT NULL, user TEXT, note TEXT,
    snapshot TEXT NOT NULL,
    UNIQUE (alarm_id, kind, ts)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL, payload BLOB NOT NULL, reason TEXT NOT NULL, received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_reason ON dead_letters (reason);
CREATE TABLE IF NOT EXISTS point_modes (
    asset TEXT PRIMARY KEY, mode TEXT NOT NULL, shelved_until REAL, updated REAL NOT NULL
);
"""

_STOP = object()


def _connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def open_reader(path: str | Path) -> sqlite3.Connection:
    conn = _connect(Path(path), readonly=True)
    conn.row_factory = sqlite3.Row
    return conn


class Store:
    def __init__(self, path: str | Path, retention_days: float = 7.0, max_readings: int = 5_000_000,
                 max_dead_letters: int = 100_000, batch_max: int = 2000):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retention_s = retention_days * 86400
        self.max_readings = max_readings
        self.max_dead_letters = max_dead_letters
        self.batch_max = batch_max
        conn = _connect(self.path)
        conn.executescript(SCHEMA)
        conn.close()
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.committed_batches = 0
        self.write_errors = 0
        self.last_error: str | None = None
        self._last_retention = 0.0

    @classmethod
    def from_config(cls, cfg, path: Path) -> "Store":
        return cls(path, cfg.retention_days, cfg.max_readings, cfg.max_dead_letters)

    # -- writer side ----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Flush everything queued, then stop the writer."""
        if self._thread is not None:
            self._q.put(_STOP)
            self._thread.join(timeout=60)
            self._thread = None

    def put_reading(self, r: Reading) -> None:
        self._q.put(("reading", r))

    def put_score(self, s: Score) -> None:
        self._q.put(("score", s))

    def put_alarm_event(self, e: AlarmEvent) -> None:
        self._q.put(("alarm_event", e))

    def put_alarm(self, a: Alarm) -> None:
        """Update an alarm's row (peak, top sensors) without recording an event."""
        self._q.put(("alarm", copy.copy(a)))

    def put_dead_letter(self, d: DeadLetter) -> None:
        self._q.put(("dead", d))

    def put_point_mode(self, asset: str, mode: str, shelved_until: float | None) -> None:
        self._q.put(("mode", (asset, mode, shelved_until)))

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once everything queued before it is committed."""
        self._q.put(("callback", callback))

    def flush(self, timeout: float = 30.0) -> bool:
        done = threading.Event()
        self.after_commit(done.set)
        return done.wait(timeout)

    def queued(self) -> int:
        return self._q.qsize()

    def _run(self) -> None:
        conn = _connect(self.path)
        stopping = False
        while not stopping:
            batch = [self._q.get()]
            while len(batch) < self.batch_max:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is _STOP or _STOP in batch:
                stopping = True
                batch = [b for b in batch if b is not _STOP]
            callbacks = self._write_batch(conn, batch)
            for cb in callbacks:
                try:
                    cb()
                except Exception:  # a connector's ack must never kill the writer
                    log.exception("store: after-commit callback failed")
            if time.monotonic() - self._last_retention > 60:
                self._retention(conn)
        conn.close()

    def _write_batch(self, conn: sqlite3.Connection, batch: list) -> list[Callable[[], None]]:
        callbacks = []
        now = time.time()
        readings, scores, events, dead, modes, alarms = [], [], [], [], [], []
        for kind, item in batch:
            if kind == "callback":
                callbacks.append(item)
            elif kind == "reading":
                readings.append((item.asset, item.sensor, item.ts, item.value, int(item.quality),
                                 int(item.historical), now))
            elif kind == "score":
                scores.append((item.asset, item.t_end, item.value, item.threshold,
                               json.dumps(dict(item.contributions)), item.model_version,
                               int(item.historical), now))
            elif kind == "alarm_event":
                events.append(item)
            elif kind == "dead":
                dead.append((item.source, item.payload, item.reason, item.received_at))
            elif kind == "alarm":
                alarms.append(item)
            elif kind == "mode":
                modes.append((*item, now))
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT OR IGNORE INTO readings (asset, sensor, ts, value, quality,"
                                 " historical, received) VALUES (?,?,?,?,?,?,?)", readings)
                conn.executemany("INSERT OR IGNORE INTO scores (asset, t_end, value, threshold,"
                                 " contributions, model_version, historical, received)"
                                 " VALUES (?,?,?,?,?,?,?,?)", scores)
                conn.executemany("INSERT INTO dead_letters (source, payload, reason, received_at)"
                                 " VALUES (?,?,?,?)", dead)
                conn.executemany("INSERT OR REPLACE INTO point_modes VALUES (?,?,?,?)", modes)
                for a in alarms:
                    self._write_alarm(conn, a, now)
                for e in events:
                    self._write_event(conn, e, now)
                conn.execute("COMMIT")
                self.committed_batches += 1
                return callbacks
            except sqlite3.Error as exc:
                # Disk full or locked: keep the batch and retry; the source is not
                # acknowledged meanwhile, and ingestion slows down by backpressure.
                self.write_errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("store: write failed, retrying error=%r", self.last_error)
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                time.sleep(1.0)

    @staticmethod
    def _write_alarm(conn: sqlite3.Connection, a: Alarm, now: float) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO alarms (id, asset, level, state, active, start, end, peak_score,"
            " top_sensors, acked_by, shelved_until, historical, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (a.id, a.asset, a.level.name.lower(), a.state.value, int(a.active), a.start, a.end,
             a.peak_score, json.dumps(list(a.top_sensors)), a.acked_by, a.shelved_until,
             int(a.historical), now))

    @classmethod
    def _write_event(cls, conn: sqlite3.Connection, e: AlarmEvent, now: float) -> None:
        a = e.alarm
        cls._write_alarm(conn, a, now)
        conn.execute("INSERT OR IGNORE INTO alarm_events (alarm_id, kind, ts, user, note, snapshot)"
                     " VALUES (?,?,?,?,?,?)",
                     (a.id, e.kind, e.ts, e.user, e.note, json.dumps(e.to_dict())))

    def _retention(self, conn: sqlite3.Connection) -> None:
        self._last_retention = time.monotonic()
        cutoff = time.time() - self.retention_s
        try:
            for table, keep in (("readings", self.max_readings), ("scores", self.max_readings),
                                ("dead_letters", self.max_dead_letters)):
                col = "received_at" if table == "dead_letters" else "received"
                conn.execute(f"DELETE FROM {table} WHERE {col} < ?", (cutoff,))
                conn.execute(f"DELETE FROM {table} WHERE id <= (SELECT MAX(id) FROM {table}) - ?", (keep,))
        except sqlite3.Error as exc:
            log.warning("store: retention failed error=%r", exc)

    # -- read side (any thread; own connection each call) ---------------------
    def _read(self, sql: str, args: Iterable = ()) -> list[sqlite3.Row]:
        conn = open_reader(self.path)
        try:
            return conn.execute(sql, tuple(args)).fetchall()
        finally:
            conn.close()

    def counts(self) -> dict[str, int]:
        out = {}
        for table in ("readings", "scores", "alarms", "alarm_events", "dead_letters"):
            out[table] = self._read(f"SELECT COUNT(*) FROM {table}")[0][0]
        return out

    def open_alarms(self) -> list[tuple[Alarm, str, float | None]]:
        """Alarms not closed, with their point's mode, for restoring after a restart."""
        modes = {r["asset"]: (r["mode"], r["shelved_until"]) for r in self._read("SELECT * FROM point_modes")}
        rows = self._read("SELECT * FROM alarms WHERE state != ? AND id NOT LIKE 'point-%'",
                          (AlarmState.NORMAL.value,))
        out = []
        for r in rows:
            mode, until = modes.get(r["asset"], ("in_service", None))
            out.append((alarm_from_row(r), mode, until))
        return out


def alarm_from_row(r: sqlite3.Row) -> Alarm:
    return Alarm(id=r["id"], asset=r["asset"], level=Level[r["level"].upper()],
                 state=AlarmState(r["state"]), start=r["start"], peak_score=r["peak_score"],
                 top_sensors=tuple(json.loads(r["top_sensors"])), end=r["end"],
                 active=bool(r["active"]), acked_by=r["acked_by"], shelved_until=r["shelved_until"],
                 historical=bool(r["historical"]))
