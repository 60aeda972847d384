"""A fleet on Flower's deployment runtime on this machine: one SuperLink, SuperNodes, ``appliance fleet run``.

Every piece runs the appliance's own commands as separate processes
(``appliance fleet superlink|register|revoke|node|run``) on free loopback
ports, TLS with a CA made for the rig and each gateway's own key, exactly as a
plant would run them (``docs/fleet.md``). Used by ``tests/test_fleet_deploy.py``
and ``benchmarks/fleet.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rigs.fleet_run import fleet_toml

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return dict(os.environ, PYTHONUNBUFFERED="1")


def appliance(*args: str) -> list[str]:
    return [sys.executable, "-m", "appliance.cli", *args]


@dataclass
class Node:
    name: str
    key: Path
    proc: subprocess.Popen | None = None
    node_id: int | None = None
    traffic: Path | None = None
    log_path: Path | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, wait_s: float = 60.0) -> None:
        """Stop the SuperNode and the ClientApp processes it started (its process group)."""
        if not self.running():
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@dataclass
class FleetRig:
    """A SuperLink with TLS and node authentication in ``folder``; gateways added with :meth:`node`."""

    folder: Path
    tls: object  # rigs.tls_server.TlsFiles
    fleet: dict
    nodes: dict[str, Node] = field(default_factory=dict)
    superlink: subprocess.Popen | None = None

    def __post_init__(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.config = self.folder / "fleet.toml"
        self.write_config(self.fleet)

    def write_config(self, fleet: dict) -> None:
        fleet = dict(fleet, server_address=self.address, ca_file=str(self.tls.ca_file),
                     cert_file=str(self.tls.cert_file), key_file=str(self.tls.key_file))
        self.config.write_text(fleet_toml(fleet))

    # -- the engineer's side --------------------------------------------------------------------
    def start(self, timeout_s: float = 300.0) -> "FleetRig":
        log = open(self.folder / "superlink.log", "w")
        self.superlink = subprocess.Popen(appliance("fleet", "superlink", "--config", str(self.config), "--state",
                                                    str(self.folder / "state")),
                                          cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=_env(),
                                          start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self._listening():
            if self.superlink.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the SuperLink did not start:\n" + self.superlink_log()[-3000:])
            time.sleep(0.2)
        return self

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def superlink_log(self) -> str:
        p = self.folder / "superlink.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def control(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(appliance("fleet", *args, "--config", str(self.config), "--flwr-home",
                                        str(self.folder / "flwr-home")),
                              cwd=ROOT, capture_output=True, text=True, env=_env())

    def register(self, node: Node) -> int:
        r = self.control("register", str(node.key) + ".pub", "--name", node.name)
        if r.returncode != 0:
            raise RuntimeError(f"register {node.name}: {r.stdout}{r.stderr}")
        node.node_id = int(json.loads(r.stdout[r.stdout.index("{"):])["node-id"])
        return node.node_id

    def revoke(self, node: Node) -> None:
        r = self.control("revoke", str(node.node_id))
        if r.returncode != 0:
            raise RuntimeError(f"revoke {node.name}: {r.stdout}{r.stderr}")

    def run(self, init: Path, reference: list[Path], name: str = "run") -> subprocess.Popen:
        """``appliance fleet run`` in the background; its bundle and report in ``folder/name``."""
        out = self.folder / name
        out.mkdir(exist_ok=True)
        log = open(out / "run.log", "w")
        return subprocess.Popen(appliance("fleet", "run", "--config", str(self.config), "--flwr-home",
                                          str(self.folder / "flwr-home"), "--init", str(init), "--reference",
                                          *map(str, reference), "--out", str(out / "bundle"), "--report",
                                          str(out / "report.json")),
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=_env())

    # -- a gateway's side -----------------------------------------------------------------------
    def new_node(self, name: str, register: bool = True) -> Node:
        from appliance.fleet.keys import write_node_key

        key, _ = write_node_key(self.folder / "keys" / f"{name}.key", comment=name)
        node = Node(name, key, log_path=self.folder / f"{name}.log", traffic=self.folder / f"{name}.traffic")
        self.nodes[name] = node
        if register:
            self.register(node)
        return node

    def start_node(self, node: Node, data: list[Path], *, secagg_required: bool = True) -> Node:
        argv = appliance("fleet", "node", "--config", str(self.config), "--data", *map(str, data), "--name",
                         node.name, "--key", str(node.key), "--runtime-port", str(free_port()),
                         "--traffic-file", str(node.traffic))
        if not secagg_required:
            argv.append("--allow-plain")
        log = open(node.log_path, "a")
        node.proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=_env(),
                                     start_new_session=True)
        return node

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
        if self.superlink is not None and self.superlink.poll() is None:
            os.killpg(self.superlink.pid, signal.SIGTERM)
            try:
                self.superlink.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.superlink.pid, signal.SIGKILL)
                self.superlink.wait()


def traffic(node: Node) -> list[dict]:
    """The payload bytes of each message this node's ClientApp handled (its ``traffic-file``)."""
    if node.traffic is None or not node.traffic.exists():
        return []
    return [json.loads(line) for line in node.traffic.read_text().splitlines() if line.strip()]
