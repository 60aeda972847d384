"""The cloud the uplink tests talk to: a second Mosquitto with TLS and client certificates, and the intake.

:func:`firmware_sim.cloud_pki.make_pki` writes a self-signed CA, a server certificate for 127.0.0.1 and
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
import json
import sys
from pathlib import Path
from typing import Iterator

import pytest

from appliance.broker import Mosquitto, find_mosquitto, tls_mosquitto
from appliance.sync.config import SyncConfig
from firmware_sim.cloud_pki import Pki, make_pki
from rigs.outputs import Spawner, plugin_env  # noqa: F401  (the tests take them from here)
from tests.support.wait import wait_until


def tls_broker(workdir: Path, pki: Pki, port: int | None = None) -> Mosquitto:
    """A Mosquitto (not started) that speaks only TLS and requires a client certificate signed by the CA."""
    return tls_mosquitto(workdir, pki.ca, pki.server_cert, pki.server_key, port)


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


# -- an uplink in a process of its own (the kill -9 test) -------------------------------------

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
