"""Model updates on the gateway, against a real TLS static file server serving a repository published
with the engineer's tools: install, resume, refusals, rotation, rollback, USB folder, tamper checks."""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner

from appliance.detector.bundle import BundleError, load_bundle
from appliance.detector.scorer import Detector
from appliance.release.repo import copy_repository, rotate_key
from appliance.sync.trust import RELEASE_RECORD
from tests.support.tuf_repo import edit_signed_custom, gateway, republish_as_newest, resign
from tests.support.tuf_repo import gw_fixture, pub_fixture  # noqa: F401  (registers the fixtures)
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


def one_line(result) -> str:
    assert "\n" not in result.reason and "Traceback" not in result.reason, result.reason
    return result.reason


def test_installs_v1_then_v2_and_the_scorer_loads_them(pub, gw, release_bundles, tuf_server):
    pub.release(release_bundles[0], 1)
    r1 = gw.update()
    assert r1.outcome == "installed" and r1.version == 1, r1
    assert Path(r1.bundle_dir).name == "pump-1" and gw.verify_installed(r1.bundle_dir) is None
    assert Detector.load(r1.bundle_dir).threshold == load_bundle(release_bundles[0]).threshold("int8")

    pub.release(release_bundles[1], 2)
    r2 = gw.update()
    assert r2.outcome == "installed" and r2.version == 2, r2
    assert load_bundle(r2.bundle_dir).model_version == load_bundle(release_bundles[1]).model_version
    r3 = gw.update()
    assert r3.outcome == "up_to_date" and r3.bytes_received == 0, r3
    status = gw.status()
    assert status["installed"]["version"] == 2 and status["last"]["outcome"] == "up_to_date"
    assert status["clock"]["problem"] is None and status["clock"]["floor"] is not None
    # Everything came over TLS from the server, archives by their consistent-snapshot names.
    assert [r.path.rsplit(".", 2)[-2] for r in tuf_server.target_requests()] == ["pump-1", "pump-2"]


def test_a_connection_cut_mid_transfer_resumes_with_range_in_the_same_call(pub, tmp_path, tuf_server, tls_files,
                                                                           release_bundles):
    summary = pub.release(release_bundles[0], 1)
    tuf_server.faults.cut_every = 7000
    gw = gateway(tmp_path / "gw", tuf_server.url, pub.root, ca_file=str(tls_files.ca_file), chunk_size=2048)
    r = gw.update()
    assert r.outcome == "installed", r
    reqs = tuf_server.target_requests()
    assert len(reqs) >= summary["length"] // 7000 and all(q.status == (206 if q.range else 200) for q in reqs)
    offsets = [int(q.range[len("bytes="):].split("-")[0]) if q.range else 0 for q in reqs]
    # Each request continues where the kept bytes end: at most the chunk in flight at the cut (read
    # but not yet handed over) is fetched again, never the file from the start.
    for i in range(1, len(reqs)):
        end_sent = offsets[i - 1] + reqs[i - 1].body_bytes
        assert end_sent - 2048 < offsets[i] <= end_sent, (offsets, [q.body_bytes for q in reqs])
    assert offsets[-1] + reqs[-1].body_bytes == summary["length"]
    assert tuf_server.target_bytes_sent() < summary["length"] + 2048 * (len(reqs) - 1)


def test_a_server_that_stops_mid_transfer_is_resumed_from_the_partial_file_next_window(
        pub, tmp_path, tuf_server, tls_files, release_bundles):
    summary = pub.release(release_bundles[0], 1)
    half = summary["length"] // 2
    tuf_server.faults.stop_after = half
    gw = gateway(tmp_path / "gw", tuf_server.url, pub.root, ca_file=str(tls_files.ca_file), chunk_size=2048,
                 attempts=2)
    first = gw.update()
    assert first.outcome == "interrupted" and first.kind == "network", first
    one_line(first)
    wait_until(lambda: not tuf_server.running, what="the file server to stop after the cut")
    (kept,) = gw.status()["partial_bytes"].values()
    assert half - 2048 < kept <= half  # what arrived, less at most the chunk in flight at the cut

    tuf_server.faults.stop_after = None
    tuf_server.start()  # the next connectivity window: the host is back, same port
    second = gw.update()
    assert second.outcome == "installed", second
    assert second.resumed_from == kept and second.bytes_received == summary["length"] - kept
    assert tuf_server.target_requests()[-1].range == f"bytes={kept}-"
    assert tuf_server.target_bytes_sent() == half + summary["length"] - kept
    assert gw.status()["partial_bytes"] == {}


