"""Learning from another normal record (``prior_rows``): it shapes the model, never the threshold."""

from __future__ import annotations

import json

import numpy as np
import pytest

from appliance.detector.bundle import load_bundle
from appliance.detector.scorer import Detector
from appliance.detector.train import TrainSettings, sliding_windows, train_bundle
from tests.support.detector import SENSORS, WINDOW, normal_rows

OPTS = dict(window=WINDOW, stride=1, hidden=(32, 8), max_iter=80, seed=5)


def other_operating_point(rows: np.ndarray) -> np.ndarray:
    """The same process run harder: every level moved, the relations kept."""
    return rows * np.array([1.6, 1.6, 1.1, 1.6]) + np.array([0.0, 0.5, 8.0, 0.0])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("prior")
    own = normal_rows(400, 11)
    prior = other_operating_point(normal_rows(3000, 12))
    return own, prior, {
        "alone": train_bundle(own, SENSORS, root / "alone", TrainSettings(**OPTS)),
        "prior": train_bundle(own, SENSORS, root / "prior", TrainSettings(**OPTS, prior_stride=4), prior_rows=prior),
    }


def test_bundle_records_the_prior_record(pair):
    own, prior, paths = pair
    meta = json.loads((paths["prior"] / "bundle.json").read_text())["training"]
    assert meta["prior"]["rows"] == len(prior) and meta["prior"]["stride"] == 4
    assert meta["prior"]["windows"] == len(range(0, len(prior) - WINDOW + 1, 4))
    assert json.loads((paths["alone"] / "bundle.json").read_text())["training"]["prior"] is None


def test_scaler_and_threshold_come_from_the_own_rows_only(pair):
    own, prior, paths = pair
    alone, with_prior = load_bundle(paths["alone"]), load_bundle(paths["prior"])
    # The prior record runs at other levels; the bundle must still be centred on its own process.
    np.testing.assert_allclose(with_prior.scaler.center, alone.scaler.center)
    np.testing.assert_allclose(with_prior.scaler.scale, alone.scaler.scale)
    calib = lambda b: json.loads((b / "bundle.json").read_text())["threshold_calibration"]["fp32"]  # noqa: E731
    a, p = calib(paths["alone"]), calib(paths["prior"])
    assert (p["holdout_windows"], p["oof_windows"]) == (a["holdout_windows"], a["oof_windows"])


def test_model_with_prior_still_separates_normal_from_a_fault(pair):
    own, _, paths = pair
    det = Detector.load(paths["prior"])
    rows = normal_rows(600, 13)
    normal, _ = det.score_batch(sliding_windows(rows[:300], WINDOW, 1))
    rows[300:, SENSORS.index("Flow")] += 6.0  # a flow meter offset of several sigma
    faulty, _ = det.score_batch(sliding_windows(rows[300 + WINDOW:], WINDOW, 1))
    assert (normal > det.threshold).mean() < 0.1
    assert (faulty > det.threshold).mean() > 0.9


@pytest.mark.parametrize("bad, match", [
    (np.zeros((500, 3)), r"prior_rows must be \(n, 4\)"),
    (np.full((500, 4), np.nan), "NaN or infinite"),
    (np.zeros((WINDOW, 4)), "need >= 32"),
])
def test_prior_rows_are_validated_before_any_work(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        train_bundle(normal_rows(400, 0), SENSORS, tmp_path / "b", TrainSettings(**OPTS), prior_rows=bad)
    assert not (tmp_path / "b").exists()
