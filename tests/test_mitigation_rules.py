"""Mitigation without a PLC: which rule matches which alarm, the guards a fake PLC (or none) trips,
the audit log's tamper evidence and the config's validation.

The guards against the real PLC simulator are in test_mitigation_guards.py.
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from appliance.actions.mitigation.audit import AuditLog
from appliance.actions.mitigation.config import MitigationRule, MitigationTarget
from appliance.actions.mitigation.mitigator import Mitigator
from appliance.broker import free_port
from appliance.config import ConfigError, parse_config
from appliance.connections.config import OpcuaEndpointConfig
from appliance.connections.opcua import PlcSession
from appliance.core import Level, Quality
from tests.support.fakes import FakeWriter
from tests.support.mitigation import RUNNING, SP, VALVE, event, make_cfg, refused


def test_rule_matching_by_asset_level_and_top_sensors(tmp_path):
    rules = (
        MitigationRule(name="critical-any", asset="pump*", min_level="critical", node=SP, set_value=50.0),
        MitigationRule(name="vibration", asset="pump1", sensors=("Accelerometer1RMS",), top_n=1, node=SP,
                       change_by=-10.0),
        MitigationRule(name="valve", asset="pump1", sensors=("Pressure",), node=VALVE, change_by=-10.0),
    )
    cfg = make_cfg(rules=rules, targets=(MitigationTarget(node=SP, min=0, max=100, cooldown_s=0),
                                         MitigationTarget(node=VALVE, min=0, max=100, cooldown_s=0)),
                   readback_delay_s=0)

    async def go():
        w = FakeWriter({SP: 100.0, VALVE: 100.0, RUNNING.node: 1.0})
        m = Mitigator(cfg, tmp_path, w)
        try:
            # Accelerometer1RMS is only second: outside top_n=1 of "vibration"; Pressure matches "valve".
            recs = await m.on_alarm_event(event(top=("Current", "Accelerometer1RMS", "Pressure")))
            assert [r.rule for r in recs] == ["valve"]
            recs = await m.on_alarm_event(event(top=("Accelerometer1RMS",)))
            assert [(r.rule, r.new_value) for r in recs] == [("vibration", 90.0)]
            # Critical: the first rule for the node wins, the later one for the same node is not applied.
            recs = await m.on_alarm_event(event(kind="escalated", level=Level.CRITICAL, top=("Accelerometer1RMS",)))
            assert [(r.rule, r.new_value) for r in recs] == [("critical-any", 50.0)]
            assert await m.on_alarm_event(event(asset="fan1", level=Level.CRITICAL)) == []
            assert await m.on_alarm_event(event(kind="acknowledged")) == []
            assert w.writes == [(VALVE, 90.0), (SP, 90.0), (SP, 50.0)]
        finally:
            await m.close()

    asyncio.run(go())


def test_guard_quality_of_target(tmp_path):
    class BadTarget(FakeWriter):
        async def read(self, nodes):
            return [(v, Quality.UNCERTAIN if n == SP else q) for n, (v, q) in zip(nodes, await super().read(nodes))]

    async def go():
        w = BadTarget({SP: 100.0, RUNNING.node: 1.0})
        m = Mitigator(make_cfg(readback_delay_s=0), tmp_path, w)
        try:
            rec = await refused(m, event(), "quality")
            assert "quality UNCERTAIN" in rec.detail and w.writes == []
        finally:
            await m.close()
    asyncio.run(go())


def test_guard_plc_unreachable(tmp_path):
    dead = PlcSession(OpcuaEndpointConfig(endpoint=f"opc.tcp://127.0.0.1:{free_port()}/x", request_timeout_s=1.0))

    async def go():
        m = Mitigator(make_cfg(), tmp_path, dead)
        try:
            rec = await refused(m, event(), "plc_read")
            assert "PLC unreachable" in rec.detail
        finally:
            await m.close()
            await dead.close()
    asyncio.run(go())


def test_audit_log_is_append_only_and_tamper_evident(tmp_path):
    async def go():
        m = Mitigator(make_cfg(readback_delay_s=0), tmp_path, FakeWriter({SP: 100.0, RUNNING.node: 1.0}))
        await m.on_alarm_event(event())
        await m.on_alarm_event(event(alarm_id="alarm-2"))
        assert m.audit.verify() is None
        rows = m.audit_log(10)
        assert [r["seq"] for r in rows] == [2, 1] and rows[0]["old_value"] == 80.0
        await m.close()
    asyncio.run(go())

    db = sqlite3.connect(tmp_path / "mitigation_audit.db")
    for stmt in ("UPDATE audit SET new_value = 100 WHERE seq = 1", "DELETE FROM audit WHERE seq = 1"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(stmt)
    # Someone with file access drops the triggers and edits history: the hash chain shows where.
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("UPDATE audit SET new_value = 100 WHERE seq = 1")
    db.commit()
    db.close()
    log = AuditLog(tmp_path / "mitigation_audit.db")
    assert log.verify() == 1
    log.close()


def test_mitigation_config_validation():
    def parse(section):
        return parse_config({"outputs": {"mitigation": section}}).outputs.mitigation

    with pytest.raises(ConfigError, match="exactly one of set_value or change_by"):
        parse({"rules": [{"name": "r", "node": SP}]})
    with pytest.raises(ConfigError, match="min .* must be <= max"):
        parse({"targets": [{"node": SP, "min": 10, "max": 5}]})
    with pytest.raises(ConfigError, match="duplicate r"):
        parse({"rules": [{"name": "r", "node": SP, "set_value": 1}, {"name": "r", "node": SP, "set_value": 2}]})
    with pytest.raises(ConfigError, match="outputs.mitigation.targets.0.min: must be a finite number"):
        parse({"targets": [{"node": SP, "min": float("nan"), "max": 5}]})
    cfg = parse({"enabled": True, "rules": [
        {"name": "r", "node": SP, "change_by": -10, "interlocks": [
            {"name": "run", "node": "ns=2;s=Pump1.Running", "value": True}]}]})
    assert cfg.armed is False and cfg.rules[0].interlocks[0].value is True
