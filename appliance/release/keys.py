"""The engineer's signing keys: Ed25519, one PEM file per key, kept off the repository and the gateway.

Layout of a keys directory::

    KEYS_DIR/            0700
      root/<keyid>.pem   0600, PKCS#8 PEM (what securesystemslib's CryptoSigner reads)
      targets/...
      snapshot/...
      timestamp/...
      retired/<role>-<keyid>.pem   keys replaced by a rotation (destroy them once every gateway followed)

The public keys live in the repository's ``root.json``; a key is found by the
keyid root lists for a role. Several directories may be given (root keys on one
offline medium, the timestamp key on the publishing host); new keys go to the
first. A key file readable by group or others is refused, as ssh does.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from securesystemslib.signer import CryptoSigner, SSlibKey

from appliance.release.errors import ReleaseError

ROLES = ("root", "targets", "snapshot", "timestamp")


def check_outside(keys_dirs: list[Path], repo_dir: Path) -> None:
    """Keys must never sit inside the repository (which is copied to a public host), nor it in them."""
    repo = repo_dir.resolve()
    for d in keys_dirs:
        k = d.resolve()
        if k == repo or k.is_relative_to(repo) or repo.is_relative_to(k):
            raise ReleaseError(f"keys directory {d} and repository {repo_dir} must be apart: the repository is "
                               f"published, the keys never are")


class KeyStore:
    """Private keys in one or more directories (see the module docstring)."""

    def __init__(self, dirs: list[str | Path]):
        if not dirs:
            raise ReleaseError("no keys directory given (--keys KEYS_DIR)")
        self.dirs = [Path(d) for d in dirs]

    def generate(self, role: str) -> CryptoSigner:
        """A new Ed25519 key for ``role``, written to the first directory with mode 0600."""
        if role not in ROLES:
            raise ReleaseError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
        signer = CryptoSigner.generate_ed25519()
        folder = self.dirs[0] / role
        for d in (self.dirs[0], folder):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        path = folder / f"{signer.public_key.keyid}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(signer.private_bytes)
            f.flush()
            os.fsync(f.fileno())
        return signer

    def find(self, role: str, keyid: str) -> Path | None:
        for d in self.dirs:
            p = d / role / f"{keyid}.pem"
            if p.is_file():
                return p
        return None

    def load(self, role: str, keyid: str, public: SSlibKey) -> CryptoSigner | None:
        """The signer for ``keyid`` if its file is in one of the directories, else None."""
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        path = self.find(role, keyid)
        if path is None:
            return None
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ReleaseError(f"{path}: private key readable by others (mode {stat.filemode(mode)}); chmod 600 it")
        try:
            private = load_pem_private_key(path.read_bytes(), password=None)
            return CryptoSigner(private, public)
        except (ValueError, TypeError) as e:
            raise ReleaseError(f"{path}: not the private key of {role} key {keyid[:12]}: {e}") from None

    def signers(self, root, role: str) -> list[CryptoSigner]:
        """Every key ``root`` lists for ``role`` that is present here."""
        found = []
        for keyid in root.roles[role].keyids:
            signer = self.load(role, keyid, root.keys[keyid])
            if signer is not None:
                found.append(signer)
        return found

    def retire(self, role: str, keyid: str) -> Path | None:
        """Move a replaced key to ``retired/`` (kept until every gateway has followed the rotation)."""
        path = self.find(role, keyid)
        if path is None:
            return None
        retired = path.parent.parent / "retired"
        retired.mkdir(mode=0o700, exist_ok=True)
        dest = retired / f"{role}-{keyid}.pem"
        os.replace(path, dest)
        return dest
