"""Fleet learning end to end: a real Flower server and real gateway clients (separate processes) on loopback.

The server is ``appliance fleet server`` and every gateway ``appliance fleet
client``, each its own process, talking Flower's gRPC on a free loopback port.
The fleet starts from a trained bundle; each gateway holds normal rows of its
own (another seed, another operating point). What is checked: rounds complete
and the fleet model is written as a bundle; a gateway killed mid-round does not
stall the run; with DP every update the server receives is within the clipping
bound and the released model differs from the noise-free average by noise of
the configured size; the fleet bundle goes through the signed release path,
is promoted where the gateway's data agrees and refused where it does not.
"""

from __future__ import annotations

import asyncio
import math
import signal
from pathlib import Path

import numpy as np
import pytest

from tests.support.detector import SENSORS, normal_rows
from tests.support.fleet import FleetRun, operating_point, write_csv
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

flwr = pytest.importorskip("flwr", reason="the fleet extra (pip install .[fleet]) is not installed")

# Bounds for a broken run only; a healthy one ends long before (two shared cores).
RUN_TIMEOUT_S = 900.0


def finished(fleet: FleetRun) -> dict:
    """The run report, once the server and every client ended; the server must have succeeded."""
    assert fleet.wait() == 0, fleet.log("server")[-5000:]
    return fleet.report()


@pytest.fixture
def fleet_factory(tmp_path):
    started: list[FleetRun] = []

    def make(name: str, fleet: dict, seed_bundle: Path, reference: Path) -> FleetRun:
        started.append(FleetRun(tmp_path / name, fleet, seed_bundle, reference))
        return started[-1]

    yield make
    for f in started:
        f.stop()


@pytest.fixture(scope="module")
def gateway_data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("gateways")
    return {"reference": write_csv(d / "reference.csv", normal_rows(600, 100)),
            "gw1": write_csv(d / "gw1.csv", operating_point(normal_rows(700, 101), 1.0)),
            "gw2": write_csv(d / "gw2.csv", operating_point(normal_rows(700, 102), 1.05)),
            "gw3": write_csv(d / "gw3.csv", operating_point(normal_rows(700, 103), 0.95)),
            "slow": write_csv(d / "slow.csv", normal_rows(4000, 104))}


BASE = {"rounds": 2, "clients": 3, "min_results": 2, "local_epochs": 3, "round_timeout_s": 300.0,
        "join_timeout_s": 300.0, "batch_size": 64}


def test_rounds_complete_and_the_fleet_model_is_a_bundle(fleet_factory, release_bundles, gateway_data):
    from appliance.detector.bundle import load_bundle
    from appliance.fleet.model import seed_from_bundle, update_norm

    fleet = fleet_factory("fedprox", dict(BASE, strategy="fedprox", proximal_mu=0.5), release_bundles[0],
                          gateway_data["reference"])
    for name in ("gw1", "gw2", "gw3"):
        fleet.client(name, gateway_data[name])
    report = finished(fleet)
    assert report["strategy"] == "fedprox" and report["rounds_released"] == 2
    for r in report["rounds"]:
        assert sorted(c["name"] for c in r["clients"]) == ["gw1", "gw2", "gw3"], r
        assert r["failures"] == 0
        assert all(c["bytes_up"] == r["bytes_down_per_client"] > 0 for c in r["clients"])
        assert all(c["peak_rss_kb"] > 0 for c in r["clients"])
        assert sorted(e["name"] for e in r["evaluation"]) == ["gw1", "gw2", "gw3"]
    # The fleet model is a bundle the detector loads, on the seed's grid and scaler, with new weights.
    bundle = load_bundle(fleet.out)
    seed = load_bundle(release_bundles[0])
    assert (bundle.sensors, bundle.window, bundle.stride) == (seed.sensors, seed.window, seed.stride)
    assert np.allclose(bundle.scaler.center, seed.scaler.center)
    spec, w_seed = seed_from_bundle(release_bundles[0])
    _, w_fleet = seed_from_bundle(fleet.out)
    assert update_norm(w_fleet, w_seed) > 0
    last = report["rounds"][-1]["evaluation"]
    assert bundle.thresholds["fp32"] == pytest.approx(float(np.median([e["threshold"] for e in last])))
    assert bundle.meta["int8_check"]["passed"] is True
    for name in ("gw1", "gw2", "gw3"):
        assert fleet.clients[name].returncode == 0, fleet.log(name)[-2000:]


