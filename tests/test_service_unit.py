"""The sd_notify client and the systemd unit, without a service manager.

The unit is checked by ``systemd-analyze verify`` in a throw-away root laid out as the
package lays it out (the venv's ``appliance`` is a stand-in: the venv is built on the gateway).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from appliance.service import JournalFormatter, Notifier, stderr_is_journal, watchdog_interval

UNIT = Path(__file__).resolve().parents[1] / "packaging" / "edge-anomaly.service"
EXEC = "/opt/edge-anomaly/venv/bin/appliance"


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier.from_env()
    assert not notifier.enabled
    notifier.notify("READY=1")  # a terminal, a test, the demo: no socket, no error


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_fields_go_out_in_one_datagram(tmp_path, monkeypatch, abstract):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        if abstract:
            name = f"@edge-anomaly-unit-{os.getpid()}"
            listener.bind("\0" + name[1:])
        else:
            name = str(tmp_path / "notify")
            listener.bind(name)
        monkeypatch.setenv("NOTIFY_SOCKET", name)
        notifier = Notifier.from_env()
        notifier.notify("READY=1", "STATUS=running")
        notifier.status("stopping")
        notifier.close()
        assert listener.recv(4096) == b"READY=1\nSTATUS=running"
        assert listener.recv(4096) == b"STATUS=stopping"


def test_a_vanished_socket_is_logged_not_raised(tmp_path, caplog):
    notifier = Notifier(str(tmp_path / "gone"))
    with caplog.at_level(logging.WARNING, "appliance.service"):
        notifier.notify("WATCHDOG=1")
    assert "sd_notify failed" in caplog.text


def test_watchdog_interval_is_half_of_watchdog_sec_for_this_process(monkeypatch):
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    monkeypatch.delenv("WATCHDOG_PID")
    assert watchdog_interval() is None


def test_journal_lines_carry_the_priority_and_no_timestamp():
    record = logging.LogRecord("appliance", logging.WARNING, __file__, 1, "broker gone", None, None)
    assert JournalFormatter().format(record) == "<4>level=WARNING logger=appliance broker gone"
    try:
        raise ValueError("bad")
    except ValueError:
        import sys
        record = logging.LogRecord("appliance", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    lines = JournalFormatter().format(record).splitlines()
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)


def test_stderr_is_the_journal_only_when_journal_stream_names_it(monkeypatch):
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert stderr_is_journal()
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
    assert not stderr_is_journal()
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not stderr_is_journal()


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_is_a_supervised_hardened_notify_service():
    s = unit_settings()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [f"{EXEC} run --config /etc/edge-anomaly/appliance.toml"]
    assert s["User"] == ["edge-anomaly"] and s["Restart"] == ["on-failure"]
    assert int(s["WatchdogSec"][0]) > 0
    assert s["ProtectSystem"] == ["strict"]
    assert s["ReadWritePaths"] == ["/var/lib/edge-anomaly /var/lib/edge-anomaly-keys"]
    # The audit key outside the data folder, where the service may write its anchors.
    assert s["Environment"] == ["EDGE_ANOMALY_AUDIT_KEY=/var/lib/edge-anomaly-keys/audit.key"]
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert s[key] == ["yes"], key


def analyze_root(tmp_path: Path) -> Path:
    """A root with the unit where the package puts it, the system's targets, and a stand-in ExecStart."""
    root = tmp_path / "root"
    units = root / "lib" / "systemd" / "system"
    units.mkdir(parents=True)
    shutil.copy(UNIT, units / UNIT.name)
    for target in Path("/lib/systemd/system").glob("*.target"):
        shutil.copy(target, units / target.name)
    exe = root / EXEC.lstrip("/")
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return root


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install -y systemd)")
    return found


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    analyze = systemd_analyze()
    root = analyze_root(tmp_path)
    run = subprocess.run([analyze, "verify", f"--root={root}", UNIT.name], capture_output=True, text=True)
    assert run.returncode == 0 and run.stderr == "" and run.stdout == "", run.stdout + run.stderr
    # The check can fail: a misspelled setting is reported.
    unit = root / "lib" / "systemd" / "system" / UNIT.name
    unit.write_text(unit.read_text().replace("Type=notify", "Type=notfy"))
    run = subprocess.run([analyze, "verify", f"--root={root}", UNIT.name], capture_output=True, text=True)
    assert "Failed to parse service type" in run.stderr


def test_the_units_exposure_stays_ok(tmp_path):
    """``systemd-analyze security``: 1.6 when written (0 is locked down, 10 is unprotected); dropping a
    hardening setting raises it."""
    analyze = systemd_analyze()
    root = analyze_root(tmp_path)
    run = subprocess.run([analyze, "security", "--offline=yes", f"--root={root}", UNIT.name],
                         capture_output=True, text=True, cwd=root)
    m = re.search(r"Overall exposure level for edge-anomaly\.service: ([\d.]+)", run.stdout)
    assert m, run.stdout + run.stderr
    assert float(m[1]) <= 2.0, run.stdout
