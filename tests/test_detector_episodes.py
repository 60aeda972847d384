"""Alarms as an operator counts them (appliance/eval/episodes.py), the bundle's own expected false episodes,
the relation member (controllers' outputs against the rest, scored by the live path) and faults that end on
the process rig.

Training is tiny and pinned to one BLAS thread by ``train_bundle`` itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from appliance.actions.decide import Decider
from appliance.detector.bundle import load_bundle
from appliance.detector.calibration import Calibration, expected_false_episodes
from appliance.detector.pca import PcaMember
from appliance.detector.scorer import Detector
from appliance.detector.session import make_session, sensor_errors
from appliance.detector.train import TrainSettings, read_csv_rows, sliding_windows, train_bundle
from appliance.eval.episodes import alarm_episodes, episodes_per_day, median_p90, raise_and_clear
from firmware_sim.process import PLANT_FAULTS, Fault, ProcessModel, write_process_csv

VALVES = tuple(f"valve{i:02d}" for i in range(1, 7))


def test_episodes_and_their_rate():
    alarm = np.array([1, 1, 0, 0, 1, 0, 0, 1])
    assert alarm_episodes(alarm) == [(0, 2), (4, 5), (7, 8)]
    assert alarm_episodes(np.zeros(5)) == []
    ts = np.arange(8) * 10800.0  # 8 rows of 3 h: one day
    assert episodes_per_day(alarm, ts) == pytest.approx(3.0)


def test_raise_and_clear_times():
    ts = np.arange(12) * 60.0
    alarm = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0])
    got = raise_and_clear(alarm, ts, start=2, end=7)
    assert got["raise_s"] == 120.0 and got["clear_s"] == 120.0 and got["cleared"]
    # Never raised during the fault; still on at the end of the recording (a lower bound on the clear time).
    assert not raise_and_clear(np.zeros(12), ts, 2, 7)["raised"]
    on = raise_and_clear(np.r_[np.zeros(4), np.ones(8)], ts, 2, 7)
    assert on["cleared"] is False and on["clear_s"] == 240.0
    # An alarm already on at the fault's start says nothing about the fault.
    assert raise_and_clear(np.ones(12), ts, 2, 7)["active_at_start"]
    assert median_p90([1.0, 2.0, None, 3.0]) == {"n": 3, "median": 2.0, "p90": pytest.approx(2.8)}


def test_expected_false_episodes_counts_debounced_raises_per_block():
    quiet = np.zeros(40)
    noisy = np.r_[np.zeros(10), np.full(4, 3.0), np.zeros(10), np.full(4, 3.0), np.zeros(12)]
    c = Calibration(1.0, {}, [quiet, noisy, quiet], [1.0, 1.0, 1.0])
    got = expected_false_episodes(c, {}, stride=1, period_s=180.0, decider=Decider)
    assert got["by_block"] == [0, 2, 0] and got["thresholds"] == "next_block"
    assert got["per_week"] == pytest.approx(2 * 168.0 / (120 * 180 / 3600.0), rel=1e-3)
    assert got["per_week_upper95"] > got["per_week"]
    # A member past its own threshold raises too: the live score is the largest ratio.
    member = Calibration(1.0, {}, [np.full(40, 2.0), quiet, quiet], [1.0, 1.0, 1.0])
    assert expected_false_episodes(c, {"m": member}, stride=1, period_s=180.0, decider=Decider)["by_block"] == \
        [1, 2, 0]
    # Every stride-th window is decided, as the runtime decides.
    assert expected_false_episodes(c, {}, stride=2, period_s=180.0, decider=Decider)["hours"] == pytest.approx(6.0)


def test_relation_member_exports_like_numpy_and_sees_a_valve_the_rest_does_not_explain():
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((400, 3))
    meas = latent @ rng.standard_normal((3, 6)) + 0.05 * rng.standard_normal((400, 6))
    valve = latent @ rng.standard_normal((3, 2)) + 0.05 * rng.standard_normal((400, 2))
    X = sliding_windows(np.concatenate([meas, valve], axis=1), 3).astype(np.float32)
    m = PcaMember(inputs="rows", statistic="relation", targets=(6, 7)).fit(X)
    fresh = X[::5].copy()
    fresh[::3, :, 7] += 1.0  # the valve moved, the process around it did not
    np.testing.assert_allclose(sensor_errors(make_session(m.to_onnx().SerializeToString()), fresh),
                               m.sensor_errors(fresh), rtol=1e-4, atol=1e-5)
    err = m.sensor_errors(fresh)
    assert np.all(err[:, :6] == 0)  # only the targets carry an error
    assert err[::3, 7].min() > 10 * np.median(err[1::3, 7])
    with pytest.raises(ValueError, match="inputs=.rows."):
        PcaMember(inputs="changes", statistic="relation", targets=(1,))


@pytest.mark.integration
def test_bundle_with_relation_member_states_its_false_episodes_and_scores_live(tmp_path):
    sensors, ts, rows = read_csv_rows(write_process_csv(tmp_path / "normal.csv", 300, seed=1, regime="plant"))
    settings = TrainSettings(period_s=180.0, hidden=[8, 4], max_iter=20, manipulated=VALVES)
    bundle = train_bundle(rows, sensors, tmp_path / "B", settings, ts=ts)
    meta = load_bundle(bundle).meta
    assert meta["members"]["relation"]["targets"] == [sensors.index(v) for v in VALVES]
    episodes = meta["expected_false_episodes"]
    assert episodes["hours"] > 0 and episodes["per_week"] >= 0 and episodes["per_week_upper95"] > 0
    det = Detector.load(bundle)
    raw = ProcessModel(seed=5, regime="plant").run(60)
    scores, _ = det.score_batch(sliding_windows(raw, det.window))
    assert np.isfinite(scores).all()
    with pytest.raises(ValueError, match="not in the data"):
        train_bundle(rows, sensors, tmp_path / "C", TrainSettings(period_s=180.0, manipulated=("nope",)), ts=ts)


def test_rig_faults_end_and_the_plant_regime_moves():
    kinds = set(PLANT_FAULTS)
    assert "compensated_step" in kinds
    base = ProcessModel(seed=3).run(200)
    # A fault that ends leaves the rows before it untouched and its effect fades after it.
    ended = ProcessModel(seed=3, fault=Fault("stuck_sensor", 50, 1.0, target=4, end=100)).run(200)
    assert np.array_equal(ended[:50], base[:50])
    assert np.ptp(ended[60:100, 4]) == 0 and np.ptp(ended[100:, 4]) > 0
    # The loop holds the controlled state; the valve stays moved while the step lasts.
    step = ProcessModel(seed=3, fault=Fault("compensated_step", 50, 2.0, target=1, end=150)).run(300)
    valve = 42 + 1
    assert abs(step[100:150, valve].mean() - base[100:150, valve].mean()) > 10
    # "plant" differs from "rig" for the same seed and repeats exactly.
    plant = ProcessModel(seed=3, regime="plant").run(200)
    assert not np.allclose(plant, base) and np.array_equal(plant, ProcessModel(seed=3, regime="plant").run(200))
    with pytest.raises(ValueError, match="regime"):
        ProcessModel(regime="factory")
