"""The linear PCA-Q member: exported to ONNX and scored by the live session exactly as numpy computes it,
its threshold held (and validated, and signed) in bundle.json, and a stuck sensor it catches where the
autoencoder alone does not (the 52-sensor process simulator, fixed seeds).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import onnx
from onnx import numpy_helper

from appliance.detector.bundle import FORMAT_VERSION, MEMBERS_FORMAT_VERSION, BundleError, load_bundle
from appliance.detector.features import center_levels
from appliance.detector.pca import PcaMember
from appliance.detector.scorer import Detector
from appliance.detector.session import make_session, sensor_errors
from appliance.detector.train import TrainSettings, read_csv_rows, sliding_windows, train_bundle
from appliance.sync.trust import ReleaseCheckError, check_sane, compare_values, decision_values
from firmware_sim.process import Fault, ProcessModel, write_process_csv
from tests.support.detector import edited_bundle


def _correlated_windows(seed: int, n: int = 400, window: int = 3, lively: float = 1.0) -> np.ndarray:
    mix = np.random.default_rng(99).standard_normal((3, 7))  # one process, several recordings
    rng = np.random.default_rng(seed)
    latent = lively * rng.standard_normal((n, 3))
    rows = np.concatenate([latent, latent @ mix], axis=1) + 0.1 * rng.standard_normal((n, 10))
    return sliding_windows(rows, window).astype(np.float32)


def test_exported_member_scores_like_numpy():
    X = _correlated_windows(0)
    member = PcaMember(variance=0.95).fit(X)
    assert 1 <= member.components_.shape[0] < 10
    session = make_session(member.to_onnx().SerializeToString())
    fresh = _correlated_windows(1)
    fresh[::7, :, 4] += 2.0  # some windows off the normal subspace
    onnx_err = sensor_errors(session, fresh)
    numpy_err = member.sensor_errors(fresh)
    np.testing.assert_allclose(onnx_err, numpy_err, rtol=1e-4, atol=1e-5)
    # Standardized: about one per cell on normal rows of the training kind.
    assert 0.5 < float(member.errors(X).mean()) < 1.5


def test_member_refuses_bad_settings():
    with pytest.raises(ValueError, match="variance"):
        PcaMember(variance=1.0)
    with pytest.raises(ValueError, match="do not vary"):
        PcaMember().fit(np.ones((10, 3, 4), dtype=np.float32))


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """A bundle with the member, trained as ``appliance train --period 180`` would, and its AE-only twin."""
    work = tmp_path_factory.mktemp("pca")
    sensors, ts, rows = read_csv_rows(write_process_csv(work / "normal.csv", 500, seed=1))
    bundle = train_bundle(rows, sensors, work / "B", TrainSettings(period_s=180.0, horizon=1, pca_member=True,
                                                                     pca_inputs="rows"), ts=ts)
    # The same autoencoder without its member: a format-3 bundle, as written before members existed.
    ae_only = work / "ae_only"
    shutil.copytree(bundle, ae_only)
    (ae_only / "model.pca.onnx").unlink()
    meta = json.loads((ae_only / "bundle.json").read_text())
    meta.pop("members")
    meta["thresholds"].pop("pca")
    meta["format_version"] = FORMAT_VERSION
    (ae_only / "bundle.json").write_text(json.dumps(meta))
    return work, bundle, ae_only


def test_bundle_records_the_member_and_its_threshold(rig):
    _, bundle, ae_only = rig
    b = load_bundle(bundle)
    meta = b.meta
    assert meta["format_version"] == MEMBERS_FORMAT_VERSION
    assert meta["members"]["pca"]["file"] == "model.pca.onnx" and meta["members"]["pca"]["kind"] == "pca_q"
    assert set(b.members) == {"pca"} and b.member_thresholds["pca"] == meta["thresholds"]["pca"] > 0
    assert meta["threshold_calibration"]["pca"]["rule"] in ("next_block", "pooled")
    assert "model.pca.onnx" in meta["files"]
    # An older bundle without members still loads and scores with the autoencoder alone.
    old = load_bundle(ae_only)
    assert old.members == {} and old.thresholds == b.thresholds


@pytest.mark.parametrize("value, message", [(-1.0, "thresholds.pca must be finite and > 0"),
                                            ("9", "thresholds.pca must be finite and > 0"),
                                            (None, "thresholds.pca must be finite and > 0")])
def test_invalid_member_threshold_refused(rig, tmp_path, value, message):
    _, bundle, _ = rig
    bad = edited_bundle(bundle, tmp_path / "bad", lambda m: m["thresholds"].update(pca=value))
    with pytest.raises(BundleError, match=message):
        load_bundle(bad)


def test_member_files_and_keys_checked(rig, tmp_path):
    _, bundle, _ = rig
    gone = edited_bundle(bundle, tmp_path / "gone", lambda m: None)
    (gone / "model.pca.onnx").unlink()
    with pytest.raises(BundleError, match="missing member model file"):
        load_bundle(gone)
    swapped = edited_bundle(bundle, tmp_path / "swapped", lambda m: None)
    shutil.copyfile(bundle / "model.fp32.onnx", swapped / "model.pca.onnx")
    with pytest.raises(BundleError, match="model.pca.onnx: sha256 does not match"):
        load_bundle(swapped)
    old_format = edited_bundle(bundle, tmp_path / "v3", lambda m: m.update(format_version=3))
    with pytest.raises(BundleError, match="'members' needs format_version >= 4"):
        load_bundle(old_format)
    unknown = edited_bundle(bundle, tmp_path / "unknown", lambda m: m["members"].update(tsquared={"file": "x.onnx"}))
    with pytest.raises(BundleError, match="unknown member 'tsquared'"):
        load_bundle(unknown)


def test_tampered_member_threshold_is_refused_by_the_signed_values(rig, tmp_path):
    """The member's threshold is a signed decision value: a raised one no longer matches the release."""
    _, bundle, _ = rig
    signed = decision_values(load_bundle(bundle).meta)
    assert "pca" in signed["thresholds"] and "model.pca.onnx" in signed["model_files"]
    check_sane(signed, "int8")
    raised = edited_bundle(bundle, tmp_path / "raised",
                           lambda m: m["thresholds"].update(pca=m["thresholds"]["pca"] * 100))
    diff = compare_values(signed, decision_values(load_bundle(raised).meta))
    assert diff is not None and diff.startswith("thresholds.pca is ")
    never = edited_bundle(bundle, tmp_path / "never", lambda m: m["thresholds"].update(pca=1e12))
    with pytest.raises(ReleaseCheckError, match="thresholds.pca"):
        check_sane(decision_values(json.loads((never / "bundle.json").read_text())), "int8")


