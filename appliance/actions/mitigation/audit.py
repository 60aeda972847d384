"""Append-only audit log of every mitigation decision, in its own SQLite file.

Who, what (node), old and new value, why, the result and, for a refusal, the
guard that refused. The table cannot be changed through SQLite: triggers abort
any UPDATE or DELETE. Each row also carries a SHA-256 chained over the previous
row, so an edit made behind SQLite's back (a hex editor, a restored backup with
rows cut out) shows up in :meth:`AuditLog.verify`.

The log lives apart from the appliance's data store so that store's retention
and pruning can never touch it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

COLUMNS = ("ts", "proposal_id", "kind", "status", "actor", "rule", "asset", "alarm_id", "node",
           "old_value", "new_value", "reason", "guard", "detail", "armed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    ts          REAL    NOT NULL,
    proposal_id TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    actor       TEXT    NOT NULL,
    rule        TEXT,
    asset       TEXT,
    alarm_id    TEXT,
    node        TEXT,
    old_value   REAL,
    new_value   REAL,
    reason      TEXT    NOT NULL,
    guard       TEXT,
    detail      TEXT    NOT NULL,
    armed       INTEGER NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_proposal ON audit (proposal_id);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
-- Writes the appliance still owes a revert; survives restarts and power loss.
CREATE TABLE IF NOT EXISTS outstanding (
    proposal_id     TEXT    PRIMARY KEY,
    rule            TEXT    NOT NULL,
    asset           TEXT    NOT NULL,
    alarm_id        TEXT,
    node            TEXT    NOT NULL,
    old_value       REAL    NOT NULL,
    new_value       REAL    NOT NULL,
    written_at      REAL    NOT NULL,
    revert_at       REAL,
    revert_on_clear INTEGER NOT NULL
);
-- Proposals waiting for a technician's approval; survive restarts until decided or expired.
CREATE TABLE IF NOT EXISTS awaiting_approval (
    proposal_id TEXT PRIMARY KEY,
    rule        TEXT NOT NULL,
    asset       TEXT NOT NULL,
    alarm_id    TEXT,
    node        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    expires_at  REAL NOT NULL
);
"""

GENESIS = "0" * 64


def _row_hash(prev_hash: str, row: dict[str, Any]) -> str:
    body = json.dumps([row[c] for c in COLUMNS], separators=(",", ":"), default=str)
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


class AuditLog:
    """Thread-safe; every append is committed (FULL sync) before it returns."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        last = self._db.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        self._last_hash = last[0] if last else GENESIS

    def append(self, row: dict[str, Any]) -> int:
        """Insert one record (keys: :data:`COLUMNS`); returns its sequence number."""
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"audit row lacks {missing}")
        clean = {c: row[c] for c in COLUMNS}
        clean["armed"] = int(bool(clean["armed"]))
        with self._lock:
            h = _row_hash(self._last_hash, clean)
            cur = self._db.execute(
                f"INSERT INTO audit ({', '.join(COLUMNS)}, prev_hash, hash) "
                f"VALUES ({', '.join('?' * len(COLUMNS))}, ?, ?)",
                [clean[c] for c in COLUMNS] + [self._last_hash, h])
            self._last_hash = h
            return int(cur.lastrowid)

    def tail(self, limit: int = 100, proposal_id: str | None = None) -> list[dict[str, Any]]:
        """Newest first."""
        q = f"SELECT seq, {', '.join(COLUMNS)} FROM audit"
        args: list[Any] = []
        if proposal_id is not None:
            q += " WHERE proposal_id = ?"
            args.append(proposal_id)
        q += " ORDER BY seq DESC LIMIT ?"
        args.append(max(0, int(limit)))
        with self._lock:
            rows = self._db.execute(q, args).fetchall()
        out = []
        for r in rows:
            d = dict(zip(("seq",) + COLUMNS, r))
            d["armed"] = bool(d["armed"])
            out.append(d)
        return out

    def verify(self) -> int | None:
        """Check the hash chain; ``None`` if intact, else the first bad sequence number."""
        prev = GENESIS
        with self._lock:
            rows = self._db.execute(f"SELECT seq, {', '.join(COLUMNS)}, prev_hash, hash FROM audit "
                                    "ORDER BY seq").fetchall()
        for r in rows:
            seq, vals, prev_hash, h = r[0], r[1:1 + len(COLUMNS)], r[-2], r[-1]
            row = dict(zip(COLUMNS, vals))
            if prev_hash != prev or _row_hash(prev, row) != h:
                return int(seq)
            prev = h
        return None

    # Two small keyed tables beside the log: what is owed (reverts) and what awaits a decision
    # (approvals). Unlike the log, their rows go away once settled.
    _OWED = ("proposal_id", "rule", "asset", "alarm_id", "node", "old_value", "new_value", "written_at",
             "revert_at", "revert_on_clear")
    _AWAITING = ("proposal_id", "rule", "asset", "alarm_id", "node", "reason", "expires_at")

    def _put(self, table: str, cols: tuple[str, ...], row: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) "
                             f"VALUES ({', '.join('?' * len(cols))})", [row[c] for c in cols])

    def _drop(self, table: str, proposal_id: str) -> None:
        with self._lock:
            self._db.execute(f"DELETE FROM {table} WHERE proposal_id = ?", (proposal_id,))

    def _all(self, table: str, order: str) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute(f"SELECT * FROM {table} ORDER BY {order}")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def owe_revert(self, row: dict[str, Any]) -> None:
        """Remember a write whose revert is still due (keys: the ``outstanding`` columns)."""
        self._put("outstanding", self._OWED, row)

    def revert_settled(self, proposal_id: str) -> None:
        """The revert of ``proposal_id`` was decided (written, refused or failed: the audit says which)."""
        self._drop("outstanding", proposal_id)

    def reverts_owed(self) -> list[dict[str, Any]]:
        """Oldest write first."""
        return self._all("outstanding", "written_at")

    def hold_for_approval(self, row: dict[str, Any]) -> None:
        self._put("awaiting_approval", self._AWAITING, row)

    def approval_settled(self, proposal_id: str) -> None:
        self._drop("awaiting_approval", proposal_id)

    def held_for_approval(self) -> list[dict[str, Any]]:
        """Soonest to expire first."""
        return self._all("awaiting_approval", "expires_at")

    def close(self) -> None:
        with self._lock:
            self._db.close()
