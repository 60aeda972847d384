"""Talking to systemd when run as a service (``Type=notify``): readiness, watchdog, status.

The sd_notify protocol is one datagram per message to the Unix socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` names Linux's abstract namespace). Without that
variable (a terminal, a test, the demo) every call does nothing. Written here rather
than taken from PyPI: ``sdnotify`` is unmaintained since 2017 and ``systemd-python``
builds against libsystemd's headers, for what is one ``sendto``.

The watchdog is pinged by a task on the appliance's event loop, not by a thread: a
loop that stalls (a hook that blocks, a deadlock) stops the pings, and systemd
restarts the service after ``WatchdogSec=``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger("appliance.service")


class Notifier:
    """``notify("READY=1")`` and friends; a no-op outside systemd."""

    def __init__(self, address: str | None = None):
        self._address = address
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # '@name' is the abstract namespace, whose addresses start with a NUL byte.
            self._address = "\0" + address[1:] if address.startswith("@") else address

    @classmethod
    def from_env(cls) -> "Notifier":
        return cls(os.environ.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> None:
        """Send ``KEY=value`` fields in one datagram. A failure is logged, never raised:
        losing a status line must not stop the appliance."""
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as e:
            log.warning("sd_notify failed: %s", e)

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def stderr_is_journal() -> bool:
    """Whether stderr is connected to journald (systemd sets ``$JOURNAL_STREAM`` to its device:inode)."""
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return os.environ.get("JOURNAL_STREAM", "") == f"{st.st_dev}:{st.st_ino}"


class JournalFormatter(logging.Formatter):
    """Log lines for journald: no timestamp of our own (the journal keeps one) and a ``<N>`` syslog
    priority in front, so ``journalctl -u edge-anomaly -p warning`` shows only problems."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def __init__(self):
        super().__init__("level=%(levelname)s logger=%(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = self.PRIORITY.get(record.levelno, 6)
        # Every line of a traceback gets the prefix, or journald files it at the default priority.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def watchdog_interval() -> float | None:
    """Half of systemd's ``WatchdogSec=`` (``$WATCHDOG_USEC``), or None when no watchdog is asked for
    (or it is meant for another process: ``$WATCHDOG_PID``)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


async def ping_watchdog(notifier: Notifier, interval: float) -> None:
    """Send ``WATCHDOG=1`` every ``interval`` seconds for as long as the event loop turns."""
    while True:
        notifier.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def _unready(app) -> list[str]:
    return [c.name for c in app.inputs if not c.ready()]


async def announce(app, notifier: Notifier, status_every_s: float = 30.0, extend_s: float = 30.0) -> None:
    """``READY=1`` once every input is ready (MQTT: its subscriptions acknowledged), then a ``STATUS=``
    line with the counters every ``status_every_s``. Runs as a task beside the appliance.

    Until the inputs are ready (a broker still booting), each second asks systemd for ``extend_s``
    more start-up time: the service waits for its broker instead of failing its start, while a loop
    that stalls stops extending and still times out.
    """
    while not await app.wait_inputs_ready(timeout=1.0):
        notifier.notify(f"EXTEND_TIMEOUT_USEC={int(extend_s * 1e6)}",
                        f"STATUS=starting: waiting for inputs: {', '.join(_unready(app))}")
    notifier.notify("READY=1", f"STATUS=running: {app.summary()}")
    log.info("ready: inputs %s", ",".join(c.name for c in app.inputs) or "none")
    while True:
        await asyncio.sleep(status_every_s)
        unready = _unready(app)
        notifier.status(f"running: {app.summary()}" + (f"; inputs not ready: {', '.join(unready)}" if unready else ""))
