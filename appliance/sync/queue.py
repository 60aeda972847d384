"""The durable upload queue: what waits, on disk, for the next connectivity window.

One SQLite file in WAL mode of its own (like the history outbox), holding:

* ``items``: what goes up, each under its stable ``key`` (the far side's id:
  ``<alarm id>`` for an episode summary, ``<alarm id>:r:<n>`` for a chunk of
  its raw readings ...). ``body`` is the item's zlib-compressed JSON, made once
  when it is queued, so a resend costs no CPU and its size on the wire is known
  before it is sent. ``priority`` 0 is alarms (summaries, raised notices, late
  notes), 1 is context (raw readings, scores). :meth:`next_batch` hands out
  priority 0 first, then 1, each oldest first.
* ``pending``: episodes still being collected (open alarms, or cleared ones
  waiting for their after-context), so a restart resumes them.
* ``counters``: bytes uploaded, raw bytes observed and the rest of the account,
  kept across restarts.
* ``drops``: every item dropped, by priority and reason, with its bytes.

An item is deleted only when the far side acknowledged the batch holding it
(:meth:`ack`), in the same transaction that adds its bytes to the uploaded
count. A ``kill -9`` between the acknowledgement and that commit sends the
batch again next time; the far side keeps one copy per key.

Bound: ``max_bytes`` of item bytes (key + body + framing). When a commit would
exceed it, **context goes first** (priority 1, oldest first), then, only if
alarms alone exceed the bound, the oldest alarm items. Items in flight are never
dropped, so an item counted as dropped was never acknowledged. An item whose
body alone is larger than a batch may carry (``max_item_bytes``) is dropped when
queued (reason ``too_large``): it could never be sent.

Every method may block on disk: call them from one worker thread (the uplink
uses a single-thread executor, which also keeps them in order).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Sequence

log = logging.getLogger(__name__)

# Framing of one item inside a batch: u16 key length + u32 body length.
ITEM_FRAMING = 6

SCHEMA = """
CREATE TABLE IF NOT EXISTS items(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    priority INTEGER NOT NULL,
    kind TEXT NOT NULL,
    episode TEXT NOT NULL,
    queued_at REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS items_order ON items(priority, id);
CREATE TABLE IF NOT EXISTS pending(
    alarm_id TEXT PRIMARY KEY,
    state TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters(
    name TEXT PRIMARY KEY,
    value REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS drops(
    priority INTEGER NOT NULL,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY(priority, reason)
) WITHOUT ROWID;
"""

PRIORITY_NAMES = {0: "alarm", 1: "context"}


@dataclass(frozen=True, slots=True)
class Item:
    """One thing to upload, before it is queued."""

    key: str
    priority: int
    kind: str
    episode: str
    body: bytes      # zlib-compressed JSON

    @property
    def size(self) -> int:
        return item_size(self.key, self.body)


@dataclass(frozen=True, slots=True)
class Queued:
    """An item taken from the queue for sending."""

    id: int
    key: str
    priority: int
    kind: str
    episode: str
    body: bytes

    @property
    def size(self) -> int:
        return item_size(self.key, self.body)


def item_size(key: str, body: bytes) -> int:
    """Bytes the item takes inside a batch (and counts against the queue's bound)."""
    return ITEM_FRAMING + len(key.encode()) + len(body)


class UploadQueue:
    def __init__(self, path: str | Path, max_bytes: int, max_item_bytes: int,
                 fsync: Literal["commit", "interval"] = "commit"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.max_item_bytes = max_item_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync == 'commit' else 'NORMAL'}")
        self._db.executescript(SCHEMA)
        self._inflight: set[int] = set()
        self._over_logged = False
        # A snapshot replaced (never mutated) after every change, so status() on the
        # event loop reads it without taking the lock a disk write may hold.
        self.snapshot: dict = {}
        self._refresh()

    # -- producer side --------------------------------------------------------------
    def add(self, items: Sequence[Item], pending_done: str | None = None,
            pending_save: tuple[str, str] | None = None,
            supersede: Sequence[str] = (), counters: dict[str, float] | None = None) -> dict[tuple[int, str], int]:
        """Queue ``items`` (a key already queued is kept as it is) in one transaction.

        ``pending_done`` removes that episode from ``pending`` in the same
        transaction (it is complete now); ``pending_save`` writes one (alarm id, state as
        JSON: serialized by the caller, whose thread owns the episode). ``supersede``
        lists keys the new items make redundant (a raised notice, once its episode's
        summary is queued): they are removed unless already in flight. ``counters`` are set
        in the same transaction (a cursor saying what has been queued). Enforces the
        byte bound; returns the drops it made by (priority, reason).
        """
        drops: dict[tuple[int, str], list[int]] = {}
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for it in items:
                    if it.size > self.max_item_bytes:
                        d = drops.setdefault((it.priority, "too_large"), [0, 0])
                        d[0] += 1
                        d[1] += it.size
                        log.warning("sync item too large to ever send; dropped key=%s bytes=%d limit=%d",
                                    it.key, it.size, self.max_item_bytes)
                        continue
                    self._db.execute(
                        "INSERT OR IGNORE INTO items(key, priority, kind, episode, queued_at, body) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (it.key, it.priority, it.kind, it.episode, time.time(), it.body))
                for key in supersede:
                    row = self._db.execute("SELECT id FROM items WHERE key = ?", (key,)).fetchone()
                    if row is not None and row[0] not in self._inflight:
                        self._db.execute("DELETE FROM items WHERE id = ?", (row[0],))
                        self._add_counters({"superseded_items": 1})
                if pending_done is not None:
                    self._db.execute("DELETE FROM pending WHERE alarm_id = ?", (pending_done,))
                if pending_save is not None:
                    self._save_pending(*pending_save)
                if counters:
                    self._db.executemany("INSERT INTO counters(name, value) VALUES (?, ?) ON CONFLICT(name) DO "
                                         "UPDATE SET value = excluded.value", list(counters.items()))
                for key, (n, b) in self._enforce_bound().items():
                    d = drops.setdefault(key, [0, 0])
                    d[0] += n
                    d[1] += b
                self._count_drops(drops)
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            self._refresh()
        return {k: v[0] for k, v in drops.items()}

    def save_pending(self, alarm_id: str, state: str) -> None:
        """Write (or replace) one episode still being collected (its state as JSON)."""
        with self._lock:
            self._save_pending(alarm_id, state)

    def drop_pending(self, alarm_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM pending WHERE alarm_id = ?", (alarm_id,))

    def load_pending(self) -> list[dict]:
        """Every episode still being collected, as saved."""
        out = []
        with self._lock:
            rows = self._db.execute("SELECT alarm_id, state FROM pending ORDER BY alarm_id").fetchall()
        for alarm_id, state in rows:
            try:
                out.append(json.loads(state))
            except ValueError:
                log.error("sync queue: unreadable pending episode %s skipped", alarm_id)
        return out

    def add_counters(self, deltas: dict[str, float]) -> None:
        """Add to the persistent counters (raw bytes observed ...)."""
        if not any(deltas.values()):
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._add_counters(deltas)
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            self._refresh()

    def set_counters(self, values: dict[str, float]) -> None:
        """Set persistent counters to totals kept by the caller (raw bytes observed ...)."""
        with self._lock:
            self._db.executemany("INSERT INTO counters(name, value) VALUES (?, ?) "
                                 "ON CONFLICT(name) DO UPDATE SET value = excluded.value", list(values.items()))
            self._refresh()

    # -- sender side ----------------------------------------------------------------
    def next_batch(self, max_bytes: int) -> list[Queued]:
        """The next items to send, about ``max_bytes`` in all (item framing included).

        Priority 0 before 1, oldest first, skipping items in flight; stops at the
        first item that does not fit, so the order is kept. Marks them in flight.
        """
        batch: list[Queued] = []
        size = 0
        with self._lock:
            cur = self._db.execute("SELECT id, key, priority, kind, episode, body FROM items ORDER BY priority, id")
            for rid, key, prio, kind, episode, body in cur:
                if rid in self._inflight:
                    continue
                q = Queued(rid, key, prio, kind, episode, bytes(body))
                if size + q.size > max_bytes:
                    break
                batch.append(q)
                size += q.size
            cur.close()
            self._inflight.update(q.id for q in batch)
        return batch

    def release(self, batch: Iterable[Queued]) -> None:
        """``batch`` was not acknowledged: it stays queued and may be sent again."""
        with self._lock:
            self._inflight.difference_update(q.id for q in batch)

    def ack(self, batch: Sequence[Queued], wire_bytes: int) -> None:
        """The far side acknowledged ``batch`` (``wire_bytes`` on the wire): delete and count it."""
        if not batch:
            return
        episodes = sum(1 for q in batch if q.kind == "episode")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM items WHERE id = ?", [(q.id,) for q in batch])
                self._add_counters({"uploaded_bytes": wire_bytes, "uploaded_messages": 1,
                                    "uploaded_items": len(batch), "uploaded_episodes": episodes,
                                    "uploaded_item_bytes": sum(q.size for q in batch)})
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            finally:
                self._inflight.difference_update(q.id for q in batch)
            self._refresh()

    # -- reading the state ----------------------------------------------------------
    def waiting(self) -> int:
        """Items queued and not in flight (from the last snapshot; no disk access)."""
        return max(0, self.snapshot.get("items", 0) - len(self._inflight))

    def in_flight(self) -> int:
        return len(self._inflight)

    def keys(self) -> list[str]:
        """Keys waiting, in sending order (tests, inspection)."""
        with self._lock:
            return [k for (k,) in self._db.execute("SELECT key FROM items ORDER BY priority, id")]

    def close(self) -> None:
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:
                log.warning("sync queue checkpoint on close failed error=%s", e)
            self._db.close()

    # -- internals (lock held) --------------------------------------------------------
    def _save_pending(self, alarm_id: str, state: str) -> None:
        self._db.execute("INSERT INTO pending(alarm_id, state) VALUES (?, ?) "
                         "ON CONFLICT(alarm_id) DO UPDATE SET state = excluded.state", (alarm_id, state))

    def _add_counters(self, deltas: dict[str, float]) -> None:
        self._db.executemany("INSERT INTO counters(name, value) VALUES (?, ?) "
                             "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                             [(k, v) for k, v in deltas.items() if v])

    def _enforce_bound(self) -> dict[tuple[int, str], tuple[int, int]]:
        total = self._db.execute(
            "SELECT coalesce(sum(length(CAST(key AS BLOB)) + length(body)), 0) + ? * count(*) FROM items",
            (ITEM_FRAMING,)).fetchone()[0]
        over = total - self.max_bytes
        dropped: dict[tuple[int, str], tuple[int, int]] = {}
        for prio in (1, 0):
            if over <= 0:
                break
            ids, freed = [], 0
            for rid, size in self._db.execute(
                    "SELECT id, length(CAST(key AS BLOB)) + length(body) + ? FROM items WHERE priority = ? "
                    "ORDER BY id", (ITEM_FRAMING, prio)):
                if freed >= over:
                    break
                if rid in self._inflight:
                    continue
                ids.append(rid)
                freed += size
            if ids:
                self._db.executemany("DELETE FROM items WHERE id = ?", [(i,) for i in ids])
                dropped[(prio, "bytes_bound")] = (len(ids), freed)
                over -= freed
        if over > 0 and not self._over_logged:
            log.warning("sync queue over its bound by %d bytes with only items in flight left", over)
        self._over_logged = over > 0
        if dropped:
            log.warning("sync queue full: dropped %s", ", ".join(
                f"{n} {PRIORITY_NAMES.get(p, p)} item(s) ({b} bytes)" for (p, _), (n, b) in dropped.items()))
        return dropped

    def _count_drops(self, drops: dict[tuple[int, str], list[int]]) -> None:
        self._db.executemany(
            "INSERT INTO drops(priority, reason, count, bytes) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(priority, reason) DO UPDATE SET count = count + excluded.count, "
            "bytes = bytes + excluded.bytes",
            [(p, reason, n, b) for (p, reason), (n, b) in drops.items() if n])

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error as e:  # the failed statement may already have rolled back
            log.debug("sync queue rollback error=%s", e)

    def _refresh(self) -> None:
        by_prio = {PRIORITY_NAMES[p]: {"items": 0, "bytes": 0} for p in PRIORITY_NAMES}
        for prio, n, b in self._db.execute(
                "SELECT priority, count(*), coalesce(sum(length(CAST(key AS BLOB)) + length(body)), 0) "
                "FROM items GROUP BY priority"):
            by_prio[PRIORITY_NAMES.get(prio, str(prio))] = {"items": n, "bytes": b + n * ITEM_FRAMING}
        oldest = self._db.execute("SELECT min(queued_at) FROM items").fetchone()[0]
        pending = self._db.execute("SELECT count(*) FROM pending").fetchone()[0]
        counters = {k: v for k, v in self._db.execute("SELECT name, value FROM counters")}
        drops = {f"{PRIORITY_NAMES.get(p, p)}_{reason}": {"items": n, "bytes": b}
                 for p, reason, n, b in self._db.execute("SELECT priority, reason, count, bytes FROM drops")}
        self.snapshot = {
            "items": sum(v["items"] for v in by_prio.values()),
            "bytes": sum(v["bytes"] for v in by_prio.values()),
            "max_bytes": self.max_bytes,
            "by_priority": by_prio,
            "oldest_queued_at": oldest,
            "pending_episodes": pending,
            "in_flight": len(self._inflight),
            "counters": counters,
            "dropped": drops,
        }
