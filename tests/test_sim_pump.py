"""The pump process model: SKAB-like normal behaviour, inputs, faults, determinism; its training-data CSV."""

from __future__ import annotations

import csv
import doctest
import hashlib

import numpy as np
import pytest

from firmware_sim import normal as normal_module
from firmware_sim import pump as pump_module
from firmware_sim.pump import FAULTS, SENSORS, PumpModel
from tests.support.sim import run_cli

IDX = {s: i for i, s in enumerate(SENSORS)}


def run(model: PumpModel, n: int, dt: float = 1.0) -> np.ndarray:
    out = []
    for _ in range(n):
        v = model.step(dt)
        assert list(v) == list(SENSORS)
        out.append([v[s] for s in SENSORS])
    return np.array(out)


def col(a: np.ndarray, sensor: str) -> np.ndarray:
    return a[:, IDX[sensor]]


def test_doctests():
    assert doctest.testmod(pump_module).failed == 0
    assert doctest.testmod(normal_module).failed == 0


def test_same_seed_same_data_and_different_seed_differs():
    a, b = run(PumpModel(seed=11), 200, 0.1), run(PumpModel(seed=11), 200, 0.1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, run(PumpModel(seed=12), 200, 0.1))


def test_normal_operation_matches_skab_magnitudes_and_noise(skab_dir):
    with open(skab_dir / "anomaly-free" / "anomaly-free.csv") as f:
        rows = list(csv.reader(f, delimiter=";"))
    assert tuple(rows[0][1:9]) == SENSORS
    skab = np.array([[float(x) for x in r[1:9]] for r in rows[1:]])
    sim = run(PumpModel(seed=5), 3000, 1.0)
    assert np.isfinite(sim).all()
    for s in SENSORS:
        ref, got = col(skab, s), col(sim, s)
        assert abs(got.mean() - ref.mean()) < 0.5 * ref.std() + 1e-3, s
        # Sample-to-sample noise has SKAB's size (slow drifts are deliberately shorter).
        ratio = np.diff(got).std() / np.diff(ref).std()
        assert 0.5 < ratio < 2.0, (s, ratio)
    # SKAB's pressure transducer reads on a fixed grid; so does the model's.
    levels = set(np.round(col(skab, "Pressure"), 4))
    assert set(np.round(col(sim, "Pressure"), 4)) <= levels | {round(x, 4) for x in
                                                               0.054711 + 0.327927 * np.arange(-10, 11)}
    assert np.corrcoef(col(sim, "Current"), col(sim, "Voltage"))[0, 1] > 0.2  # shared acquisition noise


def test_speed_and_valve_inputs_move_the_operating_point():
    def mean(speed, valve, sensor):
        return col(run(PumpModel(seed=1, speed=speed, valve=valve), 300, 1.0), sensor).mean()

    assert mean(0.7, 1.0, "Volume Flow RateRMS") < mean(1.0, 1.0, "Volume Flow RateRMS") - 20
    assert mean(0.7, 1.0, "Accelerometer1RMS") < mean(1.0, 1.0, "Accelerometer1RMS") * 0.6
    assert mean(0.7, 1.0, "Current") < mean(1.0, 1.0, "Current") - 0.5
    assert mean(1.0, 0.4, "Volume Flow RateRMS") < mean(1.0, 1.0, "Volume Flow RateRMS") - 30
    assert mean(1.0, 0.4, "Pressure") > mean(1.0, 1.0, "Pressure") + 0.3
    stopped = run(PumpModel(seed=1, speed=0.0), 50, 1.0)
    assert np.isfinite(stopped).all()
    assert col(stopped, "Volume Flow RateRMS").max() == 0.0
    # Attributes are live inputs (the PLC simulator writes them every scan).
    m = PumpModel(seed=1)
    run(m, 10)
    m.valve = 0.0
    assert col(run(m, 5), "Volume Flow RateRMS").max() == 0.0


def faulty_vs_baseline(fault, severity=1.0, sensor=None, warm=60, n=60, **kw):
    """Same seed, same noise: the difference between the runs is the fault alone."""
    base, bad = PumpModel(seed=3, **kw), PumpModel(seed=3, **kw)
    run(base, warm)
    run(bad, warm)
    bad.inject(fault, severity, sensor)
    return run(base, n), run(bad, n)


def test_bearing_wear_raises_vibration_current_and_heat():
    base, bad = faulty_vs_baseline("bearing_wear")
    tail = slice(-20, None)
    assert col(bad, "Accelerometer1RMS")[tail].mean() > col(base, "Accelerometer1RMS")[tail].mean() * 1.4
    assert col(bad, "Accelerometer2RMS")[tail].mean() > col(base, "Accelerometer2RMS")[tail].mean() * 1.1
    assert np.diff(col(bad, "Accelerometer1RMS")).std() > 1.5 * np.diff(col(base, "Accelerometer1RMS")).std()
    assert (col(bad, "Current") - col(base, "Current"))[tail].mean() > 0.1
    assert (col(bad, "Temperature") - col(base, "Temperature"))[-1] > 1.0
    assert np.array_equal(col(bad, "Voltage"), col(base, "Voltage"))


