"""Fleet rounds inside connectivity windows: a real SuperLink on loopback, gateways whose SuperNodes come and go.

Each gateway is what the appliance runs with ``[fleet] participate = true``: a
:class:`~appliance.fleet.participant.FleetParticipant` on a real
:class:`~appliance.sync.windows.ConnectivityWindows`, starting the gateway's
SuperNode (``appliance fleet node --from-store``, its own process, its own key)
on the rows its store recorded. A window is opened with ``sync_now`` and ends
when its monotonic clock (the test's) passes its end, exactly as a scheduled
one elapses. One gateway's window closes in the middle of round 1 (SecAgg+ on):
its SuperNode leaves, the round goes on without it, and it rejoins in its next
window for round 2.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import numpy as np
import pytest

from appliance.core import Alarm, AlarmState, Level
from tests.support.detector import SENSORS, normal_rows, record_rows
from tests.support.ports import free_port
from tests.support.wait import wait_until_async

# Several processes per gateway (SuperNode, SuperExec, a ClientApp per message) on two shared cores: the
# suite's 600 s hang guard is raised for this module; RUN_TIMEOUT_S still bounds a broken run.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600)]

flwr = pytest.importorskip("flwr", reason="the fleet extra (pip install .[fleet]) is not installed")

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 1800.0  # bounds a broken run only
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
    def __init__(self, folder: Path, name: str, db: Path, rig):
        from appliance.config import parse_config
        from appliance.fleet.participant import FleetParticipant, client_command
        from appliance.sync.windows import ConnectivityWindows

        self.folder, self.name = folder, name
        cfg = parse_config({"data_dir": str(folder), "site": name, "log_level": "INFO",
                            "store": {"path": str(db)}, "outputs": {"sync": {"enabled": True}},
                            "fleet": {"participate": True, "asset": ASSET, "server_address": rig.address,
                                      "ca_file": str(rig.tls.ca_file), "node_key": str(rig.new_node(name).key),
                                      # three gateways on one machine: each SuperNode's own API on its own port
                                      "node_runtime_port": free_port(),
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


def test_a_gateway_takes_part_only_inside_its_windows_and_rejoins_in_the_next(tmp_path, release_bundles,
                                                                             tls_files):
    from rigs.fleet import FleetRig

    data = tmp_path / "data"
    data.mkdir()
    reference = data / "reference.csv"
    ref = normal_rows(600, 100)
    reference.write_text("ts," + ",".join(SENSORS) + "\n" + "\n".join(
        f"{T0 + i:.1f}," + ",".join(f"{v:.6f}" for v in row) for i, row in enumerate(ref)) + "\n")
    # gw1 had an alarm (left out of its training rows).
    dbs = {"gw1": record(data / "gw1.db", normal_rows(900, 101), [Alarm(
        id="a1", asset=ASSET, level=Level.ANOMALY, state=AlarmState.UNACKED, start=T0 + 400, end=T0 + 430,
        peak_ratio=2.0, top_sensors=("current",), active=False)]),
           "gw2": record(data / "gw2.db", normal_rows(900, 102)),
           "away": record(data / "away.db", normal_rows(900, 104))}
    rig = FleetRig(tmp_path / "superlink", tls_files,
                   {"rounds": 2, "clients": 3, "min_results": 2, "local_epochs": 2, "batch_size": 64,
                    "round_timeout_s": 180.0, "join_timeout_s": 600.0, "rejoin_timeout_s": 900.0})

    async def scenario():
        gateways = {name: Gateway(tmp_path / name, name, db, rig) for name, db in dbs.items()}
        for g in gateways.values():
            await g.start()
        away = gateways["away"]
        try:
            # No window, no SuperNode: nothing is started before the window opens.
            await asyncio.sleep(1.5)
            assert away.participant.status()["sessions"] == 0 and away.participant.status()["pid"] is None
            for g in gateways.values():
                g.open_window()
            run = rig.run(release_bundles[0], [reference])
            # "away" answers SecAgg+'s first stage of round 1, then its window closes.
            await wait_until_async(lambda: "Sent successfully" in away.log(), timeout=RUN_TIMEOUT_S,
                                   what="the away gateway to take part in round 1", interval=0.1,
                                   detail=lambda: rig.superlink_log()[-2000:])
            away.close_window()
            await wait_until_async(lambda: away.participant.sessions[0]["outcome"] != "running",
                                   timeout=RUN_TIMEOUT_S, what="its SuperNode to leave", detail=away.log)
            assert away.participant.sessions[0]["outcome"] == "left", away.log()[-2000:]
            assert "SuperNode terminated gracefully" in away.log()
            assert not away.windows.is_open() and away.participant.state == "waiting"
            # Its next window: it joins again and takes part in round 2.
            away.open_window()
            await wait_until_async(lambda: run.poll() is not None, timeout=RUN_TIMEOUT_S,
                                   what="the fleet run to end", interval=0.5,
                                   detail=lambda: rig.superlink_log()[-2000:])
        finally:
            for g in gateways.values():
                await g.stop()
        return run, away

    rig.start()
    try:
        run, away = asyncio.run(scenario())
    finally:
        rig.stop()
    assert run.returncode == 0, (rig.folder / "run" / "run.log").read_text()[-4000:]
    report = json.loads((rig.folder / "run" / "report.json").read_text())
    rounds = report["rounds"]
    names = [sorted(c["name"] for c in r["clients"]) for r in rounds]
    # Round 1 did not wait for it (SecAgg+ went on without it); round 2 had it back.
    assert names[1] == ["away", "gw1", "gw2"], names
    assert "away" not in names[0], names
    assert report["rounds_released"] >= 1
    # The gateways trained on their stores' rows: gw1's alarm (with its margin) left out.
    last = {c["name"]: c for c in rounds[1]["clients"]}
    assert last["gw1"]["alarms_left_out"] == 1 and last["gw2"]["alarms_left_out"] == 0
    assert last["gw1"]["normal_rows"] < 900 - 30 and last["gw2"]["normal_rows"] > 880
    assert [s["outcome"] for s in away.participant.sessions][:1] == ["left"]
    assert Path(report["bundle"]).is_dir()
