"""Mix-and-match: a host serving pieces of two publications together is refused (TLS static server, real repo).

Each piece is validly signed by the engineer's keys; only the combination is
wrong. TUF's snapshot and timestamp metadata name the version of every piece
they vouch for, so the gateway refuses the set, in one line, and keeps its model.
"""

from __future__ import annotations

import shutil

import pytest

from tests.support.tuf_repo import gw_fixture, pub_fixture  # noqa: F401  (registers the fixtures)
from tests.support.tuf_repo import plain_member, sign_archive, sparse_member

pytestmark = pytest.mark.integration


def newest(www, role: str) -> tuple[int, object]:
    """The highest ``N.<role>.json`` the host serves: (N, path)."""
    files = {int(p.name.split(".")[0]): p for p in (www / "metadata").glob(f"*.{role}.json")}
    n = max(files)
    return n, files[n]


@pytest.mark.parametrize("role", ["targets", "snapshot"])
def test_metadata_of_two_publications_mixed_is_refused(pub, gw, release_bundles, role):
    pub.release(release_bundles[0], 1)
    assert gw.update().version == 1
    old_n, old = newest(pub.www, role)
    old_bytes = old.read_bytes()
    pub.release(release_bundles[1], 2)
    new_n, new = newest(pub.www, role)
    assert new_n > old_n
    # The newest publication's file name, an older publication's (validly signed) content.
    new.write_bytes(old_bytes)
    r = gw.update()
    assert r.outcome == "refused", r
    assert "\n" not in r.reason and "Traceback" not in r.reason and r.reason, r
    # Snapshot and timestamp sign each piece's length (and version): the stale piece does not fit.
    assert r.kind in ("tampered", "rollback"), r
    assert gw.status()["installed"]["version"] == 1


def test_an_archive_of_another_release_under_the_signed_name_is_refused(pub, gw, release_bundles):
    pub.release(release_bundles[0], 1)
    pub.release(release_bundles[1], 2)
    v2 = pub.served_archive(2)
    shutil.copyfile(pub.served_archive(1), v2)  # a validly signed archive, of the other release
    r = gw.update()
    assert r.outcome == "refused" and r.kind == "tampered", r
    assert "\n" not in r.reason, r.reason


def _bundle_members(bundle) -> tuple[bytes, dict[str, bytes]]:
    """The bundle's files as plain tar members (joined, no end blocks), and their contents by name."""
    files = {p.name: p.read_bytes() for p in sorted(bundle.iterdir())}
    return b"".join(plain_member(name, data) for name, data in files.items()), files


def _installed_dirs(gw) -> list[str]:
    return sorted(p.name for p in gw.bundles_dir.iterdir())


def test_a_signed_archive_whose_files_add_up_beyond_its_length_is_refused_before_download(
        pub, gw, release_bundles):
    # A key holder signs a file list whose sparse member unpacks to 16 MiB from a few KB of archive.
    pub.release(release_bundles[0], 1)
    assert gw.update().version == 1
    pub.add(release_bundles[1], 2)
    members, files = _bundle_members(release_bundles[1])
    hole = b"x" * 512 + b"\0" * (16 << 20)
    archive = members + sparse_member("pad.bin", hole[:512], len(hole)) + b"\0" * 1024
    sign_archive(pub, 2, archive, {**files, "pad.bin": hole})
    r = gw.update()
    assert r.outcome == "refused" and r.kind == "values", r
    assert "more than the signed archive's" in r.reason and "\n" not in r.reason, r.reason
    assert r.bytes_received == 0  # refused from the signed metadata alone
    assert _installed_dirs(gw) == ["pump-1"]


def test_a_sparse_member_is_refused_before_anything_is_written(pub, gw, release_bundles):
    # Honest totals, but one member is GNU sparse: extracting it would write what the archive does not hold.
    pub.release(release_bundles[0], 1)
    assert gw.update().version == 1
    pub.add(release_bundles[1], 2)
    members, files = _bundle_members(release_bundles[1])
    pad = b"y" * 512 + b"\0" * 2048
    archive = sparse_member("pad.bin", pad[:512], len(pad)) + members + b"\0" * 1024
    sign_archive(pub, 2, archive, {**files, "pad.bin": pad})
    r = gw.update()
    assert r.outcome == "refused" and r.kind == "values", r
    assert r.reason.endswith("archive member 'pad.bin' is a sparse file; only plain files are allowed"), r.reason
    assert _installed_dirs(gw) == ["pump-1"]
