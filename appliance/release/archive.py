"""Packing a bundle directory into one deterministic tar: the same bundle always gives the same bytes.

Members in name order, as plain files with mode 0644, owner 0/0 without names,
and modification time 0; no compression (ONNX weights barely compress, and a
plain tar cannot expand beyond its signed length on the gateway). Only the
flat layout a bundle has is accepted: no subdirectories, links or hidden files.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

from appliance.release.errors import ReleaseError
from appliance.sync.trust import MAX_MEMBERS, MEMBER_RE, RELEASE_RECORD


def bundle_members(bundle_dir: Path) -> dict[str, Path]:
    """The files of ``bundle_dir`` to pack, by name; refuses anything a gateway would refuse."""
    members = {}
    for p in sorted(bundle_dir.iterdir()):
        if p.is_symlink() or not p.is_file():
            raise ReleaseError(f"{p}: a bundle holds only plain files (no directories or links)")
        if not MEMBER_RE.fullmatch(p.name) or p.name == RELEASE_RECORD:
            raise ReleaseError(f"{p}: file name not allowed in a release (letters, digits, '._-', no leading dot)")
        members[p.name] = p
    if len(members) > MAX_MEMBERS:
        raise ReleaseError(f"{bundle_dir}: {len(members)} files, a release holds at most {MAX_MEMBERS}")
    return members


class _HashingReader:
    """Feeds tarfile a file while hashing exactly the bytes it packs."""

    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.h.update(data)
        self.n += len(data)
        return data


def pack_bundle(bundle_dir: str | Path, out: str | Path) -> dict[str, dict]:
    """Write ``bundle_dir`` as a deterministic tar to ``out``; return each member's length and sha256."""
    bundle_dir = Path(bundle_dir)
    files = {}
    with tarfile.open(out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, path in bundle_members(bundle_dir).items():
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            with open(path, "rb") as f:
                reader = _HashingReader(f)
                tar.addfile(info, reader)
            if reader.n != info.size:
                raise ReleaseError(f"{path}: changed while being packed")
            files[name] = {"length": info.size, "sha256": reader.h.hexdigest()}
    return files
