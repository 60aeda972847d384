"""OPC-UA input connector against the real PLC simulator (asyncua server in a subprocess).

Status-code mapping and config validation, which need no PLC, are in test_opcua_offline.py.
"""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from asyncua import ua

from appliance.connections.config import OpcuaEndpointConfig
from appliance.connectors.opcua.config import OpcuaInputConfig, OpcuaNode
from appliance.connectors.opcua.connector import OpcuaConnector
from appliance.core import Quality
from appliance.settings import BackoffConfig
from tests.support.fakes import MemorySink
from tests.support.plc import PASSWORD, SENSORS, USER, PlcSim
from tests.support.wait import wait_until_async

pytestmark = pytest.mark.integration  # the PLC simulator in a subprocess

def make_cfg(plc: PlcSim, **kw) -> tuple[OpcuaInputConfig, OpcuaEndpointConfig]:
    """The connector's section and its PLC connection, from one set of keys."""
    nodes = kw.pop("nodes", None) or tuple(
        OpcuaNode(node=f"ns=2;s=Pump1.{s}", asset="pump1", sensor=s) for s in SENSORS)
    base = dict(enabled=True, endpoint=plc.endpoint, username=USER, password=PASSWORD,
                sampling_interval_ms=100, publishing_interval_ms=100, watchdog_s=2.0,
                reconnect=BackoffConfig(initial_s=0.2, max_s=1.0), nodes=nodes)
    base.update(kw)
    endpoint = {k: base.pop(k) for k in list(base) if k in OpcuaEndpointConfig.model_fields}
    return OpcuaInputConfig(**base), OpcuaEndpointConfig(**endpoint)


def test_readings_mapped_with_quality_browse_paths_and_unknown_nodes(plc, tmp_path):
    nodes = tuple(OpcuaNode(node=f"ns=2;s=Pump1.{s}", asset="pump1", sensor=s) for s in SENSORS[:-1]) + (
        OpcuaNode(node="0:Objects/2:PumpLine/2:Pump1/2:Volume Flow RateRMS", asset="pump1", sensor="flow"),
        OpcuaNode(node="ns=2;s=Pump1.DoesNotExist", asset="pump1", sensor="ghost"),
        OpcuaNode(node="0:Objects/2:PumpLine/2:Nope", asset="pump1", sensor="ghost2"),
        OpcuaNode(node="ns=2;s=Pump1.ActiveFault", asset="pump1", sensor="fault_text"),
    )
    sink = MemorySink()

    async def run():
        conn = OpcuaConnector(*make_cfg(plc, nodes=nodes), base_dir=tmp_path)
        started = time.time()
        await conn.start(sink)
        try:
            await wait_until_async(lambda: len(sink.of("Current")) >= 5 and sink.of("flow"), what="readings")
            st = conn.status()
            assert st["connected"] and st["subscribed_nodes"] == 9
            assert set(st["unresolved_nodes"]) == {"ns=2;s=Pump1.DoesNotExist", "0:Objects/2:PumpLine/2:Nope"}
            r = sink.of("Current")[-1]
            assert r.asset == "pump1" and r.source == "opcua" and r.quality is Quality.GOOD
            assert started <= r.ts <= time.time() and math.isfinite(r.value)  # the PLC's time, in epoch seconds
            # The string variable is not a reading: it becomes a dead letter with the reason.
            assert any("non-numeric value of type str" in d.reason for d in sink.dead)

            await plc.call("SetSensorStatus", "Current", "BadSensorFailure")
            bad = await wait_until_async(lambda: [x for x in sink.of("Current") if x.quality is Quality.BAD],
                                         what="bad-quality reading")
            assert math.isnan(bad[-1].value)
            await plc.call("SetSensorStatus", "Pressure", "UncertainLastUsableValue")
            unc = await wait_until_async(lambda: [x for x in sink.of("Pressure") if x.quality is Quality.UNCERTAIN],
                                         what="uncertain reading")
            assert math.isfinite(unc[-1].value)
            await plc.call("SetSensorStatus", "Current", "Good")
            await plc.call("SetSensorStatus", "Pressure", "Good")
            n_bad = len(bad)
            await wait_until_async(lambda: sink.of("Current")[-1].quality is Quality.GOOD, what="good again")
            assert conn.status()["counters"]["bad_quality"] >= n_bad
        finally:
            await conn.stop()
        assert conn.status()["state"] == "stopped"
        assert await plc.session_count() == 0

    asyncio.run(run())


