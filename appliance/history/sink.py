"""History: the InfluxDB sink behind a durable outbox, and local history.

Threads and the detection path::

    asyncio loop ──add_*()──► in-memory buffer ──writer thread──► outbox.db ──forwarder──► InfluxDB
     (never waits on disk          (bounded)       (commits every       (SQLite WAL)    (acked batches
      or network)                                   commit_interval_s)                    deleted)
                                                        └──────────────► local.db (1 min rollups, raw scores)

``add_*`` only appends to a buffer under a short lock. A point is *accepted*
once the writer committed it to the outbox (at most ``commit_interval_s`` later;
``flush()`` waits for it). From then on a kill -9 cannot lose it, and with the
default ``fsync = "commit"`` neither can a power cut. What is still in the
buffer when the process dies was never accepted; ``status()["pending"]`` shows
how much that is (typically under a second of data).

Alarm events and audit records are serialised on the caller's thread (they are
rare, and an :class:`~appliance.core.Alarm` is mutable, so this snapshots the
state the event describes); readings and scores are frozen and serialised by the
writer.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from appliance.core import AlarmEvent, ModeChange, PluginError, Reading, Score
from appliance.history.forwarder import Forwarder, RateMeter
from appliance.history.lineproto import EncodeError, Encoder, Kind
from appliance.history.local import LocalHistory
from appliance.history.outbox import Outbox

log = logging.getLogger(__name__)

# A commit is triggered early when this many readings wait, so a burst (replay,
# reconnect backlog) does not build one huge transaction.
COMMIT_BATCH = 5000
EXPIRE_EVERY_S = 10.0
PURGE_EVERY_S = 60.0
STORE_RETRY_S = 1.0


class _LogLimiter:
    """At most one log line per key per interval, with the count of what it held back."""

    def __init__(self, interval_s: float = 60.0):
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self.interval_s:
            held = self._held.pop(key, 0)
            self._last[key] = now
            log.log(level, msg + (" suppressed_since_last=%d" if held else ""), *args, *((held,) if held else ()))
        else:
            self._held[key] = self._held.get(key, 0) + 1


class HistoryError(PluginError):
    """History cannot run as configured (the message names the key and the reason)."""


class History:
    """See the module docstring. ``cfg`` is a :class:`~appliance.history.config.HistoryConfig`;
    relative paths in it are resolved against ``data_dir``."""

    def __init__(self, cfg, data_dir: str | Path):
        self.cfg = cfg
        self.data_dir = Path(data_dir)
        self._encoder = Encoder(cfg.global_tags)
        self._cond = threading.Condition(threading.Lock())
        self._readings: deque[Reading] = deque()
        self._scores: deque[Score] = deque()
        self._events: list[tuple[Kind, bytes]] = []
        self._mem_drops: dict[tuple[Kind, str], int] = {}
        self._added = 0
        self._committed = 0
        self._flush_requested = False
        self._stopping = False
        self._stopped = False
        self._accepted = {k: 0 for k in Kind}
        self._accept_rate = RateMeter()
        self._store_error: str | None = None
        self._store_error_at: float | None = None
        self._logs = _LogLimiter()
        self._writer: threading.Thread | None = None

        self.outbox: Outbox | None = None
        self.forwarder: Forwarder | None = None
        self.local: LocalHistory | None = None
        if cfg.enabled:
            ob = cfg.outbox
            path = self._path(ob.path)
            try:
                self.outbox = Outbox(path, ob.max_bytes, ob.max_age_s, ob.fsync, ob.page_size)
            except (OSError, sqlite3.Error) as e:
                raise HistoryError(f"history.outbox.path: cannot open {path}: {e}") from e
            self.forwarder = Forwarder(cfg.influx, self.outbox)
        if cfg.local.enabled:
            lc = cfg.local
            path = self._path(lc.path)
            try:
                self.local = LocalHistory(path, lc.raw_retention_s, lc.rollup_retention_s, lc.commit_interval_s,
                                          lc.page_size)
            except (OSError, sqlite3.Error) as e:
                raise HistoryError(f"history.local.path: cannot open {path}: {e}") from e

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def _path(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else self.data_dir / q

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._writer is not None:
            raise RuntimeError("History already started (it cannot be restarted after stop)")
        if self.outbox is None and self.local is None:
            log.info("history disabled (influx and local history both off)")
        self._writer = threading.Thread(target=self._run_writer, name="history-writer", daemon=True)
        self._writer.start()
        if self.forwarder is not None:
            self.forwarder.start()
        log.info("history started url=%s outbox=%s local=%s",
                 self.cfg.influx.url if self.outbox else "-",
                 self.outbox.path if self.outbox else "-", self.local.path if self.local else "-")

    def stop(self, timeout: float = 15.0) -> None:
        """Commit what is buffered, stop both threads and close the files.

        Blocks up to about ``timeout`` (a write in flight is bounded by the client
        timeout); call it from an executor, not the event loop."""
        with self._cond:
            if self._stopped:
                return
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        if self._writer is not None:
            self._writer.join(max(0.1, deadline - time.monotonic()))
        if self.forwarder is not None:
            self.forwarder.stop(max(0.1, deadline - time.monotonic()))
        with self._cond:
            self._stopped = True
        if self._writer is not None and self._writer.is_alive():
            log.error("history writer did not stop in time; files left open")
            return
        if self.outbox is not None:
            self.outbox.close()
        if self.local is not None:
            self.local.close()
        log.info("history stopped pending_lost=%d", self._pending_count())

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything added before this call is accepted (committed)."""
        with self._cond:
            target = self._added
            if self._writer is None or not self._writer.is_alive():
                return self._committed >= target
            self._flush_requested = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._committed >= target, timeout)

    # -- the detection path: never blocks on disk or network ----------------------------

    def add_reading(self, r: Reading) -> None:
        self._add(Kind.READING, r)

    def add_score(self, s: Score) -> None:
        self._add(Kind.SCORE, s)

    def _add(self, kind: Kind, item) -> None:
        with self._cond:
            if self._stopping:
                self._count_mem_drop(kind, "after_stop")
                return
            # Looked up under the lock: the writer swaps the buffers.
            buf = self._readings if kind == Kind.READING else self._scores
            if len(buf) >= self.cfg.outbox.max_pending:
                # The writer is stalled (disk full or failing): oldest first, as in the outbox.
                buf.popleft()
                self._count_mem_drop(kind, "pending_full")
            buf.append(item)
            self._added += 1
            if len(buf) == COMMIT_BATCH:
                self._cond.notify_all()

    def add_alarm_event(self, e: AlarmEvent) -> None:
        self._encode_event(Kind.ALARM, self._encoder.alarm_event, e)

    def add_mode_change(self, m: ModeChange) -> None:
        self._encode_event(Kind.ALARM, self._encoder.mode_change, m)

    def add_audit(self, record: Mapping[str, Any]) -> None:
        """An action audit record (a flat-ish dict); its ``ts`` (UNIX seconds) is the
        point's time, or now if it has none."""
        ts = record.get("ts", time.time()) if isinstance(record, Mapping) else time.time()
        self._encode_event(Kind.AUDIT, self._encoder.audit, record, ts)

    def _encode_event(self, kind: Kind, encode: Callable[..., bytes], *record) -> None:
        if self.outbox is None:
            return
        try:
            line = encode(*record)
        except (EncodeError, AttributeError, TypeError) as err:
            self._invalid(kind, err)
            return
        self._add_event(kind, line)

    def _add_event(self, kind: Kind, line: bytes) -> None:
        with self._cond:
            if self._stopping:
                self._count_mem_drop(kind, "after_stop")
                log.error("history %s added after stop was not stored", kind.label)
                return
            # Never dropped: unbounded, but these are rare by nature.
            self._events.append((kind, line))
            self._added += 1

    def _count_mem_drop(self, kind: Kind, reason: str) -> None:
        key = (kind, reason)
        self._mem_drops[key] = self._mem_drops.get(key, 0) + 1

    def _invalid(self, kind: Kind, err: Exception) -> None:
        with self._cond:
            self._count_mem_drop(kind, "invalid")
        self._logs.log(logging.WARNING, f"invalid-{kind.label}",
                       "history %s not stored reason=%s", kind.label, err)

    # -- writer thread -----------------------------------------------------------------

    def _run_writer(self) -> None:
        ob = self.cfg.outbox
        next_expire = next_purge = time.monotonic()
        next_checkpoint = time.monotonic() + ob.fsync_interval_s
        while True:
            with self._cond:
                if not (self._stopping or self._flush_requested
                        or len(self._readings) >= COMMIT_BATCH or len(self._scores) >= COMMIT_BATCH):
                    self._cond.wait(ob.commit_interval_s)
                readings, self._readings = self._readings, deque()
                scores, self._scores = self._scores, deque()
                events, self._events = self._events, []
                drops, self._mem_drops = self._mem_drops, {}
                target = self._added
                flush, self._flush_requested = self._flush_requested, False
                stopping = self._stopping
            try:
                self._commit(readings, scores, events, drops, force_local=flush or stopping)
            except Exception as e:
                self._store_failed(e, readings, scores, events, drops)
                if stopping:
                    log.error("history stopping with uncommitted points lost=%d",
                              len(readings) + len(scores) + len(events))
                    return
                time.sleep(STORE_RETRY_S)
                continue
            with self._cond:
                self._committed = target
                self._cond.notify_all()
            self._store_error = None
            now = time.monotonic()
            try:
                if self.outbox is not None and now >= next_expire:
                    next_expire = now + EXPIRE_EVERY_S
                    self.outbox.expire()
                    self.outbox.compact()
                if self.outbox is not None and ob.fsync == "interval" and now >= next_checkpoint:
                    next_checkpoint = now + ob.fsync_interval_s
                    self.outbox.checkpoint()
                if self.local is not None and now >= next_purge:
                    next_purge = now + PURGE_EVERY_S
                    self.local.purge()
            except Exception as e:
                self._logs.log(logging.ERROR, "housekeeping", "history housekeeping failed error=%s", e)
            if stopping:
                return

    def _commit(self, readings, scores, events, drops, force_local: bool = False) -> None:
        if self.outbox is not None:
            rows: list[tuple[Kind, bytes]] = []
            drops = dict(drops)
            for kind, items, encode in ((Kind.READING, readings, self._encoder.reading),
                                        (Kind.SCORE, scores, self._encoder.score)):
                for item in items:
                    try:
                        rows.append((kind, encode(item)))
                    except (EncodeError, AttributeError, TypeError) as err:
                        drops[(kind, "invalid")] = drops.get((kind, "invalid"), 0) + 1
                        self._logs.log(logging.WARNING, f"invalid-{kind.label}",
                                       "history %s not stored reason=%s", kind.label, err)
            rows.extend(events)
            if rows or drops:
                self.outbox.append(rows, drops)
                for k, _ in rows:
                    self._accepted[k] += 1
                self._accept_rate.add(len(rows))
        if self.local is not None:  # called with nothing too: rows waiting for their commit may be due
            try:
                self.local.insert([r for r in readings if isinstance(r, Reading)],
                                  [s for s in scores if isinstance(s, Score)], force=force_local)
            except Exception as e:  # local history is a convenience copy: log, never retry
                self._logs.log(logging.ERROR, "local", "history local insert failed error=%s", e)

    def _store_failed(self, e: Exception, readings, scores, events, drops) -> None:
        """The outbox commit failed (disk full, I/O error): keep everything buffered."""
        self._store_error = f"{type(e).__name__}: {e}"
        self._store_error_at = time.time()
        self._logs.log(logging.ERROR, "store", "history outbox commit failed error=%s", self._store_error)
        with self._cond:
            readings.extend(self._readings)
            scores.extend(self._scores)
            self._readings, self._scores = readings, scores
            for buf, kind in ((self._readings, Kind.READING), (self._scores, Kind.SCORE)):
                while len(buf) > self.cfg.outbox.max_pending:
                    buf.popleft()
                    self._count_mem_drop(kind, "pending_full")
            self._events = events + self._events
            for key, n in drops.items():
                self._mem_drops[key] = self._mem_drops.get(key, 0) + n

    def _pending_count(self) -> int:
        with self._cond:
            return len(self._readings) + len(self._scores) + len(self._events)

    # -- local history (any thread) ----------------------------------------------------

    def query_readings(self, asset: str, sensor: str, since: float, until: float,
                       resolution: str = "1m", limit: int = 10_000) -> list[dict]:
        """See :meth:`LocalHistory.query_readings`; [] when local history is off."""
        return self.local.query_readings(asset, sensor, since, until, resolution, limit) if self.local else []

    def query_scores(self, asset: str, since: float, until: float,
                     resolution: str = "raw", limit: int = 10_000) -> list[dict]:
        """See :meth:`LocalHistory.query_scores`; [] when local history is off."""
        return self.local.query_scores(asset, since, until, resolution, limit) if self.local else []

    # -- observability -----------------------------------------------------------------

    def status(self) -> dict:
        with self._cond:
            pending = {"reading": len(self._readings), "score": len(self._scores),
                       "events": len(self._events)}
            mem_drops = dict(self._mem_drops)
            accepted = {k.label: n for k, n in self._accepted.items()}
        out: dict[str, Any] = {
            "enabled": self.outbox is not None,
            "running": self._writer is not None and self._writer.is_alive(),
            "pending": pending,
            "accepted": accepted,
            "accepted_per_s": round(self._accept_rate.rate(), 3),
            "store_error": self._store_error,
            "store_error_at": self._store_error_at,
        }
        if self.outbox is not None:
            points, nbytes, oldest = self.outbox.totals()
            drops = self.outbox.drop_counts()
            for key, n in mem_drops.items():
                drops[key] = drops.get(key, 0) + n
            by_kind: dict[str, dict[str, int]] = {}
            for (k, reason), n in sorted(drops.items()):
                by_kind.setdefault(k.label, {})[reason] = n
            fw = self.forwarder.stats.snapshot()
            total_points = sum(points.values())
            out.update({
                "url": self.cfg.influx.url,
                "state": ("retrying" if fw["consecutive_failures"] else
                          "ok" if fw["last_success_at"] else "idle" if total_points == 0 else "waiting"),
                "outbox": {
                    "points": total_points,
                    "bytes": sum(nbytes.values()),
                    "max_bytes": self.cfg.outbox.max_bytes,
                    "by_kind": {k.label: points[k] for k in Kind},
                    "oldest_age_s": round(time.time() - oldest, 3) if oldest is not None else None,
                },
                "dropped": by_kind,
                "dropped_total": sum(drops.values()),
                "forwarder": fw,
                "last_error": fw["last_error"],
            })
        if self.local is not None:
            out["local"] = self.local.stats()
        return out

    def metrics_text(self) -> bytes:
        """Prometheus text exposition of this component's own registry."""
        return generate_latest(self.registry)


