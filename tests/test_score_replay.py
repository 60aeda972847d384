"""``appliance score``: recorded rows replayed through the live path (builder, ONNX session, Decider)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from appliance.actions.config import DecisionConfig
from appliance.actions.decide import Decider
from appliance.cli import main
from appliance.detector.scorer import Detector
from appliance.detector.train import TrainSettings, sliding_windows, train_bundle
from tests.support.detector import SENSORS, normal_rows

T0 = 1_700_000_000
WINDOW = 12


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    rows = normal_rows(1500, 0)
    return train_bundle(rows, SENSORS, tmp_path_factory.mktemp("replay") / "bundle",
                        TrainSettings(window=WINDOW, hidden=(16, 4), max_iter=60, seed=1),
                        ts=T0 + np.arange(len(rows), dtype=np.float64))


def write_csv(path: Path, ts: np.ndarray, rows: np.ndarray, sensors=SENSORS) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", *sensors])
        w.writerows([f"{t:.0f}", *map(repr, map(float, r))] for t, r in zip(ts, rows))
    return path


def read_scores(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_replay_writes_one_row_per_input_row_matching_an_independent_scoring(tmp_path, bundle_dir, capsys):
    rows = normal_rows(400, 7)
    rows[250:, 1] += 1.5  # pressure steps up: a clear fault from row 250 on
    data = write_csv(tmp_path / "run.csv", T0 + np.arange(len(rows)), rows)
    out = tmp_path / "scores.csv"
    assert main(["score", "--bundle", str(bundle_dir), "--data", str(data), "--out", str(out)]) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and "400 rows" in summary[0] and "rows/s" in summary[0]

    got = read_scores(out)
    assert list(got[0]) == ["timestamp", "score", "threshold", "alarm", "unseen"] and len(got) == len(rows)
    assert [g["timestamp"] for g in got] == [f"{T0 + i}" for i in range(len(rows))]
    # No full window before row WINDOW - 1: score empty, no alarm.
    assert all(g["score"] == "" and g["alarm"] == "0" for g in got[:WINDOW - 1])
    # Independently: every full window scored in one batch, decided by a fresh Decider.
    det = Detector.load(bundle_dir)
    expected, _ = det.score_batch(sliding_windows(rows, WINDOW))
    scores = np.array([float(g["score"]) for g in got[WINDOW - 1:]])
    np.testing.assert_allclose(scores, expected, rtol=1e-4)
    decider = Decider.from_config(DecisionConfig())
    alarm = [int(decider.update_ratio(v / det.threshold).active) for v in expected]
    assert [int(g["alarm"]) for g in got[WINDOW - 1:]] == alarm
    thresholds = {float(g["threshold"]) for g in got}
    assert len(thresholds) == 1 and thresholds.pop() == pytest.approx(det.threshold, rel=1e-5)
    # The fault is caught and the normal start is quiet.
    assert sum(alarm[:200]) == 0 and all(alarm[-100:])


def test_a_gap_restarts_the_window_and_scores_stay_empty_until_it_refills(tmp_path, bundle_dir):
    rows = normal_rows(200, 3)
    ts = T0 + np.r_[np.arange(100), 1000 + np.arange(100)].astype(float)
    data = write_csv(tmp_path / "gap.csv", ts, rows)
    out = tmp_path / "scores.csv"
    assert main(["score", "--bundle", str(bundle_dir), "--data", str(data), "--out", str(out)]) == 0
    got = read_scores(out)
    empty = [i for i, g in enumerate(got) if g["score"] == ""]
    assert empty == [*range(WINDOW - 1), *range(100, 100 + WINDOW - 1)]


def test_several_files_are_separate_recordings(tmp_path, bundle_dir, capsys):
    a = write_csv(tmp_path / "a.csv", T0 + np.arange(50.0), normal_rows(50, 1))
    b = write_csv(tmp_path / "b.csv", T0 + np.arange(30.0), normal_rows(30, 2))
    out = tmp_path / "scores.csv"
    assert main(["score", "--bundle", str(bundle_dir), "--data", str(a), str(b), "--out", str(out)]) == 0
    got = read_scores(out)
    assert len(got) == 80 and got[50]["score"] == "" and got[50 + WINDOW - 1]["score"] != ""
    assert "2 file(s), 80 rows" in capsys.readouterr().out


def test_bad_input_is_one_clear_line(tmp_path, bundle_dir, capsys):
    rows = normal_rows(40, 1)
    lacking = write_csv(tmp_path / "lacking.csv", T0 + np.arange(40.0), rows[:, :3], SENSORS[:3])
    assert main(["score", "--bundle", str(bundle_dir), "--data", str(lacking)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("appliance score:") and "Flow" in err and "Traceback" not in err
    assert main(["score", "--bundle", str(tmp_path / "nowhere"), "--data", str(lacking)]) == 2
    assert "model bundle directory not found" in capsys.readouterr().err
    assert main(["score", "--bundle", str(bundle_dir), "--data", str(tmp_path / "missing.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err
