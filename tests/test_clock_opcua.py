"""The PLC's own timestamps set the gateway's time while its clock is a day behind (issue 22,
item 8), against the real PLC simulator."""

from __future__ import annotations

import asyncio
import time

import pytest

from appliance.connections.config import OpcuaEndpointConfig
from appliance.connectors.opcua.config import OpcuaInputConfig, OpcuaNode
from appliance.connectors.opcua.connector import OpcuaConnector
from appliance.core.timebase import GatewayClock
from appliance.settings import BackoffConfig
from tests.support.fakes import MemorySink
from tests.support.plc import PASSWORD, SENSORS, USER
from tests.support.wait import wait_until_async

pytestmark = pytest.mark.integration  # the PLC simulator in a subprocess

DAY = 86400.0


def test_plc_source_timestamps_are_a_source_of_the_gateway_time(plc, tmp_path):
    cfg = OpcuaInputConfig(enabled=True, sampling_interval_ms=100, publishing_interval_ms=100, watchdog_s=2.0,
                           reconnect=BackoffConfig(initial_s=0.2, max_s=1.0),
                           nodes=tuple(OpcuaNode(node=f"ns=2;s=Pump1.{s}", asset="pump1", sensor=s)
                                       for s in SENSORS))
    endpoint = OpcuaEndpointConfig(endpoint=plc.endpoint, username=USER, password=PASSWORD)
    clock = GatewayClock(wall=lambda: time.time() - DAY, synchronised=lambda: False)
    sink = MemorySink()

    async def run():
        conn = OpcuaConnector(cfg, endpoint, base_dir=tmp_path, clock=clock)
        await conn.start(sink)
        try:
            await wait_until_async(lambda: len(sink.of("Current")) >= 5, what="readings")
        finally:
            await conn.stop()

    asyncio.run(run())
    st = clock.status()
    assert st["data_time"] and st["sources"] == 1  # the connector's name: one PLC, one clock
    assert st["offset_s"] == pytest.approx(DAY, abs=60)
    assert sink.of("Current")[-1].ts == pytest.approx(time.time(), abs=60)  # the PLC's time, kept
