"""A private Mosquitto broker on loopback, for the demo and the tests.

Persistence is on, so a restart keeps persistent sessions and queued QoS 1
messages exactly as a broker restart in a factory would. ``max_packet_size``
bounds what one publisher can make the broker (and the appliance behind it)
hold: Mosquitto disconnects a client that sends a larger packet, so an
oversized message never reaches a subscriber.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
# Bytes in one MQTT packet: the connector's max_payload_bytes (256 KiB by default) and its header, with room.
MAX_PACKET_SIZE = 1024 * 1024


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_PATHS if Path(p).exists()), None)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Ask a child process to stop with ``sig``; kill it if it has not exited in ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Mosquitto:
    def __init__(self, workdir: str | Path, port: int | None = None, extra_conf: str = "",
                 max_packet_size: int = MAX_PACKET_SIZE):
        self.binary = find_mosquitto()
        if self.binary is None:
            raise FileNotFoundError("mosquitto is not installed (Debian: apt-get install -y mosquitto)")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.conf = self.workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.workdir.resolve()}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 0\n"  # 0 = no limit: a long appliance outage loses nothing
            "max_inflight_messages 100\n"
            f"max_packet_size {max_packet_size}\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
            # Started as root, mosquitto would drop to user 'mosquitto', which cannot write
            # its persistence file here: sessions would silently not survive a restart.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n" + extra_conf
        )

    def start(self) -> "Mosquitto":
        log_file = open(self.workdir / "mosquitto.log", "ab")
        # Its own session: Ctrl-C at the terminal stops the demo, which then stops the
        # broker last, instead of the broker vanishing under a shutting-down appliance.
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=log_file, start_new_session=True)
        log_file.close()
        try:
            wait_port(self.port)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_process(self.proc)  # SIGTERM: mosquitto saves its persistence file
        self.proc = None

    def kill(self) -> None:
        stop_process(self.proc, signal.SIGKILL, 5)
        self.proc = None

    def restart(self, down_s: float = 0.5) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def tls_mosquitto(workdir: str | Path, ca: str | Path, cert: str | Path, key: str | Path,
                  port: int | None = None) -> Mosquitto:
    """A Mosquitto (not started) that speaks only TLS and requires a client certificate signed by ``ca``.

    How a cloud broker treats a gateway: mutual TLS, the certificate's name as the user.
    """
    return Mosquitto(workdir, port=port, extra_conf=(
        f"cafile {ca}\n"
        f"certfile {cert}\n"
        f"keyfile {key}\n"
        "require_certificate true\n"
        "use_identity_as_username true\n"))
