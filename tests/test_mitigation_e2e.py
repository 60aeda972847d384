"""Closed loop against the real PLC simulator: injected bearing fault -> readings over OPC-UA ->
alarm (ISA-18.2 book) -> armed mitigation lowers the speed on the PLC -> vibration drops ->
the alarm returns to normal.

The anomaly score here is a plain vibration ratio so the test exercises the OPC-UA and
mitigation paths without a trained model; the detector has its own tests.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from asyncua import ua

from appliance.actions.alarms import AlarmBook
from appliance.actions.decide import Decider
from appliance.actions.mitigation.config import (MitigationConfig, MitigationInterlock, MitigationRule,
                                                 MitigationTarget)
from appliance.actions.mitigation.mitigator import Mitigator
from appliance.connections.config import OpcuaEndpointConfig
from appliance.connections.opcua import PlcSession
from appliance.connectors.opcua.config import OpcuaInputConfig, OpcuaNode
from appliance.connectors.opcua.connector import OpcuaConnector
from appliance.core import Quality, Score
from appliance.settings import BackoffConfig
from tests.support.fakes import MemorySink
from tests.support.plc import PASSWORD, SENSORS, USER, PlcSim
from tests.support.wait import wait_until_async

pytestmark = pytest.mark.integration  # the PLC simulator, end to end

SP = "ns=2;s=Pump1.SpeedSetpoint"
VIBRATION_LIMIT = 0.30  # Accelerometer1RMS at rated speed is ~0.21 when healthy


def vibration(sink: MemorySink, since: float) -> float | None:
    vals = [r.value for r in sink.of("Accelerometer1RMS") if r.ts >= since and r.quality is Quality.GOOD]
    return sum(vals) / len(vals) if vals else None


def test_fault_alarm_mitigation_process_responds_alarm_clears(tmp_path):
    plc = PlcSim(tmp_path / "plc").start()
    sink = MemorySink()
    endpoint = OpcuaEndpointConfig(endpoint=plc.endpoint, username=USER, password=PASSWORD)
    conn_cfg = OpcuaInputConfig(
        enabled=True, sampling_interval_ms=100, publishing_interval_ms=100, watchdog_s=3.0,
        reconnect=BackoffConfig(initial_s=0.2, max_s=1.0),
        nodes=tuple(OpcuaNode(node=f"ns=2;s=Pump1.{s}", asset="pump1", sensor=s) for s in SENSORS))
    mit_cfg = MitigationConfig(
        enabled=True, armed=True, readback_delay_s=0.3,
        targets=(MitigationTarget(node=SP, min=50.0, max=100.0, max_step=40.0, cooldown_s=120.0),),
        interlocks=(MitigationInterlock(name="running", node="ns=2;s=Pump1.Running", value=True),),
        rules=(MitigationRule(name="bearing-slow-down", asset="pump1", sensors=("Accelerometer1RMS",),
                              node=SP, set_value=60.0),))
    book = AlarmBook(Decider(raise_k=2, raise_n=3, clear_n=3, clear_ratio=0.8, critical_ratio=2.0))
    kinds: list[str] = []
    records = []
    trace = {}

    async def run():
        conn = OpcuaConnector(conn_cfg, endpoint, base_dir=tmp_path)
        writer = PlcSession(endpoint)
        mitigator = Mitigator(mit_cfg, tmp_path, writer)
        await conn.start(sink)
        try:
            await wait_until_async(lambda: len(sink.of("Accelerometer1RMS")) > 10, what="baseline readings")
            trace["healthy"] = vibration(sink, time.time() - 1.0)
            assert trace["healthy"] < VIBRATION_LIMIT
            await plc.call("InjectFault", ua.Variant("bearing_wear", ua.VariantType.String),
                           ua.Variant(2.0, ua.VariantType.Double), ua.Variant("", ua.VariantType.String))
            # ~10 s on an idle machine; generous, as the loop's pace is the machine's.
            deadline = time.monotonic() + 120
            while "cleared" not in kinds:
                assert time.monotonic() < deadline, f"no clear; events so far {kinds}"
                await asyncio.sleep(0.5)
                now = time.time()
                v = vibration(sink, now - 1.0)
                if v is None:
                    continue
                score = Score("pump1", now, v, VIBRATION_LIMIT,
                              {"Accelerometer1RMS": 0.7, "Accelerometer2RMS": 0.2, "Current": 0.1})
                for ev in book.on_score(score):
                    kinds.append(ev.kind)
                    if ev.kind == "raised":
                        trace["at_alarm"] = v
                    records.extend(await mitigator.on_alarm_event(ev))
            trace["after"] = vibration(sink, time.time() - 1.0)
            trace["setpoint"] = await plc.read("SpeedSetpoint")
            trace["speed"] = await plc.read("Speed")
            trace["audit"] = mitigator.audit_log(10)
        finally:
            await conn.stop()
            await mitigator.close()
            await writer.close()
            plc.stop()

    asyncio.run(run())
    print(f"\nAccelerometer1RMS healthy {trace['healthy']:.3f}, at alarm {trace['at_alarm']:.3f}, "
          f"after mitigation {trace['after']:.3f}; events {kinds}")
    assert kinds[0] == "raised" and kinds[-1] == "cleared"
    written = [r for r in records if r.status == "written"]
    assert len(written) == 1 and (written[0].old_value, written[0].new_value) == (100.0, 60.0)
    assert trace["setpoint"] == 60.0 and abs(trace["speed"] - 60.0) < 1e-6
    # Vibration goes with speed squared: at 60 % it must be well under half of what raised the alarm.
    assert trace["at_alarm"] > VIBRATION_LIMIT
    assert trace["after"] < 0.5 * trace["at_alarm"] and trace["after"] < 0.8 * VIBRATION_LIMIT
    assert [(a["status"], a["new_value"]) for a in trace["audit"]] == [("written", 60.0)]
    assert book.current("pump1").active is False
