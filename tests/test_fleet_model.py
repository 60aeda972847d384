"""Fleet learning without Flower: the model spec and weights, local training, the privacy accountant, config.

These run without the ``fleet`` extra; the last test checks that the appliance
itself runs when flwr cannot be imported at all.
"""

from __future__ import annotations

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