def test_a_byte_budget_pauses_the_download_and_the_next_call_continues(pub, gw, tuf_server, release_bundles):
    summary = pub.release(release_bundles[0], 1)
    first = gw.update(max_bytes=10_000)
    assert first.outcome == "interrupted" and first.kind == "paused", first
    assert list(gw.status()["partial_bytes"].values()) == [10_000]  # exactly the budget: a bounded Range
    second = gw.update()
    assert second.outcome == "installed" and second.resumed_from == 10_000, second
    assert tuf_server.target_bytes_sent() == summary["length"]


def test_a_closed_window_stops_before_fetching_and_a_lost_bundle_is_installed_again(pub, gw, release_bundles):
    pub.release(release_bundles[0], 1)
    r = gw.update(deadline=time.monotonic())  # the window is already over
    assert r.outcome == "interrupted" and r.kind == "paused" and "window closed" in one_line(r), r
    installed = gw.update()
    assert installed.outcome == "installed"
    shutil.rmtree(installed.bundle_dir)  # someone cleaned the disk
    again = gw.update()
    assert again.outcome == "installed" and gw.verify_installed(again.bundle_dir) is None, again


def test_a_tampered_archive_is_refused_and_not_resumed_from(pub, gw, tuf_server, release_bundles):
    pub.release(release_bundles[0], 1)
    archive = pub.served_archive(1)
    good = archive.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF  # same length, one byte changed
    archive.write_bytes(bytes(bad))
    r = gw.update()
    assert r.outcome == "refused" and r.kind == "tampered", r
    assert "sha256" in one_line(r) or "hash" in r.reason
    assert gw.installed() is None and not any(gw.bundles_dir.iterdir())
    assert gw.status()["partial_bytes"] == {}  # the bad bytes are not kept to resume from
    archive.write_bytes(good)
    assert gw.update().outcome == "installed"


def test_metadata_signed_with_a_wrong_key_is_refused(pub, gw, release_bundles):
    pub.release(release_bundles[0], 1)
    assert gw.update().outcome == "installed"
    pub.release(release_bundles[1], 2)
    resign(pub.www / "metadata" / "timestamp.json", CryptoSigner.generate_ed25519())
    r = gw.update()
    assert r.outcome == "refused" and r.kind == "signature", r
    assert "timestamp" in one_line(r) and "trusted root" in r.reason
    assert gw.installed()["version"] == 1


def test_expired_metadata_is_refused_with_the_gateway_clock_in_the_reason(pub, gw, release_bundles):
    pub.add(release_bundles[0], 1)
    pub.publish(now=datetime.now(timezone.utc) - timedelta(days=10), timestamp_days=1)
    r = gw.update()
    assert r.outcome == "refused" and r.kind == "expired", r
    assert "timestamp.json is expired" in one_line(r) and "gateway clock" in r.reason
    assert gw.installed() is None


def test_a_downgrade_is_refused(pub, gw, release_bundles):
    pub.release(release_bundles[0], 1)
    pub.release(release_bundles[1], 2)
    assert gw.update().version == 2
    republish_as_newest(pub, 1)  # v1 again as the newest release, without the signed rollback flag
    r = gw.update()
    assert r.outcome == "refused" and r.kind == "downgrade", r
    assert "not above the installed v2" in one_line(r)
    assert gw.installed()["version"] == 2


