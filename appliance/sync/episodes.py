"""Alarm episodes: what the uplink collects about each alarm, and how it is encoded.

An episode runs from an alarm's raise to its clear (or to the raise that
superseded it). While it is open the uplink adds what it sees: every transition
with its operator note, mode-change notes, mitigation actions, and from each
score the per-sensor contributions (running mean and max), the highest ratio and
the model version. A short trail of the asset's recent scores is kept so the
episode's score series starts ``context_before_s`` before the raise. Once the
alarm cleared and its after-context is in the store, the episode is
**finalized** into upload items:

* ``episode`` (priority 0, key = the alarm id): the summary, a few hundred bytes
  compressed, listing the keys of its context items;
* ``scores`` (priority 1): the score series, column arrays;
* ``readings`` (priority 1): the raw readings of every sensor from
  ``context_before_s`` before the raise to ``context_after_s`` after the clear,
  read from the store; one item, split by time if it would not fit a batch.

Three small priority-0 items go up on their own: ``raised`` (queued at the raise,
so an alarm still open at a window is known upstream; removed unsent once the
summary is queued), ``note`` (an acknowledgement or a mitigation action that
came after the episode was finalized) and ``verdict`` (a technician's verdict on
the episode, :func:`verdict_item`: every verdict the store holds, keyed by the
episode and the verdict's sequence number, whether it was given before the
episode went up or long after, and each change again; the cloud takes the
latest by ``seq`` as the episode's label).

Encoding (version 1), chosen for zlib: JSON objects with column arrays.
Timestamps are ``t0`` plus integer millisecond steps (``dt_ms``; mostly one
repeated number at a fixed rate). Values are integers on a per-column grid
``step`` (``significant_digits`` of the column's largest magnitude; a relative
error of at most ``0.5 * 10**(1 - digits)`` of that magnitude), sent as
differences from the previous value (``dv``; ``null`` for a missing value, not
counted in the running sum). ``significant_digits = 0`` keeps exact floats in
``v`` instead. A column thinned to fit ``context_max_*`` says so in ``stride``.
The decoder is a few lines (see ``firmware-sim/cloud_intake.py``).
"""

from __future__ import annotations

import json
import math
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from appliance.core import AlarmEvent, MitigationAction, ModeChange, Reading, Score
from appliance.sync.queue import Item

FORMAT_VERSION = 1
# Lists an episode summary keeps in full; beyond these only the count grows (a flapping
# alarm acknowledged a thousand times is still one episode of bounded size).
MAX_EVENTS = 200
MAX_NOTES = 100
MAX_ACTIONS = 200
ZLIB_LEVEL = 9


def compress(doc: dict) -> bytes:
    """An item's body: compact JSON, zlib-compressed."""
    return zlib.compress(json.dumps(doc, separators=(",", ":"), allow_nan=False).encode(), ZLIB_LEVEL)


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def quantize_step(values: Iterable[float | None], digits: int) -> float:
    """The grid of a column: ``digits`` significant digits of its largest magnitude.

    >>> quantize_step([231.7, 229.9], 5), quantize_step([0.0031, -0.02], 3), quantize_step([0.0], 5)
    (0.01, 0.0001, 0.0001)
    """
    top = max((abs(v) for v in values if v is not None), default=0.0)
    exponent = math.floor(math.log10(top)) if top > 0 else 0
    # A decimal power, written from its exponent: 10 ** -2 would print 0.010000000000000002.
    return float(f"1e{exponent - digits + 1}")


def encode_times(ts: list[float]) -> dict:
    """``t0`` and millisecond steps; decoding is ``t0 + cumsum(dt_ms) / 1000`` (error <= 0.5 ms).

    >>> encode_times([10.0, 11.0, 12.0005])
    {'t0': 10.0, 'dt_ms': [0, 1000, 1001]}
    """
    if not ts:
        return {"t0": None, "dt_ms": []}
    t0 = ts[0]
    ms = [round((t - t0) * 1000) for t in ts]
    return {"t0": t0, "dt_ms": [ms[0]] + [b - a for a, b in zip(ms, ms[1:])]}


def encode_values(values: list[float | None], digits: int) -> dict:
    """A value column: exact (``v``) or on a grid as differences (``step``, ``v0``, ``dv``).

    >>> encode_values([231.71, 231.74, None, 231.7], 5)
    {'step': 0.01, 'dv': [23171, 3, None, -4]}
    >>> encode_values([1.5, None], 0)
    {'v': [1.5, None]}
    """
    if digits <= 0:
        return {"v": values}
    step = quantize_step(values, digits)
    prev, dv = 0, []
    for v in values:
        if v is None:
            dv.append(None)
            continue
        q = round(v / step)
        dv.append(q - prev)
        prev = q
    return {"step": step, "dv": dv}


