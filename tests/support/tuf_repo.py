"""Real parts for the model-update tests: a TLS static file server and a published TUF repository.

:class:`TlsStaticServer` is Python's ``http.server`` behind TLS (a CA and a
server certificate made here with ``cryptography``) on a free loopback port, in
a thread. It serves a directory as any static host would, with ``Range``
requests (206, 416), and can misbehave on demand: cut every target response
after some bytes, or stop listening altogether once some target bytes went out
(a host or link that goes away mid-transfer). Every request is logged.

:class:`Publisher` is the engineer: a repository made with
:mod:`appliance.release.repo`, keys beside it (not in it). The few helpers that
forge metadata (:func:`republish_as_newest`, :func:`resign`) stand for a holder
of one key, or of none, doing what the engineer's tool would refuse to do.
"""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
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


# Registered under ``name=`` so a test module imports ``*_fixture`` and its tests take the plain name.
@pytest.fixture(scope="session", name="tls_files")
def tls_files_fixture(tmp_path_factory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(name="tuf_server")
def tuf_server_fixture(tmp_path, tls_files):
    """A started TLS static server over ``tmp_path / "www"`` (empty: publish into it)."""
    www = tmp_path / "www"
    www.mkdir()
    server = TlsStaticServer(www, tls_files).start()
    yield server
    server.stop()


@pytest.fixture(name="pub")
def pub_fixture(tmp_path, tuf_server) -> "Publisher":
    """The engineer, publishing into ``tuf_server``'s folder."""
    return Publisher(tmp_path / "engineer", www=tuf_server.root)


@pytest.fixture(name="gw")
def gw_fixture(tmp_path, tuf_server, tls_files, pub):
    """A gateway's updater trusting ``pub``'s root, fetching from ``tuf_server`` over TLS."""
    return gateway(tmp_path / "gateway", tuf_server.url, pub.root, ca_file=str(tls_files.ca_file))


# -- bundles and the engineer's repository ----------------------------------------------------------------------


@pytest.fixture(scope="session", name="release_bundles")
def release_bundles_fixture(tmp_path_factory) -> list[Path]:
    """Three valid bundles: one small trained model and two re-calibrations of it (other thresholds)."""
    from appliance.detector.bundle import MODEL_FILES, write_bundle
    from appliance.detector.train import TrainSettings, train_bundle
    from tests.support.detector import SENSORS, WINDOW, normal_rows

    base = tmp_path_factory.mktemp("bundles")
    first = train_bundle(normal_rows(1500, 0), SENSORS, base / "pump",
                         TrainSettings(window=WINDOW, stride=2, hidden=(16, 4), max_iter=30, seed=3))
    out = [first]
    meta = json.loads((first / "bundle.json").read_text())
    for i, factor in enumerate((1.1, 1.2), start=2):
        m = dict(meta, thresholds={k: v * factor for k, v in meta["thresholds"].items()},
                 threshold=meta["threshold"] * factor, model_version=f"{meta['model_version']}-r{i}")
        out.append(write_bundle(base / f"pump{i}", m, {p: first / n for p, n in MODEL_FILES.items()}))
    return out


class Publisher:
    """The engineer's repository in ``folder/repo`` with keys in ``folder/keys``; ``www`` is what is served."""

    def __init__(self, folder: Path, www: Path | None = None, name: str = "pump"):
        from appliance.release.repo import init_repository

        self.repo, self.keys, self.name = folder / "repo", folder / "keys", name
        self.www = www
        self.root = init_repository(self.repo, [self.keys])
        self.sync()

    def add(self, bundle: Path, version: int, rollback: bool = False, **kw) -> dict:
        from appliance.release.repo import add_release

        return add_release(self.repo, bundle, version, [self.keys], name=self.name, rollback=rollback, **kw)

    def publish(self, **kw) -> dict:
        from appliance.release.repo import publish

        out = publish(self.repo, [self.keys], **kw)
        self.sync()
        return out

    def release(self, bundle: Path, version: int, rollback: bool = False) -> dict:
        r = self.add(bundle, version, rollback)
        self.publish()
        return r

    def sync(self) -> None:
        """Upload to the served directory, as an engineer copies to the web host."""
        if self.www is not None:
            from appliance.release.repo import copy_repository

            copy_repository(self.repo, self.www)

    def served_archive(self, version: int) -> Path:
        (path,) = (self.www or self.repo).glob(f"targets/models/*.{self.name}-{version}.tar")
        return path

    def signers(self, role: str):
        from appliance.release.keys import KeyStore
        from appliance.release.repo import _Repo

        return KeyStore([self.keys]).signers(_Repo(self.repo).load("root").signed, role)


def republish_as_newest(pub: Publisher, version: int) -> None:
    """Make an already published version the newest release again, without the rollback flag.

    What the engineer's tool refuses (a version not above the current one); done
    here with the real targets key, as a careless or hostile key holder could.
    """
    from appliance.release.repo import _Repo

    repo = _Repo(pub.repo, [pub.keys])
    md = repo.load("targets")
    entries = md.signed.targets
    serial = 1 + max(e.custom["release"] for e in entries.values())
    entry = entries[f"models/{pub.name}-{version}.tar"]
    entry.unrecognized_fields["custom"] = dict(entry.custom, release=serial, rollback=False)
    md.signed.version += 1
    repo.sign(md, "targets", repo.load("root").signed)
    repo.write(md)
    pub.publish()


def edit_signed_custom(pub: Publisher, version: int, change) -> None:
    """Sign a targets entry whose custom values ``change(custom)`` altered (with the real targets key)."""
    from appliance.release.repo import _Repo

    repo = _Repo(pub.repo, [pub.keys])
    md = repo.load("targets")
    entry = md.signed.targets[f"models/{pub.name}-{version}.tar"]
    custom = json.loads(json.dumps(entry.custom))
    change(custom)
    entry.unrecognized_fields["custom"] = custom
    md.signed.version += 1
    repo.sign(md, "targets", repo.load("root").signed)
    repo.write(md)
    pub.publish()


def resign(path: Path, signer, bump: bool = True) -> None:
    """Replace the signatures of the metadata file at ``path`` with ``signer``'s (a key root does not list)."""
    from tuf.api.metadata import Metadata
    from tuf.api.serialization.json import JSONSerializer

    md = Metadata.from_file(str(path))
    if bump:
        md.signed.version += 1
    md.sign(signer)
    path.write_bytes(md.to_bytes(JSONSerializer(compact=False)))


def gateway(folder: Path, source: str, root: Path, **kw):
    """A ModelUpdater as a gateway would have it: its own copy of the trusted root, fast retries for tests."""
    from appliance.sync.updates import ModelUpdater

    folder.mkdir(parents=True, exist_ok=True)
    trusted = folder / "root.json"
    if not trusted.exists():
        shutil.copyfile(root, trusted)
    opts = dict(retry_delay_s=0.05, socket_timeout_s=20.0)
    opts.update(kw)
    return ModelUpdater(source=source, trusted_root=trusted, state_dir=folder / "state",
                        bundles_dir=folder / "releases", **opts)
