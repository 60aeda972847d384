"""The cloud an uplink talks to: a second Mosquitto with TLS and client certificates, and the intake.

Built from the product's own pieces: ``appliance.broker.tls_mosquitto`` (mutual
TLS, the certificate's name as the user), ``firmware_sim.cloud_pki`` (a CA, the
broker's certificate for 127.0.0.1, client certificates, keys mode 0600) and
``firmware_sim.cloud_intake`` (stores what arrives, once per item id; over MQTT,
and over HTTPS once :meth:`CloudPeer.start_https` is called). The uplink's tests
(``tests/support/cloud.py``, the ``cloud`` fixture) and ``benchmarks/sync.py``
start it.
"""

from __future__ import annotations

import time
from pathlib import Path

from appliance.broker import find_mosquitto, tls_mosquitto
from firmware_sim.cloud_intake import CloudIntake, IntakeStore
from firmware_sim.cloud_pki import make_pki


class CloudPeer:
    """The cloud broker (TLS, client certificates required), the intake storing what arrives, and the PKI.

    ``client_id`` is the one :meth:`sync_section` gives the appliance.
    """

    def __init__(self, workdir: Path, client_id: str = "appliance-rig"):
        if find_mosquitto() is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install -y mosquitto)")
        self.workdir = Path(workdir)
        self.client_id = client_id
        self.https = None
        self.pki = make_pki(self.workdir / "pki")
        self.broker = tls_mosquitto(self.workdir / "broker", self.pki.ca, self.pki.server_cert,
                                    self.pki.server_key).start()
        self.port = self.broker.port
        self.store = IntakeStore(self.workdir / "cloud.db")
        self.intake = CloudIntake(self.store, "127.0.0.1", self.port, str(self.pki.ca), str(self.pki.intake_cert),
                                  str(self.pki.intake_key)).start()
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the intake is connected and subscribed (after a start, or a broker restart)."""
        deadline = time.monotonic() + timeout
        while not self.intake.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for the cloud intake to connect "
                                   "and subscribe")
            time.sleep(0.02)

    def sync_section(self, **overrides) -> dict:
        """An ``[outputs.sync]`` section (as a dict) for this cloud over MQTT; ``mqtt`` overrides merge."""
        mqtt = {"host": "127.0.0.1", "port": self.port, "ca_file": str(self.pki.ca),
                "cert_file": str(self.pki.client_cert), "key_file": str(self.pki.client_key),
                "client_id": self.client_id, "reconnect": {"initial_s": 0.2, "max_s": 1.0},
                **overrides.pop("mqtt", {})}
        return {"enabled": True, "settle_s": 0.2, "close_grace_s": 2.0, "mqtt": mqtt} | overrides

    def start_https(self) -> str:
        """Also accept batches as HTTPS POSTs (client certificates required); returns the URL."""
        from firmware_sim.cloud_intake import HttpsIntake

        self.https = HttpsIntake(self.store, 0, str(self.pki.ca), str(self.pki.server_cert),
                                 str(self.pki.server_key)).start()
        return f"https://127.0.0.1:{self.https.port}/uplink"

    def https_section(self, url: str, **overrides) -> dict:
        """An ``[outputs.sync]`` section (as a dict) sending to the HTTPS intake at ``url``."""
        https = {"url": url, "ca_file": str(self.pki.ca), "cert_file": str(self.pki.client_cert),
                 "key_file": str(self.pki.client_key), "retry": {"initial_s": 0.2, "max_s": 1.0}}
        return {"enabled": True, "transport": "https", "settle_s": 0.2, "close_grace_s": 2.0,
                "https": https} | overrides

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
