"""The durable outbox: points wait here, on disk, until the server acknowledged them.

One SQLite file in WAL mode, separate from every other store, so its fsync
cadence and size bound concern nobody else. Rows are the exact line-protocol
bytes to send, in acceptance order (``id``); the forwarder takes them from the
head and deletes a batch only after the server acknowledged it.

*Accepted* means committed here. A ``kill -9`` cannot lose a committed row (the
WAL write happened before the commit returned); with ``fsync="commit"``
(``synchronous=FULL``) a power cut cannot either. With ``fsync="interval"``
(``synchronous=NORMAL`` plus a checkpoint every ``fsync_interval_s``) a power cut
may roll back the commits of the last interval, never corrupting the file.
Deleting an acknowledged batch is never fsynced on its own (see ``_delete``): a
power cut can only bring such a batch back, to be sent again.

Bounds: the payload bytes (line length plus a fixed per-row overhead) and the age
since acceptance. When over, the oldest raw readings go first, then the oldest
scores; alarm events and audit records are never dropped for space or age. Rows in
the batch the forwarder has in flight are never dropped, so a point counted as
dropped can never have been delivered. Every drop is counted per kind and reason
in the ``drops`` table, in the same transaction that deleted the rows, so the
counts survive restarts and are exact.

All methods are called with the instance lock held internally; the writer thread
and the forwarder thread share one connection.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from appliance.history.lineproto import DROPPABLE, Kind
from appliance.core.sqlite_pages import set_page_size

log = logging.getLogger(__name__)

# SQLite cost of a row beyond its payload (rowid, kind, timestamp, index entry);
# counted so that many tiny points cannot escape the byte bound.
ROW_OVERHEAD = 32

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind INTEGER NOT NULL,
    accepted_at REAL NOT NULL,
    line BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_kind ON outbox(kind, id);
CREATE TABLE IF NOT EXISTS drops(
    kind INTEGER NOT NULL,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY(kind, reason)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejected(
    id INTEGER PRIMARY KEY,
    kind INTEGER NOT NULL,
    accepted_at REAL NOT NULL,
    rejected_at REAL NOT NULL,
    status INTEGER,
    error TEXT,
    line BLOB NOT NULL
);
"""

# Rejected points are kept for inspection, but never without bound.
MAX_REJECTED_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    kind: Kind
    accepted_at: float
    line: bytes


