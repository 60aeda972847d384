"""Threshold calibration on unseen time blocks (appliance/detector/calibration.py), without training a model."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.detector.calibration import BlockCalibrator, ThresholdPolicy, expected_exceedance

POLICY = ThresholdPolicy(method="quantile", risk=0.01, margin=1.0)


def blocks_of(rng, scales, n=200):
    return np.concatenate([rng.exponential(s, n) for s in scales])


def test_every_model_is_calibrated_on_the_same_blocks_and_the_record_holds_no_private_part():
    rng = np.random.default_rng(0)
    calibrator = BlockCalibrator(POLICY, [200, 200, 200], cross_validated=True, scale=1.2)
    c = calibrator.calibrate(rng.exponential(1.0, 150), blocks_of(rng, (1.0, 1.5, 0.8)))
    assert [len(b) for b in c.blocks] == [200, 200, 200, 150]  # out-of-fold blocks, then the held-back part
    assert len(c.block_thresholds) == 4 and c.threshold == pytest.approx(1.2 * c.info["unscaled_threshold"])
    assert c.info["cv_blocks"] == [200, 200, 200] and c.info["calibration"] == "cv"
    assert not [k for k in c.info if k.startswith("_")]  # blocks travel in the Calibration, not in bundle.json
    # Averaged over a horizon: every block shortened by horizon - 1, as the live score is.
    averaged = calibrator.calibrate(rng.exponential(1.0, 150), blocks_of(rng, (1.0, 1.5, 0.8)), horizon=5)
    assert [len(b) for b in averaged.blocks] == [196, 196, 196, 146] and averaged.info["horizon"] == 5


def test_a_member_that_alarms_elsewhere_raises_the_combined_exceedance():
    rng = np.random.default_rng(1)
    calibrator = BlockCalibrator(POLICY, [300, 300, 300], cross_validated=True)
    ae = calibrator.calibrate(rng.exponential(1.0, 300), blocks_of(rng, (1.0, 1.0, 1.0), 300))
    member = calibrator.calibrate(rng.exponential(1.0, 300), blocks_of(rng, (1.0, 1.0, 1.0), 300))
    alone = expected_exceedance(ae, {})
    together = expected_exceedance(ae, {"pca": member})
    assert "by_model" not in alone and together["by_model"]["autoencoder"] == alone
    # Independent errors: the detector alarms on windows over either threshold, more than over one.
    assert together["unseen_blocks"] > max(alone["unseen_blocks"], member.info["unseen_window_exceedance"])
    assert together["next_block"] >= alone["next_block"]
    assert (together["design"], together["rule"]) == (alone["design"], alone["rule"])


def test_without_cross_validation_the_held_back_part_is_the_only_block():
    c = BlockCalibrator(POLICY, [], cross_validated=False).calibrate(np.linspace(0.1, 1.0, 100), np.empty(0))
    assert len(c.blocks) == 1 and c.block_thresholds is None and c.info["rule"] == "pooled"
    assert c.info["calibration"] == "holdout" and "next_block_window_exceedance" not in c.info
    assert expected_exceedance(c, {})["next_block"] is None
