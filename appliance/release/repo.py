"""The engineer's TUF repository of model releases, kept with python-tuf's metadata API.

Layout of ``REPO_DIR`` (copy ``metadata/`` and ``targets/`` to any static HTTPS
host, or onto a USB stick, as they are)::

    REPO_DIR/
      metadata/
        1.root.json 2.root.json ...   every root version (gateways walk the chain)
        root.json                     the newest root: install it on a new gateway
        N.targets.json  N.snapshot.json   (consistent snapshots: versions are kept)
        timestamp.json
      targets/models/<sha256>.<name>-<version>.tar

Operations (each signs with the keys the current root names for the role,
found in the keys directories, and refuses to go on below a role's threshold):

* :func:`init_repository`: keys for the four roles, root v1, empty targets,
  first snapshot and timestamp;
* :func:`add_release`: pack a bundle, add it as ``models/<name>-<version>.tar``
  with its decision values signed in ``custom`` (:mod:`appliance.sync.trust`),
  new targets version (not visible to gateways until published);
* :func:`publish`: new snapshot and timestamp (or only a timestamp: the job a
  publishing host repeats before the timestamp expires), optionally a renewed
  root;
* :func:`rotate_key`: a new key for a role; the new root version is signed by
  the old root keys and the new ones, so gateways follow the chain.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from appliance.release.archive import pack_bundle
from appliance.release.errors import ReleaseError
from appliance.release.keys import ROLES, KeyStore, check_outside
from appliance.sync.trust import (
    NAME_RE,
    PRECISIONS,
    RELEASE_FORMAT,
    SIGNED_AT_FIELD,
    TARGET_DIR,
    ReleaseCheckError,
    check_bundle_against,
    check_sane,
    decision_values,
    parse_release,
    unpack_archive,
)

DEFAULT_DAYS = {"root": 365.0, "targets": 365.0, "snapshot": 30.0, "timestamp": 7.0}
_PRETTY = JSONSerializer(compact=False)


def _now(now: datetime | None) -> datetime:
    return (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(microsecond=0)


def _stamp(signed, now: datetime, days: float) -> None:
    """Expiry ``days`` after ``now``, and the signing time gateways without a clock learn from."""
    if not days > 0:
        raise ReleaseError(f"expiry must be a positive number of days, got {days}")
    signed.expires = now + timedelta(days=days)
    signed.unrecognized_fields[SIGNED_AT_FIELD] = now.isoformat().replace("+00:00", "Z")


class _Repo:
    """Reading and writing the metadata files of one repository directory."""

    def __init__(self, repo_dir: str | Path, keys: list[str | Path] | None = None):
        self.dir = Path(repo_dir)
        self.meta = self.dir / "metadata"
        self.targets_dir = self.dir / "targets"
        self.keys = KeyStore(keys) if keys is not None else None
        if keys is not None:
            check_outside(self.keys.dirs, self.dir)

    def exists(self) -> bool:
        return (self.meta / "1.root.json").exists()

    def require(self) -> None:
        if not self.exists():
            raise ReleaseError(f"{self.dir}: not a release repository (no metadata/1.root.json; "
                               f"run `appliance release init` first)")

    def _versions(self, role: str) -> list[int]:
        pat = re.compile(rf"([1-9][0-9]*)\.{role}\.json")
        return sorted(int(m[1]) for p in self.meta.glob(f"*.{role}.json") if (m := pat.fullmatch(p.name)))

    def load(self, role: str) -> Metadata:
        """The newest metadata of ``role``."""
        if role == Timestamp.type:
            path = self.meta / "timestamp.json"
        else:
            versions = self._versions(role)
            if not versions:
                raise ReleaseError(f"{self.meta}: no {role} metadata")
            path = self.meta / f"{versions[-1]}.{role}.json"
        try:
            return Metadata.from_file(str(path))
        except Exception as e:  # python-tuf raises several types for a damaged file
            raise ReleaseError(f"{path}: unreadable metadata: {e}") from None

    def write(self, md: Metadata) -> Path:
        """Atomically write ``md`` under its consistent-snapshot name (and root.json for root)."""
        role = md.signed.type
        self.meta.mkdir(parents=True, exist_ok=True)
        data = md.to_bytes(_PRETTY)
        names = ["timestamp.json"] if role == Timestamp.type else [f"{md.signed.version}.{role}.json"]
        if role == Root.type:
            names.append("root.json")
        for name in names:
            _atomic_write(self.meta / name, data)
        return self.meta / names[0]

    def sign(self, md: Metadata, role: str, root: Root, extra: list | None = None) -> None:
        """Sign with every key of ``role`` present (plus ``extra``) and check ``root``'s threshold."""
        signers = self.keys.signers(root, role) + list(extra or [])
        md.signatures.clear()
        for s in signers:
            md.sign(s, append=True)
        result = root.get_verification_result(role, md.signed_bytes, md.signatures)
        if not result.verified:
            raise ReleaseError(f"{role} needs {result.threshold} signature(s) from its keys; "
                               f"{len(result.signed)} of its keys found in {', '.join(map(str, self.keys.dirs))}")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _meta_file(path: Path, version: int) -> MetaFile:
    """Snapshot/timestamp entry for a written metadata file: version, length and sha256."""
    return MetaFile.from_data(version, path.read_bytes(), ["sha256"])


