"""A real peer for benchmarks: the cloud (TLS Mosquitto + intake).

    from benchmarks.servers import CloudPeer

The same parts the tests start, built from the product's own pieces:
``appliance.broker.tls_mosquitto`` (mutual TLS, the certificate's name as the
user), ``firmware_sim.cloud_pki`` (a CA, the broker's certificate for
127.0.0.1, client certificates) and ``firmware_sim.cloud_intake`` (stores what
arrives, once per item id). A TLS static file host is
``rigs.tls_server.TlsStaticServer``, the one the tests start too.
"""

from __future__ import annotations

import time
from pathlib import Path

from appliance.broker import find_mosquitto, tls_mosquitto
from firmware_sim.cloud_intake import CloudIntake, IntakeStore
from firmware_sim.cloud_pki import make_pki


def wait_for(cond, timeout: float, what: str, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


class CloudPeer:
    """A second Mosquitto (TLS, client certificates required) with the cloud intake subscribed to it."""

    def __init__(self, workdir: Path):
        if find_mosquitto() is None:
            raise SystemExit("mosquitto is not installed (apt-get install -y mosquitto)")
        self.workdir = Path(workdir)
        self.pki = make_pki(self.workdir / "pki")
        self.broker = tls_mosquitto(self.workdir / "broker", self.pki.ca, self.pki.server_cert,
                                    self.pki.server_key).start()
        self.port = self.broker.port
        self.store = IntakeStore(self.workdir / "cloud.db")
        self.intake = CloudIntake(self.store, "127.0.0.1", self.port, str(self.pki.ca), str(self.pki.intake_cert),
                                  str(self.pki.intake_key)).start()
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(self.intake.ready, timeout, "the cloud intake to connect and subscribe")

    def sync_section(self, **overrides) -> dict:
        """An ``[outputs.sync]`` section (as a dict) for this cloud; ``mqtt`` overrides merge."""
        mqtt = {"host": "127.0.0.1", "port": self.port, "ca_file": str(self.pki.ca),
                "cert_file": str(self.pki.client_cert), "key_file": str(self.pki.client_key),
                "client_id": "appliance-bench", "reconnect": {"initial_s": 0.2, "max_s": 1.0},
                **overrides.pop("mqtt", {})}
        return {"enabled": True, "settle_s": 0.2, "close_grace_s": 2.0, "mqtt": mqtt} | overrides

    def kill_broker(self) -> None:
        self.broker.kill()

    def start_broker(self) -> None:
        self.broker.start()

    def close(self) -> None:
        self.intake.stop()
        self.broker.stop()
        self.store.close()