def test_a_gateway_killed_mid_round_does_not_stall_the_fleet(fleet_factory, release_bundles, gateway_data):
    fleet = fleet_factory("dropout", dict(BASE, rounds=3), release_bundles[0], gateway_data["reference"])
    fleet.client("gw1", gateway_data["gw1"])
    fleet.client("gw2", gateway_data["gw2"])
    slow = fleet.client("slow", gateway_data["slow"])
    wait_until(lambda: "fit round=2 begins" in fleet.log("slow"), timeout=RUN_TIMEOUT_S,
               what="the slow gateway to start round 2", interval=0.05, detail=lambda: fleet.log("server")[-2000:])
    slow.send_signal(signal.SIGKILL)
    report = finished(fleet)
    assert report["rounds_released"] == 3, report
    names = [sorted(c["name"] for c in r["clients"]) for r in report["rounds"]]
    assert names[0] == ["gw1", "gw2", "slow"]
    # Killed while training round 2: that round is aggregated from the two others, round 3 goes on without it.
    assert names[1] == ["gw1", "gw2"] and names[2] == ["gw1", "gw2"], names
    assert report["rounds"][1]["failures"] == 1
    assert fleet.out.is_dir()


def test_dp_clips_every_update_and_noises_the_aggregate(fleet_factory, release_bundles, gateway_data, tls_files):
    from appliance.fleet.privacy import epsilon, gdp_mu

    dp = {"enabled": True, "noise_multiplier": 0.8, "clipping_norm": 0.05, "delta": 1e-5}
    # Over TLS (the server's certificate checked against the test CA), as a plant would run it.
    tls = {"ca_file": str(tls_files.ca_file), "cert_file": str(tls_files.cert_file),
           "key_file": str(tls_files.key_file)}
    fleet = fleet_factory("dp", dict(BASE, clients=2, min_results=2, dp=dp, **tls), release_bundles[0],
                          gateway_data["reference"])
    fleet.client("gw1", gateway_data["gw1"])
    fleet.client("gw2", gateway_data["gw2"])
    report = finished(fleet)
    assert report["rounds_released"] == 2
    sigma = 0.8 * 0.05 / 2
    for r in report["rounds"]:
        norms = [c["update_norm"] for c in r["clients"]]
        assert max(norms) <= 0.05 * (1 + 1e-4), norms
        # The bound did something: the local training moved the weights further than it allows.
        assert max(c["update_norm_before_clip"] for c in r["clients"]) > 0.05
        d = r["dp"]
        assert d["noise_std"] == pytest.approx(sigma)
        # ||N(0, sigma^2 I_d)|| concentrates at sigma * sqrt(d) (relative spread ~ 1/sqrt(2d), d in the thousands).
        expected = sigma * math.sqrt(d["parameters"])
        assert 0.9 * expected < d["noise_l2"] < 1.1 * expected, (d, expected)
        assert d["epsilon"] == pytest.approx(epsilon(gdp_mu([0.8]), 1e-5))
    total = report["privacy"]
    assert total["rounds_accounted"] == 2
    assert total["epsilon"] == pytest.approx(epsilon(gdp_mu([0.8, 0.8]), 1e-5))
    assert total["epsilon"] > report["rounds"][0]["dp"]["epsilon"]
    assert load_ok(fleet.out)
    assert "SSL is enabled" in fleet.log("server")


def load_ok(path: Path) -> bool:
    from appliance.detector.bundle import load_bundle

    return load_bundle(path).meta["training"]["fleet"]["privacy"]["epsilon"] > 0