class Thinned:
    """A column store that keeps at most ``cap`` rows, evenly: when full, every other row goes
    and from then on only every ``stride``-th new row is kept (stride doubles each time)."""

    def __init__(self, cap: int):
        self.cap = max(2, cap)
        self.stride = 1
        self.rows: list = []
        self.seen = 0

    def add(self, row) -> None:
        if self.seen % self.stride == 0:
            self.rows.append(row)
            if len(self.rows) > self.cap:
                self.rows = self.rows[::2]
                self.stride *= 2
        self.seen += 1


@dataclass
class Episode:
    """What the uplink knows of one alarm occurrence (JSON-serializable through :meth:`state`)."""

    alarm_id: str
    asset: str
    start: float
    alarm: dict
    events: list[dict] = field(default_factory=list)
    notes: list[dict] = field(default_factory=list)
    actions: list[dict] = field(default_factory=list)
    omitted: dict = field(default_factory=lambda: {"events": 0, "notes": 0, "actions": 0})
    contrib_sum: dict = field(default_factory=dict)
    contrib_max: dict = field(default_factory=dict)
    n_scores: int = 0
    ratio_max: float = 0.0
    model_versions: list[str] = field(default_factory=list)
    end: float | None = None          # source time of the clear (or of the superseding raise)
    closed_at: float | None = None    # wall time the alarm closed (reported; saved)
    # Waiting for the after-context is timed on the uplink's SteadyClock and not saved: a
    # clock that steps or leaps (no RTC, NTP catching up, a VM resumed) must neither stall
    # nor rush an episode.
    closing_since: float | None = None
    ready_at: float | None = None     # steady time the after-context was seen complete (+ settle)
    recovered: bool = False           # rebuilt after a restart: its score series comes from the store
    scores: Thinned | None = None     # not saved: a restart refills the series from the store
    finalizing: bool = False          # its items are being made: what comes now goes up as late notes

    @classmethod
    def from_event(cls, event: AlarmEvent, trail: Iterable[Score], score_cap: int) -> "Episode":
        a = event.alarm
        ep = cls(a.id, a.asset, a.start, a.to_dict())
        ep.scores = Thinned(score_cap)
        for s in trail:
            ep.scores.add(s)
        ep.add_event(event)
        return ep

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def close(self, end: float, wall: float, steady: float) -> None:
        """The alarm is over at source time ``end``; its after-context is awaited from now."""
        self.end, self.closed_at, self.closing_since = end, wall, steady

    # -- collecting ---------------------------------------------------------------
    def add_event(self, event: AlarmEvent) -> None:
        self.alarm = event.alarm.to_dict()
        _append(self.events, {"kind": event.kind.value, "ts": event.ts, "user": event.user, "note": event.note,
                              "level": event.alarm.level.name.lower(), "state": event.alarm.state.value},
                MAX_EVENTS, self.omitted, "events")

    def add_score(self, score: Score) -> None:
        self.n_scores += 1
        self.ratio_max = max(self.ratio_max, score.ratio if math.isfinite(score.ratio) else 0.0)
        for sensor, share in score.contributions.items():
            self.contrib_sum[sensor] = self.contrib_sum.get(sensor, 0.0) + share
            self.contrib_max[sensor] = max(self.contrib_max.get(sensor, 0.0), share)
        if score.model_version and score.model_version not in self.model_versions:
            self.model_versions.append(score.model_version)
        if self.scores is not None:
            self.scores.add(score)

    def add_note(self, change: ModeChange) -> None:
        _append(self.notes, note_of(change), MAX_NOTES, self.omitted, "notes")

    def add_action(self, action: MitigationAction) -> None:
        _append(self.actions, action.to_dict(), MAX_ACTIONS, self.omitted, "actions")

    # -- persistence ----------------------------------------------------------------
    def state(self) -> dict:
        """Everything but the score series (the store has those), for the queue's ``pending`` table."""
        return {"alarm_id": self.alarm_id, "asset": self.asset, "start": self.start, "alarm": self.alarm,
                "events": self.events, "notes": self.notes, "actions": self.actions, "omitted": self.omitted,
                "contrib_sum": self.contrib_sum, "contrib_max": self.contrib_max, "n_scores": self.n_scores,
                "ratio_max": self.ratio_max, "model_versions": self.model_versions, "end": self.end,
                "closed_at": self.closed_at}

    @classmethod
    def from_state(cls, state: dict) -> "Episode":
        ep = cls(**{k: state[k] for k in ("alarm_id", "asset", "start", "alarm")})
        for k in ("events", "notes", "actions", "omitted", "contrib_sum", "contrib_max", "n_scores",
                  "ratio_max", "model_versions", "end", "closed_at"):
            if k in state:
                setattr(ep, k, state[k])
        ep.recovered = True
        return ep

    # -- finalizing -------------------------------------------------------------------
    def span(self, before_s: float, after_s: float) -> tuple[float, float]:
        """Source-time span of the episode's context."""
        end = self.end if self.end is not None else self.start
        return self.start - before_s, end + after_s

    def summary(self, site: str, context_keys: list[str], context: dict) -> dict:
        n = max(1, self.n_scores)
        contrib = {s: {"mean": round(self.contrib_sum[s] / n, 4), "max": round(self.contrib_max[s], 4)}
                   for s in sorted(self.contrib_sum)}
        a = self.alarm
        return {"format": FORMAT_VERSION, "type": "episode", "id": self.alarm_id, "episode": self.alarm_id,
                "site": site, "asset": self.asset, "start": self.start, "end": self.end,
                "level": a.get("level"), "state": a.get("state"), "peak_ratio": a.get("peak_ratio"),
                "top_sensors": a.get("top_sensors"), "acked_by": a.get("acked_by"),
                "historical": a.get("historical"), "model_versions": self.model_versions,
                "scores": {"n": self.n_scores, "ratio_max": _finite(self.ratio_max), "contributions": contrib},
                "events": self.events, "notes": self.notes, "actions": self.actions, "omitted": self.omitted,
                "context": {**context, "items": context_keys}}