def init_repository(repo_dir: str | Path, keys: list[str | Path], *, root_keys: int = 1, root_threshold: int = 1,
                    days: dict[str, float] | None = None, now: datetime | None = None) -> Path:
    """Create a repository with fresh Ed25519 keys; return the path of ``root.json`` to install on gateways."""
    repo = _Repo(repo_dir, keys)
    if repo.exists():
        raise ReleaseError(f"{repo.dir}: already a release repository")
    if not 1 <= root_threshold <= root_keys:
        raise ReleaseError(f"root threshold {root_threshold} must be between 1 and the number of root keys "
                           f"({root_keys})")
    days = {**DEFAULT_DAYS, **(days or {})}
    now = _now(now)
    root = Root(consistent_snapshot=True)
    root_signers = [repo.keys.generate("root") for _ in range(root_keys)]
    for s in root_signers:
        root.add_key(s.public_key, "root")
    root.roles["root"].threshold = root_threshold
    for role in ROLES[1:]:
        root.add_key(repo.keys.generate(role).public_key, role)
    _stamp(root, now, days["root"])
    root_md = Metadata(root)
    repo.sign(root_md, "root", root)
    repo.write(root_md)

    targets_md = Metadata(Targets())
    _stamp(targets_md.signed, now, days["targets"])
    repo.sign(targets_md, "targets", root)
    repo.write(targets_md)
    (repo.targets_dir / TARGET_DIR).mkdir(parents=True, exist_ok=True)
    _publish(repo, root, now, days, timestamp_only=False)
    return repo.meta / "root.json"


def _default_name(bundle_dir: Path) -> str:
    name = re.sub(r"[^a-z0-9_]", "_", bundle_dir.resolve().name.lower()).strip("_") or "model"
    return name[:48]


