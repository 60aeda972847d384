"""A slow 52-sensor process at 3 min (firmware-sim/process.py): the bundle keeps its stated promise on a run it
never saw, and a large feed step is caught.

Trained as ``appliance train --period 180`` would (timestamps on the live grid), replayed through the live path
(``replay_files``, as ``appliance score``). Training is pinned to one BLAS thread by ``train_bundle`` itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from appliance.detector.bundle import load_bundle
from appliance.detector.replay import replay_files
from appliance.detector.train import TrainSettings, next_block_threshold, read_csv_rows, train_bundle
from firmware_sim.process import SENSORS, Fault, ProcessModel, write_process_csv

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def process_bundle(tmp_path_factory):
    work = tmp_path_factory.mktemp("process")
    sensors, ts, rows = read_csv_rows(write_process_csv(work / "normal.csv", 500, seed=1))
    bundle = train_bundle(rows, sensors, work / "B", TrainSettings(period_s=180.0), ts=ts)
    return work, bundle


def test_independent_normal_run_stays_within_the_stated_rate(process_bundle):
    work, bundle = process_bundle
    meta = load_bundle(bundle).meta
    expected = meta["expected_window_exceedance"]
    assert meta["threshold_calibration"]["int8"]["rule"] in ("next_block", "pooled")
    design = expected["design"]
    run = write_process_csv(work / "other_run.csv", 960, seed=1001)
    [result] = replay_files(bundle, [run])
    n = result.windows_scored
    assert n > 900
    # A binomial upper bound (4 sigma) on the stated rate: exceeding it means the promise does not hold.
    bound = design + 4.0 * math.sqrt(design * (1 - design) / n) + 1.0 / n
    assert result.windows_over / n <= bound, (result.windows_over, n, expected)
    assert result.alarm.mean() <= bound


def test_large_feed_step_is_detected(process_bundle):
    work, bundle = process_bundle
    run = write_process_csv(work / "step.csv", 480, seed=2001, fault=Fault("feed_step", 160, 2.0, target=1))
    [result] = replay_files(bundle, [run])
    assert result.alarm[:160].mean() <= 0.05
    assert result.alarm[200:].mean() >= 0.8


def test_runs_differ_but_repeat_exactly():
    a, b = ProcessModel(seed=5).run(50), ProcessModel(seed=5).run(50)
    assert a.shape == (50, len(SENSORS)) and np.array_equal(a, b)
    assert not np.allclose(ProcessModel(seed=6).run(50), a)
    with pytest.raises(ValueError, match="unknown fault"):
        ProcessModel(fault=Fault("meltdown", 0))


def test_next_block_threshold_widens_with_the_spread_between_blocks():
    rng = np.random.default_rng(0)
    alike = [rng.exponential(1.0, 200) for _ in range(5)]
    apart = [rng.exponential(s, 200) for s in (0.5, 1.0, 2.0, 1.0, 0.7)]
    t_alike, info = next_block_threshold(alike, risk=0.01, confidence=0.95)
    t_apart, _ = next_block_threshold(apart, risk=0.01, confidence=0.95)
    assert max(info["block_quantiles"]) <= t_alike * 1.2
    assert t_apart > 1.5 * t_alike
    with pytest.raises(ValueError, match=">= 3 blocks"):
        next_block_threshold(alike[:2])