def test_deadband_filters_small_changes(plc, tmp_path):
    nodes = (OpcuaNode(node="ns=2;s=Pump1.Current", asset="pump1", sensor="Current"),
             OpcuaNode(node="ns=2;s=Pump1.Voltage", asset="pump1", sensor="Voltage", deadband=1e6))
    sink = MemorySink()

    async def run():
        conn = OpcuaConnector(*make_cfg(plc, nodes=nodes), base_dir=tmp_path)
        await conn.start(sink)
        try:
            await wait_until_async(lambda: len(sink.of("Current")) >= 15, what="15 current readings")
        finally:
            await conn.stop()

    asyncio.run(run())
    # The noisy voltage changes every scan but never by 1e6: only the initial value passes.
    assert len(sink.of("Voltage")) == 1
    assert len(sink.of("Current")) >= 15


def test_wrong_password_is_reported_and_retried_quietly(plc, tmp_path):
    async def run():
        conn = OpcuaConnector(*make_cfg(plc, password="wrong"), base_dir=tmp_path)
        await conn.start(MemorySink())
        try:
            await wait_until_async(lambda: conn.status()["counters"].get("connect_failures", 0) >= 2, what="retries")
            st = conn.status()
            assert not st["connected"] and "BadUserAccessDenied" in st["last_error"]
            assert await plc.session_count() == 0
        finally:
            await conn.stop()

    asyncio.run(run())


def test_self_healing_plc_restart_session_drop_and_frozen_data(tmp_path):
    """PLC killed and restarted, sessions dropped by the PLC, PLC values frozen: readings resume
    without restarting the connector, and the server never holds more than one session for it."""
    plc = PlcSim(tmp_path / "plc").start()
    sink = MemorySink()
    measured = {}

    async def run():
        conn = OpcuaConnector(*make_cfg(plc), base_dir=tmp_path)
        await conn.start(sink)
        try:
            await wait_until_async(lambda: sink.count() > 20, what="first readings")
            assert await plc.session_count() == 1

            # 1. Power loss and restart of the PLC.
            resume = []
            for _ in range(2):
                n0 = sink.count()
                t_kill = time.monotonic()
                await asyncio.to_thread(plc.restart, 0.5)
                t_up = time.monotonic()
                await wait_until_async(lambda: sink.count() > n0 + 8, what="readings after restart")
                resume.append((time.monotonic() - t_kill, time.monotonic() - t_up, conn.status()["last_resume_s"]))
                assert await plc.session_count() == 1
            measured["restart"] = resume

            # 2. The PLC forgets every session (BadSessionIdInvalid / BadSessionNotActivated on our requests).
            n0 = sink.count()
            rebuilds0 = conn.status()["counters"].get("rebuild_connection", 0)
            t0 = time.monotonic()
            plc.drop_sessions()
            await wait_until_async(lambda: conn.status()["counters"].get("rebuild_connection", 0) > rebuilds0,
                                   what="rebuild after session drop")
            await wait_until_async(lambda: sink.count() > n0 + 8, what="readings after session drop")
            measured["session_drop_s"] = time.monotonic() - t0
            assert await plc.session_count() == 1

            # 3. Values freeze while the transport stays up: only the data watchdog can see it.
            trips0 = conn.status()["counters"].get("watchdog_trips", 0)
            await plc.call("Freeze", ua.Variant(3.5, ua.VariantType.Double))
            await wait_until_async(lambda: conn.status()["counters"].get("watchdog_trips", 0) > trips0,
                                   what="watchdog trip")
            # The old session was closed before a new one is opened (none may be open during backoff).
            assert await plc.session_count() <= 1
            n0 = sink.count()
            await wait_until_async(lambda: sink.count() > n0 + 8, what="readings after freeze")
            assert await plc.session_count() == 1
            # A rebuilt subscription's initial values repeat what was delivered: dropped, not duplicated.
            assert conn.status()["counters"].get("duplicates_dropped", 0) > 0
            st = conn.status()
            assert st["connected"]
            assert st["counters"]["sessions_opened"] - st["counters"]["sessions_closed"] == 1
        finally:
            await conn.stop()
            plc.stop()

    asyncio.run(run())
    print("\nOPC-UA resume after PLC restart (since kill, since port up, connector's own measure): ",
          [tuple(round(x, 2) for x in r) for r in measured["restart"]],
          f"after session drop: {measured['session_drop_s']:.2f}s")
