import csv
import json
from pathlib import Path

import numpy as np
import pytest

from appliance.cli import main

# Full-size training through the CLI (about 35 s alone; it once hit the 600 s timeout on a loaded machine).
pytestmark = pytest.mark.integration

T0 = 1_700_000_000


def write_csv(path: Path, columns: dict[str, np.ndarray]) -> Path:
    """A CSV with a ``ts`` column (1 s apart) and one column per sensor."""
    n = len(next(iter(columns.values())))
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ts", *columns])
        w.writerows([T0 + i, *(float(c[i]) for c in columns.values())] for i in range(n))
    return path


def test_train_command_writes_a_loadable_int8_bundle(tmp_path, capsys):
    rng = np.random.default_rng(3)
    t = np.arange(2500)
    data = write_csv(tmp_path / "normal.csv", {
        "vib": 1 + 0.3 * np.sin(t / 20) + 0.05 * rng.normal(size=len(t)),
        "current": 5 + 0.5 * np.sin(t / 20 + 1) + 0.05 * rng.normal(size=len(t)),
        "pressure": 2 + 0.05 * rng.normal(size=len(t))})
    out = tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--out", str(out), "--window", "16"]) == 0
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["sensors"] == ["vib", "current", "pressure"] and meta["window"] == 16
    from appliance.detector.scorer import Detector

    det = Detector.load(out)
    assert (out / "model.int8.onnx").stat().st_size < (out / "model.fp32.onnx").stat().st_size
    assert det.threshold > 0


def test_train_command_takes_level_free_sensors_from_a_long_normal_record(tmp_path, capsys):
    rng = np.random.default_rng(4)
    t = np.arange(3000)
    # temp warms by 30 degrees over the record while its noise is 0.2: it drifts.
    record = write_csv(tmp_path / "long_normal.csv", {
        "vib": 1 + 0.3 * np.sin(t / 20) + 0.05 * rng.normal(size=len(t)),
        "temp": 40 + 30 * t / len(t) + 0.2 * rng.normal(size=len(t))})
    out = tmp_path / "bundle"
    assert main(["train", "--data", str(record), "--out", str(out), "--window", "16", "--no-trend-check",
                 "--level-free-from", str(record)]) == 0
    assert "drifting in" in capsys.readouterr().out
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["level_free"] == ["temp"] and meta["training"]["level_free"]["trend_limit"] is None


def test_bad_settings_and_data_are_refused_in_one_line_each(tmp_path, capsys):
    data = write_csv(tmp_path / "short.csv", {"vib": np.ones(50), "current": np.ones(50)})
    out = tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--out", str(out), "--window", "1", "--period", "0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[1].strip() for line in err] == ["period_s", "window"]
    assert main(["train", "--data", str(data), "--out", str(out), "--window", "16"]) == 2
    assert capsys.readouterr().err.startswith("appliance train: only ") and not out.exists()


