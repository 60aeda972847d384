"""Mix-and-match: a host serving pieces of two publications together is refused (TLS static server, real repo).

Each piece is validly signed by the engineer's keys; only the combination is
wrong. TUF's snapshot and timestamp metadata name the version of every piece
they vouch for, so the gateway refuses the set, in one line, and keeps its model.
"""

from __future__ import annotations

import shutil

import pytest

from tests.support.tuf_repo import gw_fixture, pub_fixture  # noqa: F401  (registers the fixtures)

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