def test_live_score_is_the_largest_ratio_of_each_model(rig):
    """Detector.score_batch = AE threshold x max(AE error / its threshold, member error / its threshold),
    the member's error computed in numpy from the exported graph's own weights."""
    work, bundle, ae_only = rig
    b = load_bundle(bundle)
    raw = ProcessModel(seed=77, fault=Fault("stuck_sensor", 40, 1.0, target=2)).run(200)
    values = sliding_windows(raw, b.window)
    for precision in ("int8", "fp32"):
        both, contrib = Detector(b, precision).score_batch(values)
        ae, _ = Detector.load(ae_only, precision).score_batch(values)
        x = b.scaler.transform(values.reshape(-1, len(b.sensors))).reshape(values.shape)
        center_levels(x, np.array([b.sensors.index(s) for s in b.level_free], dtype=int))
        inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(b.members["pca"])).graph.initializer}
        x64 = x.astype(np.float64)
        q = ((x64 - (x64 @ inits["A"].T.astype(np.float64) + inits["b"])) ** 2).mean(axis=(1, 2))
        th = b.thresholds[precision]
        expected = th * np.maximum(ae / th, q / b.member_thresholds["pca"])
        np.testing.assert_allclose(both, expected, rtol=1e-4)
        np.testing.assert_allclose(contrib.sum(axis=1), 1.0, rtol=1e-6)


