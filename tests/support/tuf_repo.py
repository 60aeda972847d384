"""Real parts for the model-update tests: a TLS static file server and a published TUF repository.

The server is :class:`rigs.tls_server.TlsStaticServer` (Python's ``http.server``
behind TLS with a CA made by :func:`rigs.tls_server.make_tls`, on a free loopback
port, able to cut a transfer on demand); the benchmarks start the same one.
Here are its fixtures, ``tls_files`` and ``tuf_server``.

:class:`Publisher` is the engineer: a repository made with
:mod:`appliance.release.repo`, keys beside it (not in it). The few helpers that
forge metadata (:func:`republish_as_newest`, :func:`resign`) stand for a holder
of one key, or of none, doing what the engineer's tool would refuse to do.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rigs.tls_server import TlsFiles, TlsStaticServer, make_tls

# -- fixtures ---------------------------------------------------------------------------------------------------

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


def sparse_member(name: str, data: bytes, real_size: int) -> bytes:
    """A GNU sparse tar member (type ``S``): ``data`` at offset 0, then a hole up to ``real_size`` bytes.

    What GNU tar writes for a file with holes and ``appliance release add`` never
    does; Python's tarfile reads such members but cannot write them, so the
    header is made here: a GNU header, the sparse map in its old-GNU fields.
    """
    import tarfile

    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = len(data)  # bytes stored in the archive
    info.mode, info.mtime = 0o644, 0
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))

    def octal(n: int, width: int = 12) -> bytes:
        return f"{n:0{width - 1}o}".encode() + b"\0"

    header[386:398] = octal(0)              # sparse[0].offset
    header[398:410] = octal(len(data))      # sparse[0].numbytes
    header[482] = 0                         # no extended sparse headers
    header[483:495] = octal(real_size)      # the size the member unpacks to
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}".encode() + b"\0 "
    padded = data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)
    return bytes(header) + padded


def plain_member(name: str, data: bytes) -> bytes:
    """A ustar member as the release tool packs it."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    return _strip_end(buf.getvalue())


def _strip_end(tar_bytes: bytes) -> bytes:
    """A one-member tar without its end-of-archive blocks (to join members into one archive)."""
    import tarfile

    header = tarfile.TarInfo.frombuf(tar_bytes[:512], "utf-8", "surrogateescape")
    return tar_bytes[:512 + header.size + (-header.size % 512)]


def sign_archive(pub: Publisher, version: int, archive: bytes, files: dict[str, bytes]) -> None:
    """Publish ``archive`` as release ``version``, its targets entry listing ``files`` (name -> the bytes
    the member unpacks to), signed with the real targets key: what a holder of that key could do."""
    import hashlib

    from tuf.api.metadata import TargetFile

    from appliance.release.repo import _Repo

    repo = _Repo(pub.repo, [pub.keys])
    md = repo.load("targets")
    path = f"models/{pub.name}-{version}.tar"
    old = md.signed.targets[path]
    sha = hashlib.sha256(archive).hexdigest()
    for stale in (pub.repo / "targets" / "models").glob(f"*.{pub.name}-{version}.tar"):
        stale.unlink()
    (pub.repo / "targets" / "models" / f"{sha}.{pub.name}-{version}.tar").write_bytes(archive)
    custom = json.loads(json.dumps(old.custom))
    custom["files"] = {name: {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                       for name, data in files.items()}
    entry = TargetFile(len(archive), {"sha256": sha}, path)
    entry.unrecognized_fields["custom"] = custom
    md.signed.targets[path] = entry
    md.signed.version += 1
    repo.sign(md, "targets", repo.load("root").signed)
    repo.write(md)
    pub.publish()
