"""The back-test: a model replayed over the gateway's own recorded history, judged on the technicians' verdicts.

The readings in the store go, asset by asset and in time order, through the parts
the live path uses: the :class:`~appliance.detector.windowing.WindowBuilder` on the
runtime's grid (:class:`Grid`), the model's scorer on every complete window (an ONNX
bundle scores a batch of windows in one call, the same function ``score_one`` calls
with a batch of one), and a :class:`~appliance.actions.decide.Decider` per asset with
the live debounce and hysteresis. Several models with the same grid (a candidate and
the current model) share one pass: the windows are built once and each model scores
them. What comes out per model is its replayed alarms (:class:`ReplayedAlarm`).

Those are matched with the alarm episodes the live model raised, which technicians
labelled (``StoreReader.labelled_episodes``): a replayed alarm overlapping an episode,
up to ``match_s`` before its start or after its end, is an alarm on that episode.
Per model (:class:`ModelScore`):

* a ``fault`` episode with an alarm on it is *caught*, without one *missed*; the
  lead is how much earlier (negative) or later its alarm started than the live one;
* its false alarms are the ``false_alarm`` episodes it alarms on plus its alarms
  that match no episode at all (*new alarms*: nothing live was raised there, so no
  one saw a fault to judge; they are listed with their times so an engineer can look);
* ``maintenance`` episodes count for nothing (someone was working on the asset), and
  episodes without a verdict are shown but not counted.

:func:`judge` compares a candidate with the current model on the same history
against :class:`~appliance.lifecycle.config.BacktestBounds` and says in one line why
it is rejected, naming the episodes; with too little labelled history it says so and
leaves the decision to the shadow run. :class:`HistoryJudge` is what the lifecycle
calls for a release (off the event loop), ``appliance backtest`` the CLI over it.

On the live path's side of the fence: nothing here trains.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from appliance.actions.decide import Decider
from appliance.core import Detector, EventKind, Window
from appliance.detector.frozen import held_rows
from appliance.detector.windowing import WindowBuilder
from appliance.lifecycle.config import BacktestBounds
from appliance.settings import DAY_S
from appliance.store import StoreReader

log = logging.getLogger(__name__)

CHUNK = 2048  # windows scored per call of a batch scorer


@dataclass(frozen=True)
class Grid:
    """The live grid: what the runtime's window builder uses (``period_s`` and ``stride`` None: the model's)."""

    period_s: float | None = None
    stride: int | None = None
    staleness_s: float = 5.0
    lateness_s: float = 2.0

    @classmethod
    def of(cls, builder: WindowBuilder) -> "Grid":
        """The grid of a running window builder."""
        return cls(builder.period_s, builder.stride, builder.staleness_s, builder.lateness_s)

    def builder(self, detector: Detector) -> WindowBuilder:
        return WindowBuilder(detector.sensors, self.period_s or detector.period_s, detector.window,
                             self.stride or detector.stride, self.staleness_s, self.lateness_s)


@dataclass
class ReplayedAlarm:
    """An alarm a model would have raised: from its raise to its clear (``end`` None: still active)."""

    asset: str
    start: float
    end: float | None = None
    peak_ratio: float = 0.0

    def to_dict(self) -> dict:
        return {"asset": self.asset, "start": self.start, "end": self.end, "peak_ratio": round(self.peak_ratio, 4)}


@dataclass
class ModelReplay:
    """One model over the history: windows scored and the alarms its decider raised."""

    version: str
    windows: int = 0
    alarms: list[ReplayedAlarm] = field(default_factory=list)


@dataclass
class Replay:
    """What one back-test replayed: per model, and the recorded span per asset."""

    models: list[ModelReplay]
    spans: dict[str, tuple[float, float]]  # asset -> (first, last reading time replayed)
    readings: int
    grid_rows: int
    seconds: float

    @property
    def days(self) -> float:
        return sum(b - a for a, b in self.spans.values()) / DAY_S


class _Track:
    """One model's decider on one asset, and the alarm it has open."""

    __slots__ = ("decider", "open")

    def __init__(self, decider: Decider):
        self.decider = decider
        self.open: ReplayedAlarm | None = None


