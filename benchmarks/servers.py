"""Real peers for benchmarks: the cloud (TLS Mosquitto + intake) and a TLS static file host.

    from benchmarks.servers import CloudPeer, StaticHttps

Benchmarks do not import from ``tests/``; these are the same parts the tests
start, built from the product's own pieces: ``appliance.broker.tls_mosquitto``
(mutual TLS, the certificate's name as the user), ``firmware_sim.cloud_pki``
(a CA, the broker's certificate for 127.0.0.1, client certificates) and
``firmware_sim.cloud_intake`` (stores what arrives, once per item id).
:class:`StaticHttps` is Python's ``http.server`` behind TLS, serving a folder
(a published TUF repository) as any static host would, with ``Range`` support.
"""

from __future__ import annotations

import http.server
import re
import ssl
import threading
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


class _Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):  # noqa: N802 (http.server's name)
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if m:
            start, end, status = int(m[1]), min(size - 1, int(m[2])) if m[2] else size - 1, 206
            if start >= size or end < start:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end + 1 - start))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            self.wfile.write(f.read(end + 1 - start))
        self.server.bytes_sent += end + 1 - start


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    bytes_sent = 0


class StaticHttps:
    """Serve ``root`` over HTTPS on a free loopback port with ``cert``/``key`` (a certificate for 127.0.0.1)."""

    def __init__(self, root: Path, cert: Path, key: Path):
        self.root = Path(root)
        root_s = str(self.root)
        self._httpd = _Server(("127.0.0.1", 0), lambda *a, **kw: _Handler(*a, directory=root_s, **kw))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="static-https", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def bytes_sent(self) -> int:
        return self._httpd.bytes_sent

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
