"""A gateway's SuperNode key pair: the identity the fleet's SuperLink admits or refuses.

Flower's SuperNode authentication signs each request to the SuperLink with the
node's EC private key (OpenSSH format, a NIST curve); the SuperLink, started
with ``--enable-supernode-auth``, answers only nodes whose public key was
registered (``flwr supernode register``, wrapped by ``appliance fleet
register``). The private key stays on the gateway (mode 0600); only the
``.pub`` file travels to the engineer. Nothing here imports flwr.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def write_node_key(path: str | Path, comment: str = "") -> tuple[Path, Path]:
    """Write a new P-384 key pair as ``path`` (private, 0600) and ``path.pub``; refuse to overwrite a key."""
    private = Path(path)
    public = private.with_name(private.name + ".pub")
    if private.exists():
        raise FileExistsError(f"{private}: a key is already there (a new key is a new gateway identity)")
    key = ec.generate_private_key(ec.SECP384R1())
    private.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()))
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public.write_bytes(line + (b" " + comment.encode() if comment else b"") + b"\n")
    return private, public


def public_key_line(path: str | Path) -> str:
    """The OpenSSH public key line (without comment) of a ``.pub`` or private key file."""
    data = Path(path).read_bytes()
    if data.startswith(b"-----BEGIN"):
        key = serialization.load_ssh_private_key(data, None).public_key()
    else:
        key = serialization.load_ssh_public_key(b" ".join(data.split()[:2]))
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"{path}: not an EC key (Flower's node authentication takes NIST EC keys)")
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
