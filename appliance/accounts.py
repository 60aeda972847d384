"""Local dashboard accounts: users, roles, sessions and the sign-in log, in one small SQLite file.

The file (``accounts.db`` beside the store unless ``[web] accounts`` says
otherwise) is the dashboard's own: it never holds plant data, and the store's
writer never waits for it. It is created readable by its owner only. (Releases
before store schema 4 kept alarm comments here; the dashboard moves them to the
store when it starts: :meth:`Accounts.legacy_comments`, :meth:`Accounts.drop_legacy_comments`.)

Roles, each allowed what the one before it is:

``viewer``      reads every page
``technician``  acknowledges, shelves, comments, returns a point to service
``engineer``    approves or rejects mitigations, arms and disarms, suppresses or
                takes a point out of service, syncs now, promotes, rejects or
                rolls back a model

Passwords are hashed with Argon2id (``argon2-cffi``) at one of OWASP's
equivalent minimums (7 MiB, 5 passes, 1 lane: about 30 ms on one core of the
2-core x86 machine the tests run on; expect a few times that on a Raspberry
Pi), one hash at a time on a thread of its own, so sign-ins never take both
cores from detection and its working memory is kept once, not once per web
server thread; a hash made with other parameters is replaced at the next good
sign-in.

Sessions are random tokens kept server side (only their SHA-256 is stored), so
signing out, removing a user or changing a password ends them at once. Failed
sign-ins are counted per client address and per address and user name, never
per user name alone: anyone who can reach ``/login`` could otherwise keep a
named engineer locked out from every tablet. After ``FREE_TRIES`` each further
try from that address waits twice as long as the last, up to ``MAX_DELAY_S``;
a good sign-in clears that address's count for that user, and an address's
count is forgotten after ``FORGET_S`` without failures. Every sign-in, failure,
sign-out and account change is written to the sign-in log.

Users are managed with ``appliance user add|list|passwd|role|remove``.

>>> allows("engineer", "technician"), allows("viewer", "technician")
(True, False)
>>> [login_delay(n) for n in (0, 2, 3, 4, 5, 20)]
[0.0, 0.0, 1.0, 2.0, 4.0, 300.0]
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)

ROLES = ("viewer", "technician", "engineer")
FILE_NAME = "accounts.db"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
FREE_TRIES = 3  # failed sign-ins before the back-off starts
MAX_DELAY_S = 300.0
FORGET_S = 900.0  # an address's failed sign-ins older than this no longer count
TOUCH_EVERY_S = 15.0  # a session's last-seen time is written at most this often
AUTH_LOG_KEEP = 20_000  # sign-in log rows kept (the oldest go first)
# OWASP password storage cheat sheet, Argon2id: one of its equivalent minimums (m=7 MiB, t=5, p=1), the one
# with the least memory: a gateway keeps a hash's working memory resident once it has signed someone in.
ARGON2_PARAMS = {"time_cost": 5, "memory_cost": 7 * 1024, "parallelism": 1}
_HASHER: ThreadPoolExecutor | None = None  # see _on_hash_thread
_HASHER_LOCK = threading.Lock()

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS users(
    name TEXT PRIMARY KEY COLLATE NOCASE,
    role TEXT NOT NULL,
    hash TEXT NOT NULL,
    created REAL NOT NULL,
    changed REAL NOT NULL,
    last_login REAL
);
CREATE TABLE IF NOT EXISTS sessions(
    token_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL COLLATE NOCASE,
    created REAL NOT NULL,
    seen REAL NOT NULL,
    addr TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS sessions_name ON sessions(name);
CREATE TABLE IF NOT EXISTS failures(
    key TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    last REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_log(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    event TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    addr TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT ''
);
"""


class AccountError(ValueError):
    """A refused account change (bad name, unknown role, weak password, user exists or not)."""


