"""A TLS static file server on loopback: the model repository's host, for tests and benchmarks.

:class:`TlsStaticServer` is Python's ``http.server`` behind TLS (a CA and a
server certificate made here with ``cryptography``, :func:`make_tls`) on a free
loopback port, in a thread. It serves a directory as any static host would, with
``Range`` requests (206, 416), and can misbehave on demand (:class:`Faults`):
cut every target response after some bytes, or stop listening altogether once
some target bytes went out (a host or link that goes away mid-transfer). Every
request is logged.
"""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import os
import re
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# -- TLS material -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_tls(folder: Path) -> TlsFiles:
    """A self-signed CA and a server certificate for 127.0.0.1/localhost signed by it."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(_name("test repository CA")).issuer_name(_name("test repository CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    files.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    os.chmod(files.key_file, 0o600)
    return files


# -- the static file server -------------------------------------------------------------------------------------


@dataclass
class Request:
    path: str
    range: str | None
    status: int
    body_bytes: int = 0


@dataclass
class Faults:
    """Misbehaviour for responses under ``/targets/`` (the archives); metadata is always served whole."""

    cut_every: int | None = None       # each target response ends after this many body bytes
    stop_after: int | None = None      # after this many target body bytes in all, cut and stop listening
    sent: int = field(default=0)


class _Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # the request log below is what tests read
        pass

    def do_GET(self):
        owner: TlsStaticServer = self.server.owner
        rec = Request(self.path, self.headers.get("Range"), 0)
        with owner.lock:
            owner.requests.append(rec)
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            rec.status = 404
            self.send_error(404)
            return
        size = path.stat().st_size
        start, status = 0, 200
        end = size - 1
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rec.range or "")
        if m:
            start = int(m[1])
            end = min(end, int(m[2])) if m[2] else end
            if start >= size or end < start:
                rec.status = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        rec.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end + 1 - start))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        is_target = self.path.startswith("/targets/")
        faults = owner.faults
        left = end + 1 - start
        with open(path, "rb") as f:
            f.seek(start)
            while left > 0:
                want = min(4096, left)
                stop_now = False
                if is_target:
                    with owner.lock:
                        if faults.cut_every is not None:
                            want = min(want, faults.cut_every - rec.body_bytes)
                        if faults.stop_after is not None:
                            want = min(want, faults.stop_after - faults.sent)
                        stop_now = want <= 0
                if stop_now:
                    self._cut(owner, faults)
                    return
                chunk = f.read(want)
                if not chunk:
                    return
                self.wfile.write(chunk)
                left -= len(chunk)
                rec.body_bytes += len(chunk)
                if is_target:
                    with owner.lock:
                        faults.sent += len(chunk)

    def _cut(self, owner: "TlsStaticServer", faults: Faults) -> None:
        """Drop the connection mid-body, as a host that dies or a link that ends would."""
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if faults.stop_after is not None and faults.sent >= faults.stop_after:
            threading.Thread(target=owner.stop, daemon=True).start()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class TlsStaticServer:
    """A static HTTPS file server over ``root`` on 127.0.0.1 (see the module docstring)."""

    def __init__(self, root: Path, tls: TlsFiles, port: int = 0):
        self.root, self.tls, self.port = Path(root), tls, port
        self.requests: list[Request] = []
        self.faults = Faults()
        self.lock = threading.Lock()
        self._stop_lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> "TlsStaticServer":
        """Listen (again, on the same port after :meth:`stop`)."""
        root = str(self.root)

        def handler(*a, **kw):
            return _Handler(*a, directory=root, **kw)

        httpd = _Server(("127.0.0.1", self.port), handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        httpd.owner = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"tls-static-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; once :attr:`running` is False the port is free to :meth:`start` on again."""
        with self._stop_lock:
            if self._httpd is not None:
                self._httpd.shutdown()
                self._httpd.server_close()
                self._httpd = None

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def target_requests(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path.startswith("/targets/")]

    def target_bytes_sent(self) -> int:
        return sum(r.body_bytes for r in self.target_requests())

    def bytes_sent(self) -> int:
        """Body bytes of every response so far, metadata and targets."""
        with self.lock:
            return sum(r.body_bytes for r in self.requests)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