def test_a_signed_rollback_is_accepted(pub, gw, release_bundles):
    pub.release(release_bundles[0], 1)
    pub.release(release_bundles[1], 2)
    assert gw.update().version == 2
    pub.release(release_bundles[0], 1, rollback=True)
    r = gw.update()
    assert r.outcome == "installed" and r.version == 1 and r.release["rollback"] is True, r
    assert r.reason.startswith("rollback to")
    assert gw.verify_installed(r.bundle_dir) is None
    assert gw.update().outcome == "up_to_date"
    pub.release(release_bundles[2], 3)  # and forward again
    assert gw.update().version == 3


def test_old_metadata_replayed_is_refused_as_a_rollback_attack(pub, gw, tmp_path, release_bundles):
    pub.release(release_bundles[0], 1)
    old = tmp_path / "old-copy"
    shutil.copytree(pub.www, old)
    pub.release(release_bundles[1], 2)
    assert gw.update().version == 2
    shutil.rmtree(pub.www)
    shutil.copytree(old, pub.www)  # a mirror (or an attacker) serves the repository as it was
    r = gw.update()
    assert r.outcome == "refused" and r.kind == "rollback", r
    one_line(r)


def test_root_and_targets_key_rotations_are_followed(pub, gw, release_bundles):
    pub.release(release_bundles[0], 1)
    assert gw.update().version == 1
    rot = rotate_key(pub.repo, [pub.keys], "root")
    assert rot["root_version"] == 2 and Path(rot["retired_to"]).exists()
    pub.release(release_bundles[1], 2)
    r2 = gw.update()
    assert r2.outcome == "installed" and r2.version == 2, r2
    assert (gw.metadata_dir / "root_history" / "2.root.json").exists()

    rotate_key(pub.repo, [pub.keys], "targets")
    pub.release(release_bundles[2], 3)
    r3 = gw.update()
    assert r3.outcome == "installed" and r3.version == 3, r3
    # The gateway's trusted root is still v1; the installed bundle verifies through the recorded chain.
    assert json.loads(gw.trusted_root.read_text())["signed"]["version"] == 1
    assert gw.verify_installed(r3.bundle_dir) is None


def test_a_new_root_not_signed_by_the_previous_root_keys_is_refused(pub, gw, release_bundles):
    from tuf.api.metadata import Metadata

    pub.release(release_bundles[0], 1)
    assert gw.update().version == 1
    intruder = CryptoSigner.generate_ed25519()
    root = Metadata.from_file(str(pub.repo / "metadata" / "1.root.json"))
    for keyid in list(root.signed.roles["root"].keyids):
        root.signed.revoke_key(keyid, "root")
    root.signed.add_key(intruder.public_key, "root")
    root.signed.version = 2
    root.sign(intruder)  # signed by its own new key only
    (pub.www / "metadata" / "2.root.json").write_bytes(root.to_bytes())
    r = gw.update()
    assert r.outcome == "refused" and r.kind == "signature", r
    assert "root" in one_line(r)


def test_signed_values_that_differ_from_the_archive_are_refused(pub, gw, release_bundles):
    pub.add(release_bundles[0], 1)
    edit_signed_custom(pub, 1, lambda c: c["decision"]["thresholds"].update(int8="0.5"))
    r = gw.update()
    assert r.outcome == "refused" and r.kind == "values", r
    assert "thresholds.int8 is" in one_line(r) and "the signed release says 0.5" in r.reason
    assert gw.installed() is None and not any(p.name.startswith("pump") for p in gw.bundles_dir.iterdir())


def test_an_untrusted_tls_certificate_is_one_line(pub, tmp_path, tuf_server, release_bundles):
    pub.release(release_bundles[0], 1)
    gw = gateway(tmp_path / "gw", tuf_server.url, pub.root, attempts=1)  # system CA store: our CA is unknown
    r = gw.update()
    assert r.outcome == "unreachable", r
    assert "TLS certificate not trusted" in one_line(r)


