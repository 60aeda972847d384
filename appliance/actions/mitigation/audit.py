"""Append-only audit log of every mitigation decision, in its own SQLite file, keyed.

Who, what (node), old and new value, why, the result and, for a refusal, the
guard that refused. The table cannot be changed through SQLite: triggers abort
any UPDATE or DELETE. Behind SQLite's back (a hex editor, triggers dropped, a
copy written by hand) the chain shows it:

* each row carries an HMAC-SHA256, under a key kept **outside the data folder**
  (``outputs.mitigation.audit_key``, default ``/etc/edge-anomaly/audit.key``),
  over the previous row's value and its own columns. A copy of the log with its
  chain recomputed needs the key: without it, :meth:`AuditLog.verify` names the
  first row it cannot vouch for;
* the newest row's position and value (the *head*) are anchored where an
  attacker with write access to the data folder cannot rewrite them: in a file
  beside the key (``audit.key.<log id>.head``, one per log), and in every record the mitigator hands
  the other outputs (``audit_seq``, ``audit_hash``), which the cloud uplink
  sends up in each alarm episode. A log cut short or replaced by an older copy
  no longer reaches the anchored head; ``appliance audit verify --anchor SEQ:HASH``
  checks it against a head the cloud received.

The key is made (32 random bytes, hex, mode 0600 in a 0700 folder) the first
time a log is opened without one. A log written before keying (plain SHA-256)
is migrated the first time it is opened without a head file: its old chain is
verified, and the chain continues keyed from its head (the head file records
from which row); the warning in the log says so. A log that no longer reaches
its anchored head is reported so for good (the head file keeps the finding),
whatever is appended after. A lost key cannot be recovered: the rows it signed can no longer be
verified (``verify`` names the first of them), a new key is made and the log
goes on under it, reported broken from that row on; keep a backup of the key
where the data folder's backups are not.

The log lives apart from the appliance's data store so that store's retention
and pruning can never touch it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_KEY_PATH = "/etc/edge-anomaly/audit.key"
# Where a deployment (or a test run) may point the default key, e.g. from its systemd unit.
KEY_PATH_ENV = "EDGE_ANOMALY_AUDIT_KEY"
HEAD_SUFFIX = ".head"


class AuditKeyError(Exception):
    """The audit key cannot be read, made or trusted (one line naming the file)."""


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
-- Proposals waiting for approval; survive restarts until decided or expired.
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


def default_key_path() -> str:
    """The audit key's path when the configuration names none: ``$EDGE_ANOMALY_AUDIT_KEY`` or the default."""
    return os.environ.get(KEY_PATH_ENV) or DEFAULT_KEY_PATH


def _body(row: dict[str, Any]) -> bytes:
    return json.dumps([row[c] for c in COLUMNS], separators=(",", ":"), default=str).encode()


def _row_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """The chain of a log written before keying: plain SHA-256 (verified once, at migration)."""
    return hashlib.sha256(prev_hash.encode() + _body(row)).hexdigest()


def _keyed_hash(key: bytes, prev_hash: str, row: dict[str, Any]) -> str:
    return hmac.new(key, prev_hash.encode() + _body(row), hashlib.sha256).hexdigest()


def load_key(path: str | Path, data_dir: str | Path) -> tuple[bytes, bool]:
    """The audit key at ``path`` and whether it was made now (absent: 32 random bytes, hex, 0600)."""
    path = Path(path)
    if not path.is_absolute():
        raise AuditKeyError(f"audit key {path}: must be an absolute path (outside the data folder)")
    if path.resolve().is_relative_to(Path(data_dir).resolve()):
        raise AuditKeyError(f"audit key {path}: inside the data folder {data_dir}, where whoever can rewrite "
                            f"the log could read it; keep it elsewhere (outputs.mitigation.audit_key)")
    made = False
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # made meanwhile by another process: read it
        except OSError as e:
            raise AuditKeyError(f"audit key {path}: cannot create it: {e}") from None
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            made = True
            logger.warning("mitigation audit key made at %s (mode 0600): keep a copy; without it the "
                           "audit log cannot be verified", path)
    try:
        if path.stat().st_mode & 0o077:
            raise AuditKeyError(f"audit key {path}: readable by group or others; chmod 600 it")
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as e:
        raise AuditKeyError(f"audit key {path}: unreadable: {e}") from None
    if len(key) < 32:
        raise AuditKeyError(f"audit key {path}: {len(key)} bytes, need at least 32 (64 hex digits)")
    return key, made


