"""Bundle training and scoring on small synthetic pump-like data, through real ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest

from appliance.core import Score
from appliance.detector.bundle import load_bundle, sha256_file
from appliance.detector.quantize import CheckLimits, QuantizationCheckError
from appliance.detector.scorer import Detector
from appliance.detector.train import TrainSettings, sliding_windows, train_bundle
from tests.support.detector import SENSORS, WINDOW, make_window, normal_rows

OPTS = dict(window=WINDOW, stride=2, hidden=(32, 8), max_iter=80, seed=3)
SETTINGS = TrainSettings(**OPTS)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return train_bundle(normal_rows(3000, 0), SENSORS, tmp_path_factory.mktemp("b") / "bundle", SETTINGS)


@pytest.fixture(scope="module")
def detectors(bundle_dir):
    return {p: Detector.load(bundle_dir, precision=p) for p in ("int8", "fp32")}


def test_bundle_contents_round_trip(bundle_dir):
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["bundle.json", "model.fp32.onnx", "model.int8.onnx"]
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    b = load_bundle(bundle_dir)
    assert b.sensors == tuple(SENSORS) and b.window == WINDOW and b.stride == 2 and b.period_s == 1.0
    assert meta["training"]["rows"] == 3000 and len(meta["training"]["data_sha256"]) == 64
    assert meta["int8_check"]["passed"] is True
    assert meta["threshold"] == b.thresholds["int8"] > 0
    assert meta["threshold_calibration"]["int8"]["method"] in ("pot", "quantile")
    # Training's own intermediate results (the unseen blocks) stay out of the bundle.
    assert [k for info in meta["threshold_calibration"].values() for k in info if k.startswith("_")] == []
    assert meta["files"]["model.int8.onnx"] == sha256_file(bundle_dir / "model.int8.onnx")
    # INT8 weights are a quarter of FP32's; even this tiny model, where per-channel scales
    # and INT32 biases weigh relatively more, must come out clearly smaller.
    assert (bundle_dir / "model.int8.onnx").stat().st_size < 0.7 * (bundle_dir / "model.fp32.onnx").stat().st_size


def test_detector_attributes(detectors, bundle_dir):
    d = detectors["int8"]
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    assert d.sensors == tuple(SENSORS) and d.window == WINDOW and d.stride == 2 and d.period_s == 1.0
    assert d.version == meta["model_version"]
    assert d.threshold == meta["thresholds"]["int8"]
    assert detectors["fp32"].threshold == meta["thresholds"]["fp32"]


def test_unseen_normal_data_stays_below_threshold(detectors):
    X = sliding_windows(normal_rows(1500, 99), WINDOW, 4)
    for d in detectors.values():
        errors, contrib = d.score_batch(X)
        assert errors.shape == (len(X),) and contrib.shape == (len(X), len(SENSORS))
        assert np.mean(errors > d.threshold) < 0.02
        np.testing.assert_allclose(contrib.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("faulty", range(len(SENSORS)))
def test_injected_fault_scores_above_threshold_and_points_at_sensor(detectors, faulty):
    rows = normal_rows(400, 7)
    spread = rows[:, faulty].std()
    X = sliding_windows(rows, WINDOW, 8)
    X[:, WINDOW // 2:, faulty] += 3.0 * spread  # a step fault in the second half of every window
    for d in detectors.values():
        errors, contrib = d.score_batch(X)
        assert np.mean(errors > d.threshold) > 0.95
        assert np.mean(contrib.argmax(axis=1) == faulty) > 0.9


def test_int8_agrees_with_fp32(detectors):
    rows = normal_rows(1200, 11)
    X = sliding_windows(rows, WINDOW, 3)
    X[len(X) // 2:, :, 1] += np.linspace(0.0, 4.0, len(X) - len(X) // 2)[:, None] * rows[:, 1].std()
    e8, _ = detectors["int8"].score_batch(X)
    e32, _ = detectors["fp32"].score_batch(X)
    agree = np.mean((e8 > detectors["int8"].threshold) == (e32 > detectors["fp32"].threshold))
    assert agree > 0.97
    assert np.corrcoef(e8, e32)[0, 1] > 0.95


def test_score_one_reorders_columns_by_name(detectors):
    d = detectors["int8"]
    values = normal_rows(WINDOW, 5)
    s = d.score_one(make_window(values, SENSORS))
    assert isinstance(s, Score) and s.asset == "pump1" and s.t_end == 1234.0
    assert s.threshold == d.threshold and s.model_version == d.version
    assert set(s.contributions) == set(SENSORS) and abs(sum(s.contributions.values()) - 1) < 1e-9
    order = [3, 1, 0, 2]
    shuffled = d.score_one(make_window(values[:, order], [SENSORS[i] for i in order]))
    assert shuffled.value == pytest.approx(s.value, rel=1e-6)
    assert shuffled.contributions == pytest.approx(s.contributions, rel=1e-6)
    errors, _ = d.score_batch(values[None])
    assert s.value == pytest.approx(errors[0], rel=1e-6)


def test_score_one_ignores_extra_sensor_but_needs_all_model_sensors(detectors):
    d = detectors["int8"]
    values = normal_rows(WINDOW, 5)
    extra = np.hstack([values, np.zeros((WINDOW, 1))])
    base = d.score_one(make_window(values, SENSORS)).value
    assert d.score_one(make_window(extra, SENSORS + ["Vibration"])).value == pytest.approx(base, rel=1e-6)
    with pytest.raises(ValueError, match="lacks sensors"):
        d.score_one(make_window(values[:, :3], SENSORS[:3]))


def test_score_one_refuses_incomplete_or_misshaped_windows(detectors):
    d = detectors["int8"]
    values = normal_rows(WINDOW, 5)
    mask = np.ones(values.shape, dtype=bool)
    mask[3, 2] = False
    with pytest.raises(ValueError, match="incomplete"):
        d.score_one(make_window(values, SENSORS, mask))
    with pytest.raises(ValueError, match="shape"):
        d.score_one(make_window(values[:-1], SENSORS))
    with pytest.raises(ValueError, match="shape"):
        d.score_batch(values)
    bad = values.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        d.score_batch(bad[None])


def test_training_is_deterministic(tmp_path, bundle_dir):
    again = train_bundle(normal_rows(3000, 0), SENSORS, tmp_path / "again", SETTINGS)
    for name in ("model.fp32.onnx", "model.int8.onnx"):
        assert sha256_file(again / name) == sha256_file(bundle_dir / name)
    a = json.loads((again / "bundle.json").read_text())
    b = json.loads((bundle_dir / "bundle.json").read_text())
    assert a["thresholds"] == b["thresholds"] and a["training"]["data_sha256"] == b["training"]["data_sha256"]


def test_retraining_replaces_existing_bundle_atomically(tmp_path):
    out = tmp_path / "model"
    first = train_bundle(normal_rows(1200, 1), SENSORS, out, SETTINGS)
    v1 = load_bundle(first).model_version
    second = train_bundle(normal_rows(1200, 2), SENSORS, out, SETTINGS)
    assert second == out and load_bundle(out).model_version != v1
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp or .old directory left


def test_failed_int8_check_writes_no_bundle(tmp_path):
    out = tmp_path / "refused"
    impossible = CheckLimits(min_agreement=1.01)
    with pytest.raises(QuantizationCheckError, match="agreement") as e:
        train_bundle(normal_rows(1200, 1), SENSORS, out, TrainSettings(**OPTS, check_limits=impossible,
                                                                     shrink_on_int8_refusal=False))
    assert e.value.report["holdout"]["agreement"] <= 1.0
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_progress_reports_each_epoch_and_the_epoch_cap_is_recorded(tmp_path):
    reports = []
    out = train_bundle(normal_rows(600, 1), SENSORS, tmp_path / "b", TrainSettings(**{**OPTS, "max_iter": 6}),
                       progress=reports.append)
    model = json.loads((out / "bundle.json").read_text())["training"]["model"]
    assert (model["epochs"], model["stopped"], model["converged"]) == (6, "epoch cap", False)
    stages = list(dict.fromkeys(r["stage"] for r in reports))
    assert stages[0] == "model" and stages[1:] == [f"fold {k}/4" for k in range(1, 5)]
    assert [r["epoch"] for r in reports if r["stage"] == "model"] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] > 0 and r["left_s"] >= 0 and r["max_epochs"] == 6 for r in reports)
    assert reports[-1]["left_s"] == 0


def test_early_stopping_keeps_the_best_epoch_on_held_back_windows(tmp_path):
    reports = []
    settings = TrainSettings(**{**OPTS, "max_iter": 300}, early_stopping=True, patience=3)
    out = train_bundle(normal_rows(800, 2), SENSORS, tmp_path / "b", settings, progress=reports.append)
    model = json.loads((out / "bundle.json").read_text())["training"]["model"]
    val = [r["val_loss"] for r in reports if r["stage"] == "model"]
    assert len(val) == model["epochs"] and model["best_epoch"] == int(np.argmin(val)) + 1
    if model["stopped"] == "held-back loss":
        assert model["epochs"] - model["best_epoch"] == 3
    # The out-of-fold models train as long as the kept model did.
    assert max(r["epoch"] for r in reports if r["stage"] != "model") == model["best_epoch"]


def test_bundle_states_its_grid_and_the_false_alarms_it_expects(bundle_dir):
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    b = load_bundle(bundle_dir)
    assert (b.staleness_s, b.lateness_s) == (meta["staleness_s"], meta["lateness_s"]) == (5.0, 2.0)
    expected = meta["expected_window_exceedance"]
    # The design rate is the one the threshold rule that won was built for.
    assert expected["rule"] in ("pooled", "next_block")
    assert expected["design"] == (SETTINGS.risk if expected["rule"] == "pooled" else SETTINGS.block_risk)
    assert 0.0 <= expected["next_block"] <= expected["next_block_worst"] <= 1.0
    blocks = meta["threshold_calibration"]["int8"]["next_block_window_exceedance"]
    assert len(blocks) == 5 and expected["next_block_worst"] == max(blocks)
