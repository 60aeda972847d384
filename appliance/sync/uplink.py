"""The cloud uplink: an :class:`~appliance.core.Output` sending alarm episodes in connectivity windows.

What it does, on the event loop, without ever waiting there for disk or network:

* collects each alarm episode (:mod:`appliance.sync.episodes`) from the hooks;
  queues a small ``raised`` notice at the raise; once the alarm cleared and the
  after-context is in the store, reads the context off the loop
  (``asyncio.to_thread`` + :class:`~appliance.store.StoreReader`) and queues the
  episode's items in the durable :class:`~appliance.sync.queue.UploadQueue`;
* forwards every technician's verdict the store holds (:meth:`SyncUplink._forward_verdicts`:
  a cursor over the store's verdicts, saved with the items it queued), so a verdict
  given while the alarm is open, after its episode went up, or changed later, goes up
  once, keyed by the episode;
* counts every reading it is shown at its raw size (see :func:`raw_size`);
* when a window is open (:class:`~appliance.sync.windows.ConnectivityWindows`),
  connects and sends batches (alarms first) until the queue is empty, the
  window's byte budget is spent or the window closes; each batch is deleted from
  the queue only after the far side acknowledged it (MQTT PUBACK, HTTP 2xx).

A window that closes mid-transfer publishes nothing more, waits ``close_grace_s``
for the acknowledgements of what is in flight, and leaves the rest queued: the
next window sends it again. Every item carries a stable key, so whatever is sent
twice (a lost PUBACK, a ``kill -9`` after the PUBACK and before the delete
committed) is stored once on the far side.

The batches' wire format is :mod:`appliance.sync.framing`; the MQTT and HTTPS
transports are :mod:`appliance.sync.transports`; this module is the output and
its factory (:func:`build`), which reads the credentials and makes the TLS context.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import ssl
import stat
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from appliance.connections.backoff import jittered_backoff
from appliance.connections.tls import TlsFileError, client_context
from appliance.core import (AlarmEvent, EventKind, MitigationAction, ModeChange, Output, OutputContext, PluginError,
                            Reading, Score)
from appliance.core.clock import SteadyClock
from appliance.sync.config import SyncConfig
from appliance.sync.episodes import (Episode, ScoreTrail, compress, note_item, raised_item, reading_items,
                                     score_items, thin_readings, verdict_item)
from appliance.sync.framing import MAGIC, frame
from appliance.sync.queue import Item, Queued, UploadQueue
from appliance.sync.transports import TRANSPORT_ALLOWANCE, HttpsTransport, MqttTransport, TransportError
from appliance.sync.windows import ConnectivityWindows

log = logging.getLogger(__name__)

# A raw reading as the smallest honest uncompressed record: float64 time, float64
# value, one quality byte, plus the asset and sensor names (UTF-8).
RAW_FIXED_BYTES = 17
CHECKPOINT_S = 5.0
FINALIZE_POLL_S = 0.25
STORE_RETRY_S = 30.0
# How often the store is asked for verdicts given since the last look (a small indexed read), and how many
# are queued at a time.
VERDICT_POLL_S = 2.0
VERDICT_BATCH = 200
VERDICT_CURSOR = "verdict_cursor"  # the queue's counter: the highest verdict seq queued
CRASH_PAUSE_S = 5.0
RECENT_WINDOWS = 20


class SyncError(PluginError):
    """The uplink cannot start as configured; the message is one line naming the key."""


def raw_size(asset: str, sensor: str) -> int:
    """Bytes a reading counts as observed: ``len(asset) + len(sensor)`` (UTF-8) + 8 (time) + 8 (value) + 1 (quality).

    The smallest uncompressed record that still says what was measured, when and
    how well: a conservative yardstick (a JSON message per reading is 3-5 times
    larger), so the uploaded/observed ratio is not flattered.

    >>> raw_size("pump1", "Current")
    29
    """
    return len(asset.encode()) + len(sensor.encode()) + RAW_FIXED_BYTES


# -- credentials -----------------------------------------------------------------------------

def check_private(path: str, key: str) -> Path:
    """``path`` exists and is not readable by group or others; else a one-line :class:`SyncError`."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError as e:
        raise SyncError(f"outputs.sync.{key}: cannot read {p}: {e.strerror or e}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SyncError(f"outputs.sync.{key}: {p} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
                        f"run: chmod 600 {p}")
    return p


