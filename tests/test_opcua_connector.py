"""OPC-UA input connector against the real PLC simulator (asyncua server in a subprocess)."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest
from asyncua import ua

from appliance.config import BackoffConfig, ConfigError, OpcuaInputConfig, OpcuaNode, parse_config
from appliance.connectors.opcua import OpcuaConnector, quality_of
from appliance.core import Quality
from tests.support.plc import PASSWORD, SENSORS, USER, PlcSim, wait_for

class MemorySink:
    def __init__(self):
        self.lock = threading.Lock()
        self.readings = []
        self.dead = []
        self.batches = 0

    def submit(self, readings, dead_letters=(), on_stored=None):
        with self.lock:
            self.readings.extend(readings)
            self.dead.extend(dead_letters)
            self.batches += 1

    def of(self, sensor):
        with self.lock:
            return [r for r in self.readings if r.sensor == sensor]

    def count(self):
        with self.lock:
            return len(self.readings)


def make_cfg(plc: PlcSim, **kw) -> OpcuaInputConfig:
    nodes = kw.pop("nodes", None) or tuple(
        OpcuaNode(node=f"ns=2;s=Pump1.{s}", asset="pump1", sensor=s) for s in SENSORS)
    base = dict(enabled=True, endpoint=plc.endpoint, username=USER, password=PASSWORD,
                sampling_interval_ms=100, publishing_interval_ms=100, watchdog_s=2.0,
                reconnect=BackoffConfig(initial_s=0.2, max_s=1.0), nodes=nodes)
    base.update(kw)
    return OpcuaInputConfig(**base)


@pytest.fixture(scope="module")
def plc(tmp_path_factory):
    sim = PlcSim(tmp_path_factory.mktemp("plc")).start()
    yield sim
    sim.stop()


def test_quality_mapping():
    assert quality_of(None) is Quality.GOOD
    assert quality_of(ua.StatusCode(ua.StatusCodes.Good)) is Quality.GOOD
    assert quality_of(ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue)) is Quality.UNCERTAIN
    assert quality_of(ua.StatusCode(ua.StatusCodes.BadSensorFailure)) is Quality.BAD


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError) as e:
        parse_config({"inputs": {"opcua": {"nodes": [{"node": "Pump1.Current", "asset": "p", "sensor": "c"}]}}})
    assert "inputs.opcua.nodes.0.node" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config({"inputs": {"opcua": {"security_policy": "Basic256Sha256", "security_mode": "None"}}})
    assert "security_mode" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config({"inputs": {"opcua": {"nodes": [
            {"node": "ns=2;s=A", "asset": "p", "sensor": "c"}, {"node": "ns=2;s=B", "asset": "p", "sensor": "c"}]}}})
    assert "mapped twice" in str(e.value)


def test_readings_mapped_with_quality_browse_paths_and_unknown_nodes(plc, tmp_path):
    nodes = tuple(OpcuaNode(node=f"ns=2;s=Pump1.{s}", asset="pump1", sensor=s) for s in SENSORS[:-1]) + (
        OpcuaNode(node="0:Objects/2:PumpLine/2:Pump1/2:Volume Flow RateRMS", asset="pump1", sensor="flow"),
        OpcuaNode(node="ns=2;s=Pump1.DoesNotExist", asset="pump1", sensor="ghost"),
        OpcuaNode(node="0:Objects/2:PumpLine/2:Nope", asset="pump1", sensor="ghost2"),
        OpcuaNode(node="ns=2;s=Pump1.ActiveFault", asset="pump1", sensor="fault_text"),
    )
    sink = MemorySink()

    async def run():
        conn = OpcuaConnector(make_cfg(plc, nodes=nodes), base_dir=tmp_path)
        await conn.start(sink)
        try:
            await wait_for(lambda: len(sink.of("Current")) >= 5 and sink.of("flow"), what="readings")
            st = conn.status()
            assert st["connected"] and st["subscribed_nodes"] == 9
            assert set(st["unresolved_nodes"]) == {"ns=2;s=Pump1.DoesNotExist", "0:Objects/2:PumpLine/2:Nope"}
            r = sink.of("Current")[-1]
            assert r.asset == "pump1" and r.source == "opcua" and r.quality is Quality.GOOD
            assert abs(r.ts - time.time()) < 5 and math.isfinite(r.value)
            # The string variable is not a reading: it becomes a dead letter with the reason.
            assert any("non-numeric value of type str" in d.reason for d in sink.dead)

            await plc.call("SetSensorStatus", "Current", "BadSensorFailure")
            bad = await wait_for(lambda: [x for x in sink.of("Current") if x.quality is Quality.BAD],
                                 what="bad-quality reading")
            assert math.isnan(bad[-1].value)
            await plc.call("SetSensorStatus", "Pressure", "UncertainLastUsableValue")
            unc = await wait_for(lambda: [x for x in sink.of("Pressure") if x.quality is Quality.UNCERTAIN],
                                 what="uncertain reading")
            assert math.isfinite(unc[-1].value)
            await plc.call("SetSensorStatus", "Current", "Good")
            await plc.call("SetSensorStatus", "Pressure", "Good")
            n_bad = len(bad)
            await wait_for(lambda: sink.of("Current")[-1].quality is Quality.GOOD, what="good again")
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
        conn = OpcuaConnector(make_cfg(plc, nodes=nodes), base_dir=tmp_path)
        await conn.start(sink)
        try:
            await wait_for(lambda: len(sink.of("Current")) >= 15, what="15 current readings")
        finally:
            await conn.stop()

    asyncio.run(run())
    # The noisy voltage changes every scan but never by 1e6: only the initial value passes.
    assert len(sink.of("Voltage")) == 1
    assert len(sink.of("Current")) >= 15


def test_wrong_password_is_reported_and_retried_quietly(plc, tmp_path):
    async def run():
        conn = OpcuaConnector(make_cfg(plc, password="wrong"), base_dir=tmp_path)
        await conn.start(MemorySink())
        try:
            await wait_for(lambda: conn.status()["counters"].get("connect_failures", 0) >= 2, what="retries")
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
        conn = OpcuaConnector(make_cfg(plc), base_dir=tmp_path)
        await conn.start(sink)
        try:
            await wait_for(lambda: sink.count() > 20, what="first readings")
            assert await plc.session_count() == 1

            # 1. Power loss and restart of the PLC.
            resume = []
            for _ in range(2):
                n0 = sink.count()
                t_kill = time.monotonic()
                await asyncio.to_thread(plc.restart, 0.5)
                t_up = time.monotonic()
                await wait_for(lambda: sink.count() > n0 + 8, timeout=20, what="readings after restart")
                resume.append((time.monotonic() - t_kill, time.monotonic() - t_up, conn.status()["last_resume_s"]))
                assert await plc.session_count() == 1
            measured["restart"] = resume

            # 2. The PLC forgets every session (BadSessionIdInvalid / BadSessionNotActivated on our requests).
            n0 = sink.count()
            rebuilds0 = conn.status()["counters"].get("rebuild_connection", 0)
            t0 = time.monotonic()
            plc.drop_sessions()
            await wait_for(lambda: conn.status()["counters"].get("rebuild_connection", 0) > rebuilds0,
                           what="rebuild after session drop")
            await wait_for(lambda: sink.count() > n0 + 8, what="readings after session drop")
            measured["session_drop_s"] = time.monotonic() - t0
            assert await plc.session_count() == 1

            # 3. Values freeze while the transport stays up: only the data watchdog can see it.
            trips0 = conn.status()["counters"].get("watchdog_trips", 0)
            await plc.call("Freeze", ua.Variant(3.5, ua.VariantType.Double))
            await wait_for(lambda: conn.status()["counters"].get("watchdog_trips", 0) > trips0, timeout=10,
                           what="watchdog trip")
            # The old session was closed before a new one is opened (none may be open during backoff).
            assert await plc.session_count() <= 1
            n0 = sink.count()
            await wait_for(lambda: sink.count() > n0 + 8, timeout=15, what="readings after freeze")
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