class LoginRefused(Exception):
    """A sign-in that did not succeed; ``retry_after`` (seconds) is set while the back-off holds."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class User:
    name: str
    role: str

    def can(self, role: str) -> bool:
        return allows(self.role, role)


@dataclass(frozen=True)
class Session:
    user: User
    created: float
    seen: float


def _on_hash_thread(fn, *args):
    """Run an Argon2 computation on the one thread kept for them.

    One at a time, so sign-ins never take both cores from detection; and always
    on the same thread, because glibc keeps the 19 MiB a hash needs in the
    calling thread's malloc arena: spread over the web server's workers it would
    stay resident once per worker.
    """
    global _HASHER
    with _HASHER_LOCK:
        if _HASHER is None:
            _HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="argon2")
        pool = _HASHER
    return pool.submit(fn, *args).result()


def allows(role: str, needed: str) -> bool:
    """Whether ``role`` may do what ``needed`` may (roles are ordered viewer < technician < engineer)."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def login_delay(failures: int) -> float:
    """Seconds to wait after ``failures`` failed sign-ins in a row before the next try is heard."""
    if failures < FREE_TRIES:
        return 0.0
    return min(MAX_DELAY_S, 2.0 ** (failures - FREE_TRIES))


def _failure_keys(name: str, addr: str) -> list[str]:
    """The back-off counters a sign-in from ``addr`` as ``name`` counts against: the address, the pair."""
    return [f"addr:{addr}", f"pair:{addr} {name.lower()}"]


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise AccountError("a user name is 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter "
                           f"or digit; got {name!r}")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
    return role


