"""Replay recorded data through the live path: what ``appliance score`` runs.

Before an engineer arms a model, they check it on recorded data. The rows of a
CSV file go, row by row and one :class:`~appliance.core.Reading` per sensor,
through the same parts the running appliance uses: the
:class:`~appliance.detector.windowing.WindowBuilder` (grid, held values,
staleness, gaps), :meth:`Detector.score_one` (the bundle's ONNX session) and
the :class:`~appliance.actions.decide.Decider` (debounce to raise, hysteresis to
clear). Incomplete windows are not scored, as in the runtime.

Each input row gets the state after the latest window ending at or before its
time: that window's score (empty if there is none yet, it was incomplete, or it
ended more than ``staleness_s`` before the row, i.e. before a gap) and whether
the alarm is active (0 before the first window; an alarm stays active across a
gap, as it does live), and whether the asset is in "operating point not seen in
training" (``unseen``; :mod:`appliance.actions.operating_point`, as the runtime
decides it: while it is on, anomalies are judged against the threshold in force then). Several files are
separate recordings: each starts with a fresh builder and decider.

Nothing here imports the training stack: a gateway can replay with what it
already runs.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from appliance.actions.decide import Decider
from appliance.actions.operating_point import OperatingPointWatch
from appliance.detector.bundle import load_bundle
from appliance.detector.frozen import held_rows
from appliance.detector.scorer import Detector
from appliance.detector.tables import read_table
from appliance.detector.windowing import WindowBuilder, rows_as_readings

COLUMNS = ("timestamp", "score", "threshold", "alarm", "unseen")


@dataclass(frozen=True)
class ReplayResult:
    """One recording replayed: per input row ``score`` (NaN where none) and ``alarm`` (0/1)."""

    source: str
    time_text: list[str]
    ts: np.ndarray
    score: np.ndarray
    alarm: np.ndarray
    threshold: float
    windows_scored: int
    windows_incomplete: int
    alarms_raised: int
    windows_over: int  # scored windows over the threshold, before debounce
    # Per input row, 1 while the asset is in "operating point not seen in training"; its episodes and the
    # windows over the threshold held (not raised) during them.
    unseen: np.ndarray | None = None
    unseen_episodes: int = 0
    windows_held: int = 0

    @property
    def rows(self) -> int:
        return len(self.ts)


def replay_rows(detector: Detector, sensors: Sequence[str], ts: np.ndarray, rows: np.ndarray, decider: Decider, *,
                period_s: float | None = None, stride: int | None = None, staleness_s: float | None = None,
                lateness_s: float | None = None, source: str = "", time_text: list[str] | None = None,
                watch: OperatingPointWatch | None = None, hold_alarms: bool = True) -> ReplayResult:
    """Replay one recording (``rows[n, len(sensors)]`` at times ``ts``) through builder, detector and decider.

    Grid settings left None come from the bundle (``staleness_s`` and
    ``lateness_s`` from the grid it was trained on; 5 s and 2 s for bundles
    older than that record). ``watch`` follows the operating point (None: a watch with the
    default settings); ``hold_alarms`` holds new anomalies while it is unseen, as the runtime does.
    """
    watch = watch if watch is not None else OperatingPointWatch()
    sensors = list(sensors)
    missing = [s for s in detector.sensors if s not in sensors]
    if missing:
        raise ValueError(f"{source or 'data'}: lacks sensors the model needs: {missing} (has {sensors})")
    bundle = detector.bundle
    builder = WindowBuilder(detector.sensors, period_s or detector.period_s, detector.window,
                            stride or detector.stride,
                            staleness_s if staleness_s is not None else (bundle.staleness_s or 5.0),
                            lateness_s if lateness_s is not None else (bundle.lateness_s if bundle.lateness_s
                                                                        is not None else 2.0))
    detector.allow_held(held_rows(builder.staleness_s, builder.period_s))  # as the runtime does
    cols = [sensors.index(s) for s in detector.sensors]
    t_end, value, active, unseen = [], [], [], []
    scored = incomplete = raised = over = entered = held = 0
    for reading in rows_as_readings(source or "replay", detector.sensors, ts, rows[:, cols], source="replay"):
        for w in builder.add(reading):
            t_end.append(w.t_end)
            if not w.complete:
                incomplete += 1  # the runtime does not score incomplete windows either
                value.append(math.nan)
                active.append(active[-1] if active else False)
                unseen.append(unseen[-1] if unseen else False)
                continue
            score = detector.score_one(w)
            change = watch.update(score)
            entered += change is not None and change.active
            scored += 1
            over += score.value > score.threshold
            value.append(score.value)
            unseen.append(watch.active)
            judged = watch.alarm_score(score) if hold_alarms else score
            held += score.ratio >= 1.0 > judged.ratio
            decision = decider.update(judged)
            raised += decision.change == "raised"
            active.append(decision.active)
    t_end_arr = np.asarray(t_end, dtype=np.float64)
    # The latest window ending at or before each row (a tiny margin absorbs float rounding of the grid).
    j = np.searchsorted(t_end_arr, np.asarray(ts, dtype=np.float64) + 1e-6 * builder.period_s, side="right") - 1
    has = j >= 0
    jj = np.clip(j, 0, None)
    values = np.asarray(value, dtype=np.float64)
    actives = np.asarray(active, dtype=bool)
    # After a gap the latest window is an old one: its score does not describe the row (the
    # runtime has nothing new to show either), while the alarm state carries on as it does live.
    recent = has & (np.asarray(ts, dtype=np.float64) - t_end_arr[jj] <= builder.staleness_s if len(t_end_arr)
                    else has)
    score_rows = np.where(recent, values[jj], np.nan) if len(values) else np.full(len(ts), np.nan)
    alarm_rows = (np.where(has, actives[jj], False) if len(actives) else np.zeros(len(ts), bool)).astype(np.uint8)
    unseens = np.asarray(unseen, dtype=bool)
    unseen_rows = (np.where(has, unseens[jj], False) if len(unseens) else np.zeros(len(ts), bool)).astype(np.uint8)
    text = time_text if time_text is not None else [repr(float(t)) for t in ts]
    return ReplayResult(source=source, time_text=list(text), ts=np.asarray(ts, dtype=np.float64),
                        score=score_rows, alarm=alarm_rows, threshold=detector.threshold,
                        windows_scored=scored, windows_incomplete=incomplete, alarms_raised=int(raised),
                        windows_over=int(over), unseen=unseen_rows, unseen_episodes=int(entered),
                        windows_held=int(held))


def replay_files(bundle_dir: str | Path, paths: Sequence[str | Path], *, precision: str = "int8",
                 decision=None, windows=None) -> list[ReplayResult]:
    """Replay CSV recordings through a bundle; ``decision``/``windows``: the appliance's config sections.

    Without ``windows`` the grid is the bundle's (see :func:`replay_rows`); with
    it, its values are used as the runtime uses them (``period_s`` and ``stride``
    None: the bundle's).
    """
    from appliance.actions.config import DecisionConfig

    detector = Detector.load(bundle_dir, precision=precision)
    decision = decision or DecisionConfig()
    grid = {}
    if windows is not None:
        grid = {"period_s": windows.period_s, "stride": windows.stride, "staleness_s": windows.staleness_s,
                "lateness_s": windows.lateness_s}
    results = []
    for p in paths:
        sensors, ts, rows, _, time_text = read_table(p)
        results.append(replay_rows(detector, sensors, ts, rows, Decider.from_config(decision), source=str(p),
                                   time_text=time_text, watch=OperatingPointWatch.from_config(decision),
                                   hold_alarms=decision.unseen_holds_alarms, **grid))
    return results


def write_scores(results: Sequence[ReplayResult], out: str | Path) -> None:
    """``timestamp,score,threshold,alarm,unseen`` per input row, recordings one after another."""
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in results:
            th = f"{r.threshold:.6g}"
            unseen = r.unseen if r.unseen is not None else np.zeros(len(r.alarm), np.uint8)
            for text, s, a, u in zip(r.time_text, r.score, r.alarm, unseen):
                w.writerow((text, "" if math.isnan(s) else f"{s:.6g}", th, int(a), int(u)))


def summary_line(results: Sequence[ReplayResult], seconds: float, precision: str = "int8",
                 expected: dict | None = None) -> str:
    """One line: rows, windows, windows over threshold (and what the bundle expected), rows in alarm,
    alarms raised, first alarm, threshold, throughput."""
    rows = sum(r.rows for r in results)
    alarm_rows = sum(int(r.alarm.sum()) for r in results)
    first = next((r.time_text[int(np.argmax(r.alarm))] for r in results if r.alarm.any()), None)
    scored = sum(r.windows_scored for r in results)
    incomplete = sum(r.windows_incomplete for r in results)
    raised = sum(r.alarms_raised for r in results)
    unseen_eps = sum(r.unseen_episodes for r in results)
    unseen_rows = sum(int(r.unseen.sum()) for r in results if r.unseen is not None)
    unseen = (f", {unseen_eps} episode(s) of operating point not seen in training ({unseen_rows} rows, "
              f"{sum(r.windows_held for r in results)} windows over the threshold held)" if unseen_eps else "")
    share = alarm_rows / rows if rows else 0.0
    over = sum(r.windows_over for r in results) / scored if scored else 0.0
    promise = ""
    if expected:
        promise = f" (expected on normal data: {expected['design']:.1%} by design"
        if expected.get("next_block") is not None:
            promise += f", {expected['next_block']:.1%} measured on the next block of the training data"
        promise += ")"
    return (f"{len(results)} file(s), {rows} rows, {scored} windows scored ({incomplete} incomplete), "
            f"{over:.1%} of windows over the threshold{promise}, "
            f"{alarm_rows} rows in alarm ({share:.1%}), {raised} alarm(s) raised"
            f"{f', first at {first}' if first is not None else ''}{unseen}; threshold {results[0].threshold:.4g} "
            f"({precision}); {rows / max(seconds, 1e-9):,.0f} rows/s")


def score_command(bundle_dir: str | Path, paths: Sequence[str | Path], out: str | Path | None = None, *,
                  precision: str = "int8", decision=None, windows=None) -> tuple[list[ReplayResult], str]:
    """What ``appliance score`` does: replay, write ``out`` if given, return results and the summary line."""
    started = time.perf_counter()
    results = replay_files(bundle_dir, paths, precision=precision, decision=decision, windows=windows)
    seconds = time.perf_counter() - started
    if out is not None:
        write_scores(results, out)
    expected = load_bundle(bundle_dir, verify_hashes=False).meta.get("expected_window_exceedance")
    return results, summary_line(results, seconds, precision, expected)
