"""What a signed model release promises, and checking a bundle against that promise.

A model release is one TUF target, ``models/<name>-<version>.tar``: a plain tar of
the bundle directory. Its entry in the signed ``targets`` metadata carries, in
``custom``, everything that decides what the detector alarms on::

    {"format": 1, "name": "pump", "version": 2, "release": 5, "rollback": false,
     "precision": "int8",
     "decision": {"format_version": 3, "model_version": "...", "sensors": [...],
                  "window": 16, "stride": 2, "period_s": "1.0", "level_free": [],
                  "threshold": "0.1644...", "thresholds": {"fp32": "...", "int8": "..."},
                  "scaler": {"kind": "robust", "center": ["..."], "scale": ["..."]},
                  "model_files": {"model.int8.onnx": "<sha256>", ...}},
     "files": {"bundle.json": {"length": 4120, "sha256": "..."}, ...}}

Numbers that are floats in ``bundle.json`` are signed as their shortest
round-trip decimal strings (``repr``): TUF signs canonical JSON, which has no
floats, and a string is exact where a rounded float would not be.

``release`` is a serial the engineer's tool raises with every ``add``: the
newest release is the one with the highest serial, so a signed rollback (an
older ``version`` flagged ``rollback``) can be the newest release while a plain
re-publication of an older version is recognisable as a downgrade.

The engineer's side (:mod:`appliance.release`) builds this with
:func:`decision_values`; the gateway (:mod:`appliance.sync.updates`) checks a
downloaded archive against it (:func:`unpack_archive`, :func:`compare_values`)
and, after installing, keeps the signed metadata beside the bundle
(:data:`RELEASE_RECORD`) so :func:`verify_installed` can refuse a bundle edited
in place, re-verifying the signatures from the trusted root rather than
trusting a hash that sits beside the file it protects.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The sanity bounds on signed values are the loader's: a release signs only what a gateway loads.
from appliance.detector.bundle import (  # noqa: F401  (re-exported: the release tool's bounds)
    MAX_ABS_CENTER,
    MAX_PERIOD_S,
    MAX_SCALE,
    MAX_THRESHOLD,
    MAX_WINDOW,
    META_FILE,
    MIN_SCALE,
    MODEL_FILES,
)

RELEASE_FORMAT = 1
TARGET_DIR = "models"
# The record of the signed release kept inside an installed bundle directory.
RELEASE_RECORD = "tuf-release.json"
# Signed into root, targets, snapshot and timestamp (an unrecognised field of the
# signed part, which python-tuf keeps and signs): when the engineer's tool signed
# it. A gateway without a real-time clock learns from it a time that has surely
# passed (see appliance.sync.updates).
SIGNED_AT_FIELD = "x-appliance-signed-at"

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_]{0,47}")
TARGET_RE = re.compile(rf"{TARGET_DIR}/(?P<name>{NAME_RE.pattern})-(?P<version>[1-9][0-9]{{0,8}})\.tar")
# A bundle is a flat directory of a few plain files; anything else in an archive
# (a directory, a link, a device, a path with a slash) is refused.
MEMBER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_MEMBERS = 32
PRECISIONS = tuple(MODEL_FILES)



class ReleaseCheckError(ValueError):
    """A release or bundle does not match what was signed, or what was signed is not sane."""


def num(v: Any) -> str:
    """A float as signed: its shortest round-trip decimal string.

    >>> num(0.1), num(1), num(1e30)
    ('0.1', '1.0', '1e+30')
    """
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ReleaseCheckError(f"{v!r} is not a number")
    try:
        return repr(float(v))
    except OverflowError:
        raise ReleaseCheckError(f"{v!r} is too large") from None


def _int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ReleaseCheckError(f"{what} must be an integer, got {v!r}")
    return v


def _names(v: Any, what: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
        raise ReleaseCheckError(f"{what} must be a list of names, got {v!r}")
    return list(v)


def _frozen(v: Any) -> dict:
    allowed = v.get("allowed_run") if isinstance(v, dict) else None
    if not isinstance(allowed, dict):
        raise ReleaseCheckError(f"frozen must hold an allowed_run object, got {v!r}")
    return {"allowed_run": {str(k): _int(n, f"frozen.allowed_run.{k}") for k, n in sorted(allowed.items())}}


def decision_values(meta: dict) -> dict:
    """The values of a ``bundle.json`` that decide what alarms, in their signed form."""
    if not isinstance(meta, dict):
        raise ReleaseCheckError(f"{META_FILE} must hold a JSON object")
    try:
        scaler = meta["scaler"]
        thresholds = meta["thresholds"]
        if not isinstance(scaler, dict) or not isinstance(thresholds, dict):
            raise ReleaseCheckError("scaler and thresholds must be objects")
        if not isinstance(scaler.get("center"), list) or not isinstance(scaler.get("scale"), list):
            raise ReleaseCheckError("scaler.center and scaler.scale must be lists")
        files = meta["files"]
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise ReleaseCheckError("files must map file names to sha256 strings")
        model_version = meta["model_version"]
        if not isinstance(model_version, str):
            raise ReleaseCheckError(f"model_version must be a string, got {model_version!r}")
        return {
            "format_version": _int(meta["format_version"], "format_version"),
            "model_version": model_version,
            "sensors": _names(meta["sensors"], "sensors"),
            "window": _int(meta["window"], "window"),
            "stride": _int(meta["stride"], "stride"),
            "period_s": num(meta["period_s"]),
            # Format 1 bundles predate level-free sensors: none.
            "level_free": _names(meta.get("level_free", []), "level_free"),
            "threshold": num(meta["threshold"]),
            "thresholds": {str(k): num(v) for k, v in sorted(thresholds.items())},
            "scaler": {"kind": str(scaler.get("kind", "robust")),
                       "center": [num(v) for v in scaler["center"]],
                       "scale": [num(v) for v in scaler["scale"]]},
            "model_files": {str(k): v for k, v in sorted(files.items())},
            # Format 5: the score averages this many windows; older bundles have no key (and sign none).
            **({"horizon": _int(meta["horizon"], "horizon")} if "horizon" in meta else {}),
            **({"frozen": _frozen(meta["frozen"])} if "frozen" in meta else {}),
        }
    except KeyError as e:
        raise ReleaseCheckError(f"{META_FILE} lacks {e.args[0]!r}") from None


def _finite(s: Any, what: str) -> float:
    try:
        v = float(s)
    except (TypeError, ValueError):
        raise ReleaseCheckError(f"{what} is not a number: {s!r}") from None
    if not math.isfinite(v):
        raise ReleaseCheckError(f"{what} is {s}, not a finite number")
    return v


def check_sane(values: dict, precision: str) -> None:
    """Refuse decision values no working detector could have (one line saying which)."""
    try:
        window, stride = values["window"], values["stride"]
        if not 2 <= _int(window, "window") <= MAX_WINDOW:
            raise ReleaseCheckError(f"window {window} is outside 2..{MAX_WINDOW}")
        if not 1 <= _int(stride, "stride") <= window:
            raise ReleaseCheckError(f"stride {stride} is outside 1..window ({window})")
        period = _finite(values["period_s"], "period_s")
        if not 0 < period <= MAX_PERIOD_S:
            raise ReleaseCheckError(f"period_s {period} is outside (0, {MAX_PERIOD_S:g}]")
        sensors = _names(values["sensors"], "sensors")
        if not sensors or len(set(sensors)) != len(sensors):
            raise ReleaseCheckError("sensors must be a non-empty list of unique names")
        if not set(_names(values["level_free"], "level_free")) <= set(sensors):
            raise ReleaseCheckError("level_free names sensors the model does not have")
        thresholds = values["thresholds"]
        if precision not in PRECISIONS or precision not in thresholds:
            raise ReleaseCheckError(f"precision {precision!r} has no threshold (have {sorted(thresholds)})")
        for key, s in [("threshold", values["threshold"])] + [(f"thresholds.{k}", v) for k, v in thresholds.items()]:
            t = _finite(s, key)
            if not 0 < t <= MAX_THRESHOLD:
                raise ReleaseCheckError(f"{key} {s} is outside (0, {MAX_THRESHOLD:g}]: such a model "
                                        f"{'alarms on everything' if t <= 0 else 'can never alarm'}")
        scaler = values["scaler"]
        if len(scaler["center"]) != len(sensors) or len(scaler["scale"]) != len(sensors):
            raise ReleaseCheckError(f"scaler has {len(scaler['center'])}/{len(scaler['scale'])} entries "
                                    f"for {len(sensors)} sensors")
        for i, s in enumerate(scaler["center"]):
            if abs(_finite(s, f"scaler.center[{i}]")) > MAX_ABS_CENTER:
                raise ReleaseCheckError(f"scaler.center[{i}] {s} is beyond ±{MAX_ABS_CENTER:g}")
        for i, s in enumerate(scaler["scale"]):
            if not MIN_SCALE <= _finite(s, f"scaler.scale[{i}]") <= MAX_SCALE:
                raise ReleaseCheckError(f"scaler.scale[{i}] {s} is outside [{MIN_SCALE:g}, {MAX_SCALE:g}]")
        model_files = values["model_files"]
        for precision_name, file_name in MODEL_FILES.items():
            digest = model_files.get(file_name)
            if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
                raise ReleaseCheckError(f"no sha256 for {file_name} ({precision_name} model)")
    except (KeyError, TypeError) as e:
        raise ReleaseCheckError(f"decision values incomplete: {e}") from None


def compare_values(signed: Any, actual: Any, path: str = "") -> str | None:
    """The first difference between signed and actual decision values, as one phrase, or None.

    >>> compare_values({"scaler": {"scale": ["1.5", "2.0"]}}, {"scaler": {"scale": ["1.5", "1e+30"]}})
    'scaler.scale[1] is 1e+30, the signed release says 2.0'
    """
    if isinstance(signed, dict) and isinstance(actual, dict):
        for key in sorted(set(signed) | set(actual)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in actual:
                return f"{sub} is missing, the signed release has it"
            if key not in signed:
                return f"{sub} is present but not in the signed release"
            diff = compare_values(signed[key], actual[key], sub)
            if diff:
                return diff
        return None
    if isinstance(signed, list) and isinstance(actual, list):
        if len(signed) != len(actual):
            return f"{path} has {len(actual)} entries, the signed release {len(signed)}"
        for i, (s, a) in enumerate(zip(signed, actual)):
            diff = compare_values(s, a, f"{path}[{i}]")
            if diff:
                return diff
        return None
    if type(signed) is not type(actual) or signed != actual:
        return f"{path} is {actual}, the signed release says {signed}"
    return None


@dataclass(frozen=True)
class Release:
    """One model release as its signed targets entry describes it."""

    target: str
    name: str
    version: int
    release: int
    rollback: bool
    precision: str
    decision: dict
    files: dict[str, dict]
    length: int
    sha256: str

    def summary(self) -> dict:
        return {"target": self.target, "name": self.name, "version": self.version, "release": self.release,
                "rollback": self.rollback, "precision": self.precision,
                "model_version": self.decision.get("model_version"), "length": self.length}


def parse_release(path: str, length: int, hashes: dict[str, str], custom: Any) -> Release:
    """A targets entry read as a model release; :class:`ReleaseCheckError` if it is not a sane one."""
    m = TARGET_RE.fullmatch(path)
    if m is None:
        raise ReleaseCheckError(f"{path}: not a model release path ({TARGET_DIR}/<name>-<version>.tar)")
    if not isinstance(custom, dict) or custom.get("format") != RELEASE_FORMAT:
        raise ReleaseCheckError(f"{path}: custom metadata is not a format-{RELEASE_FORMAT} model release")
    try:
        name, version, serial = custom["name"], custom["version"], custom["release"]
        rollback, precision = custom["rollback"], custom["precision"]
        decision, files = custom["decision"], custom["files"]
    except KeyError as e:
        raise ReleaseCheckError(f"{path}: custom metadata lacks {e.args[0]!r}") from None
    if name != m["name"] or version != int(m["version"]):
        raise ReleaseCheckError(f"{path}: custom metadata names {name!r} version {version!r}, not the path's")
    _int(serial, f"{path}: release")
    if not isinstance(rollback, bool):
        raise ReleaseCheckError(f"{path}: rollback must be true or false")
    if not isinstance(decision, dict) or not isinstance(files, dict) or not files:
        raise ReleaseCheckError(f"{path}: decision values or file list missing")
    for fname, info in files.items():
        if not MEMBER_RE.fullmatch(fname) or fname == RELEASE_RECORD:
            raise ReleaseCheckError(f"{path}: file name {fname!r} is not allowed in a bundle")
        if not (isinstance(info, dict) and isinstance(info.get("length"), int) and info["length"] >= 0
                and isinstance(info.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", info["sha256"])):
            raise ReleaseCheckError(f"{path}: file entry {fname!r} needs a length and a sha256")
    if len(files) > MAX_MEMBERS:
        raise ReleaseCheckError(f"{path}: {len(files)} files, more than {MAX_MEMBERS}")
    if META_FILE not in files:
        raise ReleaseCheckError(f"{path}: the file list lacks {META_FILE}")
    # A plain tar holds each member's bytes, so its members can never add up to more than the
    # archive: a file list that claims more can only be unpacked by expanding something.
    claimed = sum(info["length"] for info in files.values())
    if claimed > length:
        raise ReleaseCheckError(f"{path}: its files add up to {claimed} bytes, more than the signed archive's "
                                f"{length}: nothing may expand beyond its signed length")
    try:
        check_sane(decision, precision)
    except ReleaseCheckError as e:
        raise ReleaseCheckError(f"{path}: signed values are not sane: {e}") from None
    for fname, digest in decision["model_files"].items():
        if fname not in files or files[fname]["sha256"] != digest:
            raise ReleaseCheckError(f"{path}: {fname} in the file list differs from the signed model hash")
    sha = hashes.get("sha256")
    if not isinstance(sha, str):
        raise ReleaseCheckError(f"{path}: no sha256 hash in the targets entry")
    return Release(target=path, name=name, version=version, release=serial, rollback=rollback,
                   precision=precision, decision=decision, files=files, length=length, sha256=sha)


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# The member types a release archive may hold: the plain files ``appliance release add`` packs
# (ustar REGTYPE, or AREGTYPE from an older tar). A GNU sparse member is "regular" to tarfile
# but expands its holes on extraction, far beyond the bytes in the archive: refused like a link.
PLAIN_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` may not be unpacked on a gateway, or None for a plain file."""
    name = member.name
    if member.type not in PLAIN_FILE_TYPES or member.sparse is not None:
        kind = ("link" if member.issym() or member.islnk() else "directory" if member.isdir()
                else "sparse file" if member.type == tarfile.GNUTYPE_SPARSE or member.sparse is not None
                else "special file")
        return f"archive member {name!r} is a {kind}; only plain files are allowed"
    if member.pax_headers:
        # The release tool writes plain ustar; pax headers can rename, resize or sparsify a member.
        return f"archive member {name!r} carries pax headers ({', '.join(sorted(member.pax_headers))[:100]})"
    if not MEMBER_RE.fullmatch(name) or name == RELEASE_RECORD:
        return f"archive member name {name!r} is not allowed (no paths)"
    return None