def test_a_clock_behind_the_newest_signed_time_defers_updates(pub, tmp_path, tuf_server, tls_files,
                                                              release_bundles):
    pub.release(release_bundles[0], 1)
    clock = {"now": datetime(1970, 1, 1, 0, 0, 5, tzinfo=timezone.utc)}  # booted without an RTC
    gw = gateway(tmp_path / "gw", tuf_server.url, pub.root, ca_file=str(tls_files.ca_file),
                 clock=lambda: clock["now"])
    r = gw.update()
    assert r.outcome == "deferred" and r.kind == "clock", r
    assert "system clock 1970-01-01T00:00:05Z is before" in one_line(r)
    assert tuf_server.requests == []  # nothing fetched against a clock that cannot judge expiry
    assert gw.status()["clock"]["problem"]
    clock["now"] = datetime.now(timezone.utc)  # NTP came
    assert gw.update().outcome == "installed"
    floor = gw.status()["clock"]["floor"]
    clock["now"] = datetime(2001, 1, 1, tzinfo=timezone.utc)  # rebooted, clock lost again
    r = gw.update()
    assert r.outcome == "deferred" and floor in r.reason, r


def test_a_usb_folder_works_without_any_server(pub, tmp_path, release_bundles):
    pub.add(release_bundles[0], 1)
    pub.publish()
    stick = copy_repository(pub.repo, tmp_path / "usb")
    gw = gateway(tmp_path / "gw", str(stick), pub.root)
    r = gw.update()
    assert r.outcome == "installed" and r.version == 1, r
    pub.release(release_bundles[1], 2)
    copy_repository(pub.repo, stick)
    assert gw.update().version == 2
    shutil.rmtree(stick)
    r = gw.update()
    assert r.outcome == "unreachable", r  # the stick was pulled: a line, and the installed model stays
    one_line(r)
    assert gw.installed()["version"] == 2


def test_an_installed_bundle_edited_in_place_is_refused_with_one_line(pub, tmp_path, release_bundles):
    pub.release(release_bundles[0], 1)
    gw = gateway(tmp_path / "gw", str(pub.repo), pub.root)
    bundle_dir = Path(gw.update().bundle_dir)
    meta_path = bundle_dir / "bundle.json"
    original = meta_path.read_text()
    signed_threshold = repr(json.loads(original)["threshold"])

    meta = json.loads(original)
    meta["threshold"] = 1e12
    meta["thresholds"]["int8"] = 1e12
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="can never alarm"):  # the loader's own bounds refuse it too
        load_bundle(bundle_dir)
    reason = gw.verify_installed(bundle_dir)
    assert reason == (f"{meta_path}: threshold is 1000000000000.0, the signed release says {signed_threshold}")

    meta = json.loads(original)
    meta["scaler"]["scale"][0] = 1e30
    meta_path.write_text(json.dumps(meta))
    reason = gw.verify_installed(bundle_dir)
    assert reason is not None and "\n" not in reason
    assert reason.startswith(f"{meta_path}: scaler.scale[0] is 1e+30, the signed release says ")

    # Editing the kept signed record to match does not help: its signature no longer verifies.
    record_path = bundle_dir / RELEASE_RECORD
    record = json.loads(record_path.read_text())
    record["targets"]["signed"]["targets"]["models/pump-1.tar"]["custom"]["decision"]["scaler"]["scale"][0] = "1e+30"
    record_path.write_text(json.dumps(record))
    reason = gw.verify_installed(bundle_dir)
    assert "does not verify against the trusted root" in reason and "\n" not in reason

    meta_path.write_text(original)
    record["targets"]["signed"]["targets"]["models/pump-1.tar"]["custom"]["decision"]["scaler"]["scale"][0] = \
        repr(json.loads(original)["scaler"]["scale"][0])
    record_path.write_text(json.dumps(record))
    assert gw.verify_installed(bundle_dir) is None
    (bundle_dir / "model.int8.onnx").write_bytes(b"garbage")
    assert "model.int8.onnx: sha256 differs from the signed release" in gw.verify_installed(bundle_dir)
