"""Frozen sensors: a value that stops changing is caught by the bundle's frozen check (format 5), named in the
score's contributions, not confused with a value the window builder held over a few missing reports, validated
on load and covered by the signed release values. The 52-sensor process simulator at 3 min, fixed seeds.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from appliance.cli import main
from appliance.detector.bundle import load_bundle
from appliance.detector.frozen import FrozenCheck, longest_runs, trailing_runs
from appliance.detector.scorer import Detector
from appliance.detector.train import TrainSettings, read_csv_rows, sliding_windows, train_bundle
from firmware_sim.process import Fault, ProcessModel, write_process_csv
from tests.support.detector import edited_bundle

FAULT_AT = 100
T0_ON_GRID = 180.0 * 9_444_444  # rows on the 180 s grid's cells


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    work = tmp_path_factory.mktemp("frozen")
    sensors, ts, rows = read_csv_rows(write_process_csv(work / "normal.csv", 400, seed=1))
    bundle = train_bundle(rows, sensors, work / "B", TrainSettings(period_s=180.0, max_iter=60), ts=ts)
    return work, bundle


def test_runs_are_counted_within_runs_of_the_grid_only():
    rows = np.array([[1.0], [1.0], [1.0], [1.0], [2.0]])
    assert longest_runs(rows).tolist() == [4]
    assert longest_runs(rows, [(0, 2), (2, 5)]).tolist() == [2]  # a gap splits the repeat
    assert trailing_runs(np.array([[[3.0], [1.0], [1.0]], [[1.0], [1.0], [2.0]]])).tolist() == [[2], [1]]
    check = FrozenCheck.fit(rows, ["a"], staleness_rows=5, span=22)
    assert check.allowed == {"a": 8}  # twice the longest training run


def test_every_noisy_sensor_is_watched_with_room_for_held_values(rig):
    _, bundle = rig
    b = load_bundle(bundle)
    assert b.meta["format_version"] == 5 and b.frozen is not None
    # Every simulated sensor is noisy (no repeats in training): all watched, each allowed the 5 cells
    # the window builder may hold over missing reports (staleness 900 s / 180 s) plus one.
    assert b.frozen.allowed == {s: 6 for s in b.sensors}
    assert b.meta["frozen"]["allowed_run"] == b.frozen.allowed


def test_a_stuck_sensor_is_caught_and_named_and_a_held_value_is_not(rig):
    _, bundle = rig
    det = Detector.load(bundle)
    stuck = 4
    raw = ProcessModel(seed=2004, fault=Fault("stuck_sensor", FAULT_AT, 1.0, target=stuck)).run(200)
    scores, contrib = det.score_batch(sliding_windows(raw, det.window))
    ends = np.arange(det.window - 1, len(raw))  # the row each window ends at
    over = scores > det.threshold
    frozen_for = ends - FAULT_AT + 1  # rows the value has repeated by the window's end
    assert over[frozen_for > 6].all()
    assert (np.array(det.sensors)[contrib[frozen_for > 6].argmax(axis=1)] == det.sensors[stuck]).all()
    without = Detector(load_bundle(edited_bundle(bundle, bundle.parent / "no_check", lambda m: m.pop("frozen"))))
    alone, _ = without.score_batch(sliding_windows(raw, det.window))
    assert (alone[frozen_for > 6] <= det.threshold).mean() >= 0.9  # the autoencoder alone misses it
    # A value the builder held over 5 missing reports (the staleness allows it) is not a frozen sensor.
    held = ProcessModel(seed=7).run(120)
    for start in range(30, 110, 20):
        held[start + 1:start + 6, stuck] = held[start, stuck]
    held_scores, _ = det.score_batch(sliding_windows(held, det.window))
    normal_scores, _ = det.score_batch(sliding_windows(ProcessModel(seed=7).run(120), det.window))
    np.testing.assert_allclose(held_scores[held_scores > det.threshold],
                               normal_scores[held_scores > det.threshold])


def test_appliance_score_raises_the_alarm_on_a_stuck_sensor(rig):
    work, bundle = rig
    run = write_process_csv(work / "stuck.csv", 200, seed=2104, t0=T0_ON_GRID,
                            fault=Fault("stuck_sensor", FAULT_AT, 1.0, target=9))
    without = edited_bundle(bundle, work / "without", lambda m: m.pop("frozen"))

    def alarms(b):
        out = work / f"{b.name}.scores.csv"
        assert main(["score", "--bundle", str(b), "--data", str(run), "--out", str(out)]) == 0
        with out.open() as f:
            return np.array([int(r["alarm"]) for r in csv.DictReader(f)])
    with_check, alone = alarms(bundle), alarms(without)
    assert (with_check[:FAULT_AT] == alone[:FAULT_AT]).all()  # nothing frozen yet: the same decisions
    assert with_check[FAULT_AT + 12:].all()  # 7 repeats, then 3 of 5 windows to raise
    assert alone[FAULT_AT + 12:].mean() < 0.5


def test_a_runtime_grid_holding_values_longer_raises_the_allowed_run(rig):
    """A runtime configured with a longer staleness than training may hold a value over more missing
    reports; the detector is told so (``allow_held``) and does not call those repeats frozen."""
    _, bundle = rig
    det = Detector.load(bundle)
    models_only = Detector(load_bundle(edited_bundle(bundle, bundle.parent / "models_only", lambda m: m.pop("frozen"))))
    raw = ProcessModel(seed=11).run(60)
    raw[30:45, 3] = raw[29, 3]  # held over 15 missing reports (a 45-minute outage at 3 min)
    windows = sliding_windows(raw, det.window)
    plain, _ = models_only.score_batch(windows)
    strict, contrib = det.score_batch(windows)
    flagged = strict > plain
    assert flagged.any() and (np.array(det.sensors)[contrib[flagged].argmax(axis=1)] == det.sensors[3]).all()
    det.allow_held(16)
    relaxed, _ = det.score_batch(windows)
    np.testing.assert_allclose(relaxed, plain)
    with pytest.raises(ValueError, match="rows must be an int"):
        det.allow_held(-1)
