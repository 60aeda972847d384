"""A fleet run on loopback: ``appliance fleet server`` and its clients, each its own process, logs in a folder.

Honest clients are ``appliance fleet client``; a lying one is ``rigs/fleet_attacker.py``.
``server_tree``: run the server from another checkout of the ``appliance`` package (the
poisoning benchmark's "before" case); clients always run this tree's code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from appliance.broker import free_port
from rigs.wait import wait_until

ROOT = Path(__file__).resolve().parents[1]
# Bounds for a broken run only; a healthy one ends long before (two shared cores).
RUN_TIMEOUT_S = 900.0


def fleet_toml(fleet: dict, log_level: str = "INFO") -> str:
    """``[fleet]`` (and its ``[fleet.x]`` tables for dict values) as TOML."""
    lines = [f'log_level = "{log_level}"', "[fleet]"] + [f"{k} = {json.dumps(v)}" for k, v in fleet.items()
                                                 if not isinstance(v, dict)]
    for k, v in fleet.items():
        if isinstance(v, dict):
            lines += [f"[fleet.{k}]"] + [f"{kk} = {json.dumps(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


class FleetRun:
    def __init__(self, folder: Path, fleet: dict, seed_bundle: Path, reference: Path, server_tree: Path = ROOT):
        self.folder, self.port = folder, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "fleet.toml"
        self.config.write_text(fleet_toml(fleet))
        self.out, self.report_path = folder / "fleet-bundle", folder / "report.json"
        self.server = self._spawn("server", ["-m", "appliance.cli", "fleet", "server", "--config", str(self.config),
                                             "--init", str(seed_bundle), "--reference", str(reference),
                                             "--out", str(self.out), "--report", str(self.report_path),
                                             "--address", f"127.0.0.1:{self.port}"], server_tree)
        self.clients: dict[str, subprocess.Popen] = {}

    def _spawn(self, name: str, argv: list[str], tree: Path = ROOT) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(dict.fromkeys([str(tree), str(ROOT)])))
        return subprocess.Popen([sys.executable, *argv], cwd=tree, stdout=log, stderr=subprocess.STDOUT, env=env)

    def client(self, name: str, data: Path) -> subprocess.Popen:
        """An honest gateway on the rows of ``data`` (CSV)."""
        self.clients[name] = p = self._spawn(name, ["-m", "appliance.cli", "fleet", "client", "--config",
                                                    str(self.config), "--data", str(data), "--name", name,
                                                    "--server", f"127.0.0.1:{self.port}"])
        return p

    def attacker(self, name: str, mode: str, data: Path, *extra: str) -> subprocess.Popen:
        """A lying client (``rigs/fleet_attacker.py`` ``--mode``) on the rows of ``data``."""
        self.clients[name] = p = self._spawn(name, ["-m", "rigs.fleet_attacker", "--mode", mode, "--data", str(data),
                                                    "--name", name, "--server", f"127.0.0.1:{self.port}", *extra])
        return p

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def wait(self) -> int:
        """The server's exit code, once it and every client ended (a client still running then is killed)."""
        wait_until(lambda: self.server.poll() is not None, timeout=RUN_TIMEOUT_S, what="the fleet server to end",
                   interval=0.5, detail=lambda: self.log("server")[-3000:])
        for name, p in self.clients.items():
            if p.poll() is None and self.server.returncode == 0:
                wait_until(lambda: p.poll() is not None, timeout=RUN_TIMEOUT_S, what=f"client {name} to end",
                           interval=0.2, detail=lambda: self.log(name)[-2000:])
        self.stop()
        return self.server.returncode

    def report(self) -> dict | None:
        return json.loads(self.report_path.read_text()) if self.report_path.exists() else None

    def stop(self) -> None:
        for p in [self.server, *self.clients.values()]:
            if p.poll() is None:
                p.kill()
                p.wait()