class _Collector:
    """Builds the metrics from status() at scrape time, so there is one bookkeeping."""

    def __init__(self, history: History):
        self.h = history

    def collect(self):
        st = self.h.status()
        p = "appliance_history_"
        yield _by_kind(GaugeMetricFamily, p + "pending_points", "Points buffered in memory, not yet accepted",
                       st["pending"])
        yield _by_kind(CounterMetricFamily, p + "points_accepted", "Points committed to the outbox since start",
                       st["accepted"])
        yield GaugeMetricFamily(p + "accept_rate_points_per_second",
                                "Points accepted per second over the last minute", value=st["accepted_per_s"])
        yield GaugeMetricFamily(p + "store_error", "1 while the outbox cannot commit",
                                value=1 if st["store_error"] else 0)
        if not st["enabled"]:
            return
        ob, fw = st["outbox"], st["forwarder"]
        yield _by_kind(GaugeMetricFamily, p + "outbox_points", "Points waiting in the outbox", ob["by_kind"])
        yield GaugeMetricFamily(p + "outbox_bytes", "Outbox payload bytes (bounded)", value=ob["bytes"])
        yield GaugeMetricFamily(p + "outbox_max_bytes", "Outbox byte bound", value=ob["max_bytes"])
        yield GaugeMetricFamily(p + "outbox_oldest_age_seconds", "Age of the oldest waiting point",
                                value=ob["oldest_age_s"] or 0.0)
        c = CounterMetricFamily(p + "points_dropped", "Points dropped, by kind and reason (persistent)",
                                labels=["kind", "reason"])
        for kind, reasons in st["dropped"].items():
            for reason, n in reasons.items():
                c.add_metric([kind, reason], n)
        yield c
        yield _by_kind(CounterMetricFamily, p + "points_sent", "Points acknowledged by the server since start",
                       fw["sent"])
        yield CounterMetricFamily(p + "batches_sent", "Write requests acknowledged", value=fw["batches"])
        yield CounterMetricFamily(p + "write_errors", "Write requests that failed", value=fw["requests_failed"])
        yield GaugeMetricFamily(p + "write_rate_points_per_second",
                                "Points acknowledged per second over the last minute", value=fw["sent_per_s"])
        yield GaugeMetricFamily(p + "up", "1 if the last write attempt succeeded",
                                value=0 if fw["consecutive_failures"] else 1)
        yield GaugeMetricFamily(p + "last_success_timestamp_seconds", "UNIX time of the last acknowledged write",
                                value=fw["last_success_at"] or 0.0)


def _by_kind(family, name: str, documentation: str, counts: Mapping[str, float]):
    metric = family(name, documentation, labels=["kind"])
    for kind, n in counts.items():
        metric.add_metric([kind], n)
    return metric
