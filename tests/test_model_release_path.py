"""A signed release travels the whole path: TLS repository -> verified install -> shadow -> promotion.

Real parts: the engineer's TUF repository (appliance.release) served over TLS,
the gateway's ModelUpdater, real ONNX detectors, the real runtime and store.
After the promotion the appliance restarts on the promoted bundle; a promoted
bundle edited on disk is not loaded again.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from appliance.config import parse_config
from appliance.core import Detector as DetectorProtocol, Reading
from appliance.detector.scorer import Detector
from appliance.runtime import build
from appliance.store import StoreReader
from appliance.lifecycle.active import ACTIVE_FILE, active_bundle, remember_active
from appliance.lifecycle.shadow import ShadowBounds
from appliance.sync.models import ModelSync
from appliance.sync.trust import RELEASE_RECORD
from tests.support.detector import NO_LATENCY_BOUND, SENSORS, normal_rows
from tests.support.tuf_repo import Publisher, gateway

pytestmark = pytest.mark.integration


def config(data_dir, bundle, trusted_root):
    return parse_config({"data_dir": str(data_dir), "log_level": "WARNING", "web": {"enabled": False},
                         "inputs": {"mqtt": {"enabled": False}}, "detector": {"bundle": str(bundle)},
                         "outputs": {"mqtt_alarm": {"enabled": False}, "history": {"enabled": False},
                                     "sync": {"updates": {"trusted_root": str(trusted_root)}}}})


def feed(app, rows, start: int) -> None:
    for i, row in enumerate(rows):
        app.submit([Reading("pump1", s, 1_700_000_000.0 + start + i, float(v)) for s, v in zip(SENSORS, row)])


def test_a_signed_release_is_installed_run_in_shadow_promoted_and_kept_across_a_restart(
        tmp_path, tuf_server, tls_files, release_bundles):
    pub = Publisher(tmp_path / "engineer", www=tuf_server.root)
    pub.release(release_bundles[1], 2)
    updater = gateway(tmp_path / "gateway", tuf_server.url, pub.root, ca_file=str(tls_files.ca_file))
    data = tmp_path / "data"
    cfg = config(data, release_bundles[0], updater.trusted_root)
    current = Detector.load(release_bundles[0])
    assert isinstance(current, DetectorProtocol)  # what the runtime and the lifecycle need of it, all of it
    app = build(cfg, detector=current)
    sync = ModelSync(updater, ShadowBounds(**NO_LATENCY_BOUND, duration_s=0, min_windows=30))
    rows = normal_rows(200, 11)

    async def go():
        await app.start()
        try:
            feed(app, rows[:50], 0)
            await app.drain()
            await sync.run_window(app_ctx(app), deadline_mono=None)
            assert sync.last_refusal is None, sync.last_refusal
            assert app.status()["model"]["shadow"]["candidate"] == Detector.load(release_bundles[1]).version
            feed(app, rows[50:], 50)
            await app.drain()
            assert app.store.flush()
        finally:
            await app.shutdown()

    asyncio.run(go())
    assert "installed" in sync.last_result
    assert app.detector.version != current.version
    events = [c["event"] for c in StoreReader(app.store.path).model_changes()]
    assert events == ["promoted", "shadow_started"]

    # A restart loads the promoted bundle (verified against the signed record) ...
    bundle, why = active_bundle(data, updater.trusted_root)
    assert why is None and bundle is not None
    assert build(cfg).detector.version == app.detector.version

    # ... and refuses it, falling back to detector.bundle, once someone edited its threshold.
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["threshold"] = 1e12
    (bundle / "bundle.json").write_text(json.dumps(meta))
    bundle, why = active_bundle(data, updater.trusted_root)
    assert bundle is None and "threshold" in why
    assert build(cfg).detector.version == current.version

    # Deleting the signed record as well does not switch the check off: a promoted bundle must keep it.
    promoted = Path(json.loads((data / ACTIVE_FILE).read_text())["bundle"])
    meta["threshold"] = meta["thresholds"]["int8"] = 100.0  # within the loader's bounds: only the record knows
    (promoted / "bundle.json").write_text(json.dumps(meta))
    (promoted / RELEASE_RECORD).unlink()
    bundle, why = active_bundle(data, updater.trusted_root)
    assert bundle is None and f"no {RELEASE_RECORD}" in why and "\n" not in why, why
    assert build(cfg).detector.version == current.version


def test_a_rollback_to_the_configured_bundle_forgets_the_active_file(tmp_path, release_bundles):
    data = tmp_path / "data"
    data.mkdir()
    (data / ACTIVE_FILE).write_text(json.dumps({"bundle": "/somewhere/else"}))
    remember_active(data, release_bundles[0])  # no signed record: the configured bundle, nothing to name
    assert not (data / ACTIVE_FILE).exists()
    assert active_bundle(data, None) == (None, None)


def app_ctx(app):
    """The context outputs get from the runtime; ModelSync only needs the model's lifecycle."""
    from appliance.core import OutputContext

    return OutputContext(open_alarm_ids=frozenset(), publish_action=lambda a: None, spawn=lambda c: None,
                         models=app.models)
