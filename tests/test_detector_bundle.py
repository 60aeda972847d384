"""A damaged, incomplete or inconsistent bundle is refused with a clear error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from appliance.detector.bundle import BundleError, load_bundle, sha256_file
from appliance.detector.scorer import Detector
from appliance.detector.train import TrainSettings, train_bundle
from tests.support.legacy import with_window_shaped_io

SENSORS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    rng = np.random.default_rng(0)
    t = np.arange(1500)
    base = np.sin(t / 15.0)
    rows = np.stack([base, 2 * base + 0.05 * rng.standard_normal(len(t)), np.cos(t / 15.0)], axis=1)
    return train_bundle(rows, SENSORS, tmp_path_factory.mktemp("g") / "bundle",
                        TrainSettings(window=8, hidden=(16, 4), max_iter=40, seed=1))


@pytest.fixture
def copy(good, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(good, dst)
    return dst


def edit_meta(path, fn):
    meta = json.loads((path / "bundle.json").read_text())
    fn(meta)
    (path / "bundle.json").write_text(json.dumps(meta))


def test_good_bundle_loads(good):
    b = load_bundle(good)
    assert b.sensors == tuple(SENSORS) and b.window == 8 and set(b.models) == {"int8", "fp32"}


def test_missing_directory(tmp_path):
    with pytest.raises(BundleError, match="directory not found"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="directory not found"):
        Detector.load(tmp_path / "nope")


def test_missing_meta(copy):
    (copy / "bundle.json").unlink()
    with pytest.raises(BundleError, match="bundle.json: missing"):
        load_bundle(copy)


def test_unparseable_meta(copy):
    (copy / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="unreadable"):
        load_bundle(copy)


def test_missing_model_file(copy):
    (copy / "model.int8.onnx").unlink()
    with pytest.raises(BundleError, match="model.int8.onnx: missing model file"):
        load_bundle(copy)


@pytest.mark.parametrize("version", [6, 0, None, "1", True])
def test_wrong_format_version(copy, version):
    edit_meta(copy, lambda m: m.update(format_version=version))
    with pytest.raises(BundleError, match="format_version .* not supported"):
        load_bundle(copy)


@pytest.mark.parametrize("key", ["sensors", "window", "stride", "period_s", "scaler", "thresholds",
                                 "model_version", "files"])
def test_missing_key(copy, key):
    edit_meta(copy, lambda m: m.pop(key))
    with pytest.raises(BundleError, match=f"missing key '{key}'"):
        load_bundle(copy)


@pytest.mark.parametrize("key,value,message", [
    ("window", 0, "window"), ("window", 8.5, "window"), ("window", True, "window"),
    ("stride", 0, "stride"), ("period_s", -1.0, "period_s"),
    ("sensors", ["a", "a", "c"], "sensors"), ("sensors", [], "sensors"),
    ("thresholds", {"int8": 0.1}, "thresholds.fp32"), ("thresholds", {"int8": -1, "fp32": 1}, "thresholds.int8"),
])
def test_invalid_values(copy, key, value, message):
    edit_meta(copy, lambda m: m.update({key: value}))
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)


def test_scaler_length_mismatch(copy):
    edit_meta(copy, lambda m: m["scaler"].update(center=[0.0, 1.0]))
    with pytest.raises(BundleError, match="scaler has 2/3 entries for 3 sensors"):
        load_bundle(copy)


def test_zero_scale_refused(copy):
    edit_meta(copy, lambda m: m["scaler"].update(scale=[1.0, 0.0, 1.0]))
    with pytest.raises(BundleError, match=r"scaler.scale\[1\] 0 is outside"):
        load_bundle(copy)


@pytest.mark.parametrize("change, message", [
    (lambda m: m["thresholds"].update(int8=1e12), r"thresholds.int8 1000000000000.0 is above 1e\+09: .* never alarm"),
    (lambda m: m["thresholds"].update(fp32=2e9), r"thresholds.fp32 2000000000.0 is above 1e\+09"),
    (lambda m: m.update(threshold=1e12), r"threshold 1000000000000.0 is above 1e\+09"),
    (lambda m: m["scaler"].update(scale=[1.0, 1e30, 1.0]), r"scaler.scale\[1\] 1e\+30 is outside \[1e-09, 1e\+12\]"),
    (lambda m: m["scaler"].update(center=[0.0, 0.0, -1e13]), r"scaler.center\[2\] -1e\+13 is beyond"),
    (lambda m: m.update(stride=9), "stride"),
    (lambda m: m.update(period_s=1e6), "period_s"),
])
def test_a_local_bundle_that_could_never_alarm_is_refused(copy, change, message):
    """The bounds ``appliance release add`` signs within hold for every bundle, signed or configured locally."""
    edit_meta(copy, change)
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)


def test_appliance_run_refuses_a_broken_bundle_in_one_line(copy, tmp_path):
    import subprocess
    import sys

    (copy / "bundle.json").write_text('{"format_version": 3, "sensors": ["a", "b", "c"], "wind')
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[detector]\nbundle = "{copy}"\n'
                   f'[inputs.mqtt]\nenabled = false\n[web]\nenabled = false\n'
                   f'[outputs.mqtt_alarm]\nenabled = false\n[outputs.history]\nenabled = false\n')
    run = subprocess.run([sys.executable, "-c", "from appliance.cli import main; raise SystemExit(main())",
                          "run", "--config", str(cfg)], capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "bundle.json: unreadable" in lines[0], run.stderr
    assert "Traceback" not in run.stderr, run.stderr

    edit_meta_text = '{"format_version": 3}'  # valid JSON, not a bundle
    (copy / "bundle.json").write_text(edit_meta_text)
    run = subprocess.run([sys.executable, "-c", "from appliance.cli import main; raise SystemExit(main())",
                          "run", "--config", str(cfg)], capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert "error: " in run.stderr and "missing key 'sensors'" in run.stderr, run.stderr


def test_window_disagreeing_with_model_shape(copy):
    edit_meta(copy, lambda m: m.update(window=9))
    with pytest.raises(BundleError, match=r"shape \[None, 24\], bundle.json says \[N, 27\]"):
        load_bundle(copy)


def test_sensor_count_disagreeing_with_model_shape(copy):
    def drop(m):
        m["sensors"] = m["sensors"][:2]
        m["scaler"]["center"] = m["scaler"]["center"][:2]
        m["scaler"]["scale"] = m["scaler"]["scale"][:2]
        m.pop("frozen", None)  # it names the dropped sensor
        m.pop("envelope", None)  # so does the operating envelope
    edit_meta(copy, drop)
    with pytest.raises(BundleError, match="bundle.json says"):
        load_bundle(copy)


def test_corrupted_model_detected_by_hash(copy):
    data = bytearray((copy / "model.fp32.onnx").read_bytes())
    data[-5] ^= 0xFF
    (copy / "model.fp32.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 does not match"):
        load_bundle(copy)


def test_garbage_model_with_matching_hash(copy):
    (copy / "model.fp32.onnx").write_bytes(b"definitely not onnx")
    edit_meta(copy, lambda m: m["files"].update({"model.fp32.onnx": sha256_file(copy / "model.fp32.onnx")}))
    with pytest.raises(BundleError, match="not a readable ONNX model"):
        load_bundle(copy)


def test_model_with_other_input_name(copy):
    model = onnx.load(str(copy / "model.fp32.onnx"))
    model.graph.input[0].name = "input"
    for node in model.graph.node:
        node.input[:] = ["input" if i == "x" else i for i in node.input]
    onnx.save(model, str(copy / "model.fp32.onnx"))
    edit_meta(copy, lambda m: m["files"].update({"model.fp32.onnx": sha256_file(copy / "model.fp32.onnx")}))
    with pytest.raises(BundleError, match="no input named 'x'"):
        load_bundle(copy)


def test_detector_rejects_bad_precision_and_threads(good):
    with pytest.raises(ValueError, match="precision"):
        Detector.load(good, precision="fp16")
    with pytest.raises(ValueError, match="threads"):
        Detector.load(good, threads=0)


def test_format_2_bundle_with_window_shaped_model_scores_the_same(good, copy):
    for name in ("model.fp32.onnx", "model.int8.onnx"):
        with_window_shaped_io(copy / name, 8, len(SENSORS))

    def as_v2(m):
        m["format_version"] = 2
        for key in ("horizon", "frozen"):  # format 5's keys: a format-2 bundle has none
            m.pop(key, None)
        m["files"] = {n: sha256_file(copy / n) for n in ("model.fp32.onnx", "model.int8.onnx")}
    edit_meta(copy, as_v2)
    windows = np.random.default_rng(3).normal(size=(50, 8, 3))
    for precision in ("int8", "fp32"):
        new, old = Detector.load(good, precision), Detector.load(copy, precision)
        assert not old._flat and new._flat
        np.testing.assert_allclose(old.score_batch(windows)[0], new.score_batch(windows)[0], rtol=1e-5)


def test_format_3_bundle_refuses_a_window_shaped_model(copy):
    with_window_shaped_io(copy / "model.fp32.onnx", 8, len(SENSORS))
    edit_meta(copy, lambda m: m["files"].update({"model.fp32.onnx": sha256_file(copy / "model.fp32.onnx")}))
    with pytest.raises(BundleError, match=r"shape \[None, 8, 3\], bundle.json says \[N, 24\]"):
        load_bundle(copy)
