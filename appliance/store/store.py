"""The local store: SQLite in WAL mode, the source of truth on the gateway.

Writes go through one writer thread (:class:`Store.put` never waits on disk), in
batched transactions. After a batch commits, the callbacks queued with it run in
order: that is when a connector acknowledges the messages to its source, so a
reading acknowledged upstream is on disk.

Durability: ``synchronous=FULL`` in WAL mode, so a committed batch survives a
power cut, and a ``kill -9`` at any moment leaves a consistent database (SQLite's
journal guarantees it). What can be lost is only what was queued and not yet
committed; the source still holds those (they were not acknowledged).

Group commit: every commit is a ``fsync``, and at a moderate steady rate (a
message every millisecond) committing each one as it comes costs a wake-up of the
writer, a ``fsync`` and a wake-up of the connector's network thread to send its
PUBACK, per message. So when a batch is small the writer waits up to
``commit_linger_s`` for more before committing; it stops waiting as soon as
``commit_linger_items`` are queued (a burst: waiting would only delay it), or when
arrivals pause for four of their usual intervals (at least 5 ms, at most
``commit_linger_gap_s``): a broker at its in-flight limit sends nothing more until
we acknowledge, and a burst of a plant's sensors sampled together is over. It
also stops lingering for a while when a wait gathered nothing late in it (arrivals
had stalled). While arrivals go on through a wait, the next wait starts as soon as
the commit is done instead of at the next item, so a steady rate costs the writer
one wake-up per commit rather than two. Acknowledgements wait for the commit,
never the other way round.

Bytes written (an SD card wears by them; ``benchmarks/disk_writes.py``): a commit
appends every page it touched, whole, to the WAL and ``fsync``s it, and a
checkpoint writes each page once more into the database file. So what a reading
costs is the pages a commit touches divided by the readings it holds, and most of
those pages are the same whatever it holds (each B-tree's path to its newest leaf,
the header page). Hence: the default wait is up to a second, ended early by a pause
in arrivals, so at 100 messages a second a commit holds up to ~100 of them when the
broker lets that many wait for their ack (Mosquitto's ``max_inflight_messages``, 20
by default: then ~20) instead of one; pages are
``page_size`` bytes (1 KiB; SQLite's default is 4 KiB); the readings' unique key is
(ts, asset, sensor) and the scores' (t_end, asset), so a commit's rows land on the
newest index page rather than on one page of each sensor or asset; and checkpoints come every ``checkpoint_pages``
WAL pages, so a page rewritten by many commits reaches the database file once.
The acknowledgement still follows an ``fsync``: nothing here trades durability
for bytes (``synchronous=NORMAL`` would, against a power cut).

Readings are unique per (asset, sensor, ts) (keyed ts, asset, sensor): a message
delivered twice (QoS 1 after a crash) is stored once. Retention keeps the newest
``max_readings`` rows and drops rows received more than ``retention_days`` ago (never, within a run's
first ``retention_days``, a row received in it: see :class:`~appliance.core.clock.AgeCutoff`) whose
own time (a reading's ``ts``, a score's ``t_end``) is also more than ``retention_days`` before the
newest stored: both clocks must say a row is old. The gateway's wall clock can jump: an RTC-less
board boots in 1970 and is stepped forward by NTP, a bad time source sends it years ahead; by the
wall clock alone a forward step ages every row received before it at once, those of earlier runs
too. The data's own times do not move with the gateway's clock, and the newest of them only
advances as new data comes, so a week of data survives any step, and a plant gone quiet keeps its
last week. Dead letters (diagnostics, bounded by count) go by the wall clock alone.

Dead letters are bounded at all times, not only at retention: every batch that
adds some trims the table to the newest ``max_dead_letters`` in the same
transaction, and a refusal identical to one stored less than
``dead_letter_collapse_s`` earlier (same source, code and detail) adds to that
row's ``count`` (and moves its ``last_at``) instead of adding a row. The WAL file
is truncated back to ``JOURNAL_SIZE_LIMIT`` after a checkpoint, so a burst of
writes does not leave a multi-gigabyte file behind.

Alarm comments (a technician's notes on an occurrence, :mod:`appliance.store.comments`)
go through the writer like every other record; those an accounts file of a release
before schema version 4 still holds are copied in once by :func:`import_comments`.
Verdicts on alarm episodes (:mod:`appliance.store.verdicts`, schema version 6) are kept
the same way, every one given, the latest per episode being its label.

Readers (dashboard, tests, CLI) go through :class:`StoreReader`, read-only, on their own
connections.
"""

from __future__ import annotations

import copy
import json
import logging
import queue
from collections import OrderedDict
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from appliance.core import (Alarm, AlarmEvent, AlarmState, DeadLetter, Level, ModeChange, ModelChange,
                            OperatingPointChange, PointMode, Quality, Reading, Score)
from appliance.core.clock import AgeCutoff
from appliance.core.sqlite_pages import set_page_size
from appliance.store.comments import AlarmComment
from appliance.store.verdicts import AlarmVerdict

log = logging.getLogger(__name__)

_MODE_CHANGES = """
CREATE TABLE IF NOT EXISTS mode_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    asset TEXT NOT NULL, event TEXT NOT NULL, mode TEXT NOT NULL, previous TEXT NOT NULL, ts REAL NOT NULL,
    user TEXT NOT NULL, note TEXT, shelved_until REAL, alarm_id TEXT,
    UNIQUE (asset, mode, ts)
);
"""

# Technicians' notes on an alarm occurrence (until schema version 4 they were in the dashboard's accounts
# file). One per author and instant on an alarm, so a comment copied twice is stored once.
_ALARM_COMMENTS = """
CREATE TABLE IF NOT EXISTS alarm_comments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    alarm_id TEXT NOT NULL, asset TEXT NOT NULL, ts REAL NOT NULL, user TEXT NOT NULL, text TEXT NOT NULL,
    UNIQUE (alarm_id, ts, user)
);
"""

# Technicians' verdicts on an alarm episode (see appliance.store.verdicts): every one given is kept, the
# latest (highest seq) is the episode's label. One per episode, author and instant, so a retry is stored once.
_ALARM_VERDICTS = """
CREATE TABLE IF NOT EXISTS alarm_verdicts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    alarm_id TEXT NOT NULL, asset TEXT NOT NULL, ts REAL NOT NULL, user TEXT NOT NULL, verdict TEXT NOT NULL,
    cause TEXT, note TEXT,
    UNIQUE (alarm_id, ts, user)
);
CREATE INDEX IF NOT EXISTS alarm_verdicts_alarm ON alarm_verdicts (alarm_id, seq);
"""

