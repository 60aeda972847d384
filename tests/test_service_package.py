"""The Debian package, installed, upgraded and removed in a throw-away Debian root.

A minimal bookworm made by debootstrap stands in for a gateway: the package is installed with
apt-get (which brings its dependencies, python3 and python3-venv), the technician edits the
config, a second build with a higher version is installed over it, then it is removed and purged.
Systemd does not run in a chroot, so the maintainer scripts' systemctl steps are not taken here.

The postinst's venv step (pip installing the appliance's dependencies from PyPI, minutes and a few
hundred MB) is skipped with ``EDGE_ANOMALY_SKIP_VENV=1``; ``EDGE_ANOMALY_TEST_REAL_VENV=1`` makes it
real. ``EDGE_ANOMALY_TEST_ROOTFS=DIR``: a debootstrapped root to copy instead of making one (a
developer's shortcut, as APPLIANCE_TEST_BUNDLE is for the model).

Runs as root (debootstrap, chroot), as CI does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.config import load_config

pytestmark = pytest.mark.integration  # debootstrap and apt-get reach Debian's mirror

REPO = Path(__file__).resolve().parents[1]
CONFIG = "etc/edge-anomaly/appliance.toml"
REAL_VENV = os.environ.get("EDGE_ANOMALY_TEST_REAL_VENV") == "1"


def debootstrap(root: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("debootstrap and chroot need root (CI runs as root)")
    exe = shutil.which("debootstrap") or ("/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None)
    if exe is None:
        pytest.fail("debootstrap is not installed (scripts/setup.sh --test, or apt-get install -y debootstrap)")
    run = subprocess.run([exe, "--variant=minbase", "bookworm", str(root)], capture_output=True, text=True)
    if run.returncode != 0:
        log = run.stdout + run.stderr
        if any(s in log for s in ("Failed getting release file", "Couldn't download", "Temporary failure resolving")):
            pytest.skip(f"debootstrap cannot reach Debian's mirror: {log.strip().splitlines()[-1]}")
        pytest.fail(f"debootstrap failed:\n{log[-3000:]}")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Path:
    """A minimal Debian bookworm root, with apt's lists fetched."""
    root = tmp_path_factory.mktemp("gateway") / "root"
    prepared = os.environ.get("EDGE_ANOMALY_TEST_ROOTFS")
    if prepared:
        subprocess.run(["cp", "-a", prepared, str(root)], check=True)
    else:
        debootstrap(root)
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")  # apt-get inside resolves the mirror
    chroot(root, "apt-get", "update", "-q")
    return root


