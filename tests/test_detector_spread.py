"""The spread member (appliance/detector/spread.py): each sensor's low-band energy over the scored span,
exported to ONNX and scored by the live detector exactly as training scored it.

Training is tiny and pinned to one BLAS thread by ``train_bundle`` itself.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from appliance.detector.bundle import BundleError, load_bundle
from appliance.detector.scorer import Detector
from appliance.detector.session import ONNX_INPUT, make_session
from appliance.detector.spread import SPREAD_OUTPUT, SpreadMember, cosine_bands
from appliance.detector import train
from appliance.detector.train import TrainSettings, read_csv_rows, sliding_windows, train_bundle
from firmware_sim.process import ProcessModel, write_process_csv


def _spans(rng: np.random.Generator, n: int = 200, span: int = 12, sensors: int = 4, slow: float = 1.0,
           noise: float = 0.3) -> np.ndarray:
    walk = np.cumsum(rng.standard_normal((n, span, sensors)), axis=1) * slow / np.sqrt(span)
    return (walk + noise * rng.standard_normal((n, span, sensors))).astype(np.float32)


def test_onnx_graph_gives_the_numpy_errors():
    rng = np.random.default_rng(1)
    m = SpreadMember(bands=3).fit(_spans(rng))
    fresh = np.concatenate([_spans(rng, 50), _spans(rng, 50, slow=4.0)])
    session = make_session(m.to_onnx().SerializeToString())
    got = session.run([SPREAD_OUTPUT], {ONNX_INPUT: fresh.reshape(len(fresh), -1)})[0]
    np.testing.assert_allclose(got, m.sensor_errors(fresh), rtol=1e-4, atol=1e-4)


def test_level_is_ignored_and_only_more_wandering_counts():
    rng = np.random.default_rng(2)
    m = SpreadMember().fit(_spans(rng))
    X = _spans(rng, 50)
    # The constant is not a band: a span moved to another level scores the same.
    np.testing.assert_allclose(m.sensor_errors(X + 7.0), m.sensor_errors(X), rtol=1e-4, atol=1e-5)  # float32 rounding
    # One-sided: still spans score nothing, a sensor wandering 4x as far scores on that sensor.
    assert np.all(m.sensor_errors(0.01 * X) == 0)
    lively = X.copy()
    lively[:, :, 2] *= 4.0
    err = m.sensor_errors(lively)
    assert np.median(err[:, 2]) > 10 and np.median(err[:, [0, 1, 3]]) < 1


def test_bands_and_arguments_are_checked():
    assert cosine_bands(22, 3).shape == (3, 22)
    with pytest.raises(ValueError, match="bands must be in"):
        cosine_bands(4, 4)
    with pytest.raises(ValueError, match="bands must be an int"):
        SpreadMember(bands=0)
    with pytest.raises(ValueError, match="at least 3 spans"):
        SpreadMember().fit(np.zeros((2, 5, 2)))
    with pytest.raises(ValueError):
        SpreadMember().fit(_spans(np.random.default_rng(0))).errors(np.zeros((3, 5, 4)))  # not its span


def _numpy_spread(meta: dict, raw_spans: np.ndarray) -> np.ndarray:
    """The member's error recomputed from bundle.json alone (scaler and summary), in float64."""
    spec, sc = meta["members"]["spread"], meta["scaler"]
    x = (raw_spans - np.array(sc["center"])) / np.array(sc["scale"])
    coef = np.einsum("kt,nts->nks", cosine_bands(spec["span"], spec["bands"]), x)
    z = (np.log((coef ** 2).sum(axis=1) + spec["energy_floor"]) - spec["log_energy_mean"]) / spec["log_energy_sd"]
    return (np.maximum(z, 0) ** 2).mean(axis=1)