def _score_ratios(detector: Detector, windows: list[Window]) -> np.ndarray:
    """``value / threshold`` of each window: an ONNX bundle in batches, any other model window by window."""
    from appliance.detector.scorer import Detector as OnnxDetector

    if isinstance(detector, OnnxDetector) and tuple(windows[0].sensors) == tuple(detector.sensors):
        values, _ = detector.score_batch(np.stack([w.values for w in windows]), batch=CHUNK)
        return values / detector.threshold
    return np.array([detector.score_one(w).ratio for w in windows], dtype=np.float64)


def _decide(result: ModelReplay, track: _Track, asset: str, t_end: Sequence[float], ratios: np.ndarray) -> None:
    """Feed the ratios of consecutive windows to the asset's decider, as the alarm book does."""
    for t, ratio in zip(t_end, ratios.tolist()):
        change = track.decider.update_ratio(ratio).change
        if change is EventKind.RAISED:
            track.open = ReplayedAlarm(asset, t, None, ratio)
            result.alarms.append(track.open)
        elif track.open is not None:
            if ratio > track.open.peak_ratio:
                track.open.peak_ratio = ratio
            if change is EventKind.CLEARED:
                track.open.end = t
                track.open = None


def _grid_key(d: Detector) -> tuple:
    return tuple(d.sensors), d.window, d.stride, d.period_s


def _groups(detectors: Sequence[Detector]) -> list[list[int]]:
    """Indexes of the models that can share one pass (same sensors, window, stride, period), first seen first."""
    groups: dict[tuple, list[int]] = {}
    for i, d in enumerate(detectors):
        groups.setdefault(_grid_key(d), []).append(i)
    return list(groups.values())


def replay_history(reader: StoreReader, detectors: Sequence[Detector], grid: Grid,
                   new_decider: Callable[[], Decider], spans: dict[str, tuple[float, float]]) -> Replay:
    """Replay each asset's readings in its span ``(since, until)`` through ``detectors`` as the live path would."""
    started = time.perf_counter()
    results = [ModelReplay(d.version) for d in detectors]
    seen: dict[str, tuple[float, float]] = {}
    readings = rows = 0
    for g, group in enumerate(_groups(detectors)):
        models = [detectors[i] for i in group]
        for asset, (since, until) in spans.items():
            builder = grid.builder(models[0])
            for d in models:  # what the runtime tells every model it runs, and the lifecycle every candidate
                d.allow_held(held_rows(builder.staleness_s, builder.period_s))
            tracks = [_Track(new_decider()) for _ in models]
            n, first, last = _replay_asset(reader, asset, since, until, builder, models,
                                           [results[i] for i in group], tracks)
            if n and g == 0:  # the candidate's pass: what the figures count
                readings += n
                rows += builder.rows
                seen[asset] = (first, last)
    return Replay(results, seen, readings, rows, time.perf_counter() - started)


def _replay_asset(reader: StoreReader, asset: str, since: float, until: float, builder: WindowBuilder,
                  models: list[Detector], results: list[ModelReplay], tracks: list[_Track]
                  ) -> tuple[int, float, float]:
    chunk: list[Window] = []
    n, first, last = 0, math.inf, -math.inf

    def flush() -> None:
        if not chunk:
            return
        t_end = [w.t_end for w in chunk]
        for model, result, track in zip(models, results, tracks):
            _decide(result, track, asset, t_end, _score_ratios(model, chunk))
            result.windows += len(chunk)
        chunk.clear()

    for r in reader.asset_readings(asset, since, until):
        n += 1
        first, last = min(first, r.ts), max(last, r.ts)
        for w in builder.add(r):
            if w.complete:  # the runtime scores complete windows only
                chunk.append(w)
        if len(chunk) >= CHUNK:
            flush()
    flush()
    return n, first, last


# -- matching with the labelled episodes ------------------------------------------------------------------------

@dataclass(frozen=True)
class Episode:
    """A live alarm episode and its label (the latest verdict), as the back-test needs it."""

    id: str
    asset: str
    start: float
    end: float | None
    verdict: str | None
    cause: str | None

    @classmethod
    def of(cls, d: dict) -> "Episode":
        v = d.get("verdict") or {}
        return cls(d["id"], d["asset"], d["start"], d.get("end"), v.get("verdict"), v.get("cause"))

    def name(self) -> str:
        """``pump1 episode 3f2a... (fault: bearing, at 2026-12-07T21:03:10Z)``: how a rejection names it."""
        label = self.verdict or "no verdict"
        if self.cause:
            label += f": {self.cause}"
        return f"{self.asset} episode {self.id} ({label}, at {iso(self.start)})"