def chroot(root: Path, *cmd: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    run = subprocess.run(["chroot", str(root), *cmd], env={**base, **(env or {})}, capture_output=True, text=True)
    if check and run.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return run


def build_deb(out: Path, version: str) -> Path:
    run = subprocess.run([str(REPO / "packaging" / "build-deb.sh"), "--version", version, "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    deb = Path(run.stdout.strip().splitlines()[-1])
    assert deb.name == f"edge-anomaly_{version}_all.deb" and deb.exists()
    return deb


def install(root: Path, deb: Path) -> subprocess.CompletedProcess:
    shutil.copy(deb, root / "tmp" / deb.name)
    env = {} if REAL_VENV else {"EDGE_ANOMALY_SKIP_VENV": "1"}
    return chroot(root, "apt-get", "install", "-y", "-q", f"/tmp/{deb.name}", env=env)


def installed_version(root: Path) -> str:
    run = chroot(root, "dpkg-query", "-W", "-f", "${Status} ${Version}", "edge-anomaly", check=False)
    return run.stdout.strip()


def account(root: Path) -> list[str]:
    return chroot(root, "getent", "passwd", "edge-anomaly").stdout.strip().split(":")


def owner(root: Path, path: str) -> str:
    return chroot(root, "stat", "-c", "%U:%G %a", path).stdout.strip()


def unit_value(root: Path, key: str) -> str:
    unit = (root / "lib/systemd/system/edge-anomaly.service").read_text()
    return next(line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(key + "="))


def test_install_upgrade_keeps_the_technicians_config_then_remove_and_purge(gateway, tmp_path):
    root = gateway
    first, second = build_deb(tmp_path / "v1", "1.0-1"), build_deb(tmp_path / "v2", "1.0-2")

    # Install: the account, the data folder, the config readable by the service only, the unit.
    out = install(root, first)
    assert installed_version(root) == "install ok installed 1.0-1"
    name, _, uid, gid, _, home, shell = account(root)
    assert home == "/var/lib/edge-anomaly" and shell == "/usr/sbin/nologin"
    assert owner(root, "/var/lib/edge-anomaly") == "edge-anomaly:edge-anomaly 750"
    assert owner(root, "/" + CONFIG) == "root:edge-anomaly 640"
    cfg = load_config(str(root / CONFIG))
    assert unit_value(root, "ReadWritePaths").split() == [str(cfg.data_dir), "/var/lib/edge-anomaly-keys"]
    assert str(cfg.data_dir) == "/var/lib/edge-anomaly"
    # The audit key's folder, outside the data folder and private to the service.
    assert owner(root, "/var/lib/edge-anomaly-keys") == "edge-anomaly:edge-anomaly 700"
    assert unit_value(root, "WorkingDirectory") == "/var/lib/edge-anomaly"
    assert (root / "opt/edge-anomaly/wheels/edge_anomaly_appliance-0.1.0-py3-none-any.whl").exists()
    if REAL_VENV:
        check = chroot(root, "/opt/edge-anomaly/venv/bin/appliance", "config", "check", "/" + CONFIG)
        assert "OK" in check.stdout
    else:
        assert "EDGE_ANOMALY_SKIP_VENV=1" in out.stdout + out.stderr
        assert not (root / "opt/edge-anomaly/venv").exists()
    assert "systemctl enable --now edge-anomaly.service" in out.stdout

    # The technician edits the config; the service has recorded data.
    edited = (root / CONFIG).read_text().replace('site = "demo-plant"', 'site = "line-3"')
    assert edited != (root / CONFIG).read_text()
    (root / CONFIG).write_text(edited)
    chroot(root, "install", "-o", "edge-anomaly", "-g", "edge-anomaly", "/dev/null", "/var/lib/edge-anomaly/appliance.db")

    # Upgrade: the edited config, the account and the data stay; nothing asked, no copies left beside.
    out = install(root, second)
    assert installed_version(root) == "install ok installed 1.0-2"
    assert (root / CONFIG).read_text() == edited and load_config(str(root / CONFIG)).site == "line-3"
    assert owner(root, "/" + CONFIG) == "root:edge-anomaly 640"
    assert account(root)[2:4] == [uid, gid]
    assert (root / "var/lib/edge-anomaly/appliance.db").exists()
    assert not list((root / "etc/edge-anomaly").glob("*.dpkg-*"))
    assert "systemctl enable --now" not in out.stdout  # said on the first install only

    # Remove: the program goes, the config stays (a conffile); purge: the config goes, the data stays.
    chroot(root, "dpkg", "--remove", "edge-anomaly")
    assert installed_version(root) == "deinstall ok config-files 1.0-2"
    assert not (root / "opt/edge-anomaly").exists()
    assert not (root / "lib/systemd/system/edge-anomaly.service").exists()
    assert (root / CONFIG).read_text() == edited
    out = chroot(root, "dpkg", "--purge", "edge-anomaly")
    assert not (root / "etc/edge-anomaly").exists()
    assert chroot(root, "dpkg-statoverride", "--list", "/" + CONFIG, check=False).returncode != 0
    assert (root / "var/lib/edge-anomaly/appliance.db").exists() and account(root)[0] == name
    assert "are kept" in out.stdout