def check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise AccountError(f"a password has at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"a password has at most {MAX_PASSWORD} characters")
    if password != password.strip() or any(ord(c) < 32 for c in password):
        raise AccountError("a password must not start or end with a space nor contain control characters")
    return password


def default_path(cfg) -> Path:
    """Where the accounts file of an appliance config is: ``[web] accounts``, else beside the store."""
    configured = getattr(cfg.web, "accounts", None)
    if configured:
        return cfg.path(configured)
    return cfg.path(cfg.store.path).parent / FILE_NAME


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    """The accounts file. Safe from any thread: every call opens its own short-lived connection."""

    def __init__(self, path: str | Path, hasher=None, clock: Callable[[], float] = time.time):
        from argon2 import PasswordHasher

        self.path = Path(path)
        self.hasher = hasher or PasswordHasher(**ARGON2_PARAMS)
        self.clock = clock
        self._dummy: str | None = None
        self._dummy_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # Owner only from the first byte: the hashes and session ids are nobody else's business.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA busy_timeout=10000")
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        finally:
            db.close()

    # -- the web app's signing key ---------------------------------------------------
    def secret_key(self) -> bytes:
        """The key that signs session cookies; made once, kept in the file, so restarts keep sessions."""
        with self._db() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'secret_key'").fetchone()
            if row is None:
                db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('secret_key', ?)",
                           (secrets.token_bytes(32),))
                row = db.execute("SELECT value FROM meta WHERE key = 'secret_key'").fetchone()
            return bytes(row[0])

    # -- users (the CLI) -------------------------------------------------------------
    def add_user(self, name: str, role: str, password: str, by: str = "cli") -> User:
        check_name(name)
        check_role(role)
        digest = self._hash(check_password(password))
        now = self.clock()
        with self._db() as db:
            try:
                db.execute("INSERT INTO users(name, role, hash, created, changed) VALUES (?, ?, ?, ?, ?)",
                           (name, role, digest, now, now))
            except sqlite3.IntegrityError:
                raise AccountError(f"user {name!r} exists already (appliance user passwd / remove)") from None
            self._log(db, "user_added", name, "", f"role={role} by={by}")
        return User(name, role)

    def remove_user(self, name: str, by: str = "cli") -> None:
        with self._db() as db:
            if db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise AccountError(f"no user {name!r}")
            db.execute("DELETE FROM sessions WHERE name = ?", (name,))
            self._log(db, "user_removed", name, "", f"by={by}")

    def set_password(self, name: str, password: str, by: str = "cli") -> None:
        digest = self._hash(check_password(password))
        with self._db() as db:
            if db.execute("UPDATE users SET hash = ?, changed = ? WHERE name = ?",
                          (digest, self.clock(), name)).rowcount == 0:
                raise AccountError(f"no user {name!r}")
            ended = db.execute("DELETE FROM sessions WHERE name = ?", (name,)).rowcount
            db.execute("DELETE FROM failures WHERE key LIKE 'pair:%' AND substr(key, instr(key, ' ') + 1) = ?",
                       (name.lower(),))
            self._log(db, "password_changed", name, "", f"by={by} sessions_ended={ended}")

    def set_role(self, name: str, role: str, by: str = "cli") -> None:
        check_role(role)
        with self._db() as db:
            if db.execute("UPDATE users SET role = ?, changed = ? WHERE name = ?",
                          (role, self.clock(), name)).rowcount == 0:
                raise AccountError(f"no user {name!r}")
            self._log(db, "role_changed", name, "", f"role={role} by={by}")

    def users(self) -> list[dict]:
        with self._db() as db:
            rows = db.execute("SELECT u.name, u.role, u.created, u.last_login, "
                              "(SELECT COUNT(*) FROM sessions s WHERE s.name = u.name) AS sessions "
                              "FROM users u ORDER BY u.name").fetchall()
        return [dict(r) for r in rows]

    def user(self, name: str) -> User | None:
        with self._db() as db:
            row = db.execute("SELECT name, role FROM users WHERE name = ?", (name,)).fetchone()
        return User(row["name"], row["role"]) if row else None

    # -- signing in ------------------------------------------------------------------
    def authenticate(self, name: str, password: str, addr: str = "") -> User:
        """The user, if ``password`` is theirs and no back-off holds; else :class:`LoginRefused` (logged)."""
        now = self.clock()
        name = name.strip() if isinstance(name, str) else ""
        keys = _failure_keys(name, addr)
        with self._db() as db:
            wait = 0.0
            for key in keys:
                row = db.execute("SELECT count, last FROM failures WHERE key = ?", (key,)).fetchone()
                if row is not None and now - row["last"] < FORGET_S:
                    wait = max(wait, row["last"] + login_delay(row["count"]) - now)
            if wait > 0:
                self._log(db, "login_throttled", name[:64], addr, f"retry_after={wait:.1f}")
                raise LoginRefused(f"too many failed sign-ins; try again in {max(1, round(wait))} s",
                                   retry_after=wait)
            row = db.execute("SELECT name, role, hash FROM users WHERE name = ?", (name,)).fetchone() if name else None
        # Verifying takes the same time whether or not the user exists.
        ok = self._verify(row["hash"] if row else self._dummy_hash(), password if isinstance(password, str) else "")
        with self._db() as db:
            if row is None or not ok:
                for key in keys:
                    db.execute("INSERT INTO failures(key, count, last) VALUES (?, 1, ?) ON CONFLICT(key) DO UPDATE "
                               "SET count = CASE WHEN last < ? THEN 1 ELSE count + 1 END, last = excluded.last",
                               (key, now, now - FORGET_S))
                self._log(db, "login_failed", name[:64], addr, "unknown user" if row is None else "wrong password")
                raise LoginRefused("wrong user name or password")
            # Only this address's count for this user: signing in to an account of one's own must
            # not reset the count an address has run up guessing other users' passwords.
            db.execute("DELETE FROM failures WHERE key = ?", (keys[-1],))
            db.execute("UPDATE users SET last_login = ? WHERE name = ?", (now, row["name"]))
            if self.hasher.check_needs_rehash(row["hash"]):
                db.execute("UPDATE users SET hash = ? WHERE name = ?", (self._hash(password), row["name"]))
            self._log(db, "login", row["name"], addr, f"role={row['role']}")
        return User(row["name"], row["role"])

    def _verify(self, digest: str, password: str) -> bool:
        from argon2.exceptions import InvalidHashError, VerificationError

        try:
            return _on_hash_thread(self.hasher.verify, digest, password)
        except (VerificationError, InvalidHashError):
            return False

    def _hash(self, password: str) -> str:
        return _on_hash_thread(self.hasher.hash, password)

    def _dummy_hash(self) -> str:
        with self._dummy_lock:
            if self._dummy is None:
                self._dummy = self._hash(secrets.token_hex(16))
            return self._dummy

    # -- sessions --------------------------------------------------------------------
    def open_session(self, user: User, addr: str = "", max_age_s: float | None = None) -> str:
        """A new session token for ``user`` (give it to the browser; only its hash is kept)."""
        token = secrets.token_urlsafe(32)
        now = self.clock()
        with self._db() as db:
            if max_age_s is not None:  # housekeeping: sessions past any possible lifetime
                db.execute("DELETE FROM sessions WHERE created < ?", (now - max_age_s,))
            db.execute("INSERT INTO sessions(token_hash, name, created, seen, addr) VALUES (?, ?, ?, ?, ?)",
                       (_token_hash(token), user.name, now, now, addr))
        return token

    def session(self, token: str, idle_s: float, max_age_s: float, touch: bool = False) -> Session | str:
        """The live session of ``token``, or why there is none (``expired``, ``idle``, ``unknown``).

        An expired session is deleted. ``touch`` counts the request as the user's
        activity (the idle clock restarts); background polling does not touch.
        """
        if not isinstance(token, str) or not token:
            return "unknown"
        now = self.clock()
        h = _token_hash(token)
        with self._db() as db:
            row = db.execute("SELECT s.created, s.seen, u.name, u.role FROM sessions s JOIN users u "
                             "ON u.name = s.name WHERE s.token_hash = ?", (h,)).fetchone()
            if row is None:
                return "unknown"
            why = "expired" if now - row["created"] > max_age_s else "idle" if now - row["seen"] > idle_s else None
            if why is not None:
                db.execute("DELETE FROM sessions WHERE token_hash = ?", (h,))
                self._log(db, f"session_{why}", row["name"], "", "")
                return why
            seen = row["seen"]
            if touch and now - seen >= TOUCH_EVERY_S:
                db.execute("UPDATE sessions SET seen = ? WHERE token_hash = ?", (now, h))
                seen = now
        return Session(User(row["name"], row["role"]), row["created"], seen)

    def close_session(self, token: str, addr: str = "") -> None:
        with self._db() as db:
            row = db.execute("DELETE FROM sessions WHERE token_hash = ? RETURNING name",
                             (_token_hash(token or ""),)).fetchone()
            if row is not None:
                self._log(db, "logout", row["name"], addr, "")

    # -- the sign-in log -------------------------------------------------------------
    def log(self, event: str, name: str = "", addr: str = "", detail: str = "") -> None:
        with self._db() as db:
            self._log(db, event, name, addr, detail)

    def _log(self, db: sqlite3.Connection, event: str, name: str, addr: str, detail: str) -> None:
        seq = db.execute("INSERT INTO auth_log(ts, event, name, addr, detail) VALUES (?, ?, ?, ?, ?)",
                         (self.clock(), event, name, addr, detail[:500])).lastrowid
        if seq % 500 == 0:
            db.execute("DELETE FROM auth_log WHERE seq <= ?", (seq - AUTH_LOG_KEEP,))
        level = logging.WARNING if event in ("login_failed", "login_throttled") else logging.INFO
        log.log(level, "accounts: %s user=%s addr=%s %s", event, name, addr, detail)

    def auth_log(self, limit: int = 100) -> list[dict]:
        with self._db() as db:
            rows = db.execute("SELECT seq, ts, event, name, addr, detail FROM auth_log ORDER BY seq DESC LIMIT ?",
                              (limit,)).fetchall()
        return [dict(r) for r in rows]

    # -- alarm comments of an earlier release (now in the store) ---------------------------
    def legacy_comments(self) -> list[dict] | None:
        """Alarm comments this file still holds from a release before store schema 4, oldest first.

        Each has ``ts``, ``alarm_id``, ``asset``, ``user`` and ``text``. ``None``
        when the file has no comments table (a new file, or one moved already).
        """
        with self._db() as db:
            if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'comments'").fetchone() is None:
                return None
            rows = db.execute("SELECT ts, alarm_id, asset, name, text FROM comments ORDER BY seq").fetchall()
        return [{"ts": r["ts"], "alarm_id": r["alarm_id"], "asset": r["asset"], "user": r["name"], "text": r["text"]}
                for r in rows]

    def drop_legacy_comments(self) -> None:
        """Forget the old comments table (call once its rows are committed in the store)."""
        with self._db() as db:
            db.execute("DROP TABLE IF EXISTS comments")  # its index goes with it