def duration(seconds: float) -> str:
    """``45 min``, ``5.5 h``, ``13.9 d``: a span of history as a technician reads it.

    >>> duration(2700), duration(19800), duration(1.2e6)
    ('45 min', '5.5 h', '13.9 d')
    """
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * DAY_S:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / DAY_S:.1f} d"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _overlaps(a: ReplayedAlarm, e: Episode, match_s: float, until: float) -> bool:
    end = e.end if e.end is not None else until
    a_end = a.end if a.end is not None else math.inf
    return a.asset == e.asset and a.start <= end + match_s and a_end >= e.start - match_s


@dataclass
class ModelScore:
    """One model's alarms judged against the labelled episodes (see the module docstring)."""

    version: str
    windows: int
    alarms: int
    caught: dict[str, float]          # fault episode id -> lead in seconds (negative: earlier than live)
    missed: list[str]                  # fault episode ids
    on_false: list[str]                # false_alarm episode ids it alarmed on
    new_alarms: list[ReplayedAlarm]
    per_episode: dict[str, float | None]  # every episode id -> lead of its first alarm on it, None: no alarm
    days: float

    @property
    def false_alarms(self) -> int:
        return len(self.on_false) + len(self.new_alarms)

    @property
    def false_alarms_per_day(self) -> float | None:
        return round(self.false_alarms / self.days, 3) if self.days > 0 else None

    def to_dict(self) -> dict:
        return {"version": self.version, "windows": self.windows, "alarms": self.alarms,
                "faults_caught": len(self.caught), "faults_missed": self.missed,
                "false_alarm_episodes_alarmed": self.on_false, "new_alarms": [a.to_dict() for a in self.new_alarms],
                "false_alarms": self.false_alarms, "false_alarms_per_day": self.false_alarms_per_day}


def score_model(replay: ModelReplay, episodes: Sequence[Episode], spans: dict[str, tuple[float, float]],
                days: float, match_s: float) -> ModelScore:
    caught: dict[str, float] = {}
    missed, on_false = [], []
    per_episode: dict[str, float | None] = {}
    matched: set[int] = set()
    for e in episodes:
        until = spans.get(e.asset, (0.0, math.inf))[1]
        hits = [i for i, a in enumerate(replay.alarms) if _overlaps(a, e, match_s, until)]
        matched.update(hits)
        # The lead is that of the alarm raised nearest the episode's start: a long alarm may reach
        # into the next episode, whose own raise is the one to compare with.
        leads = [replay.alarms[i].start - e.start for i in hits]
        lead = min(leads, key=abs) if leads else None
        per_episode[e.id] = lead
        if e.verdict == "fault":
            if lead is None:
                missed.append(e.id)
            else:
                caught[e.id] = lead
        elif e.verdict == "false_alarm" and lead is not None:
            on_false.append(e.id)
    new = [a for i, a in enumerate(replay.alarms) if i not in matched]
    return ModelScore(replay.version, replay.windows, len(replay.alarms), caught, missed, on_false, new,
                      per_episode, days)


# -- the judgement ------------------------------------------------------------------------------------------------

@dataclass
class BacktestReport:
    """A back-test: the episodes, each model's score, and (with a current model) the verdict on the candidate."""

    episodes: list[Episode]
    candidate: ModelScore
    current: ModelScore | None
    replay: Replay
    since: float | None
    until: float | None
    ok: bool | None = None    # None: not judged (no current model, or too little labelled history)
    reason: str = ""

    @property
    def labelled(self) -> int:
        return sum(e.verdict in ("fault", "false_alarm") for e in self.episodes)

    def to_dict(self) -> dict:
        rp = self.replay
        return {"since": self.since, "until": self.until, "days": round(rp.days, 4), "readings": rp.readings,
                "grid_rows": rp.grid_rows, "seconds": round(rp.seconds, 3),
                "rows_per_s": round(rp.grid_rows / rp.seconds, 1) if rp.seconds > 0 else None,
                "assets": {a: {"from": s, "to": u} for a, (s, u) in rp.spans.items()},
                "labelled_episodes": self.labelled,
                "episodes": [self._episode_dict(e) for e in self.episodes],
                "candidate": self.candidate.to_dict(),
                "current": self.current.to_dict() if self.current is not None else None,
                "verdict": {"ok": self.ok, "reason": self.reason}}

    def _episode_dict(self, e: Episode) -> dict:
        out = {"id": e.id, "asset": e.asset, "start": e.start, "end": e.end, "verdict": e.verdict, "cause": e.cause,
               "candidate": _lead_dict(self.candidate.per_episode.get(e.id))}
        if self.current is not None:
            out["current"] = _lead_dict(self.current.per_episode.get(e.id))
        return out


