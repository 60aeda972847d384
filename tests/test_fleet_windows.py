"""Fleet rounds inside connectivity windows: a real Flower server on loopback, gateways that come and go.

Each gateway is what the appliance runs with ``[fleet] participate = true``: a
:class:`~appliance.fleet.participant.FleetParticipant` on a real
:class:`~appliance.sync.windows.ConnectivityWindows`, starting the fleet client
(``appliance fleet client --from-store``, its own process) on the rows its store
recorded. A window is opened with ``sync_now`` and ends when its monotonic
clock (the test's) passes its end, exactly as a scheduled one elapses. One
gateway's window closes while it trains round 2: it leaves the run, the round
goes on without it, and it rejoins in its next window for round 3.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from appliance.core import Alarm, AlarmState, Level
from tests.support.detector import SENSORS, normal_rows, record_rows
from tests.support.ports import free_port
from tests.support.wait import wait_until_async

pytestmark = pytest.mark.integration

flwr = pytest.importorskip("flwr", reason="the fleet extra (pip install .[fleet]) is not installed")

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 900.0  # bounds a broken run only
T0 = 1_700_000_000.0
ASSET = "pump"


def record(db: Path, rows: np.ndarray, alarms=()) -> Path:
    return record_rows(db, rows, ASSET, T0, alarms)


class ManualClock:
    """The windows' monotonic clock: a window stays open until the test moves this past its end."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Gateway:
    def __init__(self, folder: Path, name: str, db: Path, server: str):
        from appliance.config import parse_config
        from appliance.fleet.participant import FleetParticipant, client_command
        from appliance.sync.windows import ConnectivityWindows

        self.folder, self.name = folder, name
        cfg = parse_config({"data_dir": str(folder), "site": name, "log_level": "INFO",
                            "store": {"path": str(db)}, "outputs": {"sync": {"enabled": True}},
                            "fleet": {"participate": True, "asset": ASSET, "server_address": server,
                                      "alarm_margin_s": 10.0, "recent_s": 86400.0}}, name)
        self.clock = ManualClock()
        self.windows = ConnectivityWindows([], monotonic=self.clock)
        self.log_path = folder / "fleet" / "client.log"
        self.participant = FleetParticipant(self.windows, client_command(cfg), self.log_path, leave_grace_s=120.0,
                                            env=dict(os.environ, PYTHONUNBUFFERED="1"))

    async def start(self):
        await self.windows.start()
        await self.participant.start(None)

    def open_window(self):
        # The window's own timer looks at the clock each second; it ends once the clock passes it.
        self.windows.sync_now(1.0)

    def close_window(self):
        self.clock.now += 10.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def stop(self):
        await self.participant.stop()
        await self.windows.stop()