def add_release(repo_dir: str | Path, bundle_dir: str | Path, version: int, keys: list[str | Path], *,
                name: str | None = None, rollback: bool = False, precision: str = "int8",
                targets_days: float | None = None, now: datetime | None = None) -> dict:
    """Add ``bundle_dir`` as release ``version`` of model ``name`` (a new, signed targets version).

    The version only goes up: a version at or below the newest release's is
    refused unless ``rollback`` (which in turn needs an older version), and a
    version number is never reused for other content. Returns the release's
    summary. Gateways see it after :func:`publish`.
    """
    from appliance.detector.bundle import BundleError, load_bundle

    repo = _Repo(repo_dir, keys)
    repo.require()
    bundle_dir = Path(bundle_dir)
    name = name or _default_name(bundle_dir)
    if not NAME_RE.fullmatch(name):
        raise ReleaseError(f"model name {name!r}: lower-case letters, digits and underscores only (at most 48)")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 10**9:
        raise ReleaseError(f"version must be a whole number from 1, got {version!r}")
    if precision not in PRECISIONS:
        raise ReleaseError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    try:
        bundle = load_bundle(bundle_dir)
        values = decision_values(bundle.meta)
        check_sane(values, precision)
    except (BundleError, ReleaseCheckError) as e:
        raise ReleaseError(f"{bundle_dir}: {e}") from None
    if precision == "int8" and bundle.meta.get("int8_check", {}).get("passed") is False:
        raise ReleaseError(f"{bundle_dir}: the INT8 model failed its check against FP32 in training; "
                           f"release it with --precision fp32 or retrain")

    root = repo.load("root").signed
    targets_md = repo.load("targets")
    targets: Targets = targets_md.signed
    path = f"{TARGET_DIR}/{name}-{version}.tar"
    releases = [r for r in _releases(targets) if r.name == name]
    current = max(releases, key=lambda r: r.release, default=None)

    models = repo.targets_dir / TARGET_DIR
    models.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".pack-", suffix=".tar", dir=models)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        files = pack_bundle(bundle_dir, tmp)
        info = TargetFile.from_file(path, str(tmp), ["sha256"])
        sha = info.hashes["sha256"]
        existing = targets.targets.get(path)
        if existing is not None and existing.hashes.get("sha256") != sha:
            raise ReleaseError(f"{path} is already published with other content; a changed model needs a new "
                               f"version number")
        if current is not None:
            if rollback and version >= current.version:
                raise ReleaseError(f"--rollback goes back to an older version; the current release is "
                                   f"v{current.version}")
            if not rollback and version <= current.version:
                raise ReleaseError(f"v{version} is not above the current release v{current.version}; publish a "
                                   f"higher version, or --rollback to go back to an older one on purpose")
        elif rollback:
            raise ReleaseError(f"nothing to roll back: {name} has no release yet")
        serial = 1 + max((r.release for r in _releases(targets)), default=0)
        custom = {"format": RELEASE_FORMAT, "name": name, "version": version, "release": serial,
                  "rollback": bool(rollback), "precision": precision, "decision": values, "files": files}
        info.unrecognized_fields["custom"] = custom
        release = parse_release(path, info.length, info.hashes, custom)
        # What the gateway will do, done here: never publish an archive a gateway would refuse.
        with tempfile.TemporaryDirectory() as check_dir:
            unpack_archive(tmp, Path(check_dir), release)
            check_bundle_against(Path(check_dir), release)
            load_bundle(check_dir)
        final = models / f"{sha}.{name}-{version}.tar"
        os.chmod(tmp, 0o644)  # mkstemp made it private; a web server must read it
        os.replace(tmp, final)
    except (ReleaseCheckError, BundleError) as e:
        raise ReleaseError(f"{bundle_dir}: {e}") from None
    finally:
        tmp.unlink(missing_ok=True)

    targets.targets[path] = info
    targets.version += 1
    _stamp(targets, _now(now), targets_days or max(DEFAULT_DAYS["targets"], _days_left(targets, now)))
    repo.sign(targets_md, "targets", root)
    repo.write(targets_md)
    return release.summary()


def _days_left(signed, now: datetime | None) -> float:
    return max(0.0, (signed.expires - _now(now)).total_seconds() / 86400.0)


def _releases(targets: Targets) -> list:
    out = []
    for path, info in targets.targets.items():
        try:
            out.append(parse_release(path, info.length, info.hashes, info.custom))
        except ReleaseCheckError:
            continue
    return out


