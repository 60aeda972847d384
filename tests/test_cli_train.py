import csv
import json

import numpy as np

from appliance.cli import main


def test_train_command_writes_a_loadable_int8_bundle(tmp_path, capsys):
    rng = np.random.default_rng(3)
    n = 2500
    t = np.arange(n)
    data = tmp_path / "normal.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ts", "vib", "current", "pressure"])
        for i in range(n):
            w.writerow([1_700_000_000 + i, 1 + 0.3 * np.sin(t[i] / 20) + 0.05 * rng.normal(),
                        5 + 0.5 * np.sin(t[i] / 20 + 1) + 0.05 * rng.normal(), 2 + 0.05 * rng.normal()])
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
    n = 3000
    t = np.arange(n)
    record = tmp_path / "long_normal.csv"
    with record.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ts", "vib", "temp"])
        for i in range(n):
            # temp warms by 30 degrees over the record while its noise is 0.2: it drifts.
            w.writerow([1_700_000_000 + i, 1 + 0.3 * np.sin(t[i] / 20) + 0.05 * rng.normal(),
                        40 + 30 * i / n + 0.2 * rng.normal()])
    out = tmp_path / "bundle"
    assert main(["train", "--data", str(record), "--out", str(out), "--window", "16", "--no-trend-check",
                 "--level-free-from", str(record)]) == 0
    assert "drifting in" in capsys.readouterr().out
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["level_free"] == ["temp"] and meta["training"]["level_free"]["trend_limit"] is None
