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
