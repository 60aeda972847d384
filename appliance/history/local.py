"""Local history for the dashboard: one-minute aggregates of the readings, raw scores.

Its own SQLite file (WAL), so history views never depend on the network and
never contend with the outbox's fsyncs. Raw scores are kept for
``raw_retention_s`` (a day by default), the one-minute aggregates of readings and
scores for ``rollup_retention_s`` (a month).

Raw readings are not copied here: the store holds every reading (with its own
retention), and the dashboard's trends read them from it for the span it keeps
(``web/trends.py``). A copy cost ~345 bytes written per reading (SD-card wear,
``benchmarks/disk_writes.py``); the aggregates cost a row per sensor and minute.

A reading's minute aggregate (count, sum, min, max of the good values, count of
the bad ones) is added to when the reading's commit comes (merged with what the
minute already holds), since no raw rows are left to recompute it from: a
reading delivered twice (MQTT QoS 1 redelivery after a crash) whose first copy
already reached this file counts twice in its minute's count and mean (never in
its min or max). Readings older than the rollup retention on arrival are not
kept. A score's rollup is recomputed from the raw scores it covers, so a score
delivered twice is one row; scores older than the raw retention on arrival are
not kept, because their bucket could no longer be recomputed completely.

"Older than the retention" means by both clocks (:func:`~appliance.core.clock.both_clocks_cutoff`),
on arrival and at :meth:`LocalHistory.purge`: older than the retention before the wall
clock's now and before the newest reading (for readings' minutes) or score (for scores
and their minutes) kept. The gateway's wall clock can jump: an RTC-less board boots in
1970 and is stepped forward by NTP, a bad time source sends it years ahead; by the wall
clock alone a forward step would purge the whole history at once and turn every live
reading away as too old. The data's own times do not move with that clock, and the
newest of them only advances as new data comes, so the last retention's worth of data
survives any step, and a plant gone quiet keeps its last month (its last day of raw
scores). The extra kept is at most one retention's worth, so the file stays bounded.

Only live data is kept: historical replays go to InfluxDB tagged
``historical=true`` but never mix into the dashboard's view of the plant now.
Local history is a convenience copy: ``synchronous=NORMAL``, so a power cut may
lose its last second or so, never the outbox.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import Literal, Sequence

from appliance.core import Quality, Reading, Score
from appliance.core.clock import both_clocks_cutoff
from appliance.core.sqlite_pages import set_page_size

log = logging.getLogger(__name__)

ROLLUP_S = 60
_QUALITY = {int(q): q.name.lower() for q in Quality}
MAX_QUERY_ROWS = 100_000
# A reading's minute merged into what the minute already holds (NULL sum/min/max: no good value yet).
_MERGE_MINUTE = (
    "INSERT INTO rollup(series, bucket, n, sum, min, max, bad) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(series, bucket) DO UPDATE SET n = n + excluded.n, "
    "sum = coalesce(sum + excluded.sum, sum, excluded.sum), "
    "min = coalesce(min(min, excluded.min), min, excluded.min), "
    "max = coalesce(max(max, excluded.max), max, excluded.max), bad = bad + excluded.bad")
# Minute aggregates and scores waiting for their commit (see LocalHistory.insert) that make it due at once.
MAX_PENDING = 200_000
# WAL pages between checkpoints (SQLite's default is 1000): a checkpoint writes every page the commits
# since the last one touched, so a longer stretch writes each series' newest page once for many commits
# (measured: 900 -> 610 bytes per reading at 10 s commits, 1 KiB pages).
CHECKPOINT_PAGES = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS series(
    id INTEGER PRIMARY KEY,
    asset TEXT NOT NULL,
    sensor TEXT NOT NULL,
    UNIQUE(asset, sensor)
);
CREATE TABLE IF NOT EXISTS rollup(
    series INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    n INTEGER NOT NULL,
    sum REAL,
    min REAL,
    max REAL,
    bad INTEGER NOT NULL,
    PRIMARY KEY(series, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS assets(
    id INTEGER PRIMARY KEY,
    asset TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS scores(
    asset INTEGER NOT NULL,
    ts REAL NOT NULL,
    value REAL,
    threshold REAL,
    contributions TEXT NOT NULL,
    model_version TEXT NOT NULL,
    PRIMARY KEY(asset, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS score_rollup(
    asset INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    n INTEGER NOT NULL,
    sum REAL,
    max REAL,
    max_ratio REAL,
    over INTEGER NOT NULL,
    PRIMARY KEY(asset, bucket)
) WITHOUT ROWID;
"""


