"""Eclipse Tahu's edge node (``rigs/tahu/edge_node.js``, Tahu's ``sparkplug-client`` from npm) as a process.

The tests and the Sparkplug benchmark drive it through its stdin (one JSON command a
line) and read what it did from its stdout (one JSON event a line).
:func:`tahu_missing` says why it cannot run here (no ``node``, or ``npm ci`` not run in
``rigs/tahu``), so a test can skip with that reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Sequence

from rigs.wait import wait_until

TAHU = Path(__file__).resolve().parent / "tahu"
EDGE_NODE = TAHU / "edge_node.js"


def tahu_missing() -> str | None:
    """None when Node.js and Tahu's npm packages are here, else what is missing and how to get it."""
    if shutil.which("node") is None:
        return "node (Node.js) is not installed (scripts/setup.sh --test installs it)"
    for package in ("sparkplug-client", "sparkplug-payload"):
        if not (TAHU / "node_modules" / package / "package.json").exists():
            return f"rigs/tahu/node_modules/{package} is missing (run npm ci in rigs/tahu, or scripts/setup.sh --test)"
    return None


class TahuEdgeNode:
    """One ``edge_node.js`` process: an edge node with devices whose metrics are Doubles with aliases."""

    def __init__(self, port: int, group: str = "plant1", node: str = "gw7", devices: Sequence[str] = ("pump3",),
                 metrics: Sequence[str] = ("a", "b", "c"), bdseq: int = 0, client_id: str | None = None):
        self.node = node
        argv = ["node", str(EDGE_NODE), "--port", str(port), "--group", group, "--node", node,
                "--devices", ",".join(devices), "--metrics", ",".join(metrics), "--bdseq", str(bdseq)]
        if client_id:
            argv += ["--client-id", client_id]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1, cwd=TAHU)
        self.events: list[dict] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "output", "line": line.rstrip()}
            with self._lock:
                self.events.append(event)

    def count(self, name: str) -> int:
        with self._lock:
            return sum(e.get("event") == name for e in self.events)

    def wait_event(self, name: str, count: int = 1, timeout: float = 60.0) -> None:
        wait_until(lambda: self.count(name) >= count, timeout, f"edge node {self.node}: {count} x {name}",
                   detail=lambda: f"events={self.events[-10:]} exit={self.proc.poll()}")

    def send(self, **cmd) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def data(self, device: str, values: dict[str, float], ts_ms: int, compress: bool | str = False) -> None:
        """One DDATA; ``compress``: True (Tahu's default, DEFLATE), "DEFLATE" or "GZIP" to have Tahu compress it."""
        n = self.count("sent")
        self.send(cmd="data", device=device, values=values, ts=ts_ms, compress=compress)
        self.wait_event("sent", n + 1)

    def kill(self) -> None:
        """Gone without a word: the broker publishes its will (the NDEATH)."""
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> None:
        """NDEATH published by the node itself, then exit."""
        if self.proc.poll() is None:
            self.send(cmd="stop")
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass
