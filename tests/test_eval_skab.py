"""`appliance eval skab` on a small synthetic SKAB-shaped dataset, re-scored independently."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from appliance.eval.skab import (EvalSettings, evaluate_file, experiment_files, replay_file,
                                 run_skab_eval, with_level_free)
from appliance.detector.train import read_csv

# Trains and evaluates many models on SKAB-shaped data; stream mode runs a broker and the appliance.
pytestmark = pytest.mark.integration

SENSORS = ["Current", "Pressure", "Temperature", "Volume Flow RateRMS"]
FAST = dict(window=10, hidden=(16, 4), max_iter=40)
T0 = datetime(2020, 3, 9, 10, 0, 0, tzinfo=timezone.utc).timestamp()


def rows_for(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    load = 1.0 + 0.2 * np.sin(t / 50.0)
    return np.stack([load + 0.03 * rng.standard_normal(n), 2 * load + 0.05 * rng.standard_normal(n),
                     60 + 0.1 * rng.standard_normal(n), 30 * load + 0.3 * rng.standard_normal(n)], axis=1)


def write_skab(path: Path, rows: np.ndarray, anomaly: np.ndarray | None, start: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = start + np.arange(len(rows), dtype=float)
    ts[200:] += 1.0  # a 2 s gap, as SKAB has: the window builder holds the last value
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=";")
        w.writerow(["datetime", *SENSORS] + (["anomaly", "changepoint"] if anomaly is not None else []))
        for i, (t, r) in enumerate(zip(ts, rows)):
            stamp = datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            extra = [f"{float(anomaly[i]):.1f}", "0.0"] if anomaly is not None else []
            w.writerow([stamp, *[f"{v:.6f}" for v in r], *extra])


@pytest.fixture(scope="module")
def skab_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("skab")
    write_skab(root / "anomaly-free" / "anomaly-free.csv", rows_for(2300, 100), None, T0)
    for k, (rel, sensor) in enumerate([("valve1/0.csv", 3), ("valve1/1.csv", 1), ("other/1.csv", 0)]):
        rows = rows_for(700, k)
        label = np.zeros(len(rows))
        label[480:620] = 1
        rows[480:620, sensor] += 8 * rows[:400, sensor].std()  # a strong, sustained fault
        write_skab(root / rel, rows, label, T0 + 10_000 * (k + 1))
    return root


@pytest.fixture(scope="module")
def run(skab_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    summary = run_skab_eval(skab_dir, predictions_out=out / "pred", json_out=out / "summary.json",
                            settings=EvalSettings(bundle=FAST), workers=1, quiet=True)
    return summary, out


def rescore(pred_dir: Path, data_dir: Path, train_rows: int = 400) -> dict:
    """Independent scorer: reads the prediction CSVs and the labels, nothing else."""
    tp = fp = fn = tn = 0
    for data in sorted(p for sub in ("valve1", "valve2", "other") for p in (data_dir / sub).glob("*.csv")):
        with open(data, newline="") as f:
            recs = list(csv.DictReader(f, delimiter=";"))[train_rows:]
        with open(pred_dir / data.parent.name / data.name, newline="") as f:
            reader = csv.reader(f, delimiter=";")
            assert next(reader) == ["datetime", "prediction"]
            preds = list(reader)
        assert [p[0] for p in preds] == [r["datetime"] for r in recs]  # every test row, in order
        for (_, y), r in zip(preds, recs):
            assert y in ("0", "1")
            lab = float(r["anomaly"]) > 0
            tp += y == "1" and lab
            fp += y == "1" and not lab
            fn += y == "0" and lab
            tn += y == "0" and not lab
    return {"f1": tp / (tp + (fn + fp) / 2), "far": 100 * fp / (fp + tn), "mar": 100 * fn / (fn + tp)}


def test_predictions_rescore_to_the_reported_numbers(run, skab_dir):
    summary, out = run
    independent = rescore(out / "pred", skab_dir)
    reported = summary["detectors"]["ae_int8"]
    assert independent["f1"] == pytest.approx(reported["f1"], abs=1e-4)
    assert independent["far"] == pytest.approx(reported["far"], abs=1e-2)
    assert independent["mar"] == pytest.approx(reported["mar"], abs=1e-2)
    assert json.loads((out / "summary.json").read_text())["detectors"]["ae_int8"]["f1"] == reported["f1"]


def test_summary_json_records_the_library_versions(run):
    from importlib.metadata import version
    written = json.loads((run[1] / "summary.json").read_text())["environment"]
    assert written["libraries"]["onnxruntime"] == version("onnxruntime")
    assert written["libraries"]["numpy"] == version("numpy") and written["python"].count(".") == 2


def test_summary_covers_all_detectors_and_test_rows(run):
    summary, _ = run
    assert summary["files"] == 3 and summary["test_rows"] == 3 * 300
    assert set(summary["detectors"]) == {"ae_int8", "ae_fp32", "pca_t2q", "iforest", "flag_all"}
    floor = summary["detectors"]["flag_all"]
    assert floor["far"] == 100.0 and floor["mar"] == 0.0
    share = summary["anomalous_share"]
    assert floor["f1"] == pytest.approx(share / (share + (1 - share) / 2), abs=1e-4)
    assert 0.9 <= summary["int8"]["row_agreement"] <= 1.0
    # (model sizes of this toy model say nothing; the size ratio is checked in test_detector_train)
    assert summary["int8"]["int8_bytes_mean"] > 0 and summary["int8"]["fp32_bytes_mean"] > 0
    assert summary["drift_allowance"]["chunks"] == 2
    assert all(v >= 1.0 for v in summary["drift_allowance"]["scales"].values())
    # Stationary synthetic normal record: nothing drifts, and every file's bundle says what it used.
    assert summary["level_free"]["from_anomaly_free"]["sensors"] == []
    assert summary["level_free"]["from_anomaly_free"]["stretches"] == 2
    assert set(summary["level_free"]["per_file"]) == {"valve1/0.csv", "valve1/1.csv", "other/1.csv"}


def test_sensors_drifting_in_anomaly_free_become_level_free(tmp_path):
    rows = rows_for(2300, 5)
    rows[:, 2] += np.linspace(0.0, 5.0, len(rows))  # temperature warms 50 noise deviations over the record
    write_skab(tmp_path / "anomaly-free" / "anomaly-free.csv", rows, None, T0)
    settings, report = with_level_free(tmp_path, EvalSettings(bundle=FAST))
    assert settings.bundle["level_free"] == ["Temperature"] and report["sensors"] == ["Temperature"]
    assert settings.bundle["window"] == FAST["window"]
    # An explicit choice, or switching the rule off, is left alone.
    assert with_level_free(tmp_path, EvalSettings(bundle={**FAST, "level_free": []}))[0].bundle["level_free"] == []
    off = EvalSettings(bundle=FAST, level_free_from_anomaly_free=False)
    assert with_level_free(tmp_path, off) == (off, None)


def test_strong_faults_are_caught_and_explained(run):
    summary, _ = run
    ae = summary["detectors"]["ae_int8"]
    # A sustained 8-sigma fault is unmistakable: each episode is found, most of its rows flagged.
    assert ae["episodes_detected"] == 3 and ae["episodes_missed"] == 0
    assert ae["mar"] < 30 and ae["far"] < 30
    assert ae["mean_delay_s"] is not None and ae["mean_delay_s"] < 30


def test_decisions_are_causal(skab_dir, tmp_path):
    """Changing the future never changes a past prediction."""
    settings = EvalSettings(bundle=FAST, drift_budget=None)
    sensors, ts, rows, _ = read_csv(skab_dir / "valve1" / "0.csv")
    base = replay_file("a", sensors, ts, rows, settings, tmp_path)
    spoiled = rows.copy()
    spoiled[550:] = 1e6  # the future goes wild
    other = replay_file("b", sensors, ts, spoiled, settings, tmp_path)
    cut = np.searchsorted(base["t_end"], ts[549], side="right")
    assert cut > 0
    np.testing.assert_array_equal(base["t_end"][:cut], other["t_end"][:cut])
    for k in ("ae_int8", "pca_t2q", "iforest"):
        np.testing.assert_array_equal(base["active"][k][:cut], other["active"][k][:cut])
        np.testing.assert_allclose(base["ratio"][k][:cut], other["ratio"][k][:cut], rtol=1e-6)
    assert other["active"]["ae_int8"][cut:].any()


def test_evaluate_file_outputs_every_test_row(skab_dir, tmp_path):
    r = evaluate_file("valve1/1.csv", skab_dir / "valve1" / "1.csv", EvalSettings(bundle=FAST, drift_budget=None),
                      tmp_path)
    assert len(r["ts"]) == len(r["label"]) == 300
    assert all(len(p) == 300 and set(np.unique(p)) <= {0, 1} for p in r["pred"].values())


def test_bad_data_dir_errors(tmp_path, skab_dir):
    with pytest.raises(FileNotFoundError, match="not found"):
        run_skab_eval(tmp_path / "missing", quiet=True)
    with pytest.raises(FileNotFoundError, match="no experiment files"):
        experiment_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="not among"):
        run_skab_eval(skab_dir, files=["valve9/0.csv"], quiet=True)
    with pytest.raises(ValueError, match="mode"):
        run_skab_eval(skab_dir, mode="batch", quiet=True)


@pytest.mark.integration  # a real Mosquitto, the simulator's replay, the running appliance
def test_stream_mode_through_real_broker_and_running_appliance(skab_dir, tmp_path):
    from appliance.broker import find_mosquitto
    if find_mosquitto() is None:
        pytest.fail("mosquitto is required (apt-get install -y mosquitto)")
    summary = run_skab_eval(skab_dir, mode="stream", predictions_out=tmp_path / "pred",
                            settings=EvalSettings(bundle=FAST), quiet=True)
    p = summary["pipeline"]
    assert p["readings"] == p["readings_expected"] == 3 * 700 * len(SENSORS)
    assert p["dead_letters"] == 0
    ae = summary["ae_int8"]
    assert ae["episodes_detected"] == 3 and ae["mean_delay_s"] < 30
    assert summary["alarms"] >= 3
    # The stream mode scores every row of every file; re-score its predictions independently.
    independent = rescore(tmp_path / "pred", skab_dir, train_rows=0)
    assert independent["f1"] == pytest.approx(ae["f1"], abs=1e-4)
    assert independent["far"] == pytest.approx(ae["far"], abs=1e-2)


def test_label_free_validation_runs_synthetic_faults_through_the_eval_path(skab_dir):
    from appliance.eval.validation import run_validation
    summary = run_validation(skab_dir, EvalSettings(bundle=FAST, drift_budget=None), workers=1, quiet=True)
    # 2300 normal rows make 2 stretches of 400 + 750 rows, each copied with a step, a ramp and noise.
    assert summary["cases"] == 6 and summary["rows"] == 6 * 750
    assert 0.2 < summary["faulty_share"] < 0.6
    ae = summary["detectors"]["ae_int8"]
    assert set(summary["detectors"]) == {"ae_int8", "ae_fp32", "pca_t2q", "iforest"}
    assert ae["episodes_detected"] + ae["episodes_missed"] == 6
    assert ae["episodes_detected"] >= 3  # faults of 2-5 training deviations on a quiet synthetic record


def test_variant_learning_from_anomaly_free_is_reported_on_its_own(skab_dir, tmp_path, capsys):
    """The non-leaderboard variant: every bundle also learns from anomaly-free.csv; no allowance."""
    summary = run_skab_eval(skab_dir, json_out=tmp_path / "s.json", workers=1, quiet=True,
                            settings=EvalSettings(bundle=FAST, prior_from_anomaly_free=True))
    assert "detectors_drift_allowance" not in summary and summary["drift_allowance"] is None
    assert summary["settings"]["bundle"]["prior_rows"] == "2301 rows of anomaly-free.csv"
    assert summary["detectors"]["ae_int8"]["episodes_detected"] == 3
    assert json.loads((tmp_path / "s.json").read_text())["settings"]["bundle"]["prior_rows"].endswith("csv")


def test_cli_refuses_the_variant_in_stream_mode(skab_dir, capsys):
    from appliance.cli import main
    assert main(["eval", "skab", "--data", str(skab_dir), "--mode", "stream", "--learn-from-anomaly-free"]) == 2
    assert "protocol-mode variant" in capsys.readouterr().err
