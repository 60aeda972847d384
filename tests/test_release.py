"""The engineer's release tools (appliance.release) and the release format both sides share
(appliance.sync.trust): keys, deterministic archives, signed decision values, version rules,
publishing, key rotation, the command line, and the gateway's safe unpacking."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import stat
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata

from appliance.detector.bundle import MODEL_FILES, write_bundle
from appliance.release import add_release_commands
from appliance.release.errors import ReleaseError
from appliance.release.repo import add_release, init_repository, list_releases, publish, rotate_key
from appliance.sync.trust import (
    SIGNED_AT_FIELD,
    ReleaseCheckError,
    check_sane,
    decision_values,
    parse_release,
    unpack_archive,
)
from tests.support.detector import edited_bundle
from tests.support.tuf_repo import release_bundles_fixture, sparse_member  # noqa: F401  (registers the fixture)


@pytest.fixture
def repo(tmp_path):
    init_repository(tmp_path / "repo", [tmp_path / "keys"])
    return tmp_path / "repo"


def keys_of(tmp_path):
    return [tmp_path / "keys"]


def md(repo: Path, name: str) -> Metadata:
    return Metadata.from_file(str(repo / "metadata" / name))


def test_init_keeps_keys_private_and_out_of_the_repository(repo, tmp_path):
    keys = tmp_path / "keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    pems = sorted(keys.rglob("*.pem"))
    assert sorted(p.parent.name for p in pems) == ["root", "snapshot", "targets", "timestamp"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in pems)
    published = b"".join(p.read_bytes() for p in repo.rglob("*") if p.is_file())
    assert b"PRIVATE KEY" not in published
    root = md(repo, "root.json").signed
    assert root.consistent_snapshot and root.version == 1
    assert all(len(root.roles[r].keyids) == 1 and root.roles[r].threshold == 1 for r in root.roles)
    assert {p.stem for p in pems} == {k for r in root.roles.values() for k in r.keyids}
    for name in ("1.root.json", "1.targets.json", "1.snapshot.json", "timestamp.json"):
        assert SIGNED_AT_FIELD in md(repo, name).signed.unrecognized_fields


def test_keys_inside_the_repository_are_refused(tmp_path):
    with pytest.raises(ReleaseError, match="must be apart"):
        init_repository(tmp_path / "repo", [tmp_path / "repo" / "keys"])
    assert not (tmp_path / "repo" / "keys").exists()


def test_add_signs_the_decision_values_of_a_deterministic_archive(repo, tmp_path, release_bundles):
    bundle = release_bundles[0]
    r = add_release(repo, bundle, 1, keys_of(tmp_path), name="pump")
    assert r["target"] == "models/pump-1.tar" and r["release"] == 1 and r["rollback"] is False
    targets = md(repo, "2.targets.json").signed
    entry = targets.targets["models/pump-1.tar"]
    meta = json.loads((bundle / "bundle.json").read_text())
    custom = entry.custom
    assert custom["decision"] == decision_values(meta)
    assert custom["decision"]["threshold"] == repr(meta["threshold"])  # floats signed exactly, as strings
    assert custom["decision"]["scaler"]["scale"] == [repr(v) for v in meta["scaler"]["scale"]]
    assert custom["precision"] == "int8" and set(custom["files"]) == {"bundle.json", *MODEL_FILES.values()}
    (archive,) = (repo / "targets" / "models").glob("*.pump-1.tar")
    assert archive.name.startswith(entry.hashes["sha256"] + ".")
    assert stat.S_IMODE(archive.stat().st_mode) == 0o644
    # The same bundle packs to the same bytes in another repository.
    other = tmp_path / "other"
    init_repository(other / "repo", [other / "keys"])
    add_release(other / "repo", bundle, 1, [other / "keys"], name="pump")
    (again,) = (other / "repo" / "targets" / "models").glob("*.pump-1.tar")
    assert again.read_bytes() == archive.read_bytes()
    with tarfile.open(archive) as tar:
        assert [(m.name, m.mtime, m.uid, m.uname, m.mode) for m in tar] == \
            [(n, 0, 0, "", 0o644) for n in sorted(custom["files"])]


def test_versions_only_go_up_unless_a_rollback_is_signed(repo, tmp_path, release_bundles):
    keys = keys_of(tmp_path)
    add_release(repo, release_bundles[0], 1, keys, name="pump")
    add_release(repo, release_bundles[1], 2, keys, name="pump")
    with pytest.raises(ReleaseError, match="not above the current release v2"):
        add_release(repo, release_bundles[1], 2, keys, name="pump")
    with pytest.raises(ReleaseError, match="already published with other content"):
        add_release(repo, release_bundles[2], 2, keys, name="pump")
    with pytest.raises(ReleaseError, match="already published with other content"):
        add_release(repo, release_bundles[2], 1, keys, name="pump", rollback=True)
    with pytest.raises(ReleaseError, match="goes back to an older version"):
        add_release(repo, release_bundles[2], 3, keys, name="pump", rollback=True)
    r = add_release(repo, release_bundles[0], 1, keys, name="pump", rollback=True)
    assert r["rollback"] is True and r["release"] == 3 and r["version"] == 1
    listing = list_releases(repo)
    assert listing["current"]["pump"]["version"] == 1 and listing["current"]["pump"]["rollback"] is True
    assert [x["release"] for x in listing["releases"]] == [2, 3]  # v1's entry was replaced by its rollback


def test_insane_or_odd_bundles_are_never_published(repo, tmp_path, release_bundles):
    keys = keys_of(tmp_path)
    src = release_bundles[0]
    meta = json.loads((src / "bundle.json").read_text())
    models = {p: src / n for p, n in MODEL_FILES.items()}
    # Edited by hand (write_bundle, like the loader, refuses such values).
    deaf = edited_bundle(src, tmp_path / "deaf",
                         lambda m: m.update(threshold=1e12, thresholds={"int8": 1e12, "fp32": 1e12}))
    with pytest.raises(ReleaseError, match=r"deaf/bundle.json: thresholds.int8 1000000000000.0 is above .* alarm"):
        add_release(repo, deaf, 1, keys, name="pump")
    scaled = edited_bundle(src, tmp_path / "scaled",
                           lambda m: m["scaler"].update(scale=[1e30] + m["scaler"]["scale"][1:]))
    with pytest.raises(ReleaseError, match=r"scaler.scale\[0\] 1e\+30 is outside"):
        add_release(repo, scaled, 1, keys, name="pump")
    linked = write_bundle(tmp_path / "linked", meta, models)
    os.symlink("/etc/hostname", linked / "notes.txt")
    with pytest.raises(ReleaseError, match="only plain files"):
        add_release(repo, linked, 1, keys, name="pump")
    with pytest.raises(ReleaseError, match="model name"):
        add_release(repo, src, 1, keys, name="Pump-1")
    assert list_releases(repo)["releases"] == []
    assert not any((repo / "targets" / "models").iterdir())


def test_publish_makes_targets_visible_with_expiry_from_options(repo, tmp_path, release_bundles):
    keys = keys_of(tmp_path)
    add_release(repo, release_bundles[0], 1, keys, name="pump")
    assert list_releases(repo)["published_targets_version"] == 1  # added, not yet visible
    now = datetime(2030, 5, 1, tzinfo=timezone.utc)
    v = publish(repo, keys, snapshot_days=10, timestamp_days=0.5, now=now)
    assert v == {"root": 1, "snapshot": 2, "timestamp": 2, "timestamp_expires": "2030-05-01T12:00:00+00:00"}
    ts = md(repo, "timestamp.json").signed
    assert ts.expires == now + timedelta(hours=12) and ts.snapshot_meta.version == 2
    assert ts.unrecognized_fields[SIGNED_AT_FIELD] == "2030-05-01T00:00:00Z"
    snap = md(repo, "2.snapshot.json").signed
    assert snap.expires == now + timedelta(days=10) and snap.meta["targets.json"].version == 2
    assert list_releases(repo)["published_targets_version"] == 2
    # The periodic job on the publishing host holds only the timestamp key.
    only_ts = tmp_path / "ts-keys"
    (only_ts / "timestamp").mkdir(parents=True)
    for p in (tmp_path / "keys" / "timestamp").iterdir():
        (only_ts / "timestamp" / p.name).write_bytes(p.read_bytes())
        os.chmod(only_ts / "timestamp" / p.name, 0o600)
    assert publish(repo, [only_ts], timestamp_only=True)["timestamp"] == 3
    with pytest.raises(ReleaseError, match="snapshot needs 1 signature"):
        publish(repo, [only_ts])


def test_root_rotation_is_signed_by_old_and_new_keys(repo, tmp_path):
    keys = keys_of(tmp_path)
    old_root = md(repo, "1.root.json").signed
    (old_key,) = old_root.roles["root"].keyids
    out = rotate_key(repo, keys, "root")
    assert out["old_keyid"] == old_key and out["root_version"] == 2
    new = md(repo, "2.root.json")
    assert new.signed.roles["root"].keyids == [out["new_keyid"]]
    old_root.verify_delegate("root", new.signed_bytes, new.signatures)     # what the gateway checks:
    new.signed.verify_delegate("root", new.signed_bytes, new.signatures)   # old threshold and new threshold
    assert md(repo, "root.json").signed.version == 2
    assert not (tmp_path / "keys" / "root" / f"{old_key}.pem").exists()
    assert Path(out["retired_to"]).exists()


def test_a_raised_root_threshold_needs_that_many_root_keys(tmp_path):
    repo, keys = tmp_path / "repo", tmp_path / "keys"
    init_repository(repo, [keys], root_keys=3, root_threshold=2)
    root = md(repo, "1.root.json")
    assert root.signed.roles["root"].threshold == 2 and len(root.signatures) == 3
    first = root.signed.roles["root"].keyids[0]
    with pytest.raises(ReleaseError, match="has 3 keys; name the one"):
        rotate_key(repo, [keys], "root")
    # Two of the three root keys move to another medium that is not at hand.
    away = sorted((keys / "root").iterdir())[1:]
    for p in away:
        os.rename(p, tmp_path / p.name)
    with pytest.raises(ReleaseError, match="needs 2 of the current root keys; 1 found"):
        rotate_key(repo, [keys], "root", keyid=first[:12])
    for p in away:
        os.rename(tmp_path / p.name, p)
    out = rotate_key(repo, [keys], "root", keyid=first[:12])
    new = md(repo, "2.root.json")
    assert first not in new.signed.roles["root"].keyids and out["new_keyid"] in new.signed.roles["root"].keyids
    root.signed.verify_delegate("root", new.signed_bytes, new.signatures)


def test_a_key_file_readable_by_others_is_refused(repo, tmp_path, release_bundles):
    (pem,) = (tmp_path / "keys" / "targets").iterdir()
    os.chmod(pem, 0o644)
    with pytest.raises(ReleaseError, match="readable by others .* chmod 600"):
        add_release(repo, release_bundles[0], 1, keys_of(tmp_path), name="pump")


def run_cli(*argv: str) -> int:
    p = argparse.ArgumentParser(prog="appliance")
    add_release_commands(p.add_subparsers(dest="cmd", required=True))
    args = p.parse_args(list(argv))
    return args.fn(args)


def test_the_release_commands(tmp_path, release_bundles, capsys):
    repo, keys = str(tmp_path / "repo"), str(tmp_path / "keys")
    assert run_cli("release", "init", repo, "--keys", keys, "--timestamp-expires", "2") == 0
    assert "trusted root" in capsys.readouterr().out
    assert run_cli("release", "add", repo, str(release_bundles[0]), "--version", "1", "--name", "pump",
                   "--keys", keys) == 0
    assert "added models/pump-1.tar" in capsys.readouterr().out
    assert run_cli("release", "publish", repo, "--keys", keys, "--timestamp-expires", "1") == 0
    assert "timestamp v2" in capsys.readouterr().out
    assert run_cli("release", "add", repo, str(release_bundles[1]), "--version", "1", "--name", "pump",
                   "--keys", keys) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("appliance release add: ")
    assert run_cli("release", "rotate-key", repo, "--role", "timestamp", "--keys", keys) == 0
    assert "timestamp key" in capsys.readouterr().out
    assert run_cli("release", "list", repo) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["current"]["pump"]["version"] == 1
    assert run_cli("release", "copy", repo, str(tmp_path / "usb")) == 0
    assert (tmp_path / "usb" / "metadata" / "timestamp.json").exists()
    assert run_cli("release", "publish", str(tmp_path / "nothing"), "--keys", keys) == 2
    assert "not a release repository" in capsys.readouterr().err


# -- the gateway's unpacking: only what was signed, only plain files, nothing outside ---------------------------


def signed_release_for(files: dict[str, bytes], decision: dict) -> object:
    import hashlib

    listing = {n: {"length": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in files.items()}
    custom = {"format": 1, "name": "pump", "version": 1, "release": 1, "rollback": False, "precision": "int8",
              "decision": decision, "files": listing}
    # The archive's signed length: room for the members and their headers.
    length = sum(len(b) for b in files.values()) + 512 * (2 * len(files) + 20)
    return parse_release("models/pump-1.tar", length, {"sha256": "0" * 64}, custom)


@pytest.fixture(scope="module")
def valid(release_bundles):
    src = release_bundles[0]
    files = {p.name: p.read_bytes() for p in src.iterdir()}
    return files, decision_values(json.loads(files["bundle.json"]))


def tar_of(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def plain(name: str, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind, target: str = ""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize("evil, message", [
    ("traversal", "name '../bundle.json' is not allowed"),
    ("absolute", "name '/tmp/bundle.json' is not allowed"),
    ("symlink", "is a link"),
    ("hardlink", "is a link"),
    ("directory", "is a directory"),
    ("unsigned", "'extra.bin' is not in the signed file list"),
    ("altered", "does not match its signed sha256"),
    ("missing", "archive lacks signed files: model.int8.onnx"),
])
def test_unpacking_refuses_anything_but_the_signed_plain_files(tmp_path, valid, evil, message):
    files, decision = valid
    release = signed_release_for(files, decision)
    members = [plain(n, b) for n, b in sorted(files.items())]
    if evil == "traversal":
        members.insert(0, plain("../bundle.json", files["bundle.json"]))
    elif evil == "absolute":
        members.insert(0, plain("/tmp/bundle.json", files["bundle.json"]))
    elif evil == "symlink":
        members.insert(0, special("model.int8.onnx", tarfile.SYMTYPE, "/etc/passwd"))
    elif evil == "hardlink":
        members.insert(0, special("model.int8.onnx", tarfile.LNKTYPE, "/etc/passwd"))
    elif evil == "directory":
        members.insert(0, special("sub", tarfile.DIRTYPE))
    elif evil == "unsigned":
        members.append(plain("extra.bin", b"x"))
    elif evil == "altered":
        name, data = members[0][0].name, members[0][1]
        members[0] = plain(name, data[:-1] + bytes([data[-1] ^ 1]))
    elif evil == "missing":
        members = [m for m in members if m[0].name != "model.int8.onnx"]
    archive = tmp_path / "a.tar"
    archive.write_bytes(tar_of(members))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ReleaseCheckError, match=message.replace("(", r"\(").replace(")", r"\)")):
        unpack_archive(archive, dest, release)
    assert not (tmp_path / "bundle.json").exists() and not Path("/tmp/bundle.json").exists()
    assert all(p.is_file() and not p.is_symlink() for p in dest.iterdir())


def test_a_sparse_member_is_refused_before_any_file_is_written(tmp_path, valid):
    files, decision = valid
    pad = b"p" * 512 + b"\0" * 4096   # unpacks to 4.5 KiB from 512 bytes in the archive
    release = signed_release_for({**files, "pad.bin": pad}, decision)
    members = tar_of([plain(n, b) for n, b in sorted(files.items())])
    archive = tmp_path / "a.tar"
    archive.write_bytes(sparse_member("pad.bin", pad[:512], len(pad)) + members)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ReleaseCheckError, match="'pad.bin' is a sparse file; only plain files are allowed"):
        unpack_archive(archive, dest, release)
    assert list(dest.iterdir()) == []


def test_a_file_list_adding_up_beyond_the_signed_archive_is_refused(valid):
    files, decision = valid
    with pytest.raises(ReleaseCheckError, match="more than the signed archive's 100: nothing may expand"):
        parse_release("models/pump-1.tar", 100, {"sha256": "0" * 64},
                      {"format": 1, "name": "pump", "version": 1, "release": 1, "rollback": False,
                       "precision": "int8", "decision": decision, "files": {
                           n: {"length": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                           for n, b in files.items()}})


def test_sanity_bounds_on_signed_values(valid):
    _, decision = valid
    check_sane(decision, "int8")
    for change, message in [
        (lambda d: d.update(threshold="1e+12"), "threshold 1e\\+12 is outside .* can never alarm"),
        (lambda d: d["thresholds"].update(int8="nan"), "thresholds.int8 is nan, not a finite number"),
        (lambda d: d["thresholds"].update(fp32="-0.1"), "alarms on everything"),
        (lambda d: d["scaler"]["scale"].__setitem__(1, "1e+30"), r"scaler.scale\[1\] 1e\+30 is outside"),
        (lambda d: d["scaler"]["center"].__setitem__(0, "inf"), r"scaler.center\[0\] is inf"),
        (lambda d: d.update(window=1), "window 1 is outside"),
        (lambda d: d.update(period_s="0.0"), "period_s 0.0 is outside"),
        (lambda d: d.update(level_free=["Nope"]), "level_free names sensors"),
    ]:
        d = json.loads(json.dumps(decision))
        change(d)
        with pytest.raises(ReleaseCheckError, match=message):
            check_sane(d, "int8")
    with pytest.raises(ReleaseCheckError, match="precision 'int4' has no threshold"):
        check_sane(decision, "int4")


def test_the_updates_config_section(tmp_path):
    from pydantic import ValidationError

    from appliance.sync.updates import ModelUpdater
    from appliance.sync.updates_config import ModelUpdatesConfig

    assert ModelUpdatesConfig().enabled is False
    for bad, message in [
        (dict(enabled=True), "source is required"),
        (dict(source="http://repo.example/models"), "plain http is refused"),
        (dict(source="relative/folder"), "absolute folder path"),
        (dict(model_name="Pump-1"), "lower-case"),
        (dict(cert_file="c.pem"), "go together"),
        (dict(attempts=0), "greater than or equal to 1"),
        (dict(max_archive_mb=float("nan")), "finite"),
        (dict(sources="x"), "Extra inputs are not permitted"),
    ]:
        with pytest.raises(ValidationError, match=message):
            ModelUpdatesConfig(**bad)
    cfg = ModelUpdatesConfig(enabled=True, source="https://models.example.com/repo/", model_name="pump")
    u = ModelUpdater.from_config(cfg, tmp_path)
    assert u.metadata_url == "https://models.example.com/repo/metadata/"
    assert u.targets_url == "https://models.example.com/repo/targets/"
    assert u.trusted_root == tmp_path / "tuf" / "root.json" and u.bundles_dir == tmp_path / "releases"
    assert ModelUpdater.from_config(cfg.model_copy(update={"source": str(tmp_path)}), tmp_path).metadata_url \
        == tmp_path.as_uri() + "/metadata/"
