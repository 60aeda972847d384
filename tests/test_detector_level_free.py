"""Level-free sensors: a slowly wandering level is not an anomaly, a jump still is."""

from __future__ import annotations

import json

import numpy as np
import pytest

from appliance.detector.bundle import BundleError, load_bundle, sha256_file
from appliance.detector.features import drifting_sensors
from appliance.detector.scorer import Detector
from appliance.detector.train import TrainSettings, sliding_windows, train_bundle
from tests.support.legacy import with_window_shaped_io
from tests.support.detector import SENSORS, WINDOW, normal_rows

OPTS = dict(window=WINDOW, stride=1, hidden=(32, 8), max_iter=80, seed=3)
TEMP = SENSORS.index("Temperature")


def warming(rows: np.ndarray, degrees: float) -> np.ndarray:
    """The same rows with the temperature rising linearly by ``degrees`` over them."""
    out = rows.copy()
    out[:, TEMP] += np.linspace(0.0, degrees, len(rows))
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    rows = normal_rows(3000, 0)
    root = tmp_path_factory.mktemp("lf")
    return {
        "level": train_bundle(rows, SENSORS, root / "level", TrainSettings(**OPTS, trend_limit=None)),
        "level_free": train_bundle(rows, SENSORS, root / "free", TrainSettings(**OPTS, level_free=["Temperature"])),
    }


def test_bundle_records_level_free_sensors(bundles):
    free, level = load_bundle(bundles["level_free"]), load_bundle(bundles["level"])
    assert free.level_free == ("Temperature",) and level.level_free == ()
    meta = json.loads((bundles["level_free"] / "bundle.json").read_text())
    assert meta["format_version"] == 5 and meta["level_free"] == ["Temperature"]
    assert meta["training"]["level_free"]["given"] == ["Temperature"]


def test_slow_warming_alarms_only_the_model_that_learned_the_level(bundles):
    # 8 degrees over the test rows: far outside the training range (about +-1.5 degrees).
    rows = warming(normal_rows(1200, 7), 8.0)
    windows = sliding_windows(rows, WINDOW, 4)
    ratio = {}
    for name, path in bundles.items():
        det = Detector.load(path)
        errors, _ = det.score_batch(windows)
        ratio[name] = errors[-50:] / det.threshold
    assert np.median(ratio["level"]) > 1.0, "the level-learning model must see the warm-up"
    assert np.median(ratio["level_free"]) < 1.0 and (ratio["level_free"] > 1.0).mean() < 0.05


def test_a_jump_inside_the_window_still_alarms_a_level_free_sensor(bundles):
    det = Detector.load(bundles["level_free"])
    rows = normal_rows(400, 9)
    rows[200:, TEMP] += 3.0  # an abrupt step, not a drift
    errors, contrib = det.score_batch(sliding_windows(rows, WINDOW, 1))
    straddling = errors[200 - WINDOW + 4:200 - 4] / det.threshold
    assert (straddling > 1.0).mean() > 0.5
    assert contrib[200 - WINDOW // 2].argmax() == TEMP


def test_trend_in_training_rows_makes_a_sensor_level_free(tmp_path):
    rows = warming(normal_rows(3000, 1), 15.0)
    b = load_bundle(train_bundle(rows, SENSORS, tmp_path / "b", TrainSettings(**OPTS)))
    assert "Temperature" in b.level_free
    meta = json.loads((b.path / "bundle.json").read_text())["training"]["level_free"]
    assert meta["given"] == [] and "Temperature" in meta["trending"]


def test_score_one_and_score_batch_agree_with_level_free_sensors(bundles):
    from tests.support.detector import make_window
    det = Detector.load(bundles["level_free"])
    values = warming(normal_rows(WINDOW, 4), 2.0)
    one = det.score_one(make_window(values, SENSORS))
    batch, _ = det.score_batch(values[None])
    assert one.value == pytest.approx(float(batch[0]), rel=1e-6)


@pytest.mark.parametrize("bad, match", [
    (["Nope"], "not in the data"),
    ("Temperature", "list of sensor names"),
])
def test_level_free_is_validated(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        train_bundle(normal_rows(500, 0), SENSORS, tmp_path / "b", TrainSettings(**OPTS, level_free=bad))


def test_bundle_with_unknown_level_free_sensor_is_refused(bundles, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(bundles["level_free"], copy)
    meta = json.loads((copy / "bundle.json").read_text())
    meta["level_free"] = ["Nope"]
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="level_free"):
        load_bundle(copy)


def test_version_1_bundle_loads_without_level_free_sensors(bundles, tmp_path):
    import shutil
    copy = tmp_path / "v1"
    shutil.copytree(bundles["level"], copy)
    meta = json.loads((copy / "bundle.json").read_text())
    for name in ("model.fp32.onnx", "model.int8.onnx"):
        with_window_shaped_io(copy / name, WINDOW, len(SENSORS))
        meta["files"][name] = sha256_file(copy / name)
    meta["format_version"] = 1
    for key in ("level_free", "horizon", "frozen"):  # keys of later formats
        meta.pop(key, None)
    (copy / "bundle.json").write_text(json.dumps(meta))
    assert load_bundle(copy).level_free == ()


def test_drifting_sensors_needs_a_long_record():
    with pytest.raises(ValueError, match="at least 1150 rows"):
        drifting_sensors(np.zeros((1000, 2)), ["a", "b"])