def _publish(repo: _Repo, root: Root, now: datetime, days: dict[str, float], timestamp_only: bool) -> tuple[int, int]:
    targets_version = repo._versions("targets")[-1]
    snapshot_versions = repo._versions("snapshot")
    if timestamp_only and not snapshot_versions:
        raise ReleaseError("no snapshot yet: publish fully first")
    if timestamp_only:
        snapshot_md = repo.load("snapshot")
    else:
        snapshot_md = repo.load("snapshot") if snapshot_versions else Metadata(Snapshot())
        snap: Snapshot = snapshot_md.signed
        if snapshot_versions:
            snap.version += 1
        snap.meta["targets.json"] = _meta_file(repo.meta / f"{targets_version}.targets.json", targets_version)
        _stamp(snap, now, days["snapshot"])
        repo.sign(snapshot_md, "snapshot", root)
        repo.write(snapshot_md)
    snapshot_version = snapshot_md.signed.version
    ts_path = repo.meta / "timestamp.json"
    timestamp_md = repo.load("timestamp") if ts_path.exists() else Metadata(Timestamp())
    ts: Timestamp = timestamp_md.signed
    if ts_path.exists():
        ts.version += 1
    ts.snapshot_meta = _meta_file(repo.meta / f"{snapshot_version}.snapshot.json", snapshot_version)
    _stamp(ts, now, days["timestamp"])
    repo.sign(timestamp_md, "timestamp", root)
    repo.write(timestamp_md)
    return snapshot_version, ts.version


def publish(repo_dir: str | Path, keys: list[str | Path], *, snapshot_days: float | None = None,
            timestamp_days: float | None = None, timestamp_only: bool = False, renew_root_days: float | None = None,
            now: datetime | None = None) -> dict:
    """Make the current targets visible: a new snapshot and timestamp (or only a timestamp).

    ``renew_root_days`` first signs a new root version with the same keys and a
    new expiry (a gateway refuses everything once its newest root expired).
    Returns the new versions. Upload ``metadata/timestamp.json`` last when
    copying to a web host, so no gateway sees a timestamp before its files.
    """
    repo = _Repo(repo_dir, keys)
    repo.require()
    now = _now(now)
    days = {**DEFAULT_DAYS, **{k: v for k, v in (("snapshot", snapshot_days), ("timestamp", timestamp_days))
                               if v is not None}}
    root_md = repo.load("root")
    if renew_root_days is not None:
        root_md = _new_root(repo, root_md, now, renew_root_days, change=None)
    snapshot_version, timestamp_version = _publish(repo, root_md.signed, now, days, timestamp_only)
    return {"root": root_md.signed.version, "snapshot": snapshot_version, "timestamp": timestamp_version,
            "timestamp_expires": (now + timedelta(days=days["timestamp"])).isoformat()}


def _new_root(repo: _Repo, old_md: Metadata, now: datetime, days: float, change) -> Metadata:
    """The next root version (``change(root)`` applied), signed by the old root's keys and its own."""
    old: Root = old_md.signed
    old_signers = repo.keys.signers(old, "root")
    new_md = Metadata(copy.deepcopy(old))
    new: Root = new_md.signed
    extra = change(new) if change else []
    new.version = old.version + 1
    _stamp(new, now, days)
    new_md.signatures.clear()
    seen = set()
    for s in old_signers + list(extra or []) + repo.keys.signers(new, "root"):
        if s.public_key.keyid not in seen:
            seen.add(s.public_key.keyid)
            new_md.sign(s, append=True)
    # A TUF client accepts root N+1 only with the threshold of root N's keys and of its own.
    for who, r in (("previous", old), ("new", new)):
        result = r.get_verification_result("root", new_md.signed_bytes, new_md.signatures)
        if not result.verified:
            raise ReleaseError(f"root v{new.version} needs {result.threshold} signature(s) of the {who} root keys, "
                               f"has {len(result.signed)}: put the root keys in the keys directory")
    repo.write(new_md)
    return new_md


