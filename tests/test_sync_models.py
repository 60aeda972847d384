"""Model releases through a connectivity window, end to end on real peers, under a steady stream of readings.

Real parts: the cloud broker (a TLS Mosquitto requiring client certificates)
with the intake, the engineer's TUF repository served by a TLS static file
server, the whole runtime built from its config with ``[outputs.sync]`` (the
uplink and its ModelSync), real ONNX detectors. A feeder thread submits
readings through the runtime's sink the whole time, as an input does, so the
install, the shadow run, the hot swap and any rollback all happen under load.

* a quiet release is promoted by a hot swap with no window left unscored (every
  window on the grid scored once, by the old model up to one instant and by the
  new one after it);
* a release that alarms on normal data is rejected in shadow, with the reason;
* the same release let through by loose shadow bounds is rolled back by itself
  when it alarms in probation.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from appliance.config import parse_config
from appliance.detector.scorer import Detector
from appliance.runtime import build
from appliance.store import StoreReader
from appliance.sync.uplink import SyncUplink
from tests.support.cloud import cloud_peer
from tests.support.detector import NO_LATENCY_BOUND, SENSORS, normal_rows
from tests.support.feeder import Feeder
from tests.support.tuf_repo import Publisher, gateway
from tests.support.wait import wait_until_async

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


@pytest.fixture
def cloud(tmp_path):
    yield from cloud_peer(tmp_path / "cloud")


@pytest.fixture(scope="module")
def noisy_bundle(tmp_path_factory, release_bundles) -> Path:
    """The first model with its thresholds cut to 1/20: a sane, signable release that alarms on normal data."""
    from appliance.detector.bundle import MODEL_FILES, write_bundle

    first = release_bundles[0]
    meta = json.loads((first / "bundle.json").read_text())
    m = dict(meta, thresholds={k: v / 20 for k, v in meta["thresholds"].items()}, threshold=meta["threshold"] / 20,
             model_version=f"{meta['model_version']}-noisy")
    return write_bundle(tmp_path_factory.mktemp("noisy") / "pump-noisy", m,
                        {p: first / n for p, n in MODEL_FILES.items()})


def make_gateway(tmp_path, cloud, tuf_server, tls_files, pub: Publisher, bundle, shadow: dict):
    """The runtime from config: sync on, windows only by hand, updates from the TLS repository."""
    updater = gateway(tmp_path / "gw", tuf_server.url, pub.root)
    sync = json.loads(cloud.sync_config().model_dump_json())
    sync |= {"queue": {"path": "sync_queue.db"},
             "updates": {"enabled": True, "source": tuf_server.url, "trusted_root": str(updater.trusted_root),
                         "model_name": "pump", "ca_file": str(tls_files.ca_file)},
             "shadow": shadow}
    cfg = parse_config({"data_dir": str(tmp_path / "data"), "log_level": "WARNING", "web": {"enabled": False},
                        "inputs": {"mqtt": {"enabled": False}}, "detector": {"bundle": str(bundle)},
                        "outputs": {"mqtt_alarm": {"enabled": False}, "history": {"enabled": False},
                                    "sync": sync}})
    app = build(cfg, detector=Detector.load(bundle))
    (uplink,) = [o for o in app.outputs if isinstance(o, SyncUplink)]
    return app, uplink


def changes(app) -> list[dict]:
    return StoreReader(app.store.path).model_changes()


async def run_until(app, uplink, feeder: Feeder, done, what: str, extra_rows: int = 100) -> None:
    """Open a window once the stream runs, wait for ``done()``, let ``extra_rows`` more rows through, stop."""
    await wait_until_async(lambda: feeder.sent > 60, timeout=60, what="the feeder to get going")
    uplink.sync_now(600)
    await wait_until_async(lambda: done() or feeder.error is not None or not feeder.is_alive(), timeout=300,
                           what=what, detail=lambda: json.dumps({"model": app.status()["model"],
                                                                 "sync": uplink.status().get("models")},
                                                                default=str)[:3000])
    assert feeder.error is None, feeder.error
    assert done(), f"the feeder ran out of rows before: {what}"
    feeder.stop_after = feeder.sent + extra_rows
    await asyncio.to_thread(feeder.join, 120)
    await app.drain()
    assert app.store.flush(60)


def assert_every_window_scored_once(app, versions: list[str]) -> list[dict]:
    """Every window on the grid has one stored score, and the scoring model changed only at the given swaps."""
    c = app.counters
    assert c.get("windows_incomplete") == 0
    scores = sorted(StoreReader(app.store.path).scores("pump1", limit=1_000_000), key=lambda s: s["t_end"])
    assert len(scores) == c.get("windows_scored") > 0
    steps = {round(b["t_end"] - a["t_end"], 6) for a, b in zip(scores, scores[1:])}
    assert steps == {2.0}, f"a window went unscored or was scored twice: steps {sorted(steps)}"
    runs = [scores[0]["model_version"]]
    for s in scores[1:]:
        if s["model_version"] != runs[-1]:
            runs.append(s["model_version"])
    assert runs == versions, f"scoring models in order: {runs}"
    return scores


def test_a_release_promoted_under_load_leaves_no_window_unscored(tmp_path, cloud, tuf_server, tls_files,
                                                                 release_bundles):
    pub = Publisher(tmp_path / "engineer", www=tuf_server.root)
    pub.release(release_bundles[1], 2)
    app, uplink = make_gateway(tmp_path, cloud, tuf_server, tls_files, pub, release_bundles[0],
                               {"duration_s": 0, "min_windows": 150, **NO_LATENCY_BOUND})
    v1, v2 = app.detector.version, Detector.load(release_bundles[1]).version
    feeder = Feeder(app, normal_rows(6000, 21), SENSORS, T0)

    async def go():
        await app.start()
        feeder.start()
        try:
            await run_until(app, uplink, feeder, lambda: app.detector.version == v2, "the release to be promoted")
        finally:
            feeder.stop_after = 0
            await app.shutdown()

    asyncio.run(go())
    assert [c["event"] for c in changes(app)] == ["promoted", "shadow_started"]
    promoted = changes(app)[0]
    assert promoted["version"] == v2 and promoted["previous"] == v1
    assert "within bounds over 150 windows" in promoted["reason"] and "score ratio p50/p99" in promoted["reason"]
    assert "installed pump v2" in uplink.status()["models"]["last_result"]
    assert_every_window_scored_once(app, [v1, v2])


def test_a_release_that_alarms_on_normal_data_is_rejected_in_shadow(tmp_path, cloud, tuf_server, tls_files,
                                                                    release_bundles, noisy_bundle):
    pub = Publisher(tmp_path / "engineer", www=tuf_server.root)
    pub.release(noisy_bundle, 2)
    app, uplink = make_gateway(tmp_path, cloud, tuf_server, tls_files, pub, release_bundles[0],
                               {"duration_s": 0, "min_windows": 120, "max_extra_alarms": 0})
    v1 = app.detector.version
    feeder = Feeder(app, normal_rows(6000, 22), SENSORS, T0)
    seen_shadow: list[dict] = []

    def rejected() -> bool:
        shadow = app.status()["model"]["shadow"]
        if shadow is not None:
            seen_shadow.append(shadow)
        return any(c["event"] == "rejected" for c in changes(app))

    async def go():
        await app.start()
        feeder.start()
        try:
            await run_until(app, uplink, feeder, rejected, "the noisy release to be rejected in shadow")
        finally:
            feeder.stop_after = 0
            await app.shutdown()

    asyncio.run(go())
    rejection, started = changes(app)
    assert started["event"] == "shadow_started" and rejection["event"] == "rejected"
    assert "would raise 1 alarms where the current model raised 0 (allowed 0)" in rejection["reason"]
    assert "score ratio p50/p99" in rejection["reason"]
    assert app.counters.get("alarm_raised") == 0  # the shadow raised nothing real
    # While it ran, the status API showed both models' alarm rates and score distributions side by side.
    shown = [s for s in seen_shadow if s["windows"] > 0]
    assert shown, "the shadow run was never visible in the status"
    last = shown[-1]
    assert last["scores"]["candidate"]["p50"] > 5 * last["scores"]["current"]["p50"]
    assert set(last["alarm_rate_per_h"]) == {"current", "candidate"} and last["latency_p99_us"] > 0
    assert_every_window_scored_once(app, [v1])


def test_a_promoted_release_that_alarms_in_probation_is_rolled_back_by_itself(tmp_path, cloud, tuf_server, tls_files,
                                                                             release_bundles, noisy_bundle):
    pub = Publisher(tmp_path / "engineer", www=tuf_server.root)
    pub.release(noisy_bundle, 2)
    # Loose shadow bounds let it through; probation allows no alarm.
    app, uplink = make_gateway(tmp_path, cloud, tuf_server, tls_files, pub, release_bundles[0],
                               {"duration_s": 0, "min_windows": 20, "max_extra_alarms": 5, **NO_LATENCY_BOUND,
                                "probation_s": 3600, "max_probation_alarms": 0})
    v1, noisy = app.detector.version, Detector.load(noisy_bundle).version
    feeder = Feeder(app, normal_rows(6000, 23), SENSORS, T0)

    async def go():
        await app.start()
        feeder.start()
        try:
            await run_until(app, uplink, feeder, lambda: any(c["event"] == "rolled_back" for c in changes(app)),
                            "the promoted release to be rolled back")
        finally:
            feeder.stop_after = 0
            await app.shutdown()

    asyncio.run(go())
    events = changes(app)
    assert [c["event"] for c in events] == ["rolled_back", "promoted", "shadow_started"]
    back = events[0]
    assert back["version"] == v1 and back["previous"] == noisy and back["user"] == "appliance"
    assert "promoted model raised 1 alarms within" in back["reason"] and "(allowed 0)" in back["reason"]
    assert app.detector.version == v1 and app.status()["model"]["probation"] is None
    assert_every_window_scored_once(app, [v1, noisy, v1])