def test_stuck_sensor_caught_by_the_member_not_by_the_autoencoder(rig):
    work, bundle, ae_only = rig
    det, ae = Detector.load(bundle), Detector.load(ae_only)
    assert det.threshold == ae.threshold
    fault_at = 160
    raw = ProcessModel(seed=2000 + 4, fault=Fault("stuck_sensor", fault_at, 1.0, target=1)).run(960)
    values = sliding_windows(raw, det.window)
    both, contrib = det.score_batch(values)
    alone, _ = ae.score_batch(values)
    after = slice(fault_at, None)  # windows ending after the fault began
    caught = (both[after] > det.threshold) & (alone[after] <= ae.threshold)
    assert caught.mean() >= 0.2, (caught.mean(), (both[after] > det.threshold).mean())
    # The frozen sensor is the one the member blames.
    stuck = det.sensors[1]
    top = np.array(det.sensors)[contrib[after].argmax(axis=1)]
    assert (top[caught] == stuck).mean() >= 0.8


def test_changes_member_exports_like_numpy_and_ignores_the_level():
    X = _correlated_windows(2, window=5)
    member = PcaMember(variance=0.95, inputs="changes").fit(X)
    session = make_session(member.to_onnx().SerializeToString())
    fresh = _correlated_windows(3, window=5)
    fresh[::5, 2:, 6] += 1.5  # a step inside some windows
    np.testing.assert_allclose(sensor_errors(session, fresh), member.sensor_errors(fresh), rtol=1e-4, atol=1e-5)
    # A whole-window offset has no row-to-row change: the score does not move.
    np.testing.assert_allclose(member.errors(fresh + 3.0), member.errors(fresh), rtol=1e-4)
    assert float(member.errors(fresh[::5]).mean()) > 2 * float(member.errors(fresh[1::5]).mean())


def test_distance_member_exports_like_numpy_and_sees_a_livelier_disturbance():
    """The whitened distance of the changes: the graph scores as numpy does, a level offset does not move it,
    and disturbances three times as lively along their usual directions do, where the Q residual stays put."""
    X = _correlated_windows(2, window=5)
    distance = PcaMember(inputs="changes", statistic="distance").fit(X)
    q = PcaMember(variance=0.95, inputs="changes").fit(X)
    assert distance.summary()["kind"] == "mahalanobis" and q.summary()["kind"] == "pca_q"
    session = make_session(distance.to_onnx().SerializeToString())
    fresh = _correlated_windows(3, window=5)
    np.testing.assert_allclose(sensor_errors(session, fresh), distance.sensor_errors(fresh), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(distance.errors(fresh + 3.0), distance.errors(fresh), rtol=1e-4)
    lively = _correlated_windows(3, window=5, lively=3.0)
    gain = lambda m: float(m.errors(lively).mean() / m.errors(fresh).mean())  # noqa: E731
    assert gain(distance) > 2.5 and gain(q) < 1.3, (gain(distance), gain(q))
    with pytest.raises(ValueError, match="statistic must be one of"):
        PcaMember(statistic="t2")


def test_distance_member_floors_directions_that_never_moved():
    """Sensors that stood still in training (set points, switches) must not make every change infinite."""
    X = _correlated_windows(4, window=5)
    X[:, :, 3:] = 1.0  # seven of ten sensors constant
    distance = PcaMember(inputs="changes", statistic="distance").fit(X)
    normal = distance.errors(X)
    # About one per moving sensor and change: 3 of 10 sensors, 4 changes in 5 rows.
    assert np.isfinite(normal).all() and 0.15 < float(normal.mean()) < 0.4
    moved = X[:20].copy()
    moved[:, 2:, 5] += 0.01  # a still sensor steps by a hundredth of the moving sensors' spread
    assert np.isfinite(distance.errors(moved)).all()
    assert float(distance.errors(moved).max()) < 10  # unfloored: about 1e8
