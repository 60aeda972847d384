"""A score averaged over several consecutive windows (``horizon``, bundle format 5): trained and written
by ``appliance train --horizon``, scored statelessly by the live detector as the mean of its model
windows' errors, calibrated on errors averaged the same way, validated on load, covered by the signed
release values, and replayed by ``appliance score`` from the first full span on.
"""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest

from appliance.cli import main
from appliance.detector.bundle import HORIZON_FORMAT_VERSION, BundleError, load_bundle
from appliance.detector.scorer import Detector
from appliance.detector.train import moving_mean, read_csv_rows, sliding_windows
from appliance.sync.trust import compare_values, decision_values
from firmware_sim.process import Fault, ProcessModel, write_process_csv
from tests.support.detector import edited_bundle, make_window

HORIZON = 8


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """A horizon bundle trained through the CLI on the 52-sensor process at 3 min, one sensor level-free."""
    work = tmp_path_factory.mktemp("horizon")
    normal = write_process_csv(work / "normal.csv", 400, seed=1)
    out = work / "B"
    assert main(["train", "--data", str(normal), "--period", "180", "--horizon", str(HORIZON),
                 "--settings", '{"level_free": ["meas01"], "max_iter": 60, "pca_member": false, '
                 '"distance_member": false, "spread_member": false}',
                 "--out", str(out)]) == 0
    return work, out


def test_bundle_records_the_horizon_and_scores_windows_of_its_span(rig):
    _, bundle = rig
    b = load_bundle(bundle)
    assert b.meta["format_version"] == HORIZON_FORMAT_VERSION and b.meta["horizon"] == HORIZON
    assert b.horizon == HORIZON and b.span == b.window + HORIZON - 1 and b.members == {}
    assert Detector(b).window == b.span and Detector(b).model_window == b.window
    for precision in ("int8", "fp32"):
        info = b.meta["threshold_calibration"][precision]
        assert info["horizon"] == HORIZON and info["single_window_threshold"] > 0
    assert b.meta["expected_window_exceedance"]["rule"] in ("next_block", "pooled")


def test_score_is_the_mean_of_its_model_windows_errors(rig):
    """Per sensor, the averaged score equals the mean of the single-window errors of the same bundle,
    level-free centring done per model window (as training did)."""
    _, bundle = rig
    b = load_bundle(bundle)
    assert "meas01" in b.level_free
    raw = ProcessModel(seed=5, fault=Fault("feed_step", 60, 1.0)).run(160)
    for precision in ("int8", "fp32"):
        averaged = Detector(b, precision)
        single = Detector(replace(b, horizon=1), precision)
        err_h, contrib_h = averaged.score_batch(sliding_windows(raw, b.span))
        err_1, contrib_1 = single.score_batch(sliding_windows(raw, b.window))
        np.testing.assert_allclose(err_h, moving_mean(err_1, HORIZON), rtol=1e-5)
        per_sensor_1 = err_1[:, None] * contrib_1
        expected = np.stack([per_sensor_1[i:i + HORIZON].mean(axis=0) for i in range(len(err_h))])
        np.testing.assert_allclose(err_h[:, None] * contrib_h, expected, rtol=1e-4, atol=1e-9)
        # score_one on a live window agrees with the batch.
        one = averaged.score_one(make_window(raw[10:10 + b.span], b.sensors))
        assert one.value == pytest.approx(err_h[10], rel=1e-5)
    with pytest.raises(ValueError, match=f"expected \\({b.span}, 52\\)"):
        Detector(b).score_one(make_window(raw[:b.window], b.sensors))


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("horizon"), "missing key 'horizon'"),
    (lambda m: m.update(horizon=0), "'horizon'=0 is invalid"),
    (lambda m: m.update(horizon=2.5), "'horizon' must be int"),
    (lambda m: m.update(format_version=3), "'horizon' needs format_version >= 5"),
    (lambda m: m["frozen"]["allowed_run"].update(nowhere=6), "frozen.allowed_run must map"),
    (lambda m: m["frozen"]["allowed_run"].update(meas01=1), "frozen.allowed_run must map"),
    (lambda m: m.update(frozen=[]), "'frozen' must be dict"),
    (lambda m: (m.pop("horizon"), m.update(format_version=3)), "'frozen' needs format_version >= 5"),
])
def test_loader_refuses_bad_format_5_keys(rig, tmp_path, change, message):
    _, bundle = rig
    with pytest.raises(BundleError, match=message):
        load_bundle(edited_bundle(bundle, tmp_path / "bad", change))


def test_horizon_and_allowed_runs_are_signed_decision_values(rig, tmp_path):
    _, bundle = rig
    signed = decision_values(load_bundle(bundle).meta)
    assert signed["horizon"] == HORIZON and signed["frozen"]["allowed_run"]["meas02"] == 6
    for name, change, names in (("longer", lambda m: m.update(horizon=HORIZON + 6), "horizon"),
                                ("looser", lambda m: m["frozen"]["allowed_run"].update(meas02=20), "frozen"),
                                ("unwatched", lambda m: m.pop("frozen"), "frozen")):
        edited = load_bundle(edited_bundle(bundle, tmp_path / name, change))
        diff = compare_values(signed, decision_values(edited.meta))
        assert diff is not None and diff.startswith(names), (name, diff)
    # Bundles without them sign none, so releases signed before format 5 still compare equal.
    without = {k: v for k, v in load_bundle(bundle).meta.items() if k not in ("horizon", "frozen")}
    assert "horizon" not in decision_values(without) and "frozen" not in decision_values(without)


def test_replay_scores_from_the_first_full_span(rig):
    work, bundle = rig
    b = load_bundle(bundle)
    # Rows on the 180 s grid's cells (the grid is anchored at multiples of the period).
    run = write_process_csv(work / "run.csv", 60, seed=9, t0=180.0 * 9_444_444)
    out = work / "scores.csv"
    assert main(["score", "--bundle", str(bundle), "--data", str(run), "--out", str(out)]) == 0
    with out.open() as f:
        scores = [r["score"] for r in csv.DictReader(f)]
    assert len(scores) == 60
    assert all(s == "" for s in scores[:b.span - 1]) and all(s != "" for s in scores[b.span - 1:])
    _, _, rows = read_csv_rows(run)
    batch, _ = Detector(b).score_batch(sliding_windows(rows, b.span))
    np.testing.assert_allclose([float(s) for s in scores[b.span - 1:]], batch, rtol=1e-4)


def test_too_few_rows_for_the_horizon_says_what_would_do(tmp_path, capsys):
    data = write_process_csv(tmp_path / "short.csv", 100, seed=3)
    assert main(["train", "--data", str(data), "--period", "180", "--out", str(tmp_path / "B")]) == 2
    err = capsys.readouterr().err
    assert "only 18 held-back windows; need >= 24" in err and "a shorter --horizon (now 20)" in err
    assert "Traceback" not in err
