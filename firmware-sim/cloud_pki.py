"""A small PKI for the simulated cloud: a CA, the cloud broker's certificate, client certificates.

What a cloud provider's device registry hands out (AWS IoT Core, Azure IoT Hub,
HiveMQ, EMQX all speak mutual TLS). Made with ``cryptography``: EC P-256 keys,
written with mode 0600; certificates valid for ``days`` (default 2: a demo's or a
test's lifetime, nothing to keep). ``rogue`` is signed by a CA nobody trusts, to
show a refusal.

    appliance-sim cloud-pki --out DIR
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path          # the appliance
    client_key: Path
    intake_cert: Path
    intake_key: Path
    rogue_cert: Path           # signed by a CA the broker does not trust
    rogue_key: Path


def _write_key(path: Path, key) -> None:
    from cryptography.hazmat.primitives import serialization

    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _cert(subject_cn: str, key, issuer_cert, issuer_key, *, ca: bool = False, server: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer_cert.subject if issuer_cert is not None else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, encipher_only=False, decipher_only=False),
                            critical=True)
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                            critical=False)
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    return b.sign(issuer_key if issuer_key is not None else key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost, and client certificates, in ``directory``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory.mkdir(parents=True, exist_ok=True)

    def pem(cert) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("demo cloud CA", ca_key, None, None, ca=True)
    rogue_ca_key = ec.generate_private_key(ec.SECP256R1())
    rogue_ca = _cert("rogue CA", rogue_ca_key, None, None, ca=True)
    paths = {}
    (directory / "ca.pem").write_bytes(pem(ca))
    for name, cn, issuer, issuer_key, server in (("server", "127.0.0.1", ca, ca_key, True),
                                                 ("client", "appliance-test", ca, ca_key, False),
                                                 ("intake", "cloud-intake", ca, ca_key, False),
                                                 ("rogue", "appliance-rogue", rogue_ca, rogue_ca_key, False)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(cn, key, issuer, issuer_key, server=server)
        (directory / f"{name}.pem").write_bytes(pem(cert))
        _write_key(directory / f"{name}.key", key)
        paths[name] = (directory / f"{name}.pem", directory / f"{name}.key")
    return Pki(directory / "ca.pem", *paths["server"], *paths["client"], *paths["intake"], *paths["rogue"])


def add_subcommand(sub) -> None:
    p = sub.add_parser("cloud-pki", help="write a CA, a cloud broker certificate and client certificates")
    p.add_argument("--out", required=True, help="directory to write the PEM files to")
    p.set_defaults(func=run)


def run(args) -> int:
    pki = make_pki(Path(args.out))
    print(f"appliance-sim cloud-pki: wrote CA {pki.ca} and certificates in {Path(args.out)}", flush=True)
    return 0