# Readings are unique per (asset, sensor, ts), keyed time first: live rows arrive in about time order,
# so a commit's rows go to the newest end of the index, where SQLite appends pages without rebalancing
# their neighbours (until schema version 5 the key was (asset, sensor, ts): a page per sensor touched
# by every commit, and splits in the middle of the tree; several KB written per reading, see the module
# doc). Readers ask for an asset over a span of time: a range of this key, filtered on the asset.
_READINGS = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY,
    asset TEXT NOT NULL, sensor TEXT NOT NULL, ts REAL NOT NULL, value REAL,
    quality INTEGER NOT NULL, historical INTEGER NOT NULL, received REAL NOT NULL,
    UNIQUE (ts, asset, sensor)
);
"""

# Scores are unique per (asset, t_end), keyed time first for the same reason as readings: keyed asset
# first (until schema version 7), every commit touched a leaf of each asset's scores (the largest share
# of a commit's pages at ten scores a second per asset). Readers ask for one asset's newest scores or
# a span of them: the key walked newest first or a range of it, filtered on the asset.
_SCORES = """
CREATE TABLE IF NOT EXISTS scores (
    id INTEGER PRIMARY KEY,
    asset TEXT NOT NULL, t_end REAL NOT NULL, value REAL NOT NULL, threshold REAL NOT NULL,
    contributions TEXT NOT NULL, model_version TEXT NOT NULL, historical INTEGER NOT NULL,
    received REAL NOT NULL,
    UNIQUE (t_end, asset)
);
"""

# "Operating point not seen in training" episodes (appliance.actions.operating_point): one row per episode,
# open (end NULL) while it lasts; counted per day by the dashboard and /metrics. A new table created if
# missing on every open, so stores of earlier releases gain it without a migration step.
_OPERATING_POINTS = """
CREATE TABLE IF NOT EXISTS operating_points (
    asset TEXT NOT NULL, since REAL NOT NULL, end REAL, sensors TEXT NOT NULL, model_version TEXT NOT NULL,
    held_windows INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL,
    PRIMARY KEY (asset, since)
);
"""

# The schema's version, kept in SQLite's user_version; _migrate brings an older file up to it.
SCHEMA_VERSION = 7
# Bytes the WAL file is truncated to after a checkpoint (SQLite otherwise keeps its largest size).
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
# Distinct refusals remembered for collapsing repeats (older ones are simply stored anew).
_DEAD_RECENT_MAX = 1024

SCHEMA = _MODE_CHANGES + _ALARM_COMMENTS + _ALARM_VERDICTS + _READINGS + _SCORES + _OPERATING_POINTS + """
CREATE TABLE IF NOT EXISTS alarms (
    id TEXT PRIMARY KEY, asset TEXT NOT NULL, level TEXT NOT NULL, state TEXT NOT NULL,
    active INTEGER NOT NULL, start REAL NOT NULL, end REAL, peak_ratio REAL NOT NULL,
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
CREATE INDEX IF NOT EXISTS mode_changes_asset ON mode_changes (asset, ts);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL, payload BLOB NOT NULL, code TEXT NOT NULL, detail TEXT NOT NULL,
    received_at REAL NOT NULL, count INTEGER NOT NULL DEFAULT 1, last_at REAL
);
CREATE INDEX IF NOT EXISTS dead_letters_code ON dead_letters (code);
CREATE TABLE IF NOT EXISTS model_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL, event TEXT NOT NULL, version TEXT NOT NULL, previous TEXT NOT NULL, reason TEXT NOT NULL,
    user TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS point_modes (
    asset TEXT PRIMARY KEY, mode TEXT NOT NULL, shelved_until REAL, updated REAL NOT NULL
);
"""

# Version 1 (until 2026-11): alarms.peak_score held the ratio to the threshold; dead letters kept
# "code: detail" in one reason column; mode changes were alarm events of 'point-<asset>' rows.
_MIGRATE_1_TO_2 = """
ALTER TABLE alarms RENAME COLUMN peak_score TO peak_ratio;
ALTER TABLE dead_letters RENAME TO dead_letters_v1;
DROP INDEX IF EXISTS dead_letters_reason;
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL, payload BLOB NOT NULL, code TEXT NOT NULL, detail TEXT NOT NULL,
    received_at REAL NOT NULL
);
INSERT INTO dead_letters (id, source, payload, code, detail, received_at)
    SELECT id, source, payload,
           CASE WHEN instr(reason, ':') > 0 THEN substr(reason, 1, instr(reason, ':') - 1) ELSE reason END,
           CASE WHEN instr(reason, ':') > 0 THEN trim(substr(reason, instr(reason, ':') + 1)) ELSE '' END,
           received_at
    FROM dead_letters_v1;
DROP TABLE dead_letters_v1;
CREATE INDEX IF NOT EXISTS dead_letters_code ON dead_letters (code);
INSERT OR IGNORE INTO mode_changes (asset, event, mode, previous, ts, user, note, shelved_until, alarm_id)
    SELECT json_extract(snapshot, '$.alarm.asset'), kind,
           CASE kind WHEN 'shelved' THEN 'shelved' WHEN 'suppressed' THEN 'suppressed'
                     WHEN 'removed_from_service' THEN 'out_of_service' ELSE 'in_service' END,
           'unknown', ts, coalesce(user, 'unknown'), note, json_extract(snapshot, '$.alarm.shelved_until'),
           CASE WHEN alarm_id LIKE 'point-%' THEN NULL ELSE alarm_id END
    FROM alarm_events
    WHERE kind IN ('shelved', 'unshelved', 'suppressed', 'removed_from_service', 'returned_to_service');
DELETE FROM alarm_events
    WHERE kind IN ('shelved', 'unshelved', 'suppressed', 'removed_from_service', 'returned_to_service');
DELETE FROM alarms WHERE id LIKE 'point-%';
UPDATE alarm_events
    SET snapshot = json_set(json_remove(snapshot, '$.alarm.peak_score'), '$.alarm.peak_ratio',
                            json_extract(snapshot, '$.alarm.peak_score'))
    WHERE json_extract(snapshot, '$.alarm.peak_score') IS NOT NULL;
"""

# Version 2 (until 2026-12): a dead letter was one refusal; repeats are now counted in one row.
_MIGRATE_2_TO_3 = """
ALTER TABLE dead_letters ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
ALTER TABLE dead_letters ADD COLUMN last_at REAL;
"""

# Version 3 (until 2026-12): alarm comments were kept in the accounts file; see import_comments.
_MIGRATE_3_TO_4 = _ALARM_COMMENTS

# Version 4 (until 2026-12): readings were unique per (asset, sensor, ts). The table is copied once
# under the new key (row ids kept, so arrival order and retention by id are unchanged).
_MIGRATE_4_TO_5 = """
ALTER TABLE readings RENAME TO readings_v4;
""" + _READINGS + """
INSERT INTO readings (id, asset, sensor, ts, value, quality, historical, received)
    SELECT id, asset, sensor, ts, value, quality, historical, received FROM readings_v4 ORDER BY id;