def _lead_dict(lead: float | None) -> dict:
    return {"alarmed": lead is not None, "lead_s": None if lead is None else round(lead, 1)}


def _names(ids: Iterable[str], episodes: dict[str, Episode], most: int) -> str:
    ids = list(ids)
    text = ", ".join(episodes[i].name() for i in ids[:most])
    return text + (f" and {len(ids) - most} more" if len(ids) > most else "")


def _new_names(alarms: Sequence[ReplayedAlarm], most: int) -> str:
    text = ", ".join(f"a new alarm on {a.asset} at {iso(a.start)}" for a in alarms[:most])
    return text + (f" and {len(alarms) - most} more" if len(alarms) > most else "")


def verdict(report: BacktestReport, bounds: BacktestBounds) -> tuple[bool | None, str]:
    """``(ok, one line)``: None when there is too little labelled history to judge (shadow alone decides)."""
    cand, cur, rp = report.candidate, report.current, report.replay
    scope = f"back-test on {duration(rp.days * DAY_S)} of history, {report.labelled} labelled episodes"
    if cur is None:
        return None, f"{scope}: no current model to compare with"
    history_s = rp.days * DAY_S
    if report.labelled < bounds.min_labelled or history_s < bounds.min_history_s:
        return None, (f"too little labelled history to back-test ({report.labelled} labelled episodes, need "
                      f"{bounds.min_labelled}; {duration(history_s)} of readings, need "
                      f"{duration(bounds.min_history_s)}): judged by its shadow run alone")
    by_id = {e.id: e for e in report.episodes}
    allowed_missed = len(cur.missed) + bounds.max_extra_missed_faults
    if len(cand.missed) > allowed_missed:
        worse = [i for i in cand.missed if i not in cur.missed] or cand.missed
        return False, (f"{scope}: misses {_names(worse, by_id, bounds.named_max)} that the current model caught "
                       f"({len(cand.missed)} fault episodes missed against {len(cur.missed)}, allowed "
                       f"{allowed_missed})")
    allowed_false = int(bounds.max_false_alarm_factor * cur.false_alarms) + bounds.max_extra_false_alarms
    if cand.false_alarms > allowed_false:
        worse = [i for i in cand.on_false if i not in cur.on_false]
        named = []
        if worse:
            named.append("alarms on " + _names(worse, by_id, bounds.named_max))
        if cand.new_alarms:
            named.append(_new_names(cand.new_alarms, bounds.named_max))
        return False, (f"{scope}: {cand.false_alarms} false alarms against {cur.false_alarms} (allowed "
                       f"{allowed_false}; {cand.false_alarms_per_day}/day against {cur.false_alarms_per_day}/day): "
                       + "; ".join(named))
    return True, (f"{scope}: within bounds, {len(cand.caught)} of {len(cand.caught) + len(cand.missed)} fault "
                  f"episodes caught (current {len(cur.caught)}), {cand.false_alarms} false alarms "
                  f"(current {cur.false_alarms})")


def history_spans(reader: StoreReader, days: float | None = None, since: float | None = None,
                  until: float | None = None, assets: Sequence[str] | None = None) -> dict[str, tuple[float, float]]:
    """Per asset the span to replay: ``[since, until]`` as given, else the last ``days`` before its newest
    scored window (the readings' own time, not the gateway's clock)."""
    newest = reader.scored_assets()
    names = list(assets) if assets else sorted(newest)
    spans = {}
    for a in names:
        end = until if until is not None else newest.get(a)
        if end is None:
            end = reader.newest_reading_ts(a)
        if end is None:
            continue
        start = since if since is not None else (end - days * DAY_S if days is not None else -math.inf)
        spans[a] = (start, end)
    return spans