def _finite(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _live_time(record, field: str) -> float | None:
    """A live record's own time (``ts``, ``t_end``), or None for a replay or a malformed record."""
    try:
        return None if record.historical else _finite(getattr(record, field))
    except AttributeError:
        return None


def _newest(current: float | None, times) -> float | None:
    """The newest of ``current`` and ``times`` (Nones skipped), None if there is none."""
    return max((t for t in (current, *times) if t is not None), default=None)


def _check_range(since: float, until: float) -> tuple[float, float]:
    for name, v in (("since", since), ("until", until)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite UNIX time in seconds, got {v!r}")
    if until < since:
        raise ValueError(f"until ({until}) is before since ({since})")
    return float(since), float(until)


def _check_resolution(resolution: str) -> None:
    if resolution not in ("raw", "1m"):
        raise ValueError(f"resolution must be 'raw' or '1m', got {resolution!r}")


def _check_limit(limit: int) -> int:
    if not isinstance(limit, int) or not 1 <= limit <= MAX_QUERY_ROWS:
        raise ValueError(f"limit must be an integer in 1..{MAX_QUERY_ROWS}, got {limit!r}")
    return limit


class LocalHistory:
    def __init__(self, path: str | Path, raw_retention_s: float, rollup_retention_s: float,
                 commit_interval_s: float = 0.0, page_size: int | None = None):
        self.path = Path(path)
        # Rows wait this long in memory before their commit (see insert): every commit rewrites the
        # page of each series' newest minute, so one every minute or two writes each page about once.
        self.commit_interval_s = commit_interval_s
        # Readings wait as their minutes' aggregates (a few per series, not one object per reading).
        self._minutes: dict[tuple[int, int], list] = {}
        self._scores: list[Score] = []
        self._last_write = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.raw_retention_s = raw_retention_s
        self.rollup_retention_s = rollup_retention_s
        # One connection for the writer thread, one shared by readers (dashboard
        # threads come and go per request, so no connection per thread).
        self._w = self._connect()
        if page_size is not None:
            set_page_size(self._w, page_size, f"history {self.path}")
        self._w.executescript(SCHEMA)
        self._drop_raw_readings()
        self._r = self._connect()
        self._rlock = threading.Lock()
        self._series: dict[tuple[str, str], int] = {
            (a, s): i for i, a, s in self._w.execute("SELECT id, asset, sensor FROM series")}
        self._assets: dict[str, int] = {a: i for i, a in self._w.execute("SELECT id, asset FROM assets")}
        self.skipped_old = 0
        self._counts: dict[str, int] = {}
        # The newest own times kept (waiting rows included): retention's data clock (module doc).
        self._newest_reading, self._newest_score = self._newest_stored()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
        return db

    def _newest_stored(self) -> tuple[float | None, float | None]:
        """The newest reading minute and score time in the file, per series/asset (primary-key seeks,
        not a scan of a month of minutes); a score's minute counts too, its raw scores may be gone."""
        db = self._w
        readings = [db.execute("SELECT MAX(bucket) FROM rollup WHERE series = ?", (sid,)).fetchone()[0]
                    for sid in self._series.values()]
        scores = [t for aid in self._assets.values() for t in (
            db.execute("SELECT MAX(ts) FROM scores WHERE asset = ?", (aid,)).fetchone()[0],
            db.execute("SELECT MAX(bucket) FROM score_rollup WHERE asset = ?", (aid,)).fetchone()[0])]
        return _newest(None, readings), _newest(None, scores)

    def _drop_raw_readings(self) -> None:
        """A file from before raw readings moved out (the store has them) loses its copy, once."""
        if self._w.execute("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'raw'").fetchone():
            log.info("history: dropping the raw readings of %s (the store keeps them), once", self.path)
            self._w.execute("DROP TABLE raw")

    # -- writer thread -----------------------------------------------------------------

    def insert(self, readings: Sequence[Reading], scores: Sequence[Score], now: float | None = None,
               force: bool = False) -> None:
        """Add live readings and scores; they are written once ``commit_interval_s`` has passed since
        the last write (or at once with ``force``, or when :data:`MAX_PENDING` minutes and scores wait).
        Call it with nothing to add to let due rows out. A copy for the dashboard, so a crash may lose
        what waits (the store has the readings)."""
        now = time.time() if now is None else now
        self._newest_reading = _newest(self._newest_reading, (_live_time(r, "ts") for r in readings))
        self._newest_score = _newest(self._newest_score, (_live_time(s, "t_end") for s in scores))
        self._add_to_minutes(readings, both_clocks_cutoff(now, self._newest_reading, self.rollup_retention_s))
        self._scores.extend(scores)
        due = time.monotonic() - self._last_write >= self.commit_interval_s
        if not (force or due or len(self._minutes) + len(self._scores) >= MAX_PENDING):
            return
        minutes = [(sid, b, *a) for (sid, b), a in self._minutes.items()]
        scores, self._minutes, self._scores = self._scores, {}, []
        self._last_write = time.monotonic()
        self._write(minutes, scores, now)

    def _write(self, minutes: list[tuple], scores: Sequence[Score], now: float) -> None:
        srows, stouched = self._score_rows(
            scores, both_clocks_cutoff(now, self._newest_score, self.raw_retention_s) + ROLLUP_S)
        if not minutes and not srows:
            return
        db = self._w
        db.execute("BEGIN")
        try:
            db.executemany(_MERGE_MINUTE, minutes)
            db.executemany(
                "INSERT OR REPLACE INTO scores(asset, ts, value, threshold, contributions, model_version) "
                "VALUES (?, ?, ?, ?, ?, ?)", srows)
            db.executemany(
                "INSERT OR REPLACE INTO score_rollup(asset, bucket, n, sum, max, max_ratio, over) "
                "SELECT ?1, ?2, count(value), sum(value), max(value), "
                "       max(CASE WHEN threshold > 0 THEN value / threshold END), "
                "       count(*) FILTER (WHERE threshold > 0 AND value > threshold) "
                "FROM scores WHERE asset = ?1 AND ts >= ?2 AND ts < ?2 + ?3",
                [(aid, b, ROLLUP_S) for aid, b in stouched])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _add_to_minutes(self, readings: Sequence[Reading], oldest_ok: float) -> None:
        """Add the live ``readings`` to their series' minute (``[n, sum, min, max, bad]`` over the good
        finite values; ``bad`` counts the others), waiting for the next commit."""
        for r in readings:
            try:
                ts = _finite(r.ts)
                if r.historical or ts is None or not r.asset or not r.sensor:
                    continue
                if ts < oldest_ok:
                    self.skipped_old += 1
                    continue
                key = (self._series_id(str(r.asset), str(r.sensor)), int(ts // ROLLUP_S) * ROLLUP_S)
                value, good = _finite(r.value), int(r.quality) == 0
            except (AttributeError, TypeError, ValueError):
                continue  # the outbox side counts malformed records; this copy just skips them
            a = self._minutes.setdefault(key, [0, None, None, None, 0])
            if not good:
                a[4] += 1
            elif value is not None:
                a[0] += 1
                a[1] = value if a[1] is None else a[1] + value
                a[2] = value if a[2] is None else min(a[2], value)
                a[3] = value if a[3] is None else max(a[3], value)

    def _score_rows(self, scores: Sequence[Score], oldest_ok: float) -> tuple[list[tuple], set[tuple[int, int]]]:
        """Rows of the live ``scores`` for the ``scores`` table, and the (asset, minute) rollups they touch."""
        srows, stouched = [], set()
        for s in scores:
            try:
                ts = _finite(s.t_end)
                if s.historical or ts is None or not s.asset:
                    continue
                if ts < oldest_ok:
                    self.skipped_old += 1
                    continue
                contrib = json.dumps({str(k): _finite(v) for k, v in s.contributions.items()},
                                     sort_keys=True)
                row = (self._asset_id(str(s.asset)), ts, _finite(s.value), _finite(s.threshold), contrib,
                       str(s.model_version))
            except (AttributeError, TypeError, ValueError):
                continue
            srows.append(row)
            stouched.add((row[0], int(ts // ROLLUP_S) * ROLLUP_S))
        return srows, stouched

    def purge(self, now: float | None = None) -> int:
        """Apply retention, by both clocks (module doc); returns the number of rows deleted."""
        now = time.time() if now is None else now
        raw_cut = both_clocks_cutoff(now, self._newest_score, self.raw_retention_s)
        roll_cut = both_clocks_cutoff(now, self._newest_reading, self.rollup_retention_s)
        score_roll_cut = both_clocks_cutoff(now, self._newest_score, self.rollup_retention_s)
        n = 0
        db = self._w
        db.execute("BEGIN")
        try:
            # Per series/asset, so every delete is a primary-key range scan.
            for sid in self._series.values():
                n += db.execute("DELETE FROM rollup WHERE series = ? AND bucket < ?",
                                (sid, roll_cut)).rowcount
            for aid in self._assets.values():
                n += db.execute("DELETE FROM scores WHERE asset = ? AND ts < ?", (aid, raw_cut)).rowcount
                n += db.execute("DELETE FROM score_rollup WHERE asset = ? AND bucket < ?",
                                (aid, score_roll_cut)).rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._counts = {
            "rollup_rows": db.execute("SELECT count(*) FROM rollup").fetchone()[0],
            "raw_scores": db.execute("SELECT count(*) FROM scores").fetchone()[0],
        }
        return n

    def _series_id(self, asset: str, sensor: str) -> int:
        key = (asset, sensor)
        sid = self._series.get(key)
        if sid is None:
            self._w.execute("INSERT OR IGNORE INTO series(asset, sensor) VALUES (?, ?)", key)
            sid = self._w.execute("SELECT id FROM series WHERE asset = ? AND sensor = ?", key).fetchone()[0]
            self._series[key] = sid
        return sid

    def _asset_id(self, asset: str) -> int:
        aid = self._assets.get(asset)
        if aid is None:
            self._w.execute("INSERT OR IGNORE INTO assets(asset) VALUES (?)", (asset,))
            aid = self._w.execute("SELECT id FROM assets WHERE asset = ?", (asset,)).fetchone()[0]
            self._assets[asset] = aid
        return aid

    # -- readers (any thread) ----------------------------------------------------------

    def query_readings(self, asset: str, sensor: str, since: float, until: float,
                       resolution: Literal["1m"] = "1m", limit: int = 10_000) -> list[dict]:
        """One sensor's minute aggregates overlapping ``[since, until]``, oldest first, at most ``limit``:
        ``{ts, count, mean, min, max, bad}`` over good-quality values only (``bad`` counts the rest).

        Raw readings are not kept here: the store has them (:meth:`StoreReader.reading_buckets`).
        """
        since, until = _check_range(since, until)
        limit = _check_limit(limit)
        if resolution != "1m":
            raise ValueError(f"resolution: local history keeps readings per minute only ('1m'), got {resolution!r}; "
                             "raw readings are in the store")
        with self._rlock:
            row = self._r.execute("SELECT id FROM series WHERE asset = ? AND sensor = ?",
                                  (asset, sensor)).fetchone()
            if row is None:
                return []
            first = math.floor(since / ROLLUP_S) * ROLLUP_S
            return [{"ts": b, "count": n, "mean": (s / n) if n else None, "min": lo, "max": hi, "bad": bad}
                    for b, n, s, lo, hi, bad in self._r.execute(
                        "SELECT bucket, n, sum, min, max, bad FROM rollup "
                        "WHERE series = ? AND bucket >= ? AND bucket <= ? ORDER BY bucket LIMIT ?",
                        (row[0], first, until, limit))]

    def query_scores(self, asset: str, since: float, until: float,
                     resolution: Literal["raw", "1m"] = "raw", limit: int = 10_000) -> list[dict]:
        """Scores of one asset in ``[since, until]``, oldest first, at most ``limit``.

        ``raw``: ``{ts, value, threshold, ratio, contributions, model_version}``;
        ``1m``: ``{ts, count, mean, max, max_ratio, over}`` (``over``: windows above threshold).
        """
        since, until = _check_range(since, until)
        limit = _check_limit(limit)
        _check_resolution(resolution)
        with self._rlock:
            row = self._r.execute("SELECT id FROM assets WHERE asset = ?", (asset,)).fetchone()
            if row is None:
                return []
            if resolution == "raw":
                out = []
                for ts, v, th, c, mv in self._r.execute(
                        "SELECT ts, value, threshold, contributions, model_version FROM scores "
                        "WHERE asset = ? AND ts >= ? AND ts <= ? ORDER BY ts LIMIT ?",
                        (row[0], since, until, limit)):
                    ratio = v / th if v is not None and th else None
                    out.append({"ts": ts, "value": v, "threshold": th, "ratio": ratio,
                                "contributions": json.loads(c), "model_version": mv})
                return out
            if resolution == "1m":
                first = math.floor(since / ROLLUP_S) * ROLLUP_S
                return [{"ts": b, "count": n, "mean": (s / n) if n else None, "max": mx,
                         "max_ratio": mr, "over": over}
                        for b, n, s, mx, mr, over in self._r.execute(
                            "SELECT bucket, n, sum, max, max_ratio, over FROM score_rollup "
                            "WHERE asset = ? AND bucket >= ? AND bucket <= ? ORDER BY bucket LIMIT ?",
                            (row[0], first, until, limit))]
        raise AssertionError("unreachable")

    def stats(self) -> dict:
        # Row counts are refreshed by purge() (once a minute): counting a day of
        # raw rows on every status call would cost more than the call is worth.
        return {"series": len(self._series), "assets": len(self._assets),
                "skipped_old": self.skipped_old, **self._counts}

    def close(self) -> None:
        """Write what waits, then close the files."""
        try:
            self.insert([], [], force=True)
        finally:
            with self._rlock:
                self._r.close()
            self._w.close()
