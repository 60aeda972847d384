"""Fleet learning without Flower: the model spec and weights, local training, the privacy accountant, config.

These run without the ``fleet`` extra; the last test checks that the appliance
itself runs when flwr cannot be imported at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from appliance.config import ConfigError, parse_config
from appliance.detector.scorer import Detector
from appliance.detector.session import make_session, sensor_errors
from appliance.fleet.model import (FleetModelError, autoencoder, client_windows, seed_from_bundle, train_local,
                                   update_norm)
from appliance.fleet.privacy import epsilon, gdp_mu, round_multiplier
from tests.support.detector import SENSORS, normal_rows

ROOT = Path(__file__).resolve().parents[1]


def test_weights_read_from_a_bundle_score_as_the_bundle_does(release_bundles):
    spec, weights = seed_from_bundle(release_bundles[0])
    X_train, X_held = client_windows(spec, SENSORS, normal_rows(400, 5), None, holdout=0.25)
    ours = autoencoder(spec, weights).errors(X_held)
    bundle = Detector.load(release_bundles[0], precision="fp32").bundle
    theirs = sensor_errors(make_session(bundle.models["fp32"]), X_held).mean(axis=1)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)


def test_the_proximal_term_keeps_local_weights_near_the_global_ones(release_bundles):
    spec, weights = seed_from_bundle(release_bundles[0])
    # Another operating point: plain local training wanders off, FedProx's term holds it back.
    rows = normal_rows(600, 9) * np.array([1.3, 1.3, 1.0, 1.3])
    X, _ = client_windows(spec, SENSORS, rows, None, holdout=0.2)
    free, _ = train_local(spec, weights, X, epochs=3, mu=0.0, seed=1)
    held, _ = train_local(spec, weights, X, epochs=3, mu=50.0, seed=1)
    assert 0 < update_norm(held, weights) < 0.6 * update_norm(free, weights)
    again, _ = train_local(spec, weights, X, epochs=3, mu=0.0, seed=1)
    assert update_norm(again, free) == 0.0  # deterministic for a seed


def test_data_without_the_models_sensors_is_refused_by_name(release_bundles):
    spec, _ = seed_from_bundle(release_bundles[0])
    with pytest.raises(FleetModelError, match="Flow"):
        client_windows(spec, SENSORS[:3], normal_rows(300, 1)[:, :3], None, holdout=0.2)
    with pytest.raises(FleetModelError, match="shape"):
        spec.check([np.zeros((2, 2))] + [np.zeros(s) for s in spec.shapes()[1:]])


def test_privacy_accounting_composes_rounds_and_counts_missing_clients():
    one = epsilon(gdp_mu([1.0]), 1e-5)
    assert epsilon(gdp_mu([1.0] * 4), 1e-5) == pytest.approx(epsilon(gdp_mu([0.5]), 1e-5))
    assert epsilon(gdp_mu([1.0] * 4), 1e-5) > one > epsilon(gdp_mu([2.0]), 1e-5) > 0
    # 2 of 4 clients replied: the average moves twice as far for the same noise.
    assert round_multiplier(1.0, 4, 2) == 0.5 and round_multiplier(1.0, 4, 4) == 1.0
    assert epsilon(gdp_mu([0.0]), 1e-5) == float("inf")


def test_fleet_config_is_validated_at_the_edge():
    cfg = parse_config({"fleet": {"strategy": "fedprox", "clients": 3, "dp": {"enabled": True}}})
    assert cfg.fleet.strategy == "fedprox" and cfg.fleet.dp.noise_multiplier == 1.0
    with pytest.raises(ConfigError) as e:
        parse_config({"fleet": {"clients": 2, "min_results": 3, "strategy": "fedsgd", "dp": {"clip": 1}}})
    text = str(e.value)
    assert "fleet.strategy" in text and "fleet.dp.clip: unknown key" in text
    with pytest.raises(ConfigError, match="min_results"):
        parse_config({"fleet": {"clients": 2, "min_results": 3}})


def test_the_appliance_runs_without_flwr_and_the_fleet_command_says_how_to_get_it(tmp_path):
    # flwr made unimportable: the config, the CLI and the live path must not need it.
    code = ("import sys; sys.modules['flwr'] = None\n"
            "from appliance.cli import main\n"
            "import appliance.runtime, appliance.config\n"
            "assert 'flwr' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "sys.exit(main(['fleet', 'client', '--data', 'x.csv']))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert "pip install" in p.stderr and "[fleet]" in p.stderr


def test_the_fleet_bundle_is_written_by_the_detectors_int8_path(release_bundles, tmp_path):
    # The fleet's weights go through the detector's quantize-check-write (quantize.write_int8_bundle):
    # the INT8 check, the common metadata and the loader's own validation are the detector's.
    from appliance.detector.bundle import load_bundle
    from appliance.fleet.export import write_fleet_bundle

    spec, weights = seed_from_bundle(release_bundles[0])
    seed = load_bundle(release_bundles[0])
    out = write_fleet_bundle(spec, weights, tmp_path / "fleet", reference_rows=normal_rows(600, 7),
                             reference_sensors=SENSORS, client_thresholds=[1.0, 2.0, 10.0],
                             fleet_info={"rounds": 1}, seed=1)
    bundle = load_bundle(out)
    assert "-fleet-" in bundle.model_version and bundle.meta["format_version"] == seed.meta["format_version"]
    # The frozen-sensor check comes from the reference rows (noisy sensors: all watched), on single windows.
    assert bundle.horizon == 1 and bundle.frozen is not None and set(bundle.frozen.allowed) == set(SENSORS)
    assert bundle.thresholds["fp32"] == 2.0  # the median of the clients' own
    assert bundle.meta["threshold_calibration"]["fp32"]["method"] == "fleet_median"
    ratio = bundle.meta["threshold_calibration"]["int8"]["int8_over_fp32_error_ratio"]
    assert bundle.thresholds["int8"] == pytest.approx(2.0 * ratio)
    assert bundle.meta["int8_check"]["passed"] is True and bundle.meta["int8_check"]["threshold_mapping"] == "ratio"
    assert bundle.meta["training"]["fleet"] == {"rounds": 1}
    assert bundle.meta["training"]["quantization"]["calibration_windows"] > 0
    assert (bundle.sensors, bundle.window) == (seed.sensors, seed.window)


@pytest.fixture(scope="module")
def slow_seed(tmp_path_factory):
    """A seed bundle of a slow process (3 min, 3-row model windows averaged over a horizon of 8)."""
    from appliance.detector.train import TrainSettings, read_csv_rows, train_bundle
    from firmware_sim.process import write_process_csv

    work = tmp_path_factory.mktemp("slow-fleet")
    sensors, ts, rows = read_csv_rows(write_process_csv(work / "normal.csv", 400, seed=3))
    bundle = train_bundle(rows, sensors, work / "seed", TrainSettings(
        period_s=180.0, horizon=8, max_iter=40, pca_member=False, distance_member=False, spread_member=False), ts=ts)
    return bundle, sensors, ts, rows


def test_a_slow_process_fleet_model_keeps_the_seeds_horizon_and_swaps_in_without_a_restart(slow_seed, tmp_path):
    """The fleet model of a slow process averages its error over the seed's horizon, with thresholds on averaged
    errors (the INT8 check still on single windows), so it scores the same span and a gateway can hot-swap it."""
    from appliance.detector.bundle import load_bundle
    from appliance.detector.train import calibrate_threshold, moving_mean
    from appliance.fleet.export import write_fleet_bundle
    from appliance.fleet.model import ModelSpec, averaged
    from appliance.lifecycle.shadow import compatibility

    seed_dir, sensors, ts, rows = slow_seed
    spec, weights = seed_from_bundle(seed_dir)
    assert spec.horizon == 8 and ModelSpec.from_json(spec.to_json()) == spec
    older = json.loads(spec.to_json())
    del older["horizon"]  # a server from before horizons
    assert ModelSpec.from_json(json.dumps(older)).horizon == 1
    _, X_held = client_windows(spec, sensors, rows, ts, holdout=0.3)
    errors = autoencoder(spec, weights).errors(X_held)
    np.testing.assert_allclose(averaged(spec, errors), moving_mean(errors, 8))
    client_th = calibrate_threshold(averaged(spec, errors))[0]  # what a client reports (client.py)

    out = write_fleet_bundle(spec, weights, tmp_path / "fleet", reference_rows=rows, reference_sensors=sensors,
                             reference_ts=ts, client_thresholds=[client_th, 2 * client_th, 3 * client_th], seed=1)
    fleet, seed = load_bundle(out), load_bundle(seed_dir)
    assert fleet.horizon == 8 and fleet.span == seed.span and fleet.meta["format_version"] == 5
    assert compatibility(Detector(seed), Detector(fleet)) is None
    assert fleet.thresholds["fp32"] == pytest.approx(2 * client_th)
    calibration = fleet.meta["threshold_calibration"]
    single_fp32, single_int8 = (calibration[p]["single_window_threshold"] for p in ("fp32", "int8"))
    assert fleet.meta["int8_check"]["passed"] is True and calibration["int8"]["horizon"] == 8
    assert fleet.thresholds["int8"] == pytest.approx(2 * client_th * single_int8 / single_fp32)
    assert fleet.frozen is not None and max(fleet.frozen.allowed.values()) <= fleet.span
    # The live score is the horizon's average, as the thresholds were calibrated.
    span_windows = np.stack([rows[i:i + fleet.span] for i in range(0, 40)])
    scores, _ = Detector(fleet, "fp32").score_batch(span_windows)
    assert np.isfinite(scores).all()


def test_too_few_held_back_windows_for_the_horizon_are_refused(slow_seed):
    seed_dir, sensors, ts, rows = slow_seed
    spec, _ = seed_from_bundle(seed_dir)
    with pytest.raises(FleetModelError, match=r"need >= 10 and >= 12"):
        client_windows(spec, sensors, rows[:60], ts[:60], holdout=0.1)


def test_a_client_reports_the_threshold_of_averaged_errors(slow_seed):
    pytest.importorskip("flwr", reason="the fleet extra (pip install .[fleet]) is not installed")
    from appliance.detector.train import calibrate_threshold, moving_mean
    from appliance.fleet.client import GatewayClient

    seed_dir, sensors, ts, rows = slow_seed
    spec, weights = seed_from_bundle(seed_dir)
    loss, n, metrics = GatewayClient("g1", sensors, rows, ts).evaluate(weights, {"spec": spec.to_json(),
                                                                                  "holdout": 0.3})
    _, X_held = client_windows(spec, sensors, rows, ts, holdout=0.3)
    errors = autoencoder(spec, weights).errors(X_held)
    assert n == len(X_held) and loss == pytest.approx(float(np.mean(errors)))
    assert metrics["threshold"] == pytest.approx(calibrate_threshold(moving_mean(errors, spec.horizon))[0])
    assert metrics["threshold"] < calibrate_threshold(errors)[0]  # averaging narrows the normal spread
