"""`appliance run` as systemd runs it: a real process, a real Mosquitto, a notify socket the test reads.

systemd (Type=notify) is stood in for by an abstract-namespace datagram socket named in
``$NOTIFY_SOCKET``, with ``$WATCHDOG_USEC`` set as ``WatchdogSec=`` would. The checks: READY=1
comes only once the broker has acknowledged the subscriptions (a reading published right after
it is stored), WATCHDOG=1 comes from the event loop (a loop blocked on purpose stops it), and
SIGTERM says STOPPING=1 before the process exits 0.

The loop is blocked without a test hook in the product: the process is started through a small
main that installs an event loop policy whose loops block, on SIGUSR2, until a flag file goes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from appliance.broker import Mosquitto, free_port
from appliance.store.store import StoreReader, StoreUnavailable
from tests.support.appliance import Publisher
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration  # a real Mosquitto, the appliance as a process, a SKAB model

WATCHDOG_USEC = 1_000_000  # WatchdogSec=1: a ping every 0.5 s

# `appliance run`, whose event loops stall on SIGUSR2 until the flag file is removed: what a hook
# that blocks the loop would do. The marker file says the stall has begun.
STALLING_MAIN = """
import asyncio, os, signal, sys, time
from appliance.cli import main

config, flag, marker = sys.argv[1:4]

def stall():
    open(marker, "w").close()
    while os.path.exists(flag):
        time.sleep(0.01)

class StallingLoops(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self):
        loop = super().new_event_loop()
        loop.add_signal_handler(signal.SIGUSR2, stall)
        return loop

asyncio.set_event_loop_policy(StallingLoops())
sys.exit(main(["run", "--config", config]))
"""


class NotifySocket:
    """What systemd listens on: every datagram, kept in arrival order by a reader thread."""

    def __init__(self):
        self.name = f"@edge-anomaly-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.messages: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:  # closed
                return
            self.messages.extend(data.decode().split("\n"))

    def wait_for(self, field: str, what: str | None = None, start: int = 0) -> int:
        """Index of the first message ``field`` (or starting with it, for ``KEY=``) at or after ``start``."""
        def found():
            for i, m in enumerate(self.messages[start:], start):
                if m == field or (field.endswith("=") and m.startswith(field)):
                    return i + 1
            return 0
        return wait_until(found, 120, what or field, detail=lambda: f"messages: {self.messages[-20:]}") - 1

    def mark(self, label: str) -> int:
        """Send our own message through the socket and wait for it: everything sent before is read."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(f"TEST={label}".encode(), "\0" + self.name[1:])
        return self.wait_for(f"TEST={label}")

    def close(self):
        self.sock.close()


@pytest.fixture
def notify_socket():
    ns = NotifySocket()
    yield ns
    ns.close()


def write_config(tmp_path: Path, port: int, bundle: Path) -> Path:
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f"""
data_dir = "{tmp_path / 'data'}"
log_level = "WARNING"
[connections.mqtt]
port = {port}
[connections.mqtt.reconnect]
initial_s = 0.2
max_s = 1.0
[detector]
bundle = "{bundle}"
[web]
enabled = false
[outputs.history]
enabled = false
""")
    return cfg


def start_appliance(cfg: Path, notify: NotifySocket, *extra_args: str) -> subprocess.Popen:
    env = dict(os.environ, NOTIFY_SOCKET=notify.name, WATCHDOG_USEC=str(WATCHDOG_USEC))
    env.pop("WATCHDOG_PID", None)
    return subprocess.Popen([sys.executable, "-c", STALLING_MAIN, str(cfg), *extra_args], env=env, cwd=os.getcwd())


def stop_appliance(proc: subprocess.Popen, notify: NotifySocket) -> None:
    proc.send_signal(signal.SIGTERM)
    notify.wait_for("STOPPING=1", "STOPPING=1 after SIGTERM")
    assert proc.wait(120) == 0


def stored_readings(cfg_dir: Path) -> int:
    try:
        return StoreReader(cfg_dir / "data" / "appliance.db").counts()["readings"]
    except StoreUnavailable:
        return 0


def test_ready_only_once_the_broker_acknowledged_the_subscriptions(tmp_path, notify_socket, skab_bundle):
    port = free_port()
    cfg = write_config(tmp_path, port, skab_bundle)
    proc = start_appliance(cfg, notify_socket, str(tmp_path / "no-stall"), str(tmp_path / "no-marker"))
    broker = None
    try:
        # No broker yet: the appliance says what it waits for, extends its start-up time, and is not ready.
        waiting = notify_socket.wait_for("STATUS=starting: waiting for inputs: mqtt")
        notify_socket.wait_for("EXTEND_TIMEOUT_USEC=")
        notify_socket.wait_for("WATCHDOG=1", start=waiting)  # the loop turns while it waits
        assert "READY=1" not in notify_socket.messages
        broker = Mosquitto(tmp_path / "mosquitto", port=port).start()
        ready = notify_socket.wait_for("READY=1")
        assert notify_socket.messages[ready + 1].startswith("STATUS=running: readings=0")
        # Published once, right after READY=1, to a fresh broker with no retained message: stored
        # only if the appliance's subscription was in place when it said it was ready.
        pub = Publisher(port, client_id="after-ready")
        pub.publish("plant/pump1/Current", {"ts": time.time(), "value": 1.5})
        pub.wait_all()
        pub.close()
        wait_until(lambda: stored_readings(tmp_path) == 1, 120, "the reading published after READY=1 stored")
        stop_appliance(proc, notify_socket)
        assert notify_socket.messages.index("STOPPING=1") > ready
    finally:
        if proc.poll() is None:
            proc.kill()
        if broker is not None:
            broker.stop()


def test_watchdog_pings_stop_while_the_event_loop_is_blocked(tmp_path, mosquitto, notify_socket, skab_bundle):
    cfg = write_config(tmp_path, mosquitto.port, skab_bundle)
    flag, marker = tmp_path / "stall", tmp_path / "stalled"
    proc = start_appliance(cfg, notify_socket, str(flag), str(marker))
    try:
        ready = notify_socket.wait_for("READY=1")
        pings = wait_until(lambda: [i for i, m in enumerate(notify_socket.messages)
                                    if m == "WATCHDOG=1" and i > ready][2:], 120, "three pings after READY=1")
        assert pings
        flag.touch()
        proc.send_signal(signal.SIGUSR2)
        wait_until(marker.exists, 120, "the event loop blocked")
        begin = notify_socket.mark("stall-begun")
        # Four watchdog periods with the loop blocked: systemd would have restarted it by now.
        time.sleep(4 * WATCHDOG_USEC / 1e6)
        end = notify_socket.mark("stall-seen")
        assert "WATCHDOG=1" not in notify_socket.messages[begin:end], notify_socket.messages[begin:end]
        assert proc.poll() is None
        flag.unlink()  # the loop turns again: so do the pings
        notify_socket.wait_for("WATCHDOG=1", "pings again once the loop turns", start=end)
        stop_appliance(proc, notify_socket)
    finally:
        flag.unlink(missing_ok=True)
        if proc.poll() is None:
            proc.kill()
