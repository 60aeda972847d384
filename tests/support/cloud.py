"""The cloud the uplink tests talk to: a second Mosquitto with TLS and client certificates, and the intake.

:func:`make_pki` writes a self-signed CA, a server certificate for 127.0.0.1 and
client certificates (keys mode 0600), made with ``cryptography``. The ``cloud``
fixture starts Mosquitto on a free loopback port with ``require_certificate
true`` and the intake (``firmware-sim/cloud_intake.py``) subscribed to it, and
hands out :class:`Cloud`, which also builds ``[outputs.sync]`` sections that
point at it.

Run as a program, this module is an uploader in a process of its own (the
kill -9 test)::

    python -m tests.support.cloud uploader --config sync.json --store S --queue Q --site SITE --window-s N

It prints ``uploader: window open`` once started and ``uploader: done {status}``
when its queue is empty.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest

from appliance.broker import Mosquitto, find_mosquitto
from appliance.core import OutputContext, PluginEnv
from appliance.sync.config import SyncConfig
from tests.support.wait import wait_until


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
    ca = _cert("uplink test CA", ca_key, None, None, ca=True)
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


def tls_broker(workdir: Path, pki: Pki, port: int | None = None) -> Mosquitto:
    """A Mosquitto (not started) that speaks only TLS and requires a client certificate signed by the CA."""
    return Mosquitto(workdir, port=port, extra_conf=(
        f"cafile {pki.ca}\n"
        f"certfile {pki.server_cert}\n"
        f"keyfile {pki.server_key}\n"
        "require_certificate true\n"
        "use_identity_as_username true\n"))


class Cloud:
    """The cloud broker, the intake storing what arrives, and the PKI both sides use."""

    def __init__(self, workdir: Path):
        from firmware_sim.cloud_intake import CloudIntake, IntakeStore

        self.workdir = workdir
        self.https = None
        self.pki = make_pki(workdir / "pki")
        self.broker = tls_broker(workdir / "broker", self.pki).start()
        self.port = self.broker.port
        self.store = IntakeStore(workdir / "cloud.db")
        self.intake = CloudIntake(self.store, "127.0.0.1", self.port, str(self.pki.ca), str(self.pki.intake_cert),
                                  str(self.pki.intake_key)).start()
        self.wait_ready()

    def wait_ready(self) -> None:
        wait_until(self.intake.ready, timeout=60, what="the cloud intake to connect and subscribe")

    def sync_config(self, **overrides) -> SyncConfig:
        """An ``[outputs.sync]`` section for this cloud (MQTT, the appliance's client certificate)."""
        mqtt = {"host": "127.0.0.1", "port": self.port, "ca_file": str(self.pki.ca),
                "cert_file": str(self.pki.client_cert), "key_file": str(self.pki.client_key),
                "client_id": "appliance-test", "reconnect": {"initial_s": 0.2, "max_s": 1.0},
                **overrides.pop("mqtt", {})}
        base = {"enabled": True, "context_before_s": 30.0, "context_after_s": 10.0, "settle_s": 0.2,
                "close_grace_s": 2.0, "mqtt": mqtt}
        return SyncConfig.model_validate(base | overrides)

    def start_https(self) -> str:
        """Also accept batches as HTTPS POSTs (client certificates required); returns the URL."""
        from firmware_sim.cloud_intake import HttpsIntake

        self.https = HttpsIntake(self.store, 0, str(self.pki.ca), str(self.pki.server_cert),
                                 str(self.pki.server_key)).start()
        return f"https://127.0.0.1:{self.https.port}/uplink"

    def https_config(self, url: str, **overrides) -> SyncConfig:
        """An ``[outputs.sync]`` section sending to the HTTPS intake."""
        https = {"url": url, "ca_file": str(self.pki.ca), "cert_file": str(self.pki.client_cert),
                 "key_file": str(self.pki.client_key), "retry": {"initial_s": 0.2, "max_s": 1.0}}
        base = {"enabled": True, "transport": "https", "context_before_s": 30.0, "context_after_s": 10.0,
                "settle_s": 0.2, "close_grace_s": 2.0, "https": https}
        return SyncConfig.model_validate(base | overrides)

    def kill_broker(self) -> None:
        """SIGKILL: the link is cut with no goodbye."""
        self.broker.kill()

    def start_broker(self) -> None:
        self.broker.start()

    def close(self) -> None:
        if self.https is not None:
            self.https.stop()
        self.intake.stop()
        self.broker.stop()
        self.store.close()


def cloud_peer(workdir: Path) -> Iterator[Cloud]:
    """Start the cloud in ``workdir``, hand it out, stop it (the body of the ``cloud`` fixture)."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed (apt-get install -y mosquitto)")
    c = Cloud(workdir)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def cloud(tmp_path):
    """A TLS Mosquitto requiring client certificates, with the intake subscribed: a :class:`Cloud`."""
    yield from cloud_peer(tmp_path / "cloud")


# -- running an uplink outside the runtime ------------------------------------------------------

class Spawner:
    """``OutputContext.spawn`` as the runtime does it: tasks kept until they finish, awaited at the end."""

    def __init__(self):
        self.tasks: set[asyncio.Task] = set()

    def spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    def context(self, open_alarm_ids=frozenset()) -> OutputContext:
        return OutputContext(open_alarm_ids=frozenset(open_alarm_ids), publish_action=lambda action: None,
                             spawn=self.spawn)


def plugin_env(store_path: Path, data_dir: Path, site: str = "test-site") -> PluginEnv:
    """The part of a PluginEnv the uplink's factory reads: the site and the store's path."""
    config = SimpleNamespace(site=site, store=SimpleNamespace(path=str(store_path)))
    return PluginEnv(config=config, data_dir=data_dir, sensors=())


def uploader_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="tests.support.cloud")
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("uploader")
    u.add_argument("--config", required=True, help="JSON of an [outputs.sync] section")
    u.add_argument("--store", required=True)
    u.add_argument("--queue", required=True)
    u.add_argument("--site", default="test-site")
    u.add_argument("--window-s", type=float, default=600.0)
    args = p.parse_args(argv)

    from appliance.sync.uplink import build

    section = SyncConfig.model_validate(json.loads(Path(args.config).read_text())
                                        | {"queue": {"path": str(Path(args.queue).resolve())}})

    async def run() -> None:
        spawner = Spawner()
        uplink = build(section, plugin_env(Path(args.store), Path(args.queue).parent, args.site))
        await uplink.start(spawner.context())
        uplink.sync_now(args.window_s)
        print("uploader: window open", flush=True)
        while True:
            s = uplink.status()
            if s["queue"]["items"] == 0 and s["queue"]["in_flight"] == 0:
                break
            if not s["window"]["open"]:
                break
            await asyncio.sleep(0.05)
        await spawner.drain()
        status = uplink.status()
        await uplink.stop()
        print("uploader: done " + json.dumps({"queue": status["queue"], "uploaded": status["uploaded"]}),
              flush=True)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(uploader_main(sys.argv[1:]))