def backtest(db_path: str | Path, candidate: Detector, current: Detector | None, grid: Grid,
             new_decider: Callable[[], Decider], bounds: BacktestBounds | None = None, *,
             since: float | None = None, until: float | None = None, assets: Sequence[str] | None = None
             ) -> BacktestReport:
    """Back-test ``candidate`` (and ``current`` beside it) on the store's history; judged when ``current`` is given.

    Without ``since``/``until`` the span is the last ``bounds.days`` of each asset's record.
    """
    bounds = bounds or BacktestBounds()
    reader = StoreReader(db_path)
    spans = history_spans(reader, bounds.days, since, until, assets)
    models = [candidate] + ([current] if current is not None else [])
    replay = replay_history(reader, models, grid, new_decider, spans)
    episodes = [Episode.of(e) for a, (s, u) in spans.items()
                for e in reader.labelled_episodes(since=s, until=u + 1e-6, asset=a)]
    episodes.sort(key=lambda e: e.start)
    scores = [score_model(r, episodes, replay.spans or spans, replay.days, bounds.match_s) for r in replay.models]
    report = BacktestReport(episodes, scores[0], scores[1] if current is not None else None, replay,
                            since, until)
    report.ok, report.reason = verdict(report, bounds)
    log.info("backtest candidate=%s current=%s rows=%d seconds=%.1f ok=%s reason=%s", candidate.version,
             current.version if current is not None else None, replay.grid_rows, replay.seconds, report.ok,
             report.reason)
    return report


@dataclass(frozen=True)
class HistoryJudge:
    """What the lifecycle calls (off the event loop) to judge a candidate on this gateway's store."""

    db_path: Path
    grid: Grid
    new_decider: Callable[[], Decider]

    def __call__(self, candidate: Detector, current: Detector, bounds: BacktestBounds) -> BacktestReport:
        return backtest(self.db_path, candidate, current, self.grid, self.new_decider, bounds)


# -- the terminal's table -----------------------------------------------------------------------------------------

def _cell(lead: float | None) -> str:
    if lead is None:
        return "no alarm"
    return f"alarm {lead:+.0f} s"


def table(report: BacktestReport) -> str:
    """The report as a table: one line per episode, then one per model."""
    cand, cur = report.candidate, report.current
    head = ["episode", "asset", "start (UTC)", "verdict", f"candidate {cand.version}"]
    if cur is not None:
        head.append(f"current {cur.version}")
    rows = [head]
    for e in report.episodes:
        label = (e.verdict or "-") + (f" ({e.cause})" if e.cause else "")
        row = [e.id, e.asset, iso(e.start), label, _cell(cand.per_episode.get(e.id))]
        if cur is not None:
            row.append(_cell(cur.per_episode.get(e.id)))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    rp = report.replay
    lines.append("")
    lines.append(f"{rp.grid_rows} grid rows ({rp.readings} readings, {duration(rp.days * DAY_S)}) replayed in {rp.seconds:.1f} s"
                 f" ({rp.grid_rows / max(rp.seconds, 1e-9):,.0f} rows/s); leads: + later, - earlier than the "
                 "live alarm")
    for role, s in (("candidate", cand), ("current", cur)):
        if s is None:
            continue
        lines.append(f"{role} {s.version}: {s.alarms} alarms, faults caught {len(s.caught)} missed {len(s.missed)}, "
                     f"false alarms {s.false_alarms} ({len(s.on_false)} on false_alarm episodes, "
                     f"{len(s.new_alarms)} where none was raised; {s.false_alarms_per_day}/day)")
        for a in s.new_alarms[:10]:
            lines.append(f"  new alarm on {a.asset} at {iso(a.start)}"
                         + (f" to {iso(a.end)}" if a.end is not None else " (still active at the end)"))
    verdict_word = {True: "accepted", False: "rejected", None: "not judged"}[report.ok]
    lines.append(f"verdict: {verdict_word}: {report.reason}")
    return "\n".join(lines)