def rotate_key(repo_dir: str | Path, keys: list[str | Path], role: str, *, keyid: str | None = None,
               root_days: float | None = None, snapshot_days: float | None = None,
               timestamp_days: float | None = None, now: datetime | None = None) -> dict:
    """Replace a key of ``role`` with a new Ed25519 key, in a new root version gateways will follow.

    The old root keys (its threshold) and the new root's sign the new root.
    For targets, snapshot or timestamp the role's metadata is re-signed with
    the new key and published. The replaced key moves to ``retired/``.
    """
    if role not in ROLES:
        raise ReleaseError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    repo = _Repo(repo_dir, keys)
    repo.require()
    now = _now(now)
    old_md = repo.load("root")
    current = old_md.signed.roles[role].keyids
    if keyid is None:
        if len(current) != 1:
            raise ReleaseError(f"{role} has {len(current)} keys; name the one to replace with --keyid "
                               f"({', '.join(k[:12] for k in current)})")
        keyid = current[0]
    matches = [k for k in current if k.startswith(keyid)]
    if len(matches) != 1:
        raise ReleaseError(f"{role} has no single key starting with {keyid!r}")
    old_keyid = matches[0]
    have = repo.keys.signers(old_md.signed, "root")
    if len(have) < old_md.signed.roles["root"].threshold:
        raise ReleaseError(f"rotating a key needs {old_md.signed.roles['root'].threshold} of the current root keys; "
                           f"{len(have)} found in {', '.join(map(str, repo.keys.dirs))}")
    # Re-publishing after the rotation needs the roles below the rotated one: check before changing anything.
    for needed in {"targets": ("snapshot", "timestamp"), "snapshot": ("timestamp",)}.get(role, ()):
        role_info = old_md.signed.roles[needed]
        if len(repo.keys.signers(old_md.signed, needed)) < role_info.threshold:
            raise ReleaseError(f"rotating the {role} key re-publishes, which needs the {needed} key(s) too")
    new_signer = repo.keys.generate(role)

    def change(root: Root) -> list:
        root.revoke_key(old_keyid, role)
        root.add_key(new_signer.public_key, role)
        return [new_signer] if role == "root" else []

    days = root_days or max(DEFAULT_DAYS["root"], _days_left(old_md.signed, now))
    new_md = _new_root(repo, old_md, now, days, change)
    root = new_md.signed
    published = None
    if role == "targets":
        targets_md = repo.load("targets")
        targets_md.signed.version += 1
        _stamp(targets_md.signed, now, max(DEFAULT_DAYS["targets"], _days_left(targets_md.signed, now)))
        repo.sign(targets_md, "targets", root)
        repo.write(targets_md)
    if role != "root":
        pdays = {**DEFAULT_DAYS, **{k: v for k, v in (("snapshot", snapshot_days), ("timestamp", timestamp_days))
                                    if v is not None}}
        published = _publish(repo, root, now, pdays, timestamp_only=(role == "timestamp"))
    retired = repo.keys.retire(role, old_keyid)
    return {"role": role, "root_version": root.version, "new_keyid": new_signer.public_key.keyid,
            "old_keyid": old_keyid, "retired_to": str(retired) if retired else None, "published": published}


def list_releases(repo_dir: str | Path) -> dict:
    """What the repository holds now: releases (newest serial last), the current one per model, expiries."""
    repo = _Repo(repo_dir)
    repo.require()
    targets = repo.load("targets").signed
    releases = sorted(_releases(targets), key=lambda r: r.release)
    current = {}
    for r in releases:
        current[r.name] = r.summary()
    snapshot_versions = repo._versions("snapshot")
    published_targets = None
    if snapshot_versions:
        snap = repo.load("snapshot").signed
        published_targets = snap.meta["targets.json"].version
    expires = {role: repo.load(role).signed.expires.isoformat() for role in ROLES
               if role != "snapshot" or snapshot_versions}
    return {"releases": [r.summary() for r in releases], "current": current, "expires": expires,
            "targets_version": targets.version, "published_targets_version": published_targets}


def copy_repository(repo_dir: str | Path, dest: str | Path) -> Path:
    """Copy the published part of a repository (metadata/ and targets/) to ``dest``, e.g. a USB stick.

    Targets and versioned metadata first, ``timestamp.json`` last: a reader
    never finds a timestamp pointing at files not yet there.
    """
    src, dest = Path(repo_dir), Path(dest)
    _Repo(src).require()
    for sub in ("targets", "metadata"):
        for p in sorted((src / sub).rglob("*")):
            if p.is_file() and not p.name.startswith(".") and p.name != "timestamp.json":
                out = dest / p.relative_to(src)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, out)
    out = dest / "metadata" / "timestamp.json"
    _atomic_write(out, (src / "metadata" / "timestamp.json").read_bytes())
    return dest