DROP TABLE readings_v4;
"""

# Version 5 (until 2026-12): alarm episodes had no verdicts.
_MIGRATE_5_TO_6 = _ALARM_VERDICTS

# Version 6 (until 2026-12): scores were unique per (asset, t_end). Copied once under the new key.
_MIGRATE_6_TO_7 = """
ALTER TABLE scores RENAME TO scores_v6;
""" + _SCORES + """
INSERT INTO scores (id, asset, t_end, value, threshold, contributions, model_version, historical, received)
    SELECT id, asset, t_end, value, threshold, contributions, model_version, historical, received
    FROM scores_v6 ORDER BY id;
DROP TABLE scores_v6;
"""


def _migrate(conn: sqlite3.Connection) -> None:
    """Create the schema, or bring a store written by an earlier release up to it."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    has_alarms = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'alarms'").fetchone() is not None
    if version == 0 and has_alarms:
        version = 1  # a store from before the schema had a version
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"store schema version {version} is newer than this release's ({SCHEMA_VERSION})")
    conn.execute("BEGIN IMMEDIATE")
    try:
        steps = {1: _MODE_CHANGES + _MIGRATE_1_TO_2, 2: _MIGRATE_2_TO_3, 3: _MIGRATE_3_TO_4,
                 4: _MIGRATE_4_TO_5, 5: _MIGRATE_5_TO_6,
                 6: _MIGRATE_6_TO_7}
        while version in steps:
            for stmt in steps[version].split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            version += 1
        for stmt in SCHEMA.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def import_comments(path: str | Path, comments: Iterable[AlarmComment]) -> int:
    """Copy alarm comments kept elsewhere (the accounts file of a release before schema 4) into the store.

    A migration, so like :func:`_migrate` it writes on a connection of its own: it
    runs once, when the dashboard starts, in one transaction of milliseconds (the
    writer thread waits at most that long for its next commit). A comment the store
    has already (same alarm, author and instant) is skipped, so copying again after
    an interrupted move adds nothing. Returns how many were new. Raises
    :class:`StoreUnavailable` unless ``path`` is a store of this release's schema
    (it is never created here).
    """
    path = Path(path)
    if not path.exists():
        raise StoreUnavailable(f"store file {path} does not exist yet")
    rows = [(c.alarm_id, c.asset, c.ts, c.user, c.text) for c in comments]
    try:
        conn = _connect(path)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                raise StoreUnavailable(f"store schema version {version}, this release writes {SCHEMA_VERSION}")
            conn.execute("BEGIN IMMEDIATE")
            added = conn.executemany("INSERT OR IGNORE INTO alarm_comments (alarm_id, asset, ts, user, text)"
                                     " VALUES (?,?,?,?,?)", rows).rowcount
            conn.execute("COMMIT")
            return max(0, added)
        finally:
            conn.close()  # an uncommitted transaction is rolled back
    except sqlite3.Error as exc:
        raise StoreUnavailable(str(exc)) from exc


_STOP = object()
# After a linger that gathered nothing late in it, this many commits go out without one.
_LINGER_BACKOFF = 64
# A linger ends once arrivals have paused for this many of their average intervals (at least
# _GAP_MIN_S, at most commit_linger_gap_s); the average moves by this fraction per arrival.
_GAP_INTERVALS = 4.0
_GAP_MIN_S = 0.005
_ARRIVAL_SMOOTHING = 0.1


def _connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def open_reader(path: str | Path) -> sqlite3.Connection:
    conn = _connect(Path(path), readonly=True)
    conn.row_factory = sqlite3.Row
    return conn