def read_secret(path: str, key: str) -> str:
    """The first line of a private file (a password, a token); never logged."""
    p = check_private(path, key)
    try:
        return p.read_text().splitlines()[0].strip() if p.stat().st_size else ""
    except (OSError, UnicodeDecodeError) as e:
        raise SyncError(f"outputs.sync.{key}: cannot read {p}: {e}") from None


def tls_context(ca_file: str | None, cert_file: str | None, key_file: str | None, section: str) -> ssl.SSLContext:
    """A verifying client context (TLS 1.2+), with the client certificate when given."""
    if key_file is not None:
        check_private(key_file, f"{section}.key_file")
    try:
        return client_context(ca_file, cert_file, key_file, keys=f"outputs.sync.{section}")
    except TlsFileError as e:
        raise SyncError(str(e)) from None


# -- the output ------------------------------------------------------------------------------

class SyncUplink(Output):
    """See the module docstring. ``transport_factory()`` makes a fresh transport for each window."""

    name = "sync"

    def __init__(self, cfg: SyncConfig, site: str, store_path: Path, queue_path: Path,
                 transport_factory: Callable[[], Any], clock: Callable[[], float] = time.time,
                 model_sync: Any = None):
        self.cfg = cfg
        self.model_sync = model_sync  # pulls signed model releases in the same windows (appliance.sync.models)
        self.site = site
        self.store_path = Path(store_path)
        self.queue_path = Path(queue_path)
        self._transport_factory = transport_factory
        self._clock = clock
        # Waits (an episode's after-context, pacing) are timed on this; the finalizer reads it every poll.
        self._steady = SteadyClock()
        self.windows = ConnectivityWindows(cfg.windows, cfg.timezone, cfg.sync_now_s)
        self.max_item_bytes = cfg.max_message_bytes - TRANSPORT_ALLOWANCE
        self.queue: UploadQueue | None = None
        self._io: ThreadPoolExecutor | None = None
        self._ctx: OutputContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._episodes: dict[str, Episode] = {}
        self._open_by_asset: dict[str, Episode] = {}
        self._closing: dict[str, Episode] = {}
        self._dirty: set[str] = set()
        self._trail = ScoreTrail(cfg.context_before_s, cfg.context_max_scores)
        self._newest: dict[str, float] = {}
        self._sensor_bytes: dict[str, int] = {}
        self._asset_bytes: dict[str, int] = {}
        self._raw_readings = 0
        self._raw_bytes = 0
        self._work: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._transport = None
        self._state = "starting"
        self._pace_next = 0.0
        self._window_stats: dict | None = None
        self._in_window = False
        self._recent: deque[dict] = deque(maxlen=RECENT_WINDOWS)
        # The mitigation audit chain's newest head seen (a record's audit_seq/audit_hash): every
        # episode carries it off the gateway, an anchor the data folder cannot rewrite.
        self._audit_head: dict | None = None
        self.errors = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self, ctx: OutputContext) -> None:
        self._ctx = ctx
        self._loop = asyncio.get_running_loop()
        self._work = asyncio.Event()
        self._io = ThreadPoolExecutor(1, thread_name_prefix="sync-queue")
        self.queue = await self._run_io(UploadQueue, self.queue_path, self.cfg.queue.max_bytes,
                                        self.max_item_bytes, self.cfg.queue.fsync)
        # The account goes on from where it stood (readings seen before this start included).
        saved = self.queue.snapshot["counters"]
        self._raw_bytes = int(saved.get("raw_bytes", 0)) + self._raw_bytes
        self._raw_readings = int(saved.get("raw_readings", 0)) + self._raw_readings
        await self._recover(ctx.open_alarm_ids)
        await self.windows.start()
        self._tasks = [asyncio.create_task(self._uploader(), name="sync-uploader"),
                       asyncio.create_task(self._finalizer(), name="sync-finalizer"),
                       asyncio.create_task(self._checkpointer(), name="sync-checkpoint"),
                       asyncio.create_task(self._verdict_feed(), name="sync-verdicts")]
        self._state = "waiting"
        log.info("sync uplink started transport=%s windows=%d queued_items=%d pending_episodes=%d",
                 self.cfg.transport, len(self.cfg.windows), self.queue.snapshot["items"], len(self._episodes))

    async def stop(self) -> None:
        self._stopping = True
        await self.windows.stop()  # closes the window: the uploader winds down within close_grace_s
        uploader = self._tasks[0] if self._tasks else None
        if uploader is not None and self._in_window:
            try:
                await asyncio.wait_for(asyncio.shield(uploader), self.cfg.close_grace_s + 10)
            except (asyncio.TimeoutError, Exception):
                pass
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._transport is not None:
            await self._transport.close()
        if self.queue is not None:
            await self._checkpoint()
            await self._run_io(self.queue.close)
        if self._io is not None:
            self._io.shutdown(wait=True)
        self._state = "stopped"

    # -- hooks (event loop; return at once) ---------------------------------------------------
    def on_reading(self, reading: Reading) -> None:
        # raw_size() with the name lengths cached: this runs for every reading.
        size = self._sensor_bytes.get(reading.sensor)
        if size is None:
            size = self._sensor_bytes[reading.sensor] = len(reading.sensor.encode()) + RAW_FIXED_BYTES
        asset = self._asset_bytes.get(reading.asset)
        if asset is None:
            asset = self._asset_bytes[reading.asset] = len(reading.asset.encode())
        self._raw_readings += 1
        self._raw_bytes += size + asset
        if self._closing and reading.ts > self._newest.get(reading.asset, -math.inf):
            self._newest[reading.asset] = reading.ts

    def on_score(self, score: Score) -> None:
        self._trail.add(score)
        ep = self._open_by_asset.get(score.asset)
        if ep is not None:
            ep.add_score(score)
            self._dirty.add(ep.alarm_id)
            return
        if self._closing:
            # The after-context's scores belong to the series, not to the alarm's statistics.
            for ep in self._closing.values():
                if ep.asset == score.asset and ep.scores is not None and not ep.finalizing \
                        and score.t_end <= ep.end + self.cfg.context_after_s:
                    ep.scores.add(score)

    def on_alarm_event(self, event: AlarmEvent) -> None:
        a = event.alarm
        if event.kind is EventKind.RAISED:
            previous = self._open_by_asset.pop(a.asset, None)
            if previous is not None and not previous.closed:
                # Its clear never reached us (an output error upstream): close it at the new raise.
                previous.close(a.start, self._clock(), self._steady())
                self._closing[previous.alarm_id] = previous
                self._persist(previous)
            trail = self._trail.since(a.asset, a.start - self.cfg.context_before_s)
            ep = Episode.from_event(event, trail, self.cfg.context_max_scores)
            self._episodes[a.id] = ep
            self._open_by_asset[a.asset] = ep
            self._persist(ep, [raised_item(event, self.site)])
            return
        ep = self._episodes.get(a.id)
        if ep is None or ep.finalizing:
            if event.kind is EventKind.ACKNOWLEDGED:
                # Acknowledged after its episode went up (return-to-normal unacknowledged): a late note.
                entry = {"kind": event.kind.value, "ts": event.ts, "user": event.user, "note": event.note}
                self._queue_items([note_item(a.id, self.site, "acknowledged", event.ts, entry)])
            return
        ep.add_event(event)
        if event.kind in (EventKind.CLEARED, EventKind.SUPERSEDED) and not ep.closed:
            if event.kind is EventKind.CLEARED and a.end is not None:
                end = a.end
            else:
                trail = self._trail.since(a.asset, a.start)
                end = trail[-1].t_end if trail else a.start
            ep.close(end, self._clock(), self._steady())
            if self._open_by_asset.get(a.asset) is ep:
                del self._open_by_asset[a.asset]
            self._closing[a.id] = ep
        self._persist(ep)

    def on_mode_change(self, change: ModeChange) -> None:
        ep = None
        if change.alarm is not None:
            ep = self._episodes.get(change.alarm.id)
        if ep is None:
            ep = self._open_by_asset.get(change.asset)
        if ep is None or ep.finalizing:
            return  # a point's mode outside an episode is not an anomaly: it stays on the gateway
        ep.add_note(change)
        self._persist(ep)

    def on_action(self, action: MitigationAction) -> None:
        if action.audit_seq is not None:
            self._audit_head = {"seq": action.audit_seq, "hash": action.audit_hash}
        ep = self._episodes.get(action.alarm_id) if action.alarm_id else self._open_by_asset.get(action.asset)
        if ep is not None and not ep.finalizing:
            ep.add_action(action)
            self._persist(ep)
        elif action.alarm_id:
            # A revert after the clear, an approval after the episode went up: a late note.
            self._queue_items([note_item(action.alarm_id, self.site, "action", action.ts, action.to_dict(),
                                         suffix=f":{action.proposal_id}:{action.status}")])

    def commands(self) -> Mapping[str, Callable]:
        async def sync_now(duration_s: float | None = None) -> list:
            return [self.sync_now(duration_s)]
        return {"sync_now": sync_now}

    # -- runtime-facing -----------------------------------------------------------------------
    def sync_now(self, duration_s: float | None = None) -> dict:
        """Open a connectivity window now (CLI, dashboard); call on the event loop."""
        return self.windows.sync_now(duration_s)

    def status(self) -> dict:
        q = dict(self.queue.snapshot) if self.queue is not None else {}
        counters = q.pop("counters", {})
        if self.queue is not None:
            q["in_flight"] = self.queue.in_flight()
        raw_bytes, raw_readings = self._raw_bytes, self._raw_readings
        uploaded = counters.get("uploaded_bytes", 0)
        win = self.windows.status()
        return {
            "state": self._state,
            "transport": self._transport.status() if self._transport is not None else {"kind": self.cfg.transport},
            "window": win | {"sent_bytes": (self._window_stats or {}).get("sent_bytes", 0),
                             "budget_bytes": self.cfg.budget_bytes_per_window},
            "recent_windows": list(self._recent),
            "queue": q,
            "episodes": {"open": len(self._open_by_asset), "closing": len(self._closing)},
            "uploaded": {"bytes": int(uploaded), "messages": int(counters.get("uploaded_messages", 0)),
                         "items": int(counters.get("uploaded_items", 0)),
                         "episodes": int(counters.get("uploaded_episodes", 0)),
                         "sent_bytes": int(counters.get("sent_bytes", 0))},
            "observed": {"readings": int(raw_readings), "raw_bytes": int(raw_bytes)},
            "verdicts_queued_up_to": int(counters.get(VERDICT_CURSOR, 0)),
            "upload_ratio": (uploaded / raw_bytes) if raw_bytes else None,
            "errors": self.errors,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "models": self.model_sync.status() if self.model_sync is not None else None,
        }

    # -- persistence ------------------------------------------------------------------------
    async def _run_io(self, fn, *args):
        return await self._loop.run_in_executor(self._io, fn, *args)

    def _persist(self, ep: Episode, items: Sequence[Item] = ()) -> None:
        """Queue ``items`` and save the episode's state, in one transaction, off the loop."""
        state = json.dumps(ep.state(), separators=(",", ":"))  # serialized here: the loop owns the episode
        self._dirty.discard(ep.alarm_id)
        self._spawn_io(self.queue.add, list(items), None, (ep.alarm_id, state))

    def _queue_items(self, items: Sequence[Item]) -> None:
        self._spawn_io(self.queue.add, list(items))

    def _spawn_io(self, fn, *args) -> None:
        async def run():
            try:
                await self._run_io(fn, *args)
            except Exception as e:
                self._error(f"sync queue write failed: {type(e).__name__}: {e}")
                log.exception("sync queue write failed")
            else:
                self._work.set()
        self._ctx.spawn(run())

    async def _checkpoint(self) -> None:
        """The raw-byte account and the score statistics of open episodes, to disk.

        The account is kept whole in memory and written as totals, so status() never
        sees it half-saved; a kill -9 loses at most the readings of one checkpoint period.
        """
        await self._run_io(self.queue.set_counters, {"raw_bytes": self._raw_bytes,
                                                     "raw_readings": self._raw_readings})
        for alarm_id in list(self._dirty):
            ep = self._episodes.get(alarm_id)
            self._dirty.discard(alarm_id)
            if ep is not None and not ep.finalizing:
                await self._run_io(self.queue.save_pending, alarm_id,
                                   json.dumps(ep.state(), separators=(",", ":")))

    async def _checkpointer(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_S)
            try:
                await self._checkpoint()
            except Exception as e:
                self._error(f"sync checkpoint failed: {type(e).__name__}: {e}")
                log.exception("sync checkpoint failed")

    async def _recover(self, open_alarm_ids: frozenset[str]) -> None:
        """Take back the episodes of before a restart, checked against the store."""
        from appliance.store import StoreReader, StoreUnavailable

        states = await self._run_io(self.queue.load_pending)
        episodes = {s["alarm_id"]: Episode.from_state(s) for s in states}
        reader = StoreReader(self.store_path)
        wanted = set(episodes) | set(open_alarm_ids)
        try:
            history = await asyncio.to_thread(lambda: {i: reader.alarm_events(i) for i in wanted})
        except StoreUnavailable as e:
            log.warning("sync: store unreadable at start (%s); pending episodes resume from the queue alone", e)
            history = {}
        new_items: list[Item] = []
        for alarm_id in wanted:
            ep = episodes.get(alarm_id)
            events = history.get(alarm_id) or []
            if ep is None:
                first = next((e for e in events if e.get("alarm")), None)
                if first is None:
                    continue
                a = first["alarm"]
                ep = Episode(alarm_id, a["asset"], a["start"], a, recovered=True)
                new_items.append(_raised_from_snapshot(a, first["ts"], self.site))
                episodes[alarm_id] = ep
            if events:
                # The store's journal is complete; the saved state may miss the last transitions.
                ep.events = [{"kind": e["kind"], "ts": e["ts"], "user": e["user"], "note": e["note"] or "",
                              "level": (e.get("alarm") or {}).get("level"),
                              "state": (e.get("alarm") or {}).get("state")} for e in events][:200]
                last = events[-1].get("alarm")
                if last:
                    ep.alarm = last
            if not ep.closed and alarm_id not in open_alarm_ids:
                # It closed while the uplink was not looking (or before the crash).
                ep.close(ep.alarm.get("end") or (events[-1]["ts"] if events else ep.start), self._clock(),
                         self._steady())
            if ep.closed:
                if ep.closing_since is None:  # closed before the restart: its wait starts over
                    ep.closing_since = self._steady()
                self._closing[alarm_id] = ep
            else:
                self._open_by_asset[ep.asset] = ep
        self._episodes = episodes
        for ep in episodes.values():
            await self._run_io(self.queue.save_pending, ep.alarm_id, json.dumps(ep.state(), separators=(",", ":")))
        if new_items:
            await self._run_io(self.queue.add, new_items)
        if episodes:
            log.info("sync: resumed %d episode(s) (%d still open)", len(episodes), len(self._open_by_asset))

    # -- verdicts -------------------------------------------------------------------------------
    async def _verdict_feed(self) -> None:
        while True:
            try:
                while await self._forward_verdicts() == VERDICT_BATCH:
                    pass
            except Exception as e:
                self._error(f"verdicts not forwarded yet: {type(e).__name__}: {e}")
                log.warning("sync: verdicts not forwarded yet (%s); retrying in %.0f s", e, VERDICT_POLL_S)
            await asyncio.sleep(VERDICT_POLL_S)

    async def _forward_verdicts(self) -> int:
        """Queue the verdicts stored since the cursor, and move the cursor in the same transaction.

        Verdicts go up as items of their own rather than inside the episode's summary: one path
        for a verdict given while the alarm is open, one given after the episode went up, and a
        change; the store's ``seq`` orders them and keys them, so each arrives once.
        """
        cursor = int(self.queue.snapshot["counters"].get(VERDICT_CURSOR, 0))
        rows, last = await asyncio.to_thread(self._read_verdicts, cursor)
        if last < cursor:
            # A store started afresh (its seqs begin at 1 again): its verdicts are new ones.
            log.warning("sync: the store's verdicts restart below the cursor (%d < %d); forwarding from the start",
                        last, cursor)
            rows, last = await asyncio.to_thread(self._read_verdicts, 0)
        if not rows:
            return 0
        items = [verdict_item(v, self.site) for v in rows]
        await self._run_io(self.queue.add, items, None, None, (), {VERDICT_CURSOR: float(rows[-1]["seq"])})
        self._work.set()
        log.info("sync: verdicts queued count=%d up_to_seq=%d", len(rows), rows[-1]["seq"])
        return len(rows)

    def _read_verdicts(self, cursor: int) -> tuple[list[dict], int]:
        """(verdicts after ``cursor``, the highest seq stored): a worker thread, reading the store."""
        from appliance.store import StoreReader

        reader = StoreReader(self.store_path)
        return reader.verdicts_since(cursor, VERDICT_BATCH), reader.last_verdict_seq()

    # -- finalizing episodes ------------------------------------------------------------------
    async def _finalizer(self) -> None:
        while True:
            await asyncio.sleep(FINALIZE_POLL_S)
            now = self._steady()
            for ep in list(self._closing.values()):
                if ep.ready_at is None:
                    seen = self._newest.get(ep.asset, -math.inf)
                    if seen >= ep.end + self.cfg.context_after_s or now >= ep.closing_since + self.cfg.context_after_s:
                        ep.ready_at = now + self.cfg.settle_s
                if ep.ready_at is not None and now >= ep.ready_at:
                    try:
                        await self._finalize(ep)
                    except Exception as e:
                        ep.finalizing = False
                        ep.ready_at = now + STORE_RETRY_S
                        self._error(f"episode {ep.alarm_id} not finalized yet: {type(e).__name__}: {e}")
                        log.warning("sync: episode %s not finalized (%s); retrying in %.0f s",
                                    ep.alarm_id, e, STORE_RETRY_S)

    async def _finalize(self, ep: Episode) -> None:
        ep.finalizing = True  # from here on, what arrives for it goes up as late notes
        since, until = ep.span(self.cfg.context_before_s, self.cfg.context_after_s)
        series = list(ep.scores.rows) if ep.scores is not None and not ep.recovered else None
        stride = ep.scores.stride if ep.scores is not None else 1
        summary_base = json.loads(json.dumps(ep.state()))  # a snapshot: the hooks may go on meanwhile
        context_items, context = await asyncio.to_thread(self._context_items, ep, since, until, series, stride)
        snap = Episode.from_state(summary_base)
        doc = snap.summary(self.site, [it.key for it in context_items], context)
        if self._audit_head is not None:
            doc["audit_head"] = self._audit_head
        summary = Item(ep.alarm_id, 0, "episode", ep.alarm_id, compress(doc))
        # The summary says all the raised notice did: a notice not sent yet need not go.
        await self._run_io(self.queue.add, [summary, *context_items], ep.alarm_id, None, [f"{ep.alarm_id}:raised"])
        self._closing.pop(ep.alarm_id, None)
        self._episodes.pop(ep.alarm_id, None)
        self._work.set()
        log.info("sync: episode %s queued asset=%s items=%d bytes=%d", ep.alarm_id, ep.asset,
                 1 + len(context_items), summary.size + sum(i.size for i in context_items))

    def _context_items(self, ep: Episode, since: float, until: float, series: list[Score] | None,
                       stride: int) -> tuple[list[Item], dict]:
        """Score and reading items of one episode (a worker thread: reads the store)."""
        from appliance.store import StoreReader

        reader = StoreReader(self.store_path)
        digits = self.cfg.significant_digits
        max_body = self.max_item_bytes - 200  # the key and framing of the item
        if series is None:
            rows = reader.scores(ep.asset, since=since - 1e-6, limit=self.cfg.context_max_scores)
            series = [Score(r["asset"], r["t_end"], r["value"], r["threshold"], r["contributions"],
                            r["model_version"], r["historical"]) for r in reversed(rows) if r["t_end"] <= until]
            stride = 1
        series = [s for s in series if since <= s.t_end <= until]
        items = score_items(ep, series, stride, digits, max_body) if series else []
        sensors = reader.asset_sensors(ep.asset, since, until)
        kept, seen = thin_readings(reader.asset_readings(ep.asset, since, until), self.cfg.context_max_readings,
                                   len(sensors))
        items += reading_items(ep, kept, digits, max_body)
        context = {"from": since, "to": until, "readings": seen,
                   "readings_sent": sum(len(t.rows) for t in kept.values()), "scores": len(series),
                   "score_stride": stride, "reading_stride": {s: t.stride for s, t in sorted(kept.items())},
                   "significant_digits": digits}
        return items, context

    # -- sending ------------------------------------------------------------------------------
    async def _uploader(self) -> None:
        while not self._stopping:
            await self.windows.wait_open()
            if self._stopping:
                break
            self._in_window = True
            if self.model_sync is not None:
                # Beside the upload, bounded by the same window: a cut download resumes next window.
                self._ctx.spawn(self.model_sync.run_window(self._ctx, time.monotonic() + self.windows.time_left()))
            try:
                await self._run_window()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._error(f"uploader error: {type(e).__name__}: {e}")
                log.exception("sync uploader error; pausing %.0f s", CRASH_PAUSE_S)
                await self.windows.wait_closed(CRASH_PAUSE_S)
            finally:
                self._in_window = False
            self._state = "waiting"

    async def _run_window(self) -> None:
        cfg, windows, queue = self.cfg, self.windows, self.queue
        win = windows.current
        if win is None:
            return
        stats = {"seq": win.seq, "reason": win.reason, "opened_at": win.opened_at, "closed_at": None,
                 "sent_bytes": 0, "resent_bytes": 0, "acked_bytes": 0, "messages": 0, "items": 0, "connects": 0,
                 "budget_exhausted": False, "left_items": None}
        self._window_stats = stats
        self._recent.append(stats)
        budget = cfg.budget_bytes_per_window or math.inf
        inflight: dict[asyncio.Task, tuple[list[Queued], int]] = {}
        transport = self._transport_factory()
        self._transport = transport

        def resent(wire: int) -> None:
            stats["sent_bytes"] += wire
            stats["resent_bytes"] += wire
            self._spawn_io(queue.add_counters, {"sent_bytes": wire})
        transport.on_resend = resent
        delays = jittered_backoff(transport.retry.initial_s, transport.retry.max_s)
        try:
            if cfg.start_jitter_s and await windows.wait_closed(random.uniform(0, cfg.start_jitter_s)):
                return
            while windows.is_open() and not self._stopping:
                if not inflight and queue.waiting() == 0:
                    self._state = "window_idle"
                    await self._wait_work(0.5)
                    continue
                if not transport.active:
                    if stats["budget_exhausted"]:
                        await windows.wait_closed()
                        break
                    self._state = "connecting"
                    stats["connects"] += 1
                    try:
                        await transport.connect(max(1.0, min(transport.connect_timeout_s, windows.time_left())))
                    except TransportError as e:
                        self._error(str(e))
                        log.warning("sync: %s", e)
                        await windows.wait_closed(next(delays))
                        continue
                    delays = jittered_backoff(transport.retry.initial_s, transport.retry.max_s)
                self._state = "uploading"
                while (transport.connected and len(inflight) < transport.max_inflight and windows.is_open()
                       and not stats["budget_exhausted"]):
                    # Book acknowledgements as they come, not once the pace lets the last batch out:
                    # an item acknowledged and still queued would be sent again after a kill -9.
                    if not await self._settle_finished(inflight, stats):
                        await windows.wait_closed(next(delays))
                        break
                    room = min(cfg.max_message_bytes, budget - stats["sent_bytes"])
                    batch = await self._run_io(queue.next_batch, int(room) - transport.overhead - len(MAGIC))
                    if not batch:
                        if queue.waiting() and room < cfg.max_message_bytes:
                            stats["budget_exhausted"] = True
                            log.info("sync: window budget spent (%d of %d bytes); %d item(s) wait for the next",
                                     stats["sent_bytes"], cfg.budget_bytes_per_window, queue.waiting())
                        break
                    payload = frame(batch, int(room) - transport.overhead)
                    wire = transport.wire_size(len(payload))
                    if not await self._pace(wire):
                        await self._run_io(queue.release, batch)
                        break
                    stats["sent_bytes"] += wire
                    self._spawn_io(queue.add_counters, {"sent_bytes": wire})
                    inflight[asyncio.create_task(transport.send(payload, batch))] = (batch, wire)
                if not inflight:
                    if stats["budget_exhausted"]:
                        self._state = "budget_exhausted"
                        await windows.wait_closed()
                        break
                    await self._wait_work(0.2)
                    continue
                done, _ = await asyncio.wait(inflight, timeout=max(0.05, min(0.5, windows.time_left())),
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if not await self._settle(task, *inflight.pop(task), stats):
                        await windows.wait_closed(next(delays))
        finally:
            await self._wind_down(inflight, stats, transport)

    async def _wind_down(self, inflight: dict, stats: dict, transport) -> None:
        """The window closed (or the uplink stops): wait a little for acknowledgements, keep the rest."""
        self._state = "closing"
        if inflight:
            done, not_done = await asyncio.wait(inflight, timeout=self.cfg.close_grace_s)
            for task in done:
                await self._settle(task, *inflight.pop(task), stats)
            for task in not_done:
                task.cancel()
            if not_done:
                await asyncio.gather(*not_done, return_exceptions=True)
                for task in not_done:
                    batch, _ = inflight.pop(task)
                    await self._run_io(self.queue.release, batch)
                log.info("sync: window closed with %d batch(es) unacknowledged; they stay queued", len(not_done))
        await transport.close()
        stats["closed_at"] = self._clock()
        stats["left_items"] = self.queue.waiting()
        self._state = "waiting"

    async def _settle_finished(self, inflight: dict, stats: dict) -> bool:
        """Settle the sends already finished; False if one was not acknowledged (the caller backs off)."""
        ok = True
        for task in [t for t in inflight if t.done()]:
            ok = await self._settle(task, *inflight.pop(task), stats) and ok
        return ok

    async def _settle(self, task: asyncio.Task, batch: list[Queued], wire: int, stats: dict) -> bool:
        """Book one finished send: acknowledged (delete, count) or not (release). True if acknowledged."""
        if task.cancelled() or task.exception() is not None:
            await self._run_io(self.queue.release, batch)
            if not task.cancelled():
                self._error(str(task.exception()))
                log.warning("sync: batch not acknowledged: %s", task.exception())
            return False
        await self._run_io(self.queue.ack, batch, wire)
        stats["acked_bytes"] += wire
        stats["messages"] += 1
        stats["items"] += len(batch)
        return True

    async def _pace(self, wire: int) -> bool:
        """Wait for the link's share (``max_rate_bytes_per_s``); False if the window closed meanwhile."""
        rate = self.cfg.max_rate_bytes_per_s
        if not rate:
            return True
        now = self._steady()
        booked = self._pace_next
        start = max(now, booked)
        self._pace_next = start + wire / rate
        if start > now and await self.windows.wait_closed(start - now):
            # Not sent: its share of the link goes back. Kept, it would push every later
            # window's first send further out (with windows as far apart as one batch's
            # share, no window would ever send again).
            self._pace_next = booked
            return False
        return True

    async def _wait_work(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._work.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self._work.clear()

    def _error(self, text: str) -> None:
        self.errors += 1
        self.last_error = text
        self.last_error_at = self._clock()


def _raised_from_snapshot(a: dict, ts: float, site: str) -> Item:
    """The raised notice of an alarm known only from the store (open before a restart)."""
    doc = {"format": 1, "type": "raised", "id": f"{a['id']}:raised", "episode": a["id"], "site": site,
           "asset": a["asset"], "start": a["start"], "ts": ts, "level": a.get("level"),
           "peak_ratio": a.get("peak_ratio"), "top_sensors": a.get("top_sensors"), "historical": a.get("historical")}
    return Item(doc["id"], 0, "raised", a["id"], compress(doc))


# -- factory -----------------------------------------------------------------------------------

def default_client_id(site: str) -> str:
    """``appliance-<site>``, restricted to what every broker accepts in a client id.

    >>> default_client_id("Plant 7/Line-3")
    'appliance-Plant-7-Line-3'
    """
    return "appliance-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in site)[:100]


def build(section: SyncConfig, env) -> SyncUplink:
    """The ``[outputs.sync]`` factory; :class:`SyncError` (one line) if it cannot start as configured."""
    site = env.config.site
    if section.transport == "mqtt":
        m = section.mqtt
        context = tls_context(m.ca_file, m.cert_file, m.key_file, "mqtt")
        password = read_secret(m.password_file, "mqtt.password_file") if m.password_file else None
        client_id = m.client_id or default_client_id(site)
        topic = m.topic.replace("{site}", site)

        def factory():
            return MqttTransport(m, client_id, topic, context, password)
    else:
        h = section.https
        context = tls_context(h.ca_file, h.cert_file, h.key_file, "https")
        token = read_secret(h.token_file, "https.token_file") if h.token_file else None

        def factory():
            return HttpsTransport(h, context, token)
    model_sync = None
    if section.updates.enabled:
        from appliance.sync.models import ModelSync

        model_sync = ModelSync(model_updater(section, env.data_dir), section.shadow,
                               env.config.detector.precision, env.config.detector.threads, section.backtest)
    return SyncUplink(section, site, env.path(env.config.store.path), env.path(section.queue.path), factory,
                      model_sync=model_sync)


def model_updater(section: SyncConfig, data_dir):
    """The ``[outputs.sync.updates]`` updater; a TLS file it cannot load is a one-line :class:`SyncError`."""
    from appliance.sync.updates import ModelUpdater

    try:
        return ModelUpdater.from_config(section.updates, data_dir)
    except TlsFileError as e:
        raise SyncError(str(e)) from None
