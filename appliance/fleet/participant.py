"""A gateway's part in fleet learning, run by the appliance: its Flower client, only inside connectivity windows.

With ``[fleet] participate = true`` the appliance adds this output (its entry in
:mod:`appliance.registry` asks for the windows of ``[outputs.sync]``) and follows the
sync's :class:`~appliance.sync.windows.ConnectivityWindows` (its public API only:
``is_open``, ``wait_open``, ``wait_closed``, ``time_left``):

* a window opens: start the fleet client (``appliance fleet client --from-store``)
  as a child process, which trains on the recent normal rows of this gateway's
  store and keeps connecting to the fleet server for what is left of the window;
* the window closes: SIGTERM; the client leaves the run at once, mid-round too
  (the server counts that round's reply as failed and goes on with the others:
  ``docs/fleet.md``), and is killed if it has not left within ``leave_grace_s``;
* the next window: a new client joins again. A client that ended on its own
  (the server finished its run) is not restarted before the next window; one
  that failed (no server, an error) is retried while the window lasts.

Why a child process: Flower, gRPC and scikit-learn stay out of the appliance's
process (the live path imports no training code, and a Pi does not keep ~250 MB
resident between windows), and a client that hangs can always be killed.
Nothing here imports flwr.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from appliance.core import Output, OutputContext, PluginEnv, PluginError

log = logging.getLogger(__name__)

# How often the waits look at the windows again (their events are replaced when the sync restarts).
POLL_S = 1.0
LOG_MAX_BYTES = 1_000_000


class FleetParticipant(Output):
    """Runs ``command(time_left_s)`` as the fleet client while ``windows`` is open (see the module docstring)."""

    name = "fleet"

    def __init__(self, windows: Any, command: Callable[[float], Sequence[str]], log_path: str | Path, *,
                 leave_grace_s: float = 10.0, retry_s: float = 5.0, env: dict | None = None):
        self.windows = windows
        self.command = command
        self.log_path = Path(log_path)
        self.leave_grace_s, self.retry_s, self.env = leave_grace_s, retry_s, env
        self.state = "waiting"
        self.sessions: list[dict] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False

    async def start(self, ctx: OutputContext) -> None:
        self._task = asyncio.create_task(self._run(), name="fleet-participant")

    async def stop(self) -> None:
        self._stopping = True
        if self._proc is not None and self._proc.returncode is None:
            await self._leave("stopped")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def status(self) -> dict:
        last = self.sessions[-1] if self.sessions else None
        return {"state": self.state, "sessions": len(self.sessions),
                "left_at_window_close": sum(1 for s in self.sessions if s["outcome"] == "left"),
                "pid": self._proc.pid if self._proc is not None and self._proc.returncode is None else None,
                "last": last}

    # -- the loop -------------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping:
            if not self.windows.is_open():
                self.state = "waiting"
                try:
                    await asyncio.wait_for(self.windows.wait_open(), POLL_S)
                except asyncio.TimeoutError:
                    pass
                continue
            try:
                outcome = await self._session()
            except OSError as e:  # the interpreter or the log file: nothing a retry in this window fixes
                log.error("fleet client could not start: %s", e)
                outcome = "ended"
            except Exception:
                # The participant must outlive its own mistakes: the appliance's other parts go on anyway.
                log.exception("fleet participant: session failed")
                outcome = "failed"
            if outcome == "ended":
                # The server finished its run (or the client cannot start): nothing more in this window.
                self.state = "done_for_window"
                await self._until_closed()
            elif outcome == "failed" and self.windows.is_open():
                self.state = "retrying"
                await self._until_closed(self.retry_s)

    async def _until_closed(self, at_most: float | None = None) -> None:
        end = None if at_most is None else time.monotonic() + at_most
        while self.windows.is_open() and not self._stopping:
            left = POLL_S if end is None else min(POLL_S, end - time.monotonic())
            if left <= 0:
                return
            await self.windows.wait_closed(timeout=left)

    async def _session(self) -> str:
        argv = [str(a) for a in self.command(self.windows.time_left())]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.log_path.exists() and self.log_path.stat().st_size > LOG_MAX_BYTES:
            self.log_path.replace(self.log_path.with_suffix(self.log_path.suffix + ".1"))
        with open(self.log_path, "ab") as out:
            self._proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=asyncio.subprocess.STDOUT,
                                                              env=self.env)
        session = {"pid": self._proc.pid, "started_at": time.time(), "outcome": "running", "returncode": None}
        self.sessions = [*self.sessions[-19:], session]
        self.state = "taking_part"
        log.info("fleet client started pid=%d window_left_s=%.0f", self._proc.pid, self.windows.time_left())
        exited = asyncio.ensure_future(self._proc.wait())
        closed = asyncio.ensure_future(self._until_closed())
        await asyncio.wait({exited, closed}, return_when=asyncio.FIRST_COMPLETED)
        if exited.done():
            closed.cancel()
            outcome = "ended" if self._proc.returncode == 0 else "failed"
        else:
            outcome = await self._leave("left")
        session.update(outcome=outcome, returncode=self._proc.returncode, ended_at=time.time())
        log.info("fleet client pid=%d %s returncode=%s", session["pid"], outcome, self._proc.returncode)
        return outcome

    async def _leave(self, outcome: str) -> str:
        """SIGTERM the client (it leaves the run, its channel closed); kill it after ``leave_grace_s``."""
        proc = self._proc
        self.state = "leaving"
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.leave_grace_s)
        except asyncio.TimeoutError:
            log.warning("fleet client pid=%d did not leave within %.0f s; killed", proc.pid, self.leave_grace_s)
            proc.kill()
            await proc.wait()
            return "killed"
        return outcome


def client_command(cfg) -> Callable[[float], list[str]]:
    """The argv of this gateway's SuperNode for a window with ``time_left_s`` to go (from the config).

    ``appliance fleet node`` becomes Flower's ``flower-supernode`` with this
    gateway's key (``fleet.node_key``), the fleet's CA and its store as node config.
    """
    f = cfg.fleet
    base = [sys.executable, "-m", "appliance.cli", "fleet", "node", "--from-store", f.asset,
            "--store", str(cfg.path(cfg.store.path)), "--name", f.name or cfg.site, "--server", f.server_address,
            "--recent", repr(f.recent_s), "--alarm-margin", repr(f.alarm_margin_s),
            "--staleness", repr(cfg.windows.staleness_s), "--lateness", repr(cfg.windows.lateness_s),
            "--runtime-port", str(f.node_runtime_port)]
    if f.ca_file is not None:
        base += ["--ca-file", f.ca_file]
    if f.node_key is not None:
        base += ["--key", f.node_key]

    def command(time_left_s: float) -> list[str]:
        # Connecting is worth trying only while the window lasts.
        return [*base, "--max-wait", repr(max(1.0, float(time_left_s)))]

    return command


def build(section, env: PluginEnv) -> FleetParticipant:
    """The registry's factory: the participant on the sync output's connectivity windows (``env.needs``)."""
    # Refused at start, not in every window: the client child would fail to import flwr each time.
    if importlib.util.find_spec("flwr") is None:
        raise PluginError("fleet.participate: Flower is not installed (the fleet extra: "
                          "pip install 'edge-anomaly-appliance[fleet]', Python 3.11 or newer)")
    cfg = env.config
    return FleetParticipant(env.needs["windows"], client_command(cfg), env.path("fleet/client.log"),
                            leave_grace_s=section.leave_grace_s, env=dict(os.environ, PYTHONUNBUFFERED="1"))