def test_a_gateway_takes_part_only_inside_its_windows_and_rejoins_in_the_next(tmp_path, release_bundles):
    data = tmp_path / "data"
    data.mkdir()
    reference = data / "reference.csv"
    ref = normal_rows(600, 100)
    reference.write_text("ts," + ",".join(SENSORS) + "\n" + "\n".join(
        f"{T0 + i:.1f}," + ",".join(f"{v:.6f}" for v in row) for i, row in enumerate(ref)) + "\n")
    # gw1 had an alarm (left out of its training rows); "slow" has enough rows that its training takes a while.
    gw1_db = record(data / "gw1.db", normal_rows(900, 101), [Alarm(
        id="a1", asset=ASSET, level=Level.ANOMALY, state=AlarmState.UNACKED, start=T0 + 400, end=T0 + 430,
        peak_ratio=2.0, top_sensors=("current",), active=False)])
    slow_db = record(data / "slow.db", normal_rows(5000, 104))

    port = free_port()
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    (server_dir / "fleet.toml").write_text(
        'log_level = "INFO"\n[fleet]\nrounds = 3\nclients = 2\nmin_results = 1\nlocal_epochs = 3\n'
        'batch_size = 64\nround_timeout_s = 600.0\njoin_timeout_s = 600.0\nrejoin_timeout_s = 600.0\n')
    report_path, out = server_dir / "report.json", server_dir / "fleet-bundle"
    server_log = open(server_dir / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "fleet", "server", "--config", str(server_dir / "fleet.toml"),
         "--init", str(release_bundles[0]), "--reference", str(reference), "--out", str(out),
         "--report", str(report_path), "--address", f"127.0.0.1:{port}"],
        cwd=ROOT, stdout=server_log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def server_text() -> str:
        return (server_dir / "server.log").read_text(errors="replace")[-3000:]

    async def scenario():
        # Built inside the server's try/finally: a gateway that fails to build must not leave the server running.
        gw1 = Gateway(tmp_path / "gw1", "gw1", gw1_db, f"127.0.0.1:{port}")
        slow = Gateway(tmp_path / "slow", "slow", slow_db, f"127.0.0.1:{port}")
        await gw1.start()
        await slow.start()
        try:
            # No window, no client: nothing is started before the window opens.
            await asyncio.sleep(1.5)
            assert slow.participant.status()["sessions"] == 0 and slow.participant.status()["pid"] is None
            gw1.open_window()
            slow.open_window()
            await wait_until_async(lambda: "fit round=2 begins" in slow.log(), timeout=RUN_TIMEOUT_S,
                                   what="the slow gateway to start training round 2", interval=0.02,
                                   detail=server_text)
            pid = slow.participant.status()["pid"]
            # Hold it inside round 2 (a long training), then its window closes.
            os.kill(pid, signal.SIGSTOP)
            slow.close_window()
            await wait_until_async(lambda: slow.participant.state == "leaving", timeout=RUN_TIMEOUT_S,
                                   what="the participant to ask the client to leave")
            os.kill(pid, signal.SIGCONT)
            await wait_until_async(lambda: slow.participant.sessions[0]["outcome"] != "running",
                                   timeout=RUN_TIMEOUT_S, what="the client to leave", detail=slow.log)
            assert slow.participant.sessions[0]["outcome"] == "left", slow.log()[-2000:]
            assert "left the run (connectivity window closed) after 1 rounds" in slow.log()
            assert not slow.windows.is_open() and slow.participant.state == "waiting"
            # Round 2 does not wait for it: it is aggregated from gw1 alone.
            await wait_until_async(lambda: "aggregate_fit: received 1 results and 1 failures" in server_text(),
                                   timeout=RUN_TIMEOUT_S, what="round 2 to be aggregated without the slow gateway",
                                   detail=server_text)
            # Its next window: it joins again and takes part until the server ends the run.
            slow.open_window()
            await wait_until_async(lambda: server.poll() is not None, timeout=RUN_TIMEOUT_S,
                                   what="the fleet server to end", interval=0.2, detail=server_text)
            await wait_until_async(lambda: all(g.participant.state == "done_for_window" for g in (gw1, slow)),
                                   timeout=RUN_TIMEOUT_S, what="both clients to end with the run",
                                   detail=lambda: slow.log()[-2000:] + gw1.log()[-2000:])
        finally:
            await slow.stop()
            await gw1.stop()
        return slow

    try:
        slow = asyncio.run(scenario())
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0, server_text()
    report = json.loads(report_path.read_text())
    rounds = report["rounds"]
    names = [sorted(c["name"] for c in r["clients"]) for r in rounds]
    assert names == [["gw1", "slow"], ["gw1"], ["gw1", "slow"]], names
    assert [r["failures"] for r in rounds] == [0, 1, 0]
    assert report["rounds_released"] == 3
    # The clients trained on their stores' rows: gw1's alarm (with its margin) left out.
    first = {c["name"]: c for c in rounds[0]["clients"]}
    assert first["gw1"]["alarms_left_out"] == 1 and first["slow"]["alarms_left_out"] == 0
    assert first["gw1"]["normal_rows"] < 900 - 30 and first["slow"]["normal_rows"] > 4900
    sessions = slow.participant.sessions
    assert [s["outcome"] for s in sessions] == ["left", "ended"], sessions
    assert out.is_dir()