def note_of(change: ModeChange) -> dict:
    return {"event": change.name, "mode": change.mode.value, "ts": change.ts, "user": change.user,
            "note": change.note, "shelved_until": change.shelved_until}


def _append(target: list, entry: dict, cap: int, omitted: dict, name: str) -> None:
    if len(target) < cap:
        target.append(entry)
    else:
        omitted[name] = omitted.get(name, 0) + 1


class ScoreTrail:
    """Each asset's scores of the last ``seconds`` (source time): an episode's score series
    starts with them, so the cloud sees how the alarm built up."""

    def __init__(self, seconds: float, cap: int):
        self.seconds = seconds
        self.cap = max(1, cap)
        self._by_asset: dict[str, deque[Score]] = {}

    def add(self, score: Score) -> None:
        q = self._by_asset.get(score.asset)
        if q is None:
            q = self._by_asset[score.asset] = deque(maxlen=self.cap)
        q.append(score)
        horizon = score.t_end - self.seconds
        while q and q[0].t_end < horizon:
            q.popleft()

    def since(self, asset: str, t: float) -> list[Score]:
        return [s for s in self._by_asset.get(asset, ()) if s.t_end >= t]


# -- items ------------------------------------------------------------------------------------

def raised_item(event: AlarmEvent, site: str) -> Item:
    """The small notice queued at the raise (priority 0)."""
    a = event.alarm
    doc = {"format": FORMAT_VERSION, "type": "raised", "id": f"{a.id}:raised", "episode": a.id, "site": site,
           "asset": a.asset, "start": a.start, "ts": event.ts, "level": a.level.name.lower(),
           "peak_ratio": _finite(a.peak_ratio), "top_sensors": list(a.top_sensors), "historical": a.historical}
    return Item(doc["id"], 0, "raised", a.id, compress(doc))


def note_item(alarm_id: str, site: str, kind: str, ts: float, entry: dict, suffix: str = "") -> Item:
    """A late note on a finalized episode (priority 0), keyed by what it is and when."""
    key = f"{alarm_id}:{kind}:{ts:.6f}{suffix}"
    doc = {"format": FORMAT_VERSION, "type": "note", "id": key, "episode": alarm_id, "site": site, "kind": kind,
           "entry": entry}
    return Item(key, 0, "note", alarm_id, compress(doc))


def verdict_item(verdict: dict, site: str) -> Item:
    """One verdict on an episode (priority 0), as :meth:`StoreReader.verdicts_since` gives it.

    Keyed by the episode and the verdict's ``seq`` in the store: sent again after a lost
    acknowledgement or a restart, it is still stored once upstream.

    >>> it = verdict_item({"seq": 4, "alarm_id": "a1", "asset": "p1", "ts": 5.0, "user": "ana",
    ...                    "verdict": "fault", "cause": "bearing", "note": None}, "site-1")
    >>> it.key, it.kind, it.episode, it.priority
    ('a1:verdict:4', 'verdict', 'a1', 0)
    """
    key = f"{verdict['alarm_id']}:verdict:{verdict['seq']}"
    doc = {"format": FORMAT_VERSION, "type": "verdict", "id": key, "episode": verdict["alarm_id"], "site": site,
           **{k: verdict[k] for k in ("asset", "seq", "ts", "user", "verdict", "cause", "note")}}
    return Item(key, 0, "verdict", verdict["alarm_id"], compress(doc))