def _read_members(tar: tarfile.TarFile, release: Release, archive_length: int) -> list[tarfile.TarInfo]:
    """Every member's header, checked before any byte is written: plain files only, each in the
    signed file list once with its signed length, all of them within the archive's length."""
    members: list[tarfile.TarInfo] = []
    seen: set[str] = set()
    while (member := tar.next()) is not None:
        if len(members) >= MAX_MEMBERS:
            raise ReleaseCheckError(f"archive has more than {MAX_MEMBERS} members")
        problem = _member_problem(member)
        if problem:
            raise ReleaseCheckError(problem)
        name = member.name
        if name in seen:
            raise ReleaseCheckError(f"archive member {name!r} appears twice")
        expected = release.files.get(name)
        if expected is None:
            raise ReleaseCheckError(f"archive member {name!r} is not in the signed file list")
        if member.size != expected["length"]:
            raise ReleaseCheckError(f"archive member {name!r} is {member.size} bytes, signed {expected['length']}")
        seen.add(name)
        members.append(member)
    total = sum(m.size for m in members)
    bound = min(archive_length, release.length)
    if total > bound:
        raise ReleaseCheckError(f"archive members add up to {total} bytes, more than the archive's {bound}")
    missing = sorted(set(release.files) - seen)
    if missing:
        raise ReleaseCheckError(f"archive lacks signed files: {', '.join(missing)}")
    return members


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, sha256: str) -> None:
    name = member.name
    src = tar.extractfile(member)
    if src is None:
        raise ReleaseCheckError(f"archive member {name!r} has no data")
    h = hashlib.sha256()
    fd = os.open(dest / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out:
        left = member.size
        while left:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                raise ReleaseCheckError(f"archive member {name!r} is truncated")
            h.update(chunk)
            out.write(chunk)
            left -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
    if h.hexdigest() != sha256:
        raise ReleaseCheckError(f"archive member {name!r} does not match its signed sha256")


def unpack_archive(archive: Path, dest: Path, release: Release) -> None:
    """Unpack a verified release archive into the empty directory ``dest``.

    Only plain files (no sparse files, no pax headers) with simple names,
    exactly those of the signed file list, each of its signed length and
    sha256; no directories, links, devices or paths, so nothing can land
    outside ``dest``. Every header is read and checked before the first byte
    is written, and the members must add up to no more than the archive's
    (signed) length: a plain tar holds every byte it unpacks, so what is
    written is bounded by what TUF checked.
    """
    archive = Path(archive)
    try:
        with tarfile.open(archive, mode="r:") as tar:
            members = _read_members(tar, release, archive.stat().st_size)
            for member in members:
                _extract_member(tar, member, dest, release.files[member.name]["sha256"])
    except tarfile.TarError as e:
        raise ReleaseCheckError(f"archive is not a readable tar: {e}") from None


def check_bundle_against(bundle_dir: Path, release: Release) -> None:
    """The decision values in ``bundle_dir/bundle.json`` must equal the signed ones."""
    meta_path = Path(bundle_dir) / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReleaseCheckError(f"{meta_path}: unreadable: {e}") from None
    diff = compare_values(release.decision, decision_values(meta))
    if diff:
        raise ReleaseCheckError(f"{meta_path}: {diff}")


# -- the record kept beside an installed bundle -----------------------------------------------------------------


def write_release_record(bundle_dir: Path, release: Release, targets_md: dict, root_chain: list[dict],
                         installed_at: str) -> None:
    """Keep the signed metadata that vouches for ``bundle_dir`` inside it (see :func:`verify_installed`)."""
    record = {"format": RELEASE_FORMAT, "target": release.target, "installed_at": installed_at,
              "release": release.summary(), "targets": targets_md, "root_chain": root_chain}
    path = Path(bundle_dir) / RELEASE_RECORD
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_release_record(bundle_dir: Path) -> dict:
    path = Path(bundle_dir) / RELEASE_RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReleaseCheckError(f"{bundle_dir}: no {RELEASE_RECORD}: not installed from a signed release") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReleaseCheckError(f"{path}: unreadable: {e}") from None
    if not isinstance(record, dict) or record.get("format") != RELEASE_FORMAT:
        raise ReleaseCheckError(f"{path}: not a format-{RELEASE_FORMAT} release record")
    return record


def _trusted_release(record: dict, trusted_root: bytes, where: str) -> Release:
    """Re-verify the record's metadata from ``trusted_root`` and return the release it signs."""
    from tuf.api.exceptions import RepositoryError, UnsignedMetadataError
    from tuf.api.metadata import Metadata, Root, Targets

    try:
        root: Root = Metadata[Root].from_bytes(trusted_root).signed
        for entry in sorted(record.get("root_chain") or [], key=lambda d: d.get("signed", {}).get("version", 0)):
            md = Metadata[Root].from_dict(copy.deepcopy(entry))
            if md.signed.version <= root.version:
                continue
            if md.signed.version != root.version + 1:
                raise ReleaseCheckError(f"{where}: root chain jumps from v{root.version} to v{md.signed.version}")
            # As a TUF client does: a new root needs the old root's threshold and its own.
            root.verify_delegate(Root.type, md.signed_bytes, md.signatures)
            md.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
            root = md.signed
        targets = Metadata[Targets].from_dict(copy.deepcopy(record["targets"]))
        root.verify_delegate(Targets.type, targets.signed_bytes, targets.signatures)
    except UnsignedMetadataError as e:
        raise ReleaseCheckError(f"{where}: the signed metadata kept with the bundle does not verify "
                                f"against the trusted root ({e}): edited or from another repository") from None
    except (RepositoryError, KeyError, TypeError, ValueError) as e:
        raise ReleaseCheckError(f"{where}: the signed metadata kept with the bundle is unreadable: {e}") from None
    target = record.get("target")
    entry = targets.signed.targets.get(target) if isinstance(target, str) else None
    if entry is None:
        raise ReleaseCheckError(f"{where}: the signed targets metadata has no {target!r}")
    return parse_release(entry.path, entry.length, entry.hashes, entry.custom)


def verify_installed(bundle_dir: str | Path, trusted_root: bytes | str | Path) -> str | None:
    """Why the installed bundle in ``bundle_dir`` must not be loaded, or None if it is as signed.

    Re-verifies the signed targets metadata kept in the bundle's
    :data:`RELEASE_RECORD` from ``trusted_root`` (the gateway's trusted
    ``root.json``: its bytes or path), following the root rotations recorded
    with it, then checks every decision value of ``bundle.json`` and the sha256
    of every file against that signed entry. Expiry is not checked: a model
    installed while its metadata was fresh keeps running when the gateway is
    offline for longer than the metadata lives.
    """
    bundle_dir = Path(bundle_dir)
    try:
        root_bytes = trusted_root if isinstance(trusted_root, bytes) else Path(trusted_root).read_bytes()
    except OSError as e:
        return f"trusted root unreadable: {e}"
    try:
        record = read_release_record(bundle_dir)
        release = _trusted_release(record, root_bytes, str(bundle_dir / RELEASE_RECORD))
        check_bundle_against(bundle_dir, release)
        present = {p.name for p in bundle_dir.iterdir() if p.name != RELEASE_RECORD}
        extra, missing = sorted(present - set(release.files)), sorted(set(release.files) - present)
        if extra or missing:
            return (f"{bundle_dir}: files differ from the signed release {release.target} "
                    f"(extra: {', '.join(extra) or 'none'}; missing: {', '.join(missing) or 'none'})")
        for name, info in sorted(release.files.items()):
            path = bundle_dir / name
            if path.is_symlink() or not path.is_file():
                return f"{path}: not a plain file (the signed release has a plain file here)"
            if _sha256_of(path) != info["sha256"]:
                return f"{path}: sha256 differs from the signed release {release.target} (changed after install)"
    except ReleaseCheckError as e:
        return str(e)
    except OSError as e:
        return f"{bundle_dir}: unreadable: {e}"
    return None