@pytest.fixture(scope="module")
def spread_bundle(tmp_path_factory):
    """The bundle, its training rows, and the member's errors on the held-back spans as training computed
    them (the last of its calibration blocks)."""
    work = tmp_path_factory.mktemp("spread")
    sensors, ts, rows = read_csv_rows(write_process_csv(work / "normal.csv", 300, seed=1, regime="plant"))
    settings = TrainSettings(period_s=180.0, hidden=[8, 4], max_iter=5, spread_member=True)
    made = []

    def keep(*args):
        made.append(real(*args))
        return made[-1]
    real = train._spread_member
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "_spread_member", keep)
        bundle = train_bundle(rows, sensors, work / "B", settings, ts=ts)
    return bundle, rows, made[0]["spread"].calibration.blocks[-1]


def test_bundle_carries_the_member_and_training_scored_it_as_the_manifest_says(spread_bundle):
    path, rows, held_errors = spread_bundle
    b = load_bundle(path)
    meta = b.meta
    assert meta["format_version"] == 5 and meta["members"]["spread"]["kind"] == "spread"
    assert meta["members"]["spread"]["span"] == b.span == b.window + b.horizon - 1
    assert "spread" in meta["expected_window_exceedance"]["by_model"]
    info = meta["threshold_calibration"]["spread"]
    assert info["horizon"] == 1 and b.member_thresholds["spread"] == meta["thresholds"]["spread"] > 0
    # The held-back part is the oldest 20 % of the grid's rows (the last CSV row makes no grid row);
    # training scored its spans through the ONNX graph.
    held = rows[:int(round((len(rows) - 1) * 0.2))]
    expected = _numpy_spread(meta, sliding_windows(held, b.span))
    assert info["holdout_windows"] == len(expected) == len(held_errors)
    np.testing.assert_allclose(held_errors, expected, rtol=1e-4, atol=1e-5)


def test_live_detector_scores_the_member_as_trained(spread_bundle):
    path, _, _ = spread_bundle
    b = load_bundle(path)
    # A lower threshold of its own, so the member decides some of these scores (the tiny model's
    # autoencoder is far from converged and would win everywhere).
    b = replace(b, member_thresholds={**b.member_thresholds, "spread": b.member_thresholds["spread"] / 50})
    live = Detector(b, "int8")
    without = Detector(replace(b, members={k: v for k, v in b.members.items() if k != "spread"}), "int8")
    raw = ProcessModel(seed=5, regime="plant").run(120)
    raw[60:, :10] += np.cumsum(np.random.default_rng(3).standard_normal((60, 10)), axis=0)  # wander more
    spans = sliding_windows(raw, live.window)
    got, contrib = live.score_batch(spans)
    rest, _ = without.score_batch(spans)
    spread_ratio = _numpy_spread(b.meta, spans) / b.member_thresholds["spread"]
    expected = np.maximum(rest / live.threshold, spread_ratio) * live.threshold
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    wins = spread_ratio > rest / live.threshold
    assert wins.any() and not wins.all()
    assert np.allclose(contrib.sum(axis=1), 1.0)


def test_loader_checks_the_span_members_shape(spread_bundle, tmp_path):
    import shutil
    path, _, _ = spread_bundle
    copy = shutil.copytree(path, tmp_path / "B")
    meta = json.loads((copy / "bundle.json").read_text())
    meta["horizon"] += 1  # the member's graph no longer takes the span the bundle says
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="model.spread.onnx: input 'x' has shape"):
        load_bundle(copy)


def test_a_gap_inside_a_calibration_block_leaves_the_member_out_with_a_warning(tmp_path, caplog):
    # Spans cannot straddle a gap, so a block with one no longer pairs its spans one to one with the
    # other models' averaged windows; training says so and writes the bundle without the member.
    sensors, ts, rows = read_csv_rows(write_process_csv(tmp_path / "normal.csv", 300, seed=1, regime="plant"))
    ts = ts + np.where(np.arange(len(ts)) >= 200, 3600.0, 0.0)  # an hour without readings
    settings = TrainSettings(period_s=180.0, hidden=[8, 4], max_iter=3)
    with caplog.at_level("WARNING", logger="appliance.detector.train"):
        b = load_bundle(train_bundle(rows, sensors, tmp_path / "B", settings, ts=ts))
    assert "spread" not in b.members and {"pca", "distance"} <= set(b.members)
    assert "spread member left out" in caplog.text