def slow_process_csv(path: Path, n: int = 500, period: float = 180.0, seed: int = 5) -> Path:
    """Six correlated sensors of a slow process sampled every ``period`` seconds."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    base = np.sin(t / 15.0) + 0.5 * np.sin(t / 4.0)
    cols = {f"s{j}": (1 + j) * base + 0.1 * rng.normal(size=n) for j in range(6)}
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", *cols])
        w.writerows([T0 + period * i, *(float(c[i]) for c in cols.values())] for i in range(n))
    return path


def test_a_slow_process_trains_with_window_and_staleness_derived_from_its_period(tmp_path, capsys):
    data = slow_process_csv(tmp_path / "normal.csv")
    out = tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--period", "180", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "window 3 rows (540 s), score averaged over 20 windows (3960 s), staleness 900 s" in printed
    meta = json.loads((out / "bundle.json").read_text())
    assert (meta["period_s"], meta["window"], meta["staleness_s"], meta["lateness_s"]) == (180.0, 3, 900.0, 360.0)
    assert meta["horizon"] == 20 and meta["format_version"] == 5
    assert meta["training"]["model"]["stopped"] in ("tolerance", "epoch cap", "held-back loss")


def test_the_period_is_taken_from_the_timestamps_when_not_given(tmp_path, capsys):
    data = slow_process_csv(tmp_path / "normal.csv", n=300)
    out = tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--out", str(out), "--max-epochs", "5"]) == 0
    captured = capsys.readouterr()
    assert "period: 180 s (median spacing" in captured.out
    assert json.loads((out / "bundle.json").read_text())["period_s"] == 180.0
    # Five epochs cannot settle the loss: said, not silent.
    assert "epoch cap (5 epochs)" in captured.err


def test_too_few_windows_names_the_reason(tmp_path, capsys):
    data = slow_process_csv(tmp_path / "normal.csv", n=300)
    out = tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--period", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "180 s apart" in err and "staleness_s=5 s" in err and "--period 180" in err and "Traceback" not in err
    # A staleness below the period is refused by name, not with a traceback.
    assert main(["train", "--data", str(data), "--period", "180", "--staleness", "5", "--out", str(out)]) == 2
    assert "staleness_s (5.0) must be >= period_s (180.0)" in capsys.readouterr().err
    # Runs broken by gaps: the message counts them against the window.
    gappy = tmp_path / "gappy.csv"
    with gappy.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "a", "b"])
        w.writerows([T0 + 100 * (i // 5) + i % 5, float(i % 7), float(i % 3)] for i in range(200))
    assert main(["train", "--data", str(gappy), "--period", "1", "--window", "8", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "only 0 training windows" in err and "40 runs, the longest 5 rows" in err and "needs 8" in err
    assert not out.exists()


def test_a_slow_process_gets_the_changes_members_averaged_over_the_horizon(tmp_path, capsys):
    """At 3 min both changes members (PCA-Q and the whitened distance) come with the default horizon
    (format 5): each model's error is averaged over the horizon before the largest ratio is taken, against
    thresholds calibrated on averaged errors; ``--no-pca-member --no-distance-member`` leaves them out."""
    from dataclasses import replace

    from appliance.detector.bundle import load_bundle
    from appliance.detector.scorer import Detector
    from appliance.detector.train import moving_mean, read_csv_rows, sliding_windows

    data = slow_process_csv(tmp_path / "normal.csv", n=300)
    out = tmp_path / "bundle"
    # The spread member (on by default here too) scores whole spans: tests/test_detector_spread.py.
    assert main(["train", "--data", str(data), "--period", "180", "--out", str(out), "--max-epochs", "5",
                 "--no-spread-member"]) == 0
    printed = capsys.readouterr().out
    assert "pca member:" in printed and "components of the changes" in printed
    assert "distance member: whitened distance of the changes" in printed
    bundle = load_bundle(out)
    assert bundle.meta["format_version"] == 5 and set(bundle.members) == {"pca", "distance"} and bundle.horizon == 20
    assert bundle.meta["members"]["distance"]["kind"] == "mahalanobis"
    calibration = bundle.meta["threshold_calibration"]
    assert calibration["distance"]["threshold_scale"] == 1.05 and calibration["pca"]["threshold_scale"] == 1.0
    assert bundle.member_thresholds["distance"] == pytest.approx(1.05 * calibration["distance"]["unscaled_threshold"])
    from appliance.sync.trust import decision_values
    signed = decision_values(bundle.meta)  # a release signs both members' thresholds and files
    assert {"pca", "distance"} <= set(signed["thresholds"])
    assert {"model.pca.onnx", "model.distance.onnx"} <= set(signed["model_files"])
    _, _, rows = read_csv_rows(data)
    th = bundle.thresholds["int8"]
    combined, _ = Detector(bundle).score_batch(sliding_windows(rows, bundle.span))
    ae_alone, _ = Detector(replace(bundle, horizon=1, members={}, member_thresholds={})).score_batch(
        sliding_windows(rows, bundle.window))
    ratios = [moving_mean(ae_alone, 20) / th]
    for name, path in bundle.members.items():
        own = bundle.member_thresholds[name]
        assert own == bundle.meta["thresholds"][name] > 0
        assert bundle.meta["threshold_calibration"][name]["horizon"] == 20
        alone = replace(bundle, horizon=1, thresholds={"int8": 1e30, "fp32": 1e30},  # the member's ratio wins
                        members={name: path}, member_thresholds={name: own})
        errors, _ = Detector(alone).score_batch(sliding_windows(rows, bundle.window))
        ratios.append(moving_mean(errors / 1e30 * own, 20) / own)  # back from "AE threshold x ratio"
    np.testing.assert_allclose(combined, th * np.max(ratios, axis=0), rtol=1e-4)
    assert main(["train", "--data", str(data), "--period", "180", "--out", str(tmp_path / "alone"), "--max-epochs",
                 "5", "--no-pca-member", "--no-distance-member", "--no-spread-member"]) == 0
    assert load_bundle(tmp_path / "alone").members == {}