def score_items(ep: Episode, scores: list[Score], stride: int, digits: int, max_body: int) -> list[Item]:
    """The episode's score series as column arrays, split until each body fits ``max_body``."""
    sensors = sorted({s for sc in scores for s in sc.contributions})

    def doc(part: list[Score], index: int) -> dict:
        thresholds = [sc.threshold for sc in part]
        return {"format": FORMAT_VERSION, "type": "scores", "id": f"{ep.alarm_id}:s:{index}", "episode": ep.alarm_id,
                "asset": ep.asset, "stride": stride, **encode_times([sc.t_end for sc in part]),
                "value": encode_values([_finite(sc.value) for sc in part], digits),
                "threshold": thresholds[0] if len(set(thresholds)) == 1 else encode_values(thresholds, digits),
                # Shares of the error (0..1) to two significant digits: enough to say which sensors
                # carried it, which is what they are for.
                "contributions": {s: encode_values([_finite(sc.contributions.get(s)) for sc in part], 2)
                                  for s in sensors},
                "model_version": sorted({sc.model_version for sc in part})}

    return _split(scores, lambda part, i: doc(part, i), "scores", ep.alarm_id, max_body)


def reading_items(ep: Episode, kept: dict[str, "Thinned"], digits: int, max_body: int) -> list[Item]:
    """The raw readings around the episode, every sensor in one item, split by time until each body
    fits ``max_body``.

    Sensors sampled together share one time column (``times``); each sensor
    names its column (``t``), its values, its ``stride`` and, for rows not GOOD,
    ``quality`` as ``[row, quality]`` pairs.
    """
    strides = {sensor: t.stride for sensor, t in kept.items()}
    rows = sorted((r for t in kept.values() for r in t.rows), key=lambda r: (r.ts, r.sensor))

    def doc(part: list[Reading], index: int) -> dict:
        by_sensor: dict[str, list[Reading]] = {}
        for r in part:
            by_sensor.setdefault(r.sensor, []).append(r)
        times: list[dict] = []
        sensors: dict[str, dict] = {}
        for sensor in sorted(by_sensor):
            col = by_sensor[sensor]
            t = encode_times([r.ts for r in col])
            if t not in times:
                times.append(t)
            entry = {"t": times.index(t), "stride": strides[sensor],
                     "value": encode_values([_finite(r.value) for r in col], digits)}
            bad = [[i, int(r.quality)] for i, r in enumerate(col) if int(r.quality) != 0]
            if bad:
                entry["quality"] = bad
            sensors[sensor] = entry
        return {"format": FORMAT_VERSION, "type": "readings", "id": f"{ep.alarm_id}:r:{index}",
                "episode": ep.alarm_id, "asset": ep.asset, "times": times, "sensors": sensors}

    return _split(rows, doc, "readings", ep.alarm_id, max_body)


def _split(rows: list, make, kind: str, episode: str, max_body: int) -> list[Item]:
    """Items of ``rows``, halving any part whose compressed body exceeds ``max_body``."""
    out: list[Item] = []
    todo = [rows] if rows else []
    while todo:
        part = todo.pop(0)
        doc = make(part, len(out))
        body = compress(doc)
        if len(body) > max_body and len(part) > 1:
            half = len(part) // 2
            todo[:0] = [part[:half], part[half:]]
            continue
        out.append(Item(doc["id"], 1, kind, episode, body))
    return out


def thin_readings(readings: Iterator[Reading], cap: int, sensors: int) -> tuple[dict[str, Thinned], int]:
    """Group a stream of readings by sensor, each sensor thinned evenly to ``cap / sensors`` rows.

    Thinning each sensor on its own keeps every sensor (a shared stride over the
    interleaved stream would drop whole sensors). Returns (rows by sensor, readings seen).

    >>> rs = (Reading("p1", s, float(t), 1.0) for t in range(100) for s in ("a", "b"))
    >>> kept, seen = thin_readings(rs, 60, 2)
    >>> seen, {s: (len(k.rows), k.stride) for s, k in kept.items()}
    (200, {'a': (25, 4), 'b': (25, 4)})
    """
    per_sensor = max(2, cap // max(1, sensors))
    kept: dict[str, Thinned] = {}
    seen = 0
    for r in readings:
        seen += 1
        t = kept.get(r.sensor)
        if t is None:
            t = kept[r.sensor] = Thinned(per_sensor)
        t.add(r)
    return kept, seen