class Outbox:
    def __init__(self, path: str | Path, max_bytes: int, max_age_s: float,
                 fsync: Literal["commit", "interval"] = "commit", page_size: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.fsync = fsync
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=30.0)
        # Only takes effect on a new file: lets compact() hand space back after a
        # long outage's backlog drained (an SD card is small).
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        if page_size is not None:
            self._set_page_size(page_size)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync == 'commit' else 'NORMAL'}")
        self._db.executescript(SCHEMA)
        self._inflight_hi = 0
        self._points: dict[Kind, int] = {}
        self._bytes: dict[Kind, int] = {}
        self._drops: dict[tuple[Kind, str], int] = {}
        self._oldest_at: float | None = None
        self._reload_totals()
        self._over_bound_logged = False

    def _set_page_size(self, page_size: int) -> None:
        """Small pages write less per commit (the newest leaf, the id index's, ``sqlite_sequence``). The
        file is rewritten only while it holds no point, so a backlog never delays a start; until then
        it keeps its pages."""
        db = self._db
        if db.execute("SELECT 1 FROM sqlite_schema WHERE name = 'outbox'").fetchone() and \
                db.execute("SELECT 1 FROM outbox LIMIT 1").fetchone():
            return
        set_page_size(db, page_size, f"history outbox {self.path}")

    # -- writer side -------------------------------------------------------------------

    def append(self, rows: Sequence[tuple[Kind, bytes]], extra_drops: dict[tuple[Kind, str], int] | None = None,
               now: float | None = None) -> dict[tuple[Kind, str], int]:
        """Commit ``rows`` (and drops counted before they reached disk) in one transaction.

        Enforces the byte bound in the same transaction; returns the drops it made."""
        now = time.time() if now is None else now
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if rows:
                    self._db.executemany("INSERT INTO outbox(kind, accepted_at, line) VALUES (?, ?, ?)",
                                         ((int(k), now, line) for k, line in rows))
                for k, line in rows:
                    self._points[k] += 1
                    self._bytes[k] += len(line) + ROW_OVERHEAD
                dropped = self._enforce_bytes()
                self._count_drops(extra_drops or {})
                self._count_drops(dropped)
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            if rows and self._oldest_at is None:
                self._oldest_at = now
            if dropped:
                self._oldest_at = self._head_time()
            return dropped

    def expire(self, now: float | None = None) -> dict[tuple[Kind, str], int]:
        """Drop droppable points older than ``max_age_s``; returns the drops made."""
        cutoff = (time.time() if now is None else now) - self.max_age_s
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                dropped: dict[tuple[Kind, str], int] = {}
                for kind in DROPPABLE:
                    n = self._drop_oldest(kind, lambda rid, at, size: at < cutoff)
                    if n:
                        dropped[(kind, "age_bound")] = n
                self._count_drops(dropped)
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            if dropped:
                self._oldest_at = self._head_time()
            return dropped

    def compact(self, min_free_pages: int = 256) -> int:
        """Return free pages to the file system once most of the file is free; pages freed."""
        with self._lock:
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            total = self._db.execute("PRAGMA page_count").fetchone()[0]
            if free < min_free_pages or free * 2 < total:
                return 0
            # executescript steps the pragma to completion (execute() frees one page).
            self._db.executescript(f"PRAGMA incremental_vacuum({int(free)});")
            return free

    def checkpoint(self) -> None:
        """Make every commit so far durable (the WAL is fsynced before a checkpoint)."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    # -- forwarder side ----------------------------------------------------------------

    def peek(self, max_points: int, max_bytes: int) -> list[Row]:
        """The oldest rows, at most ``max_points`` and about ``max_bytes``; marks them in flight."""
        with self._lock:
            rows: list[Row] = []
            size = 0
            for rid, kind, at, line in self._db.execute(
                    "SELECT id, kind, accepted_at, line FROM outbox ORDER BY id LIMIT ?", (max_points,)):
                if rows and size + len(line) > max_bytes:
                    break
                rows.append(Row(rid, Kind(kind), at, bytes(line)))
                size += len(line) + 1
            self._inflight_hi = rows[-1].id if rows else 0
            return rows

    def ack(self, rows: Sequence[Row]) -> None:
        """The server acknowledged ``rows``: delete them."""
        self._delete(rows, None)

    def reject(self, row: Row, status: int | None, error: str) -> None:
        """The server refuses ``row`` for good: move it aside (kept for inspection) and count it."""
        self._delete([row], (status, error[:2000]))

    def release(self) -> None:
        """Nothing is in flight any more (the forwarder stopped or backs off for long)."""
        with self._lock:
            self._inflight_hi = 0

    def _delete(self, rows: Sequence[Row], rejected: tuple[int | None, str] | None) -> None:
        if not rows:
            return
        with self._lock:
            # An acknowledgement is not worth an fsync: if a power cut undoes it, the
            # batch is simply sent again (same points, overwritten downstream). Skipping
            # it also shrinks the window in which a kill -9 causes such a resend to the
            # time of a write() call. The next append's fsync covers these pages too.
            relaxed = self.fsync == "commit" and rejected is None
            if relaxed:
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if rejected is not None:
                    self._db.executemany(
                        "INSERT INTO rejected(kind, accepted_at, rejected_at, status, error, line) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        [(int(r.kind), r.accepted_at, time.time(), rejected[0], rejected[1], r.line)
                         for r in rows])
                    self._db.execute(
                        "DELETE FROM rejected WHERE id <= (SELECT max(id) FROM rejected) - ?",
                        (MAX_REJECTED_KEPT,))
                    counts: dict[tuple[Kind, str], int] = {}
                    for r in rows:
                        counts[(r.kind, "rejected")] = counts.get((r.kind, "rejected"), 0) + 1
                    self._count_drops(counts)
                # The rows are a contiguous run of ids (peek takes the head and
                # nothing at or below the in-flight mark is ever dropped).
                cur = self._db.execute("DELETE FROM outbox WHERE id >= ? AND id <= ?",
                                       (rows[0].id, rows[-1].id))
                deleted = cur.rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            finally:
                if relaxed:
                    self._db.execute("PRAGMA synchronous=FULL")
            if deleted == len(rows):
                for r in rows:
                    self._points[r.kind] -= 1
                    self._bytes[r.kind] -= len(r.line) + ROW_OVERHEAD
            else:
                log.error("history outbox ack deleted=%d expected=%d; recounting", deleted, len(rows))
                self._reload_totals()
            self._inflight_hi = 0
            self._oldest_at = self._head_time()

    # -- reading the state -------------------------------------------------------------

    def totals(self) -> tuple[dict[Kind, int], dict[Kind, int], float | None]:
        """Points and bytes by kind, and the acceptance time of the oldest point."""
        with self._lock:
            return dict(self._points), dict(self._bytes), self._oldest_at

    def drop_counts(self) -> dict[tuple[Kind, str], int]:
        """Every point ever dropped from this outbox, by kind and reason (survives restarts)."""
        with self._lock:
            return dict(self._drops)

    def rejected_rows(self, limit: int = 100) -> list[dict]:
        with self._lock:
            return [{"kind": Kind(k).label, "rejected_at": at, "status": st, "error": err,
                     "line": bytes(line).decode(errors="replace")}
                    for k, at, st, err, line in self._db.execute(
                        "SELECT kind, rejected_at, status, error, line FROM rejected "
                        "ORDER BY id DESC LIMIT ?", (limit,))]

    def close(self) -> None:
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:
                log.warning("history outbox checkpoint on close failed error=%s", e)
            self._db.close()

    # -- internals (lock held, inside a transaction) -----------------------------------

    def _enforce_bytes(self) -> dict[tuple[Kind, str], int]:
        over = sum(self._bytes.values()) - self.max_bytes
        dropped: dict[tuple[Kind, str], int] = {}
        for kind in DROPPABLE:
            if over <= 0:
                break
            freed = 0

            def enough(rid, at, cost, _over=over):
                nonlocal freed
                if freed >= _over:
                    return False
                freed += cost
                return True

            n = self._drop_oldest(kind, enough)
            if n:
                dropped[(kind, "bytes_bound")] = n
            over -= freed
        if over > 0:
            if not self._over_bound_logged:
                log.warning("history outbox over its byte bound with only alarms/audit left "
                            "over_bytes=%d (these are never dropped)", over)
                self._over_bound_logged = True
        else:
            self._over_bound_logged = False
        return dropped

    def _drop_oldest(self, kind: Kind, take) -> int:
        """Delete the oldest rows of ``kind`` (not in flight) while ``take(id, at, size)``."""
        total = 0
        while True:
            chosen: list[tuple[int, int]] = []
            stop = False
            for rid, at, size in self._db.execute(
                    "SELECT id, accepted_at, length(line) FROM outbox WHERE kind = ? AND id > ? "
                    "ORDER BY id LIMIT 1000", (int(kind), self._inflight_hi)):
                cost = size + ROW_OVERHEAD
                if not take(rid, at, cost):
                    stop = True
                    break
                chosen.append((rid, cost))
            if not chosen:
                return total
            self._db.execute("DELETE FROM outbox WHERE kind = ? AND id > ? AND id <= ?",
                             (int(kind), self._inflight_hi, chosen[-1][0]))
            total += len(chosen)
            self._points[kind] -= len(chosen)
            self._bytes[kind] -= sum(c for _, c in chosen)
            if stop or len(chosen) < 1000:
                return total

    def _count_drops(self, counts: dict[tuple[Kind, str], int]) -> None:
        # In the caller's transaction; a rollback reloads self._drops from disk.
        if counts:
            self._db.executemany(
                "INSERT INTO drops(kind, reason, count) VALUES (?, ?, ?) "
                "ON CONFLICT(kind, reason) DO UPDATE SET count = count + excluded.count",
                [(int(k), reason, n) for (k, reason), n in counts.items() if n])
            for key, n in counts.items():
                self._drops[key] = self._drops.get(key, 0) + n

    def _load_drops(self) -> dict[tuple[Kind, str], int]:
        return {(Kind(k), reason): n for k, reason, n in
                self._db.execute("SELECT kind, reason, count FROM drops")}

    def _head_time(self) -> float | None:
        row = self._db.execute("SELECT accepted_at FROM outbox ORDER BY id LIMIT 1").fetchone()
        return row[0] if row else None

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error as e:  # the failed statement may already have rolled back
            log.debug("history outbox rollback error=%s", e)
        self._reload_totals()

    def _reload_totals(self) -> None:
        """Re-read the totals from disk (at open, and after a rolled-back transaction)."""
        self._points = {k: 0 for k in Kind}
        self._bytes = {k: 0 for k in Kind}
        for kind, n, b in self._db.execute(
                "SELECT kind, count(*), coalesce(sum(length(line)), 0) FROM outbox GROUP BY kind"):
            self._points[Kind(kind)] = n
            self._bytes[Kind(kind)] = b + n * ROW_OVERHEAD
        self._oldest_at = self._head_time()
        self._drops = self._load_drops()
