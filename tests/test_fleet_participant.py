"""The appliance's fleet participant follows real connectivity windows (no flwr: the client is a stand-in process).

What the participant decides is checked here with small child processes in
place of the fleet client: nothing runs while the window is closed; a client
that fails is retried while the window lasts; one the server ended is not
restarted before the next window; a window that closes makes the client leave
(SIGTERM), and one that will not leave is killed. The windows end when their
monotonic clock (the test's) passes their end, as a scheduled window elapses.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from appliance.fleet.participant import FleetParticipant
from appliance.sync.windows import ConnectivityWindows
from tests.support.wait import wait_until_async

TIMEOUT_S = 120.0  # bounds a broken run only


class ManualClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def stays(ready: Path, ignore_term: bool = False) -> list[str]:
    """A client that runs until told to leave (or, ``ignore_term``, until killed); ``ready`` once it listens."""
    handler = "signal.SIG_IGN" if ignore_term else "lambda *a: sys.exit(0)"
    return child(f"import signal, sys, time, pathlib\nsignal.signal(signal.SIGTERM, {handler})\n"
                 f"pathlib.Path({str(ready)!r}).write_text('ok')\ntime.sleep(3600)\n")


async def with_participant(tmp_path: Path, commands: list[list[str]], scenario, **kw):
    clock = ManualClock()
    windows = ConnectivityWindows([], monotonic=clock)
    issued: list[float] = []

    def command(time_left: float) -> list[str]:
        issued.append(time_left)
        return commands[min(len(issued) - 1, len(commands) - 1)]

    p = FleetParticipant(windows, command, tmp_path / "client.log", **kw)
    await windows.start()
    await p.start(None)
    try:
        await scenario(p, windows, clock, issued)
    finally:
        await p.stop()
        await windows.stop()


def test_no_window_no_client_then_failures_are_retried_while_the_window_lasts(tmp_path):
    async def scenario(p, windows, clock, issued):
        await asyncio.sleep(1.5)
        assert issued == [] and p.status()["state"] == "waiting"
        windows.sync_now(30.0)
        await wait_until_async(lambda: len(p.sessions) >= 3, timeout=TIMEOUT_S, what="three attempts")
        assert all(s["outcome"] in ("failed", "running") for s in p.sessions)
        assert p.sessions[0]["returncode"] == 3
        # Each attempt may wait to connect for at most what is left of the window.
        assert 0 < issued[0] <= 30.0
        clock.now += 60.0
        await wait_until_async(lambda: p.state == "waiting", timeout=TIMEOUT_S, what="the participant to wait")
        n = len(issued)
        await asyncio.sleep(1.5)
        assert len(issued) == n  # nothing is retried outside the window

    asyncio.run(with_participant(tmp_path, [child("import sys; sys.exit(3)")], scenario, retry_s=0.2))


def test_a_run_the_server_ended_is_not_restarted_before_the_next_window(tmp_path):
    async def scenario(p, windows, clock, issued):
        windows.sync_now(1.0)
        await wait_until_async(lambda: p.state == "done_for_window", timeout=TIMEOUT_S, what="the run to end")
        await asyncio.sleep(1.5)
        assert len(issued) == 1 and p.sessions[0]["outcome"] == "ended"
        clock.now += 10.0
        await wait_until_async(lambda: p.state == "waiting", timeout=TIMEOUT_S, what="the window to close")
        windows.sync_now(1.0)
        await wait_until_async(lambda: len(p.sessions) == 2 and p.sessions[1]["outcome"] == "ended",
                               timeout=TIMEOUT_S, what="a new client in the next window")

    asyncio.run(with_participant(tmp_path, [child("print('run ended by the server')")], scenario))


def test_a_closing_window_makes_the_client_leave_and_the_next_window_starts_another(tmp_path):
    first, second = tmp_path / "first.ready", tmp_path / "second.ready"

    async def scenario(p, windows, clock, issued):
        windows.sync_now(1.0)
        await wait_until_async(first.exists, timeout=TIMEOUT_S, what="the first client to run")
        assert p.status()["state"] == "taking_part" and p.status()["pid"] is not None
        clock.now += 10.0
        await wait_until_async(lambda: p.sessions[0]["outcome"] != "running", timeout=TIMEOUT_S,
                               what="the client to leave")
        assert p.sessions[0]["outcome"] == "left" and p.sessions[0]["returncode"] == 0
        assert p.status()["pid"] is None and not second.exists()
        windows.sync_now(1.0)
        await wait_until_async(second.exists, timeout=TIMEOUT_S, what="a client in the next window")
        assert p.status()["left_at_window_close"] == 1 and len(p.sessions) == 2

    # The grace only bounds a broken client here: this one leaves as soon as it is told.
    asyncio.run(with_participant(tmp_path, [stays(first), stays(second)], scenario, leave_grace_s=TIMEOUT_S))


def test_a_client_that_will_not_leave_is_killed(tmp_path):
    ready = tmp_path / "ready"

    async def scenario(p, windows, clock, issued):
        windows.sync_now(1.0)
        await wait_until_async(ready.exists, timeout=TIMEOUT_S, what="the client to run")
        clock.now += 10.0
        await wait_until_async(lambda: p.sessions[0]["outcome"] != "running", timeout=TIMEOUT_S,
                               what="the client to be killed")
        assert p.sessions[0]["outcome"] == "killed" and p.sessions[0]["returncode"] < 0
        assert p.status()["pid"] is None

    asyncio.run(with_participant(tmp_path, [stays(ready, ignore_term=True)], scenario, leave_grace_s=0.5))


def test_a_gateway_without_flower_is_refused_at_start_not_in_every_window(tmp_path, monkeypatch):
    """On Python 3.10 (Jetson) the fleet extra does not install: participate = true must say so once."""
    import importlib.util

    import pytest

    from appliance.config import parse_config
    from appliance.core import PluginEnv, PluginError
    from appliance.fleet import participant

    cfg = parse_config({"data_dir": str(tmp_path), "fleet": {"participate": True, "asset": "pump"},
                        "outputs": {"sync": {"enabled": True}}})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flwr" else real(name, *a))
    env = PluginEnv(config=cfg, data_dir=tmp_path, sensors=("a",), needs={"windows": None})
    with pytest.raises(PluginError, match=r"fleet.participate: Flower is not installed"):
        participant.build(cfg.fleet, env)