def test_cavitation_drops_pressure_and_flow_and_shakes():
    base, bad = faulty_vs_baseline("cavitation", n=120)
    tail = slice(-60, None)
    assert col(bad, "Volume Flow RateRMS")[tail].mean() < col(base, "Volume Flow RateRMS")[tail].mean() - 5
    assert col(bad, "Volume Flow RateRMS")[tail].std() > 2 * col(base, "Volume Flow RateRMS")[tail].std()
    assert col(bad, "Pressure")[tail].mean() < col(base, "Pressure")[tail].mean() - 0.1
    assert col(bad, "Accelerometer1RMS")[tail].std() > 2 * col(base, "Accelerometer1RMS")[tail].std()


def test_valve_blockage_flow_down_pressure_up_current_changes():
    base, bad = faulty_vs_baseline("valve_blockage")
    tail = slice(-20, None)
    assert col(bad, "Volume Flow RateRMS")[tail].mean() < col(base, "Volume Flow RateRMS")[tail].mean() - 30
    assert col(bad, "Pressure")[tail].mean() > col(base, "Pressure")[tail].mean() + 0.4
    assert col(bad, "Current")[tail].mean() < col(base, "Current")[tail].mean() - 0.1


def test_sensor_stuck_freezes_one_sensor_only():
    base, bad = faulty_vs_baseline("sensor_stuck", sensor="Current")
    assert len(set(col(bad, "Current"))) == 1
    assert col(bad, "Current")[0] != col(base, "Current")[0] or len(set(col(base, "Current"))) > 1
    for s in SENSORS:
        if s != "Current":
            assert np.array_equal(col(bad, s), col(base, s)), s
    _, default = faulty_vs_baseline("sensor_stuck")
    assert len(set(col(default, "Volume Flow RateRMS"))) == 1


def test_sensor_drift_grows_on_one_sensor_only():
    base, bad = faulty_vs_baseline("sensor_drift", severity=2.0, n=100)
    d = col(bad, "Temperature") - col(base, "Temperature")
    # 0.1 spread per second per unit of severity, linear from the moment of injection.
    assert np.allclose(d, 0.1 * 2.0 * 0.67 * np.arange(1, 101), atol=2e-4)
    for s in SENSORS:
        if s != "Temperature":
            assert np.array_equal(col(bad, s), col(base, s)), s


def test_clear_faults_restores_the_process():
    m = PumpModel(seed=2)
    run(m, 30)
    m.inject("valve_blockage")
    assert m.faults == {"valve_blockage": 1.0}
    blocked = col(run(m, 30), "Volume Flow RateRMS").mean()
    m.clear_faults()
    assert m.faults == {}
    assert col(run(m, 30), "Volume Flow RateRMS").mean() > blocked + 30


@pytest.mark.parametrize("args, match", [
    (("rust",), "unknown fault"),
    (("bearing_wear", 0), "severity"),
    (("bearing_wear", float("nan")), "severity"),
    (("bearing_wear", 4), "severity"),
    (("bearing_wear", 1, "Current"), "does not take a sensor"),
    (("sensor_drift", 1, "Torque"), "unknown sensor"),
])
def test_inject_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        PumpModel().inject(*args)


def test_every_fault_is_injectable_at_any_dt():
    for fault in FAULTS:
        m = PumpModel(seed=0)
        m.inject(fault, 0.5)
        assert np.isfinite(run(m, 20, 0.05)).all()
    with pytest.raises(ValueError):
        PumpModel().step(0)


# -- appliance-sim normal-csv: the training data of the demo model

def test_normal_csv_is_fault_free_model_output_in_the_training_format(tmp_path):
    out = tmp_path / "sub" / "normal.csv"
    r = run_cli("normal-csv", "--out", str(out), "--rows", "50", "--rate", "10", "--seed", "7")
    assert r.returncode == 0, r.stderr
    assert f"rows=50 rate_hz=10 seed=7 out={out}" in r.stdout
    with out.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ts", *SENSORS] and len(rows) == 51
    model = PumpModel(seed=7)
    for i, row in enumerate(rows[1:]):
        values = model.step(0.1)
        assert row == [f"{1_700_000_000 + i * 0.1:.3f}", *(f"{values[s]:.6g}" for s in SENSORS)]
    assert out.read_bytes().count(b"\r\n") == 51  # the csv module's line ends, as the demo always wrote
    assert [p.name for p in out.parent.iterdir()] == ["normal.csv"]  # no temporary file left


def test_normal_csv_for_the_demo_is_the_same_data_as_ever(tmp_path):
    # The demo trains its model on exactly this: a change here silently changes the demo's model.
    out = tmp_path / "demo-normal.csv"
    r = run_cli("normal-csv", "--out", str(out), "--rows", "12000", "--rate", "10.0", "--seed", "7")
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == DEMO_TRAINING_SHA256


DEMO_TRAINING_SHA256 = "5c0dd727968640f8c85a22000a9844423ce84ab8895c96112adbd39e1f54f1ae"


@pytest.mark.parametrize("args, match", [
    (("--rows", "0"), "--rows: must be >= 1"),
    (("--rate", "nan"), "--rate: must be a finite number > 0"),
    (("--rate", "-10"), "--rate: must be a finite number > 0"),
    ((), "--out"),
])
def test_normal_csv_refuses_bad_arguments(tmp_path, args, match):
    out = [] if not args else ["--out", str(tmp_path / "x.csv")]
    r = run_cli("normal-csv", *out, *args)
    assert r.returncode == 2 and match in r.stderr
    assert not (tmp_path / "x.csv").exists()


def test_normal_csv_unwritable_destination_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = run_cli("normal-csv", "--out", str(blocker / "x.csv"), "--rows", "3")
    assert r.returncode == 2 and "appliance-sim normal-csv:" in r.stderr and "Traceback" not in r.stderr