def shadow_config(data_dir, bundle, trusted_root):
    from appliance.config import parse_config

    return parse_config({"data_dir": str(data_dir), "log_level": "WARNING", "web": {"enabled": False},
                         "inputs": {"mqtt": {"enabled": False}}, "detector": {"bundle": str(bundle)},
                         "outputs": {"mqtt_alarm": {"enabled": False}, "history": {"enabled": False},
                                     "sync": {"updates": {"trusted_root": str(trusted_root)}}}})


def run_gateway(folder: Path, current: Path, rows: np.ndarray, source: str, root: Path, ca_file: str):
    """A gateway on ``current`` that pulls the newest release in a window and shadows it on ``rows``."""
    from appliance.core import OutputContext, Reading
    from appliance.detector.scorer import Detector
    from appliance.runtime import build
    from appliance.store import StoreReader
    from appliance.sync.models import ModelSync
    from appliance.lifecycle.shadow import ShadowBounds
    from tests.support.detector import NO_LATENCY_BOUND
    from tests.support.tuf_repo import gateway

    updater = gateway(folder / "gateway", source, root, ca_file=ca_file)
    app = build(shadow_config(folder / "data", current, updater.trusted_root), detector=Detector.load(current))
    # A strict site: a candidate may not raise a single alarm more than its current model.
    sync = ModelSync(updater, ShadowBounds(**NO_LATENCY_BOUND, duration_s=0, min_windows=60, max_extra_alarms=0))

    def feed(part, start):
        for i, row in enumerate(part):
            app.submit([Reading("pump1", s, 1_700_000_000.0 + start + i, float(v)) for s, v in zip(SENSORS, row)])

    async def go():
        await app.start()
        try:
            feed(rows[:40], 0)
            await app.drain()
            ctx = OutputContext(open_alarm_ids=frozenset(), publish_action=lambda a: None, spawn=lambda c: None,
                                models=app.models)
            await sync.run_window(ctx, deadline_mono=None)
            assert sync.last_refusal is None, sync.last_refusal
            feed(rows[40:], 40)
            await app.drain()
            assert app.store.flush()
        finally:
            await app.shutdown()

    asyncio.run(go())
    return app, StoreReader(app.store.path).model_changes()


def test_the_fleet_model_is_released_signed_and_each_gateway_decides_in_shadow(
        fleet_factory, release_bundles, gateway_data, tmp_path, tuf_server, tls_files):
    from appliance.detector.scorer import Detector
    from appliance.detector.train import TrainSettings, train_bundle
    from tests.support.tuf_repo import Publisher

    fleet = fleet_factory("release", dict(BASE, rounds=2, clients=2, min_results=2), release_bundles[0],
                          gateway_data["reference"])
    fleet.client("gw1", gateway_data["gw1"])
    fleet.client("gw2", gateway_data["gw2"])
    finished(fleet)

    # The engineer signs and publishes it as any other release (appliance release add / publish).
    pub = Publisher(tmp_path / "engineer", www=tuf_server.root)
    pub.release(fleet.out, 2)
    fleet_version = Detector.load(fleet.out).version

    # A gateway like the fleet's (seed model, same operating point) promotes it ...
    app, changes = run_gateway(tmp_path / "agrees", release_bundles[0], normal_rows(400, 11), tuf_server.url,
                               pub.root, str(tls_files.ca_file))
    assert [c["event"] for c in changes] == ["promoted", "shadow_started"], changes
    assert app.detector.version == fleet_version

    # ... one at a far operating point, on a model of its own, keeps it and says why.
    far = operating_point(normal_rows(1500, 7), 1.6)
    local = train_bundle(far[:1100], SENSORS, tmp_path / "local",
                         TrainSettings(window=16, stride=2, hidden=(16, 4), max_iter=30, seed=3))
    app, changes = run_gateway(tmp_path / "disagrees", local, far[1100:], tuf_server.url, pub.root,
                               str(tls_files.ca_file))
    assert [c["event"] for c in changes] == ["rejected", "shadow_started"], changes
    assert "would raise" in changes[0]["reason"], changes[0]
    assert app.detector.version == Detector.load(local).version
