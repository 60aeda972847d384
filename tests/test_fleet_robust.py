"""Poisoned or broken fleet updates are bounded (issue 27, item 4), against the real fleet server.

The server is ``appliance fleet server`` and every client its own process
(``rigs/fleet_run.py``); the lying clients are
``rigs/fleet_attacker.py``: NaN weights, a transposed array, int weights,
garbage metrics, 10^9 claimed windows with a large nudge, a doubled threshold.
What is checked: the server survives them all and drops exactly the broken
results (counted in the run report); every update is clipped to the server's
bound and every client weighs the same, so the aggregate moves at most the bound;
the fleet threshold stays inside its band around the seed's. Besides: the
config refuses a wildcard bind, and the shadow check refuses a candidate that
alarms far less than the current model while missing its over-threshold windows.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from tests.support.detector import normal_rows

def test_a_wildcard_bind_is_refused_without_an_explicit_opt_in():
    from pydantic import ValidationError

    from appliance.fleet.config import FleetConfig

    for address in ("0.0.0.0:9092", "[::]:9092", ":9092"):
        with pytest.raises(ValidationError, match="cannot authenticate gateways"):
            FleetConfig(server_address=address)
        assert FleetConfig(server_address=address, allow_unauthenticated_bind=True).server_address == address
    assert FleetConfig(server_address="10.8.0.1:9092").server_address == "10.8.0.1:9092"
    # With TLS the SuperLink runtime admits only registered gateway keys: a wildcard is allowed there ...
    tls = dict(ca_file="ca.pem", cert_file="server.pem", key_file="server.key")
    assert FleetConfig(server_address="0.0.0.0:9092", **tls).server_address == "0.0.0.0:9092"


def test_the_server_command_holds_address_to_the_same_rule():
    from appliance.fleet.cli import _bind_allowed
    from appliance.fleet.config import FleetConfig

    with pytest.raises(ValueError, match="--address '0.0.0.0:9092' listens on every interface"):
        _bind_allowed("0.0.0.0:9092", FleetConfig())
    _bind_allowed("0.0.0.0:9092", FleetConfig(allow_unauthenticated_bind=True))
    _bind_allowed("127.0.0.1:9092", FleetConfig())
    # ... but not for the one-process server, which authenticates no gateway, TLS or not.
    tls = dict(ca_file="ca.pem", cert_file="server.pem", key_file="server.key")
    with pytest.raises(ValueError, match="listens on every interface"):
        _bind_allowed("0.0.0.0:9092", FleetConfig(server_address="0.0.0.0:9092", **tls))
    _bind_allowed(None, FleetConfig())


def test_the_shadow_refuses_a_candidate_that_alarms_far_less_while_missing_faults():
    from appliance.lifecycle.shadow import ShadowBounds, ShadowResult

    b = ShadowBounds(duration_s=0, min_windows=2)
    quiet = ShadowResult(windows=500, failed=0, current_raises=11, candidate_raises=1, latency_p99_us=40.0,
                         missed_windows=40)
    ok, why = quiet.verdict(b)
    assert not ok and "at least 5 expected" in why and "40 windows" in why, why
    # Fewer alarms where it agrees on every window the current model scored over its threshold: allowed.
    agrees = ShadowResult(windows=500, failed=0, current_raises=11, candidate_raises=1, latency_p99_us=40.0)
    assert agrees.verdict(b)[0]
    # A few fewer: allowed (min_alarm_factor 0.5, max_fewer_alarms 1).
    assert ShadowResult(windows=500, failed=0, current_raises=11, candidate_raises=5, latency_p99_us=40.0,
                        missed_windows=40).verdict(b)[0]


flwr_needed = pytest.mark.skipif(importlib.util.find_spec("flwr") is None,
                                 reason="the fleet extra (pip install .[fleet]) is not installed")


BASE = {"rounds": 2, "local_epochs": 3, "round_timeout_s": 300.0, "join_timeout_s": 300.0, "batch_size": 64}


def gateways(folder, *points: tuple[str, int, float]) -> dict:
    """CSV files of normal rows, one per (name, seed, load); and ``ref``, the engineer's reference record."""
    from tests.support.fleet import operating_point, write_csv

    out = {n: write_csv(folder / f"{n}.csv", operating_point(normal_rows(700, s), load)) for n, s, load in points}
    return out | {"ref": write_csv(folder / "ref.csv", normal_rows(600, 100))}


@pytest.fixture
def fleet_factory(tmp_path):
    from tests.support.fleet import FleetRun

    started: list[FleetRun] = []

    def make(name: str, fleet: dict, seed_bundle, reference) -> FleetRun:
        started.append(FleetRun(tmp_path / name, dict(BASE, **fleet), seed_bundle, reference))
        return started[-1]

    yield make
    for f in started:
        f.stop()


@pytest.mark.integration
@flwr_needed
def test_broken_updates_are_dropped_and_the_server_goes_on(fleet_factory, tmp_path, release_bundles):
    from appliance.detector.bundle import load_bundle

    data = gateways(tmp_path, ("gw1", 101, 1.0), ("gw2", 102, 1.05), ("bad", 103, 0.95))
    fleet = fleet_factory("broken", dict(clients=6, min_results=2), release_bundles[0], data["ref"])
    fleet.client("gw1", data["gw1"])
    fleet.client("gw2", data["gw2"])
    for mode in ("nan", "shape", "dtype", "metrics"):
        fleet.attacker(mode, mode, data["bad"])
    assert fleet.wait() == 0, fleet.log("server")[-5000:]
    report = fleet.report()
    assert report["rounds_released"] == 2, report
    for r in report["rounds"]:
        rejected = {x["name"]: x["reason"] for x in r["rejected"]}
        assert set(rejected) == {"nan", "shape", "dtype"}, r["rejected"]
        assert "NaN or infinite" in rejected["nan"] and "shape" in rejected["shape"] and "dtype" in rejected["dtype"]
        # The garbage metrics cost nothing but the metrics: its weights count, its evaluation does not.
        # (its name was bytes: it is reported under its connection id)
        kept = {c["name"]: c for c in r["clients"]}
        assert len(kept) == 3 and {"gw1", "gw2"} < set(kept), kept
        assert all(np.isfinite(c["update_norm"]) and not c["clipped_by_server"] for c in kept.values())
        # Those whose update was dropped are not asked for the threshold either.
        assert sorted(e["name"] for e in r["evaluation"]) == ["gw1", "gw2"]
        assert sorted(x["reason"] for x in r["evaluation_rejected"]) == ["its update was dropped this round"] * 3 + [
            "loss nan"]
    assert report["final_check"]["problem"] is None
    bundle = load_bundle(fleet.out)
    assert bundle.meta["int8_check"]["passed"] is True
    assert "dropped" in fleet.log("server")


@pytest.mark.integration
@flwr_needed
def test_a_client_claiming_a_billion_windows_moves_the_fleet_no_further_than_the_bound(
        fleet_factory, tmp_path, release_bundles):
    from appliance.fleet.model import seed_from_bundle, update_norm

    data = gateways(tmp_path, ("gw1", 101, 1.0), ("gw2", 102, 1.05), ("evil", 103, 0.95))
    bound = 0.5
    fleet = fleet_factory("billion", dict(clients=3, min_results=2, robust={"max_update_norm": bound}),
                          release_bundles[0], data["ref"])
    fleet.client("gw1", data["gw1"])
    fleet.client("gw2", data["gw2"])
    fleet.attacker("evil", "windows", data["evil"], "--nudge", "10")
    assert fleet.wait() == 0, fleet.log("server")[-5000:]
    report = fleet.report()
    assert report["rounds_released"] == 2
    for r in report["rounds"]:
        clients = {c["name"]: c for c in r["clients"]}
        evil = clients["evil"]
        assert evil["train_windows"] == 10**9 and evil["weight"] == 1.0 == clients["gw1"]["weight"]
        assert evil["update_norm"] == pytest.approx(10.0, rel=1e-3) and evil["clipped_by_server"]
        # Three clients, each update at most `bound`, equal weights: the aggregate moves at most `bound`,
        # the liar's share of it at most bound / 3.
        assert r["update_bound"] == bound and r["aggregate_update_norm"] <= bound * (1 + 1e-4)
    _, seed = seed_from_bundle(release_bundles[0])
    _, final = seed_from_bundle(fleet.out)
    assert update_norm(final, seed) <= 2 * bound * (1 + 1e-3)
    assert report["final_check"]["problem"] is None


@pytest.mark.integration
@flwr_needed
def test_a_client_reporting_a_high_threshold_cannot_move_the_fleet_threshold_past_the_band(
        fleet_factory, tmp_path, release_bundles):
    from appliance.detector.bundle import load_bundle

    data = gateways(tmp_path, ("gw1", 101, 1.0), ("high", 102, 1.0))
    # Two clients: the median of two is their mean, so the old server took half the liar's value.
    fleet = fleet_factory("threshold", dict(clients=2, min_results=2), release_bundles[0], data["ref"])
    fleet.client("gw1", data["gw1"])
    fleet.attacker("high", "threshold", data["high"], "--threshold-factor", "10")
    assert fleet.wait() == 0, fleet.log("server")[-5000:]
    report = fleet.report()
    seed = load_bundle(release_bundles[0]).thresholds["fp32"]
    last = {e["name"]: e["threshold"] for e in report["rounds"][-1]["evaluation"]}
    assert last["high"] > 5 * last["gw1"]
    got = load_bundle(fleet.out).thresholds["fp32"]
    # The liar is clamped to seed x 1.5 and the seed votes: the median lies between the seed and the honest one.
    assert min(seed, last["gw1"]) - 1e-9 <= got <= max(seed, last["gw1"]) + 1e-9, (got, seed, last)
    assert got < float(np.mean(list(last.values())))