@dataclass(frozen=True)
class Head:
    """The chain's anchored position: the newest row's ``seq`` and ``hash``; rows from ``keyed_from`` are keyed."""

    seq: int
    hash: str
    keyed_from: int
    # Once the log was found not to reach its anchored head (cut short, an older copy restored),
    # that stays on record here, beside the key: rows appended since cannot make it whole again.
    broken_at: int = 0
    broken: str = ""

    def text(self) -> str:
        return f"{self.seq}:{self.hash}"

    def moved(self, seq: int, hash: str) -> "Head":
        return Head(seq, hash, self.keyed_from, self.broken_at, self.broken)


class AuditLog:
    """Thread-safe; every append is committed (FULL sync) before it returns.

    ``key_path``: the HMAC key (see the module docstring); its head file sits beside it.
    ``data_dir``: the folder the key must stay out of (default: the log's own folder).
    """

    def __init__(self, path: str | Path, key_path: str | Path | None = None, data_dir: str | Path | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.key_path = Path(key_path or default_key_path())
        self._key, _ = load_key(self.key_path, data_dir or self.path.parent)
        # One head per log, beside the key: named by where the log is.
        where = hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:12]
        self.head_path = self.key_path.with_name(f"{self.key_path.name}.{where}{HEAD_SUFFIX}")
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        last = self._db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        self._last_seq, self._last_hash = (int(last[0]), last[1]) if last else (0, GENESIS)
        self._anchor = self._read_head() or self._migrate()
        self._check_reaches_head()

    # -- the anchor beside the key ---------------------------------------------------------------
    def _read_head(self) -> Head | None:
        try:
            doc = json.loads(self.head_path.read_text())
            return Head(int(doc["seq"]), str(doc["hash"]), int(doc["keyed_from"]), int(doc.get("broken_at", 0)),
                        str(doc.get("broken", "")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise AuditKeyError(f"audit head {self.head_path}: unreadable: {e}") from None

    def _write_head(self, head: Head) -> None:
        tmp = self.head_path.with_name(self.head_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"seq": head.seq, "hash": head.hash, "keyed_from": head.keyed_from,
                       "broken_at": head.broken_at, "broken": head.broken, "log": str(self.path.resolve())}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.head_path)
        self._anchor = head

    def _migrate(self) -> Head:
        """No head yet for this log: a new log, one written before keying, or one whose head file went
        missing. The rows are checked once: a plain SHA-256 chain, then (if any) rows keyed with this
        key; the chain continues keyed from its newest row, which becomes the anchored head."""
        keyed_from, bad = self._find_keyed_from()
        head = Head(self._last_seq, self._last_hash, keyed_from)
        self._write_head(head)
        if bad is not None:
            logger.error("mitigation audit log %s: its chain breaks at seq %d (edited, or signed with a key "
                         "that is lost); it goes on keyed and stays reported broken", self.path, bad)
        elif keyed_from <= self._last_seq:
            logger.warning("mitigation audit log %s: no anchored head (%s) was found; the chain verifies under "
                           "the key, anchored again at seq %d (rows cut from its end before now cannot be "
                           "told: compare with the head the cloud received)", self.path, self.head_path,
                           self._last_seq)
        elif self._last_seq:
            logger.warning("mitigation audit log %s: %d rows written before keying verified (SHA-256 chain); "
                           "the chain continues keyed (HMAC-SHA256, key %s) from seq %d", self.path,
                           self._last_seq, self.key_path, keyed_from)
        return head

    def _find_keyed_from(self) -> tuple[int, int | None]:
        """The first row keyed with this key (after a plain SHA-256 prefix, if any), and the first row that
        is neither; (the row after the newest, None) for a log written before keying."""
        prev, keyed_from = GENESIS, None
        for r in self._rows():
            seq, row, prev_hash, h = int(r[0]), dict(zip(COLUMNS, r[1:1 + len(COLUMNS)])), r[-2], r[-1]
            legacy = keyed_from is None and hmac.compare_digest(_row_hash(prev, row), h)
            if prev_hash != prev or not (legacy or hmac.compare_digest(_keyed_hash(self._key, prev, row), h)):
                return keyed_from or seq, seq
            if not legacy and keyed_from is None:
                keyed_from = seq
            prev = h
        return keyed_from or self._last_seq + 1, None

    def _check_reaches_head(self) -> None:
        """The log must still hold the anchored head; if not, say so for good before anything is appended
        (a keyed row appended to a log cut short would otherwise move the anchor past the cut)."""
        head = self._anchor
        if head.broken or not head.seq:
            return
        with self._lock:
            row = self._db.execute("SELECT hash FROM audit WHERE seq = ?", (head.seq,)).fetchone()
        if row is not None and hmac.compare_digest(row[0], head.hash):
            return
        why = (f"audit log {self.path} does not extend its anchored head {head.text()} "
               f"({'that row is gone: rows removed or an older copy restored' if row is None else 'that row differs'})")
        logger.error("%s", why)
        self._write_head(Head(head.seq, head.hash, head.keyed_from, head.seq, why))

    # -- writing ----------------------------------------------------------------------------------
    def append(self, row: dict[str, Any]) -> tuple[int, str]:
        """Insert one record (keys: :data:`COLUMNS`); returns its sequence number and chain value."""
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"audit row lacks {missing}")
        clean = {c: row[c] for c in COLUMNS}
        clean["armed"] = int(bool(clean["armed"]))
        with self._lock:
            h = _keyed_hash(self._key, self._last_hash, clean)
            cur = self._db.execute(
                f"INSERT INTO audit ({', '.join(COLUMNS)}, prev_hash, hash) "
                f"VALUES ({', '.join('?' * len(COLUMNS))}, ?, ?)",
                [clean[c] for c in COLUMNS] + [self._last_hash, h])
            self._last_seq, self._last_hash = int(cur.lastrowid), h
            # After the commit: a crash between the two leaves the head one row behind, which
            # verifies (the newer row is keyed); a head ahead of the log would not.
            self._write_head(self._anchor.moved(self._last_seq, h))
            return self._last_seq, h

    def head(self) -> Head:
        """The anchored head: the newest row as this log last wrote it."""
        return self._anchor

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

    def _rows(self) -> list[tuple]:
        with self._lock:
            return self._db.execute(f"SELECT seq, {', '.join(COLUMNS)}, prev_hash, hash FROM audit "
                                    "ORDER BY seq").fetchall()

    def _first_bad(self, anchors: dict[int, str] | None = None) -> int | None:
        """The first row the chain cannot vouch for, or the first anchor (seq -> hash) it does not reach;
        None if intact."""
        prev, keyed_from, found = GENESIS, self._anchor.keyed_from, {}
        wanted = {seq: h for seq, h in (anchors or {}).items() if seq}
        for r in self._rows():
            seq, vals, prev_hash, h = int(r[0]), r[1:1 + len(COLUMNS)], r[-2], r[-1]
            row = dict(zip(COLUMNS, vals))
            expected = _keyed_hash(self._key, prev, row) if seq >= keyed_from else _row_hash(prev, row)
            if prev_hash != prev or not hmac.compare_digest(expected, h):
                return seq
            if seq in wanted:
                found[seq] = h
            prev = h
        for seq, h in sorted(wanted.items()):
            if found.get(seq) != h:
                return seq
        return None

    def _anchors(self, anchor: tuple[int, str] | None) -> dict[int, str]:
        return {self._anchor.seq: self._anchor.hash, **({int(anchor[0]): anchor[1]} if anchor else {})}

    def verify(self, anchor: tuple[int, str] | None = None) -> int | None:
        """Check the keyed chain and that it reaches the anchored head (and ``anchor``, a ``(seq, hash)``
        the cloud received, if given); ``None`` if intact, else the first bad sequence number."""
        bad = self._first_bad(self._anchors(anchor))
        if self._anchor.broken:
            return min(bad or self._anchor.broken_at, self._anchor.broken_at)
        return bad

    def problem(self, anchor: tuple[int, str] | None = None) -> str | None:
        """What :meth:`verify` found, as one line, or None."""
        bad = self.verify(anchor)
        if bad is None:
            return None
        if self._anchor.broken and bad == self._anchor.broken_at:
            return self._anchor.broken
        with self._lock:
            row = self._db.execute("SELECT hash FROM audit WHERE seq = ?", (bad,)).fetchone()
        anchored = self._anchors(anchor)
        if row is None:
            return (f"audit log {self.path} ends before the anchored head {bad}:{anchored.get(bad, '?')}: "
                    f"rows removed or an older copy restored")
        if bad in anchored and row[0] != anchored[bad]:
            return (f"audit log {self.path}: seq {bad} differs from the anchored head {bad}:{anchored[bad]}: "
                    f"the chain does not extend it (rewritten)")
        return (f"audit log {self.path}: chain broken at seq {bad} (edited, removed or not signed with this "
                f"gateway's key {self.key_path})")

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
