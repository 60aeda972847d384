"""The loop on the real runtime and the pump simulator: faults injected, alarms raised, verdicts given, then signed
releases judged on that labelled history: a worse one rejected by the back-test with the episode named, a better
one accepted into its shadow run.

Real parts: the pump model of ``firmware-sim`` (its readings handed to the runtime's sink one second at a time,
as its publisher would), an ONNX model trained on the simulator's normal running, the runtime, its store and
alarm book, the store's ``set_verdict`` command, the engineer's TUF repository served over TLS, the gateway's
updater and ``ModelSync``. ``appliance backtest`` then replays the same store from the command line.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from appliance.cli import main
from appliance.config import parse_config
from appliance.core import Reading
from appliance.lifecycle.config import BacktestBounds
from appliance.lifecycle.shadow import ShadowBounds
from appliance.runtime import build
from appliance.store import StoreReader
from appliance.sync.models import ModelSync
from firmware_sim.pump import SENSORS, PumpModel
from tests.support.detector import NO_LATENCY_BOUND
from tests.support.tuf_repo import Publisher, gateway

pytestmark = pytest.mark.integration  # a TLS repository, the runtime end to end, a trained model

T0 = 1_765_000_000.0
# Seconds of live running, and the faults injected: (from, to, kind, the cause a technician gives).
LIVE_S = 2400
FAULTS = ((700, 760, "bearing_wear", "bearing"), (1500, 1560, "cavitation", "cavitation"))
HISTORY = BacktestBounds(min_history_s=1200)


@pytest.fixture(scope="module")
def pump_bundles(tmp_path_factory) -> dict[str, Path]:
    """A model of the simulated pump's normal running, and two recalibrations: deaf (threshold x 1000) and
    calmer (x 1.2)."""
    from appliance.detector.bundle import MODEL_FILES, write_bundle
    from appliance.detector.train import TrainSettings, train_bundle

    pump = PumpModel(seed=1)
    rows = np.array([list(pump.step(1.0).values()) for _ in range(1500)])
    base = tmp_path_factory.mktemp("pump-bundles")
    current = train_bundle(rows, list(SENSORS), base / "current",
                           TrainSettings(window=16, stride=2, hidden=(16, 4), max_iter=30, seed=3))
    meta = json.loads((current / "bundle.json").read_text())
    out = {"current": current}
    for name, factor in (("deaf", 1000.0), ("calmer", 1.2)):
        m = dict(meta, thresholds={k: v * factor for k, v in meta["thresholds"].items()},
                 threshold=meta["threshold"] * factor, model_version=f"{meta['model_version']}-{name}")
        out[name] = write_bundle(base / name, m, {p: current / n for p, n in MODEL_FILES.items()})
    return out


def config(data_dir, bundle, trusted_root):
    return parse_config({"data_dir": str(data_dir), "log_level": "WARNING", "web": {"enabled": False},
                         "inputs": {"mqtt": {"enabled": False}}, "detector": {"bundle": str(bundle)},
                         "outputs": {"mqtt_alarm": {"enabled": False}, "history": {"enabled": False},
                                     "sync": {"updates": {"trusted_root": str(trusted_root)},
                                              "backtest": {"min_history_s": HISTORY.min_history_s}}}})


async def run_the_pump(app) -> None:
    """LIVE_S seconds of the simulated pump through the runtime, the FAULTS injected and cleared on time."""
    pump = PumpModel(seed=2)
    for t in range(LIVE_S):
        for start, end, kind, _ in FAULTS:
            if t == start:
                pump.inject(kind, severity=2.0)
            elif t == end:
                pump.clear_faults()
        sample = pump.step(1.0)
        app.submit([Reading("pump1", s, T0 + t, v) for s, v in sample.items()])
        if t % 200 == 0:
            await app.drain()
    await app.drain()
    assert app.store.flush()


async def give_verdicts(app) -> dict[str, list[str]]:
    """A technician's verdict on every episode: a fault (with its cause) if it was active while a fault was
    injected (or began within a minute of its end), else a false alarm. Returns the episode ids by verdict."""
    given: dict[str, list[str]] = {"fault": [], "false_alarm": []}
    for e in StoreReader(app.store.path).labelled_episodes():
        cause = next((c for start, end, _, c in FAULTS if e["start"] <= T0 + end + 60
                      and (e["end"] is None or e["end"] >= T0 + start)), None)
        verdict = "fault" if cause else "false_alarm"
        await asyncio.to_thread(app.command, "set_verdict", alarm_id=e["id"], asset="pump1", user="tech",
                                verdict=verdict, cause=cause)
        given[verdict].append(e["id"])
    return given


def test_releases_are_judged_on_the_labelled_history_worse_rejected_better_accepted(
        tmp_path, tuf_server, tls_files, pump_bundles):
    pub = Publisher(tmp_path / "engineer", www=tuf_server.root)
    updater = gateway(tmp_path / "gateway", tuf_server.url, pub.root, ca_file=str(tls_files.ca_file))
    data = tmp_path / "data"
    cfg = config(data, pump_bundles["current"], updater.trusted_root)
    app = build(cfg)
    sync = ModelSync(updater, ShadowBounds(**NO_LATENCY_BOUND), history=cfg.outputs.sync.backtest)
    seen = {}

    async def go():
        await app.start()
        try:
            await run_the_pump(app)
            seen["given"] = await give_verdicts(app)
            pub.release(pump_bundles["deaf"], 2)
            await sync.run_window(app_ctx(app), deadline_mono=None)
            seen["deaf"] = (sync.last_result, sync.last_refusal, app.models.shadow)
            pub.release(pump_bundles["calmer"], 3)
            await sync.run_window(app_ctx(app), deadline_mono=None)
            seen["calmer"] = (sync.last_result, sync.last_refusal, app.models.shadow)
            assert app.store.flush()
        finally:
            await app.shutdown()

    asyncio.run(go())
    faults = seen["given"]["fault"]
    assert len(faults) >= 2, f"the live model did not alarm on both injected faults: {seen['given']}"
    # The deaf release was installed, then rejected by the back-test, naming the fault episodes it misses.
    result, refusal, shadow = seen["deaf"]
    assert "installed" in result and shadow is None
    assert f"misses pump1 episode {faults[0]} (fault: bearing, at " in refusal, refusal
    assert "that the current model caught" in refusal and "\n" not in refusal
    # The calmer one passed it and runs in shadow, the back-test's line kept with its start.
    result, refusal, shadow = seen["calmer"]
    assert "installed" in result and shadow is not None and shadow.candidate.version.endswith("-calmer")
    changes = StoreReader(app.store.path).model_changes()
    assert [(c["event"], c["version"].rsplit("-", 1)[-1]) for c in changes] == [("shadow_started", "calmer"),
                                                                              ("rejected", "deaf")]
    assert changes[1]["reason"] == seen["deaf"][1]  # the sync's refusal is the lifecycle's reason
    assert f"within bounds, {len(faults)} of {len(faults)} fault episodes caught" in changes[0]["reason"]
    assert app.status()["model"]["last_refusal"]["stage"] == "backtest"

    # From the command line: the running model's replay reproduces the live alarms (same windows, same
    # decider), and the deaf bundle is rejected (exit 1) with the same episodes in its JSON report.
    toml = tmp_path / "appliance.toml"
    toml.write_text(f'data_dir = "{data}"\n[detector]\nbundle = "{pump_bundles["current"]}"\n'
                    f"[outputs.sync.backtest]\nmin_history_s = {HISTORY.min_history_s}\n")
    assert main(["backtest", "--bundle", str(pump_bundles["current"]), "--config", str(toml),
                 "--json", str(tmp_path / "same.json")]) == 0
    same = json.loads((tmp_path / "same.json").read_text())
    assert same["episodes"] and all(e["candidate"]["lead_s"] == 0 for e in same["episodes"]), same["episodes"]
    assert same["candidate"]["new_alarms"] == [] and same["verdict"]["ok"] is True
    assert main(["backtest", "--bundle", str(pump_bundles["deaf"]), "--config", str(toml),
                 "--json", str(tmp_path / "deaf.json")]) == 1
    deaf = json.loads((tmp_path / "deaf.json").read_text())
    assert deaf["candidate"]["faults_missed"] == faults and deaf["current"]["faults_missed"] == []
    assert deaf["grid_rows"] == LIVE_S and deaf["readings"] == LIVE_S * len(SENSORS)


def app_ctx(app):
    """The context outputs get from the runtime; ModelSync only needs the model's lifecycle."""
    from appliance.core import OutputContext

    return OutputContext(open_alarm_ids=frozenset(), publish_action=lambda a: None, spawn=lambda c: None,
                         models=app.models)
