"""Eclipse Tahu as the Sparkplug host that reads what the appliance publishes (``rigs/tahu/host.js``).

:class:`TahuHost` runs the Node script as a child process: every message of the group
comes back decoded by Tahu's ``sparkplug-payload`` as one JSON line, and the test sends
what a SCADA host sends (rebirth requests, writes, its STATE) through the child's stdin.
:func:`tahu_available` says whether Node and the npm packages are installed
(``scripts/setup.sh --test``); tests skip without them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

from tests.support.wait import wait_until

TAHU = Path(__file__).resolve().parents[2] / "rigs" / "tahu"


def tahu_available() -> str | None:
    """Why the Tahu host cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed (scripts/setup.sh --test)"
    if not (TAHU / "node_modules" / "sparkplug-payload").is_dir():
        return "rigs/tahu/node_modules is missing (scripts/setup.sh --test runs npm ci there)"
    return None


class TahuHost:
    def __init__(self, port: int, group: str = "plant", host_id: str | None = None):
        args = ["node", str(TAHU / "host.js"), "--url", f"mqtt://127.0.0.1:{port}", "--group", group]
        if host_id:
            args += ["--host-id", host_id]
        self.proc = subprocess.Popen(args, cwd=TAHU, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines: list[dict] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for(lambda e: e["event"] == "ready", what="the Tahu host subscribed")

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(json.loads(line))

    def events(self) -> list[dict]:
        with self._lock:
            return list(self.lines)

    def messages(self, kind: str | None = None, device: str | None = None) -> list[dict]:
        """Decoded messages, oldest first, of one kind (``NBIRTH``, ``DDATA`` ...) and device if given."""
        return [e for e in self.events() if e["event"] == "message" and (kind is None or e["kind"] == kind)
                and (device is None or e["device"] == device)]

    def wait_for(self, predicate, what: str, timeout: float = 60.0, after: int = 0) -> dict:
        """The first event past the first ``after`` that ``predicate`` accepts, waiting for it."""
        found: list[dict] = []

        def seen() -> bool:
            found[:] = [e for e in self.events()[after:] if predicate(e)][:1]
            return bool(found)

        wait_until(seen, timeout, what, interval=0.05,
                   detail=lambda: f"last events: {json.dumps(self.events()[-8:])[:3000]}")
        return found[0]

    def wait_message(self, kind: str, after: int = 0, device: str | None = None, what: str = "",
                     where=lambda m: True, timeout: float = 60.0) -> dict:
        """The first message of ``kind`` (and ``device``) past the first ``after`` events that ``where`` accepts."""
        def predicate(e):
            return (e["event"] == "message" and e["kind"] == kind and (device is None or e["device"] == device)
                    and where(e))
        return self.wait_for(predicate, what or f"a {kind}", timeout, after)

    def mark(self) -> int:
        """How many events so far: pass as ``after`` to wait for a later one."""
        with self._lock:
            return len(self.lines)

    def send(self, **command) -> None:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
