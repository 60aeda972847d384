"""What the mitigation tests share: the pump's nodes, a rule set, alarm events and the audit log as rows."""

from __future__ import annotations

import sqlite3
import time

from appliance.actions.mitigation.config import (MitigationConfig, MitigationInterlock, MitigationRule,
                                                 MitigationTarget)
from appliance.actions.mitigation.mitigator import Mitigator
from appliance.connections.config import OpcuaEndpointConfig
from appliance.connections.opcua import PlcSession
from appliance.core import Alarm, AlarmEvent, AlarmState, Level
from tests.support.plc import PASSWORD, USER, PlcSim

SP = "ns=2;s=Pump1.SpeedSetpoint"
VALVE = "ns=2;s=Pump1.ValvePosition"
RUNNING = MitigationInterlock(name="running", node="ns=2;s=Pump1.Running", op="==", value=True)
ON_CLEAR = MitigationRule(name="until-clear", asset="pump1", node=SP, change_by=-20.0, revert_on_clear=True)


def event(kind="raised", level=Level.ANOMALY, top=("Accelerometer1RMS", "Current"), asset="pump1",
          state=AlarmState.UNACKED, alarm_id="alarm-1", active=True, historical=False) -> AlarmEvent:
    """An alarm event as the alarm book emits it (by default: alarm-1 on pump1 raised, vibration on top)."""
    alarm = Alarm(id=alarm_id, asset=asset, level=level, state=state, start=time.time(), peak_ratio=1.7,
                  top_sensors=top, active=active, historical=historical)
    return AlarmEvent(kind=kind, alarm=alarm, ts=time.time())


def make_cfg(*, armed=True, rule_kw=None, target_kw=None, rules=None, **kw) -> MitigationConfig:
    """Slow pump* down by 20 on vibration, within [40, 100] and 30 a step, only while it runs."""
    target = dict(node=SP, min=40.0, max=100.0, max_step=30.0, cooldown_s=0.0)
    target.update(target_kw or {})
    rule = dict(name="slow-down-on-vibration", asset="pump*", min_level="anomaly",
                sensors=("Accelerometer1RMS", "Accelerometer2RMS"), node=SP, change_by=-20.0)
    rule.update(rule_kw or {})
    base = dict(enabled=True, armed=armed, readback_delay_s=0.3, targets=(MitigationTarget(**target),),
                interlocks=(RUNNING,), rules=rules or (MitigationRule(**rule),))
    base.update(kw)
    return MitigationConfig(**base)


def writer_for(plc: PlcSim) -> PlcSession:
    """A real OPC-UA session to the simulator, as the mitigation output opens one."""
    return PlcSession(OpcuaEndpointConfig(endpoint=plc.endpoint, username=USER, password=PASSWORD))


def audit_rows(data_dir) -> list[dict]:
    """The mitigation audit log in ``data_dir``, oldest first."""
    db = sqlite3.connect(data_dir / "mitigation_audit.db")
    cols = ("proposal_id", "kind", "status", "actor", "node", "old_value", "new_value", "reason", "guard", "detail")
    rows = [dict(zip(cols, r)) for r in db.execute(f"SELECT {', '.join(cols)} FROM audit ORDER BY seq")]
    db.close()
    return rows


async def refused(m, ev, guard: str):
    """Feed ``ev`` to mitigator ``m``; it must be refused by ``guard`` alone. Returns that record."""
    recs = await m.on_alarm_event(ev)
    assert [(r.status, r.guard) for r in recs] == [("refused", guard)], recs
    return recs[0]


async def write_then_stop(data_dir, cfg, writer, clean: bool) -> None:
    """Mitigate alarm-1 once (100 -> 80); then stop cleanly, or just vanish as on a power loss.

    A pending revert timer dies with the event loop, so for a crash run this in its own
    ``asyncio.run`` and do not reuse the loop.
    """
    m = Mitigator(cfg, data_dir, writer)
    recs = await m.on_alarm_event(event())
    assert [(r.status, r.new_value) for r in recs] == [("written", 80.0)]
    if clean:
        await m.close()