class Store:
    def __init__(self, path: str | Path, retention_days: float = 7.0, max_readings: int = 5_000_000,
                 max_dead_letters: int = 100_000, batch_max: int = 2000, dead_letter_collapse_s: float = 60.0,
                 commit_linger_s: float = 0.010, commit_linger_items: int = 16, checkpoint_pages: int = 1000,
                 page_size: int | None = None, commit_linger_gap_s: float = 0.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retention_s = retention_days * 86400
        self.max_readings = max_readings
        self.max_dead_letters = max_dead_letters
        self.batch_max = batch_max
        self.dead_letter_collapse_s = dead_letter_collapse_s
        self.commit_linger_s = commit_linger_s
        self.commit_linger_items = commit_linger_items
        self.commit_linger_gap_s = commit_linger_gap_s
        self.checkpoint_pages = checkpoint_pages
        # Group commit (see the module doc): the writer waits on _more; after_commit sets it early.
        self._more = threading.Event()
        self._linger_need: int | None = None  # queued items that end the current linger; None: not lingering
        self._last_arrival = 0.0
        self._arrival_interval = 0.0  # moving average of the time between after_commit calls, seconds
        self._linger_skip = 0
        self._stalls = 0
        self._closing = False
        self.lingers = 0
        # (source, code, detail) -> [row id, received_at of the row's first refusal]; writer thread only
        self._dead_recent: OrderedDict[tuple, list] = OrderedDict()
        self.dead_letters_collapsed = 0
        conn = _connect(self.path)
        try:
            _migrate(conn)
            if page_size is not None:
                set_page_size(conn, page_size, "store")
        finally:
            conn.close()
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.committed_batches = 0
        self.write_errors = 0
        self.last_error: str | None = None
        self._last_retention = 0.0
        self._age_cutoff = AgeCutoff(self.retention_s)

    @classmethod
    def from_config(cls, cfg, path: Path) -> "Store":
        return cls(path, cfg.retention_days, cfg.max_readings, cfg.max_dead_letters,
                   dead_letter_collapse_s=cfg.dead_letter_collapse_s, commit_linger_s=cfg.commit_linger_ms / 1000.0,
                   commit_linger_items=cfg.commit_linger_items, checkpoint_pages=cfg.checkpoint_pages,
                   page_size=cfg.page_size, commit_linger_gap_s=cfg.commit_linger_gap_ms / 1000.0)

    # -- writer side ----------------------------------------------------------
    def start(self) -> None:
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Flush everything queued, then stop the writer."""
        if self._thread is not None:
            self._closing = True
            self._q.put(_STOP)
            self._more.set()  # a lingering writer commits now
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

    def put_model_change(self, m: ModelChange) -> None:
        self._q.put(("model", m))

    def put_mode_change(self, m: ModeChange) -> None:
        """Record the change and the point's new mode (and the occurrence's new state, if any)."""
        self._q.put(("mode", m))

    def put_operating_point(self, c: OperatingPointChange) -> None:
        """Open (``entered``) or close (``left``) an asset's "operating point not seen in training" episode."""
        self._q.put(("operating_point", c))

    def put_comment(self, c: AlarmComment) -> None:
        """Record a technician's comment on an alarm occurrence (see :mod:`appliance.store.comments`)."""
        self._q.put(("comment", c))

    def put_verdict(self, v: AlarmVerdict) -> None:
        """Record a technician's verdict on an alarm episode (see :mod:`appliance.store.verdicts`)."""
        self._q.put(("verdict", v))

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once everything queued before it is committed."""
        self._q.put(("callback", callback))
        now = time.monotonic()
        self._arrival_interval += (min(now - self._last_arrival, 1.0) - self._arrival_interval) * _ARRIVAL_SMOOTHING
        self._last_arrival = now
        need = self._linger_need
        if need is not None and self._q.qsize() >= need:  # the writer is lingering for more: a burst is enough
            self._more.set()

    def flush(self, timeout: float = 30.0) -> bool:
        done = threading.Event()
        self.after_commit(done.set)
        return done.wait(timeout)

    def queued(self) -> int:
        return self._q.qsize()

    def _take(self, batch: list) -> None:
        while len(batch) < self.batch_max:
            try:
                batch.append(self._q.get_nowait())
            except queue.Empty:
                return

    def _linger(self, batch: list) -> bool:
        """Group commit: wait a little for more to commit with ``batch`` (see the module doc).

        True when arrivals went on through the wait (more are likely to follow)."""
        if self._linger_skip:
            self._linger_skip -= 1
            return False
        started = time.monotonic()
        self._more.clear()
        self._linger_need = max(1, self.commit_linger_items - len(batch))
        # after_commit or close() may have come before the flag was set or the event cleared
        enough = self._closing or self._q.qsize() >= self._linger_need
        paused = False
        if not enough:
            enough, paused = self._wait_for_more(started)
        self._linger_need = None
        self.lingers += 1
        if paused:
            stalled = self._last_arrival < started  # not one arrival in the wait
        else:
            stalled = not enough and self._last_arrival < started + self.commit_linger_s / 4
        if stalled:
            # Nothing came in the last three quarters of the wait: arrivals stalled (or are rare).
            # Twice in a row (once is a scheduling hiccup), and lingering delays acks for nothing.
            self._stalls += 1
            if self._stalls >= 2:
                self._stalls = 0
                self._linger_skip = _LINGER_BACKOFF
        else:
            self._stalls = 0
        self._take(batch)
        return not stalled and not paused

    def _wait_for_more(self, started: float) -> tuple[bool, bool]:
        """Wait until enough is queued (True, False), the linger is over (False, False) or arrivals
        paused for longer than a few of their usual intervals (False, True): the source is waiting
        for our acks (a broker's in-flight limit reached) or has nothing more for now, and waiting
        on would only delay the acks."""
        deadline = started + self.commit_linger_s
        while True:
            now = time.monotonic()
            if now >= deadline:
                return False, False
            until = deadline
            if self.commit_linger_gap_s > 0:
                gap = min(self.commit_linger_gap_s, max(_GAP_MIN_S, _GAP_INTERVALS * self._arrival_interval))
                quiet_since = max(self._last_arrival, started)
                if now - quiet_since >= gap:
                    return False, True
                until = min(deadline, quiet_since + gap)
            if self._more.wait(until - now):
                return True, False

    def _run(self) -> None:
        conn = _connect(self.path)
        conn.execute(f"PRAGMA wal_autocheckpoint={int(self.checkpoint_pages)}")
        stopping = False
        steady = False
        while not stopping:
            # While arrivals went on through the last wait, the next one starts at once rather than
            # at the next item, which saves the writer a wake-up per commit at a steady rate.
            batch = [] if steady else [self._q.get()]
            self._take(batch)
            steady = (self.commit_linger_s > 0 and len(batch) < self.commit_linger_items
                      and _STOP not in batch and self._linger(batch))
            if not batch:
                continue
            if _STOP in batch:
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
        readings, scores, events, dead, modes, alarms, models, comments = [], [], [], [], [], [], [], []
        verdicts, op_points = [], []
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
                dead.append(item)
            elif kind == "alarm":
                alarms.append(item)
            elif kind == "mode":
                modes.append(item)
            elif kind == "model":
                models.append((item.ts, item.event, item.version, item.previous, item.reason, item.user))
            elif kind == "comment":
                comments.append((item.alarm_id, item.asset, item.ts, item.user, item.text))
            elif kind == "operating_point":
                op_points.append(item)
            elif kind == "verdict":
                verdicts.append((item.alarm_id, item.asset, item.ts, item.user, item.verdict.value, item.cause,
                                 item.note))
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT OR IGNORE INTO readings (asset, sensor, ts, value, quality,"
                                 " historical, received) VALUES (?,?,?,?,?,?,?)", readings)
                conn.executemany("INSERT OR IGNORE INTO scores (asset, t_end, value, threshold,"
                                 " contributions, model_version, historical, received)"
                                 " VALUES (?,?,?,?,?,?,?,?)", scores)
                recent = self._write_dead_letters(conn, dead) if dead else None
                for a in alarms:
                    self._write_alarm(conn, a, now)
                for e in events:
                    self._write_event(conn, e, now)
                for m in modes:
                    self._write_mode_change(conn, m, now)
                for c in op_points:
                    self._write_operating_point(conn, c, now)
                conn.executemany("INSERT INTO model_changes (ts, event, version, previous, reason, user)"
                                 " VALUES (?,?,?,?,?,?)", models)
                conn.executemany("INSERT OR IGNORE INTO alarm_comments (alarm_id, asset, ts, user, text)"
                                 " VALUES (?,?,?,?,?)", comments)
                conn.executemany("INSERT OR IGNORE INTO alarm_verdicts (alarm_id, asset, ts, user, verdict, cause,"
                                 " note) VALUES (?,?,?,?,?,?,?)", verdicts)
                conn.execute("COMMIT")
                self.committed_batches += 1
                if recent is not None:
                    self._remember_dead(recent)
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

    def _write_dead_letters(self, conn: sqlite3.Connection, dead: list[DeadLetter]) -> dict[tuple, list]:
        """Store (or count into a recent identical row) ``dead``, then trim the table to its bound.

        Returns what this batch adds to the map of recent refusals, applied once committed."""
        added: dict[tuple, list] = {}
        window = self.dead_letter_collapse_s
        for d in dead:
            key = (d.source, d.code.value, d.detail)
            row = added.get(key) or self._dead_recent.get(key)
            if row is not None and window > 0 and d.received_at - row[1] < window:
                cur = conn.execute("UPDATE dead_letters SET count = count + ?, last_at = max(coalesce(last_at, 0), ?)"
                                   " WHERE id = ?", (d.count, d.received_at, row[0]))
                if cur.rowcount:
                    self.dead_letters_collapsed += d.count
                    continue
            cur = conn.execute("INSERT INTO dead_letters (source, payload, code, detail, received_at, count)"
                               " VALUES (?,?,?,?,?,?)", (d.source, d.payload, d.code.value, d.detail,
                                                         d.received_at, d.count))
            added[key] = [cur.lastrowid, d.received_at]
        if added:
            conn.execute("DELETE FROM dead_letters WHERE id <= (SELECT MAX(id) FROM dead_letters) - ?",
                         (self.max_dead_letters,))
        return added

    def _remember_dead(self, added: dict[tuple, list]) -> None:
        recent = self._dead_recent
        for key, row in added.items():
            recent[key] = row
            recent.move_to_end(key)
        while len(recent) > _DEAD_RECENT_MAX:
            recent.popitem(last=False)

    @staticmethod
    def _write_alarm(conn: sqlite3.Connection, a: Alarm, now: float) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO alarms (id, asset, level, state, active, start, end, peak_ratio,"
            " top_sensors, acked_by, shelved_until, historical, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (a.id, a.asset, a.level.name.lower(), a.state.value, int(a.active), a.start, a.end,
             a.peak_ratio, json.dumps(list(a.top_sensors)), a.acked_by, a.shelved_until,
             int(a.historical), now))

    @classmethod
    def _write_event(cls, conn: sqlite3.Connection, e: AlarmEvent, now: float) -> None:
        a = e.alarm
        cls._write_alarm(conn, a, now)
        conn.execute("INSERT OR IGNORE INTO alarm_events (alarm_id, kind, ts, user, note, snapshot)"
                     " VALUES (?,?,?,?,?,?)",
                     (a.id, e.kind.value, e.ts, e.user, e.note, json.dumps(e.to_dict())))

    @classmethod
    def _write_mode_change(cls, conn: sqlite3.Connection, m: ModeChange, now: float) -> None:
        if m.alarm is not None:
            cls._write_alarm(conn, m.alarm, now)
        conn.execute("INSERT OR REPLACE INTO point_modes VALUES (?,?,?,?)",
                     (m.asset, m.mode.value, m.shelved_until, now))
        conn.execute("INSERT OR IGNORE INTO mode_changes (asset, event, mode, previous, ts, user, note,"
                     " shelved_until, alarm_id) VALUES (?,?,?,?,?,?,?,?,?)",
                     (m.asset, m.name, m.mode.value, m.previous.value, m.ts, m.user, m.note, m.shelved_until,
                      m.alarm.id if m.alarm is not None else None))

    def _retained(self) -> tuple[tuple[str, str, str | None, int], ...]:
        """The tables retention trims: (table, when a row was received, its own time or None, rows kept at most)."""
        return (("readings", "received", "ts", self.max_readings), ("scores", "received", "t_end", self.max_readings),
                ("dead_letters", "received_at", None, self.max_dead_letters))

    @staticmethod
    def _write_operating_point(conn: sqlite3.Connection, c: OperatingPointChange, now: float) -> None:
        sensors = json.dumps(list(c.sensors))
        if c.active:
            # An episode left open by a stop ends where the next one begins (the runtime starts without it).
            conn.execute("UPDATE operating_points SET end = ?, updated = ? WHERE asset = ? AND end IS NULL"
                         " AND since < ?", (c.since, now, c.asset, c.since))
            conn.execute("INSERT OR IGNORE INTO operating_points (asset, since, end, sensors, model_version,"
                         " held_windows, updated) VALUES (?,?,NULL,?,?,0,?)",
                         (c.asset, c.since, sensors, c.model_version, now))
        else:
            conn.execute("INSERT INTO operating_points (asset, since, end, sensors, model_version, held_windows,"
                         " updated) VALUES (?,?,?,?,?,?,?) ON CONFLICT (asset, since) DO UPDATE SET"
                         " end = excluded.end, sensors = excluded.sensors, held_windows = excluded.held_windows,"
                         " updated = excluded.updated",
                         (c.asset, c.since, c.ts, sensors, c.model_version, c.held_windows, now))

    def _retention(self, conn: sqlite3.Connection) -> None:
        self._last_retention = time.monotonic()
        cutoff = self._age_cutoff()  # a clock stepped forward does not age this run's rows at once
        try:
            for table, received, own_time, keep in self._retained():
                self._drop_aged(conn, table, received, own_time, cutoff)
                conn.execute(f"DELETE FROM {table} WHERE id <= (SELECT MAX(id) FROM {table}) - ?", (keep,))
        except sqlite3.Error as exc:
            log.warning("store: retention failed error=%r", exc)

    def _drop_aged(self, conn: sqlite3.Connection, table: str, received: str, own_time: str | None,
                   cutoff: float) -> None:
        """Rows received before ``cutoff`` and, when they carry a time of their own, ``retention_days`` older
        than the newest by that time too (a step of the wall clock alone ages nothing: module doc)."""
        if own_time is None:
            conn.execute(f"DELETE FROM {table} WHERE {received} < ?", (cutoff,))
            return
        conn.execute(f"DELETE FROM {table} WHERE {received} < ? AND {own_time} < "
                     f"(SELECT MAX({own_time}) FROM {table}) - ?", (cutoff, self.retention_s))

    # -- read side (any thread) -------------------------------------------------
    @property
    def reader(self) -> StoreReader:
        """Read-only queries on this store, from any thread (see :class:`StoreReader`)."""
        return StoreReader(self.path)

    def counts(self) -> dict[str, int]:
        """Rows per table."""
        return self.reader.counts()

    def open_alarms(self) -> list[Alarm]:
        """Alarms not closed, for restoring after a restart."""
        return self.reader.open_alarms()

    def point_modes(self) -> dict[str, tuple[PointMode, float | None]]:
        """Each alarm point's mode (and shelving expiry) as last recorded."""
        return self.reader.point_modes()


def alarm_from_row(r: sqlite3.Row) -> Alarm:
    """The :class:`Alarm` of one ``alarms`` row."""
    return Alarm(id=r["id"], asset=r["asset"], level=Level[r["level"].upper()],
                 state=AlarmState(r["state"]), start=r["start"], peak_ratio=r["peak_ratio"],
                 top_sensors=tuple(json.loads(r["top_sensors"])), end=r["end"],
                 active=bool(r["active"]), acked_by=r["acked_by"], shelved_until=r["shelved_until"],
                 historical=bool(r["historical"]))


class StoreUnavailable(Exception):
    """The store cannot be read: no file yet, not a store, damaged, or locked for too long."""


_COUNTED = ("readings", "scores", "alarms", "alarm_events", "mode_changes", "dead_letters")


class StoreReader:
    """Read-only queries on a store file: the dashboard's, the CLI's and the tests' one way in.

    Stateless and safe from any thread or process: each call opens its own
    read-only connection and closes it before returning. In WAL mode a reader
    neither waits for the writer nor holds it up, so reading never slows the
    detection path; it sees the last committed batch. Every SQLite failure
    (missing file, foreign or damaged file, busy for longer than the timeout)
    is raised as :class:`StoreUnavailable` with SQLite's message.

    Lists come as plain dicts (the records' ``to_dict`` spelling plus what only
    the store knows, such as row ids), newest first. When the filter pins one
    series (scores of one asset, readings of one asset's sensor, an asset's mode
    changes) rows are ordered by their source time, which an index serves
    directly; otherwise by arrival (row id), so that an unfiltered query on
    millions of rows on a Raspberry Pi stays an index walk instead of a full
    sort. ``since`` is an exclusive lower bound on the source time (``t_end``
    for scores, ``ts`` for readings, ``received_at`` for dead letters).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        if not self.path.exists():
            # SQLite would only say "unable to open database file"; name the file.
            raise StoreUnavailable(f"store file {self.path} does not exist yet")
        try:
            conn = open_reader(self.path)
            try:
                yield conn
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc

    def _rows(self, sql: str, args: Iterable = ()) -> list[sqlite3.Row]:
        with self._connection() as conn:
            return conn.execute(sql, tuple(args)).fetchall()

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the file is a store with this release's schema."""
        version = self._rows("PRAGMA user_version")[0][0]
        if version != SCHEMA_VERSION:
            raise StoreUnavailable(f"store schema version {version}, this release reads version {SCHEMA_VERSION}"
                                   " (the appliance brings an older store up to date when it starts)")

    def counts(self) -> dict[str, int]:
        """Rows per table."""
        with self._connection() as conn:
            return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in _COUNTED}

    def open_alarms(self) -> list[Alarm]:
        """Alarms not closed, for restoring after a restart."""
        return [alarm_from_row(r) for r in self._rows("SELECT * FROM alarms WHERE state != ?",
                                                       (AlarmState.NORMAL.value,))]

    def point_modes(self) -> dict[str, tuple[PointMode, float | None]]:
        """Each alarm point's mode (and shelving expiry) as last recorded."""
        return {r["asset"]: (PointMode(r["mode"]), r["shelved_until"])
                for r in self._rows("SELECT * FROM point_modes")}

    def alarms(self, active: bool | None = None, limit: int = 100) -> list[dict]:
        """Stored alarm occurrences, latest start first: :meth:`Alarm.to_dict` plus ``updated``
        (when the row last changed); ``active`` keeps only the active (True) or ended (False) ones."""
        sql, args = "SELECT * FROM alarms", []
        if active is not None:
            sql += " WHERE active = ?"
            args.append(int(active))
        sql += " ORDER BY start DESC LIMIT ?"
        args.append(limit)
        return [{**alarm_from_row(r).to_dict(), "updated": r["updated"]} for r in self._rows(sql, args)]

    def alarm_events(self, alarm_id: str) -> list[dict] | None:
        """Every stored transition of one alarm occurrence, oldest first; ``None`` if the id is unknown.

        Each has ``seq``, ``alarm_id``, ``kind`` (an :class:`~appliance.core.EventKind`
        value), ``ts``, ``user``, ``note`` and ``alarm``: the occurrence as it was
        right after the transition (``None`` if that snapshot cannot be read).
        """
        with self._connection() as conn:
            rows = conn.execute("SELECT * FROM alarm_events WHERE alarm_id = ? ORDER BY seq", (alarm_id,)).fetchall()
            if not rows and conn.execute("SELECT 1 FROM alarms WHERE id = ?", (alarm_id,)).fetchone() is None:
                return None
        out = []
        for r in rows:
            try:
                snapshot = json.loads(r["snapshot"]).get("alarm")
            except (ValueError, AttributeError):
                snapshot = None  # a damaged snapshot must not hide the rest of the history
            out.append({"seq": r["seq"], "alarm_id": r["alarm_id"], "kind": r["kind"], "ts": r["ts"],
                        "user": r["user"], "note": r["note"], "alarm": snapshot})
        return out

    def mode_changes(self, asset: str, limit: int = 100) -> list[dict]:
        """One alarm point's mode changes, latest first.

        Each has ``seq``, ``asset``, ``event`` (:attr:`ModeChange.name`), ``mode``,
        ``previous``, ``ts``, ``user``, ``note``, ``shelved_until`` and ``alarm_id``
        (the occurrence it changed, if the point had one). ``previous`` is
        ``unknown`` for a change recorded before schema version 2.
        """
        rows = self._rows("SELECT * FROM mode_changes WHERE asset = ? ORDER BY ts DESC, seq DESC LIMIT ?",
                          (asset, limit))
        return [{"seq": r["seq"], "asset": r["asset"], "event": r["event"], "mode": r["mode"],
                 "previous": r["previous"], "ts": r["ts"], "user": r["user"], "note": r["note"],
                 "shelved_until": r["shelved_until"], "alarm_id": r["alarm_id"]} for r in rows]

    def operating_points(self, asset: str | None = None, since: float | None = None, limit: int = 100) -> list[dict]:
        """"Operating point not seen in training" episodes, latest first (``end`` None: still on)."""
        sql, args = "SELECT * FROM operating_points WHERE 1 = 1", []
        if asset is not None:
            sql += " AND asset = ?"
            args.append(asset)
        if since is not None:
            sql += " AND coalesce(end, 1e300) >= ?"
            args.append(since)
        sql += " ORDER BY since DESC LIMIT ?"
        args.append(limit)
        return [{"asset": r["asset"], "since": r["since"], "end": r["end"], "active": r["end"] is None,
                 "sensors": json.loads(r["sensors"]), "model_version": r["model_version"],
                 "held_windows": r["held_windows"]} for r in self._rows(sql, args)]

    def operating_points_per_day(self, asset: str | None = None, days: int = 7,
                                 now: float | None = None) -> list[dict]:
        """Per UTC day of the last ``days`` (oldest first): episodes begun that day, per asset."""
        now = time.time() if now is None else now
        first = (int(now // 86400) - days + 1) * 86400.0
        sql = ("SELECT asset, CAST(since / 86400 AS INTEGER) AS day, COUNT(*) AS n FROM operating_points"
               " WHERE since >= ?")
        args: list = [first]
        if asset is not None:
            sql += " AND asset = ?"
            args.append(asset)
        sql += " GROUP BY asset, day ORDER BY day, asset"
        return [{"asset": r["asset"], "day": time.strftime("%Y-%m-%d", time.gmtime(r["day"] * 86400)),
                 "episodes": r["n"]} for r in self._rows(sql, args)]

    def alarm_comments(self, alarm_id: str, limit: int = 500) -> list[dict]:
        """The comments on one alarm occurrence, oldest first.

        Each has ``seq``, ``alarm_id``, ``asset``, ``ts`` (when it was written),
        ``user`` (who wrote it) and ``text``.
        """
        rows = self._rows("SELECT * FROM alarm_comments WHERE alarm_id = ? ORDER BY ts, seq LIMIT ?",
                          (alarm_id, limit))
        return [{"seq": r["seq"], "alarm_id": r["alarm_id"], "asset": r["asset"], "ts": r["ts"], "user": r["user"],
                 "text": r["text"]} for r in rows]

    def alarm_verdicts(self, alarm_id: str, limit: int = 500) -> list[dict]:
        """Every verdict given on one alarm episode, oldest first (the last one is its label).

        Each has ``seq``, ``alarm_id``, ``asset``, ``ts`` (when it was given), ``user``,
        ``verdict`` (a :class:`~appliance.store.verdicts.Verdict` value), ``cause`` and ``note``.
        """
        rows = self._rows("SELECT * FROM alarm_verdicts WHERE alarm_id = ? ORDER BY seq LIMIT ?", (alarm_id, limit))
        return [_verdict_dict(r) for r in rows]

    def labelled_episodes(self, since: float | None = None, until: float | None = None,
                          asset: str | None = None, limit: int = 100_000) -> list[dict]:
        """Alarm episodes that started in [``since``, ``until``), oldest first, each with its current verdict.

        Each is :meth:`Alarm.to_dict` plus ``verdict`` (the latest verdict given, as
        :meth:`alarm_verdicts` gives them, or ``None`` while no one has judged it).
        """
        sql = ("SELECT a.*, v.seq AS v_seq, v.ts AS v_ts, v.user AS v_user, v.verdict AS v_verdict,"
               " v.cause AS v_cause, v.note AS v_note FROM alarms a LEFT JOIN alarm_verdicts v ON v.seq ="
               " (SELECT max(seq) FROM alarm_verdicts WHERE alarm_id = a.id) WHERE a.start >= ? AND a.start < ?")
        args: list = [float("-inf") if since is None else since, float("inf") if until is None else until]
        if asset is not None:
            sql += " AND a.asset = ?"
            args.append(asset)
        sql += " ORDER BY a.start LIMIT ?"
        args.append(limit)
        return [{**alarm_from_row(r).to_dict(), "verdict": _latest_verdict(r)} for r in self._rows(sql, args)]

    def verdicts_for(self, alarm_ids: Iterable[str]) -> dict[str, list[dict]]:
        """The verdict history of each of ``alarm_ids`` (as :meth:`alarm_verdicts`), in one query."""
        ids = list(dict.fromkeys(alarm_ids))
        out: dict[str, list[dict]] = {}
        for k in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            part = ids[k:k + 500]
            rows = self._rows(f"SELECT * FROM alarm_verdicts WHERE alarm_id IN ({','.join('?' * len(part))})"
                              " ORDER BY seq", part)
            for r in rows:
                out.setdefault(r["alarm_id"], []).append(_verdict_dict(r))
        return out

    def verdicts_since(self, seq: int, limit: int = 500) -> list[dict]:
        """Verdicts stored after ``seq`` (their ``seq`` order), for the cloud uplink's cursor."""
        rows = self._rows("SELECT * FROM alarm_verdicts WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
        return [_verdict_dict(r) for r in rows]

    def last_verdict_seq(self) -> int:
        """The highest verdict ``seq`` stored (0 for none)."""
        return int(self._rows("SELECT coalesce(max(seq), 0) FROM alarm_verdicts")[0][0])

    def kpi_episodes(self, since: float) -> list[tuple]:
        """Alarm episodes that started at or after ``since``, and every one still active, oldest first, for the
        alarm KPIs (:mod:`appliance.store.kpis`): tuples of ``id``, ``asset``, ``start``, ``end`` (None while
        active), ``raised_at`` and ``acked_at`` (the first raise and acknowledgement recorded) and ``verdict``
        (the current one or None), the fields of :class:`appliance.store.kpis.Episode` in its order."""
        sql = ("SELECT a.id, a.asset, a.start, CASE WHEN a.active THEN NULL ELSE a.end END,"
               " (SELECT min(ts) FROM alarm_events e WHERE e.alarm_id = a.id AND e.kind = 'raised'),"
               " (SELECT min(ts) FROM alarm_events e WHERE e.alarm_id = a.id AND e.kind = 'acknowledged'),"
               " (SELECT verdict FROM alarm_verdicts v WHERE v.alarm_id = a.id ORDER BY seq DESC LIMIT 1)"
               " FROM alarms a WHERE a.start >= ? OR a.active = 1 ORDER BY a.start")
        with self._connection() as conn:
            return conn.execute(sql, (since,)).fetchall()

    def model_changes(self, limit: int = 100) -> list[dict]:
        """The model's life on this gateway (shadow runs, promotions, rejections, rollbacks), latest first."""
        rows = self._rows("SELECT * FROM model_changes ORDER BY seq DESC LIMIT ?", (limit,))
        return [{k: r[k] for k in ("seq", "ts", "event", "version", "previous", "reason", "user")} for r in rows]

    def scores(self, asset: str | None = None, since: float | None = None, limit: int = 120) -> list[dict]:
        """Stored scores: the :class:`Score` fields plus ``ratio`` (value / threshold, ``None`` without a threshold)."""
        where, args = [], []
        if asset is not None:
            where.append("asset = ?")
            args.append(asset)
        if since is not None:
            where.append("t_end > ?")
            args.append(since)
        order = "t_end DESC" if asset is not None else "id DESC"
        sql = "SELECT * FROM scores" + (" WHERE " + " AND ".join(where) if where else "")
        sql += f" ORDER BY {order} LIMIT ?"
        args.append(limit)
        out = []
        for r in self._rows(sql, args):
            try:
                contributions = json.loads(r["contributions"])
            except ValueError:
                contributions = {}
            threshold = r["threshold"]
            out.append({"asset": r["asset"], "t_end": r["t_end"], "value": r["value"], "threshold": threshold,
                        "ratio": r["value"] / threshold if threshold > 0 else None,
                        "contributions": contributions, "model_version": r["model_version"],
                        "historical": bool(r["historical"])})
        return out

    def readings(self, asset: str | None = None, sensor: str | None = None, since: float | None = None,
                 limit: int = 100) -> list[dict]:
        """Stored readings: the :class:`Reading` fields (``quality`` as its number) plus ``received``."""
        where, args = [], []
        if asset is not None:
            # With the asset alone, walking the rows newest first and filtering stops
            # after ``limit`` hits; using the (ts, asset, sensor) index instead would
            # sort every row of the asset. The unary + keeps the planner off the index.
            where.append("asset = ?" if sensor is not None else "+asset = ?")
            args.append(asset)
        if sensor is not None:
            where.append("sensor = ?")
            args.append(sensor)
        if since is not None:
            where.append("ts > ?")
            args.append(since)
        order = "ts DESC" if asset is not None and sensor is not None else "id DESC"
        sql = "SELECT * FROM readings" + (" WHERE " + " AND ".join(where) if where else "")
        sql += f" ORDER BY {order} LIMIT ?"
        args.append(limit)
        return [{"asset": r["asset"], "sensor": r["sensor"], "ts": r["ts"], "value": r["value"],
                 "quality": r["quality"], "historical": bool(r["historical"]), "received": r["received"]}
                for r in self._rows(sql, args)]

    def dead_letters(self, since: float | None = None, code: str | None = None, limit: int = 50,
                     payload_bytes: int | None = None) -> list[dict]:
        """Rejected input, latest first; ``code`` keeps one :class:`~appliance.core.DeadLetterCode` value.

        Each has ``id``, ``source``, ``code``, ``detail``, ``received_at``, ``size``
        (of the payload copy kept, in bytes), ``payload`` (bytes; only the first
        ``payload_bytes`` when given, so a list of large payloads stays cheap),
        ``count`` (refusals this row stands for: identical repeats are counted, not
        stored again) and ``last_at`` (when the latest of them arrived).
        """
        # A payload stored as text (an older writer) is read as its UTF-8 bytes, like a blob.
        head = "CAST(payload AS BLOB)" if payload_bytes is None else "substr(CAST(payload AS BLOB), 1, ?)"
        sql = (f"SELECT id, source, code, detail, received_at, count, coalesce(last_at, received_at) AS last_at,"
               f" length(CAST(payload AS BLOB)) AS size, {head} AS head FROM dead_letters")
        args: list = [] if payload_bytes is None else [payload_bytes]
        where = []
        if since is not None:
            where.append("received_at > ?")
            args.append(since)
        if code is not None:
            where.append("code = ?")
            args.append(code)
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [{"id": r["id"], "source": r["source"], "code": r["code"], "detail": r["detail"],
                 "received_at": r["received_at"], "size": r["size"], "payload": bytes(r["head"] or b""),
                 "count": r["count"], "last_at": r["last_at"]}
                for r in self._rows(sql, args)]

    # -- commissioning reads (appliance.commission) ---------------------------------
    def newest_reading_ts(self, asset: str, until: float | None = None) -> float | None:
        """Source time of ``asset``'s newest reading at or before ``until``; None when there is none."""
        # Newest first along the (ts, ...) key, stopping at the first of this asset's rows (MAX() with
        # a filter on the asset would read the whole span).
        rows = list(self._asset_span("SELECT ts FROM readings", asset, None, until, " ORDER BY ts DESC LIMIT 1"))
        return rows[0][0] if rows else None

    def asset_sensors(self, asset: str, since: float | None = None, until: float | None = None) -> list[str]:
        """Names of the sensors ``asset`` reported with ``since <= ts <= until``, sorted."""
        return sorted(r[0] for r in self._asset_span("SELECT DISTINCT sensor FROM readings", asset, since, until))

    def asset_readings(self, asset: str, since: float | None = None,
                       until: float | None = None) -> Iterator[Reading]:
        """``asset``'s readings with ``since <= ts <= until``, in time order, as recorded.

        Streamed from the database (a span of days never sits in memory at once);
        a stored NULL value comes back as NaN, so the window builder masks it.
        """
        for r in self._asset_span("SELECT sensor, ts, value, quality, historical FROM readings", asset, since, until,
                                  " ORDER BY ts"):
            yield Reading(asset, r["sensor"], r["ts"], float("nan") if r["value"] is None else r["value"],
                          Quality(r["quality"]), historical=bool(r["historical"]))

    def live_alarms_during(self, asset: str, since: float, until: float) -> list[Alarm]:
        """``asset``'s live (not replayed) alarms that were active at some time in ``[since, until]``, oldest first."""
        rows = self._rows("SELECT * FROM alarms WHERE asset = ? AND historical = 0 AND start <= ?"
                          " AND (end IS NULL OR end >= ?) ORDER BY start", (asset, until, since))
        return [alarm_from_row(r) for r in rows]

    def scored_assets(self) -> dict[str, float]:
        """Each asset the live model scored (still in the store) and the end of its newest scored window."""
        return {r[0]: r[1] for r in self._rows("SELECT asset, MAX(t_end) FROM scores GROUP BY asset")}

    def _asset_span(self, select: str, asset: str, since: float | None, until: float | None,
                    order: str = "") -> Iterator[sqlite3.Row]:
        """Rows of ``select ... FROM readings`` for ``asset`` within the span, streamed from one reader."""
        sql, args = select + " WHERE asset = ?", [asset]
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since)
        if until is not None:
            sql += " AND ts <= ?"
            args.append(until)
        with self._connection() as conn:
            yield from conn.execute(sql + order, args)

    # -- trends (the dashboard's asset page) ------------------------------------------
    def readings_kept_since(self) -> float | None:
        """When the oldest reading the store still holds was received (retention drops the oldest
        first, so it holds every reading received since); None when it holds none."""
        rows = self._rows("SELECT received FROM readings ORDER BY id LIMIT 1")
        return rows[0][0] if rows else None

    def reading_buckets(self, asset: str, sensor: str, since: float, until: float,
                        width: float) -> list[tuple[float, float, float, float, int]]:
        """Live readings of one series in ``(since, until]`` in buckets of ``width`` seconds, oldest first.

        Each is ``(bucket start, mean, min, max, count)`` over the finite values; one
        index range scan, aggregated in SQLite, so an hour at 10 Hz is not a
        hundred thousand rows in Python.
        """
        rows = self._rows("SELECT CAST((ts - ?) / ? AS INTEGER) AS k, AVG(value), MIN(value), MAX(value), "
                          "COUNT(value) FROM readings WHERE asset = ? AND sensor = ? AND ts > ? AND ts <= ? "
                          "AND historical = 0 GROUP BY k ORDER BY k", (since, width, asset, sensor, since, until))
        return [(since + k * width, mean, lo, hi, n) for k, mean, lo, hi, n in rows if n]

    def score_buckets(self, asset: str, since: float, until: float, width: float) -> list[tuple[float, float, int]]:
        """Live scores of one asset in ``(since, until]`` in buckets of ``width`` seconds, oldest first:
        ``(bucket start, highest value / threshold, count)``, so no short peak is averaged away."""
        rows = self._rows("SELECT CAST((t_end - ?) / ? AS INTEGER) AS k, MAX(value / threshold), COUNT(*) "
                          "FROM scores WHERE asset = ? AND t_end > ? AND t_end <= ? AND historical = 0 "
                          "AND threshold > 0 GROUP BY k ORDER BY k", (since, width, asset, since, until))
        return [(since + k * width, hi, n) for k, hi, n in rows if n]


def _verdict_dict(r: sqlite3.Row) -> dict:
    return {"seq": r["seq"], "alarm_id": r["alarm_id"], "asset": r["asset"], "ts": r["ts"], "user": r["user"],
            "verdict": r["verdict"], "cause": r["cause"], "note": r["note"]}


def _latest_verdict(r: sqlite3.Row) -> dict | None:
    """The verdict columns of a :meth:`StoreReader.labelled_episodes` row, or ``None`` if it has none."""
    if r["v_seq"] is None:
        return None
    return {"seq": r["v_seq"], "alarm_id": r["id"], "asset": r["asset"], "ts": r["v_ts"], "user": r["v_user"],
            "verdict": r["v_verdict"], "cause": r["v_cause"], "note": r["v_note"]}
