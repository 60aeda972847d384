"""Guarded mitigation against the real PLC simulator: every guard refuses what it must, and the
append-only audit log records who, what, old, new, why, result and the refusing guard.

The guards that need no PLC, rule matching and the audit log itself are in test_mitigation_rules.py.
"""

from __future__ import annotations

import asyncio

import pytest

from appliance.actions.mitigation import build as build_mitigation
from appliance.actions.mitigation.config import MitigationInterlock, MitigationRule
from appliance.actions.mitigation.mitigator import Guard, MitigationError, Mitigator
from appliance.config import parse_config
from appliance.core import AlarmState, Level, PluginEnv
from tests.support.mitigation import RUNNING, SP, VALVE, audit_rows, event, make_cfg, refused, writer_for
from tests.support.plc import PASSWORD, USER
from tests.support.wait import wait_until_async

pytestmark = pytest.mark.integration  # a PLC simulator per module


def run_mitigator(plc, tmp_path, cfg, body):
    """``await body(mitigator)`` with a mitigator writing to ``plc``; closed afterwards."""
    async def go():
        w = writer_for(plc)
        m = Mitigator(cfg, tmp_path, w)
        try:
            return await body(m)
        finally:
            await m.close()
            await w.close()
    return asyncio.run(go())


# ----------------------------------------------------------------------------- happy paths


def test_advise_only_proposes_and_audits_but_never_writes(fresh_plc, tmp_path):
    async def body(m):
        recs = await m.on_alarm_event(event())
        assert [r.status for r in recs] == ["advised"]
        assert recs[0].old_value == 100.0 and recs[0].new_value == 80.0 and recs[0].guard is None
        assert "would pass every guard" in recs[0].detail
        await fresh_plc.call("Stop")
        await wait_until_async(lambda: _running_is(fresh_plc, False), what="pump stopped")
        recs2 = await m.on_alarm_event(event(kind="escalated", level=Level.CRITICAL))
        assert recs2[0].status == "advised" and recs2[0].guard is Guard.INTERLOCK
        assert "would be refused by interlock: running: ns=2;s=Pump1.Running == True is false" in recs2[0].detail
        await asyncio.sleep(0.5)
        assert await fresh_plc.read("SpeedSetpoint") == 100.0
        assert m.status()["armed"] is False and m.status()["counters"]["advised"] == 2

    run_mitigator(fresh_plc, tmp_path, make_cfg(armed=False), body)
    rows = audit_rows(tmp_path)
    assert [r["status"] for r in rows] == ["advised", "advised"]
    assert rows[1]["guard"] == "interlock" and "would be refused by interlock: running:" in rows[1]["detail"]


def test_armed_write_lands_is_verified_and_audited(fresh_plc, tmp_path):
    async def body(m):
        recs = await m.on_alarm_event(event())
        assert len(recs) == 1
        r = recs[0]
        assert (r.status, r.actor, r.node, r.old_value, r.new_value) == ("written", "appliance", SP, 100.0, 80.0)
        assert "read back 80" in r.detail
        assert await fresh_plc.read("SpeedSetpoint") == 80.0
        # The process obeys: the actual speed ramps to the new setpoint.
        await wait_until_async(lambda: _approx(fresh_plc, "Speed", 80.0), what="speed follows setpoint")
        return r

    r = run_mitigator(fresh_plc, tmp_path, make_cfg(), body)
    rows = audit_rows(tmp_path)
    assert len(rows) == 1
    row = rows[0]
    assert (row["status"], row["actor"], row["old_value"], row["new_value"], row["guard"]) == \
        ("written", "appliance", 100.0, 80.0, None)
    assert "alarm alarm-1 raised" in row["reason"] and "Accelerometer1RMS" in row["reason"]
    assert row["proposal_id"] == r.proposal_id


# ----------------------------------------------------------------------------- one test per guard


def test_guard_allow_list(fresh_plc, tmp_path):
    cfg = make_cfg(rule_kw=dict(node=VALVE, change_by=-10.0))

    async def body(m):
        rec = await refused(m, event(), "allow_list")
        assert "not an allowed mitigation target" in rec.detail
        assert await fresh_plc.read("ValvePosition") == 100.0

    run_mitigator(fresh_plc, tmp_path, cfg, body)
    assert audit_rows(tmp_path)[-1]["guard"] == "allow_list"


def test_guard_limits(fresh_plc, tmp_path):
    async def body(m):
        rec = await refused(m, event(), "limits")
        assert rec.new_value == 30.0 and "outside [40, 100]" in rec.detail
        assert await fresh_plc.read("SpeedSetpoint") == 100.0

    run_mitigator(fresh_plc, tmp_path, make_cfg(rule_kw=dict(change_by=None, set_value=30.0),
                                            target_kw=dict(max_step=None)), body)
    assert audit_rows(tmp_path)[-1]["guard"] == "limits"


def test_guard_max_step(fresh_plc, tmp_path):
    async def body(m):
        rec = await refused(m, event(), "max_step")
        assert (rec.old_value, rec.new_value) == (100.0, 65.0)
        assert await fresh_plc.read("SpeedSetpoint") == 100.0

    run_mitigator(fresh_plc, tmp_path, make_cfg(rule_kw=dict(change_by=-35.0)), body)
    assert audit_rows(tmp_path)[-1]["guard"] == "max_step"


def test_guard_cooldown(fresh_plc, tmp_path):
    async def body(m):
        first = await m.on_alarm_event(event())
        assert first[0].status == "written"
        rec = await refused(m, event(kind="escalated", level=Level.CRITICAL), "cooldown")
        assert "cooldown is 60s" in rec.detail
        assert await fresh_plc.read("SpeedSetpoint") == 80.0

    run_mitigator(fresh_plc, tmp_path, make_cfg(target_kw=dict(cooldown_s=60.0)), body)
    assert [r["status"] for r in audit_rows(tmp_path)] == ["written", "refused"]


def test_guard_max_rate(fresh_plc, tmp_path):
    async def body(m):
        assert (await m.on_alarm_event(event()))[0].status == "written"           # 100 -> 80
        rec = await refused(m, event(kind="escalated", level=Level.CRITICAL), "max_rate")
        assert "moved 20" in rec.detail and "exceeds 30/min" in rec.detail
        assert await fresh_plc.read("SpeedSetpoint") == 80.0

    run_mitigator(fresh_plc, tmp_path, make_cfg(target_kw=dict(max_rate_per_min=30.0)), body)


def test_guard_interlock_false(fresh_plc, tmp_path):
    async def body(m):
        await fresh_plc.call("Stop")
        await wait_until_async(lambda: _running_is(fresh_plc, False), what="pump stopped")
        rec = await refused(m, event(), Guard.INTERLOCK)
        assert rec.detail.startswith("running: ") and "Running == True is false" in rec.detail
        assert await fresh_plc.read("SpeedSetpoint") == 100.0

    run_mitigator(fresh_plc, tmp_path, make_cfg(), body)
    row = audit_rows(tmp_path)[-1]
    assert (row["guard"], row["detail"].split(": ")[0]) == ("interlock", "running")


def test_guard_interlock_data_quality(fresh_plc, tmp_path):
    """An interlock on a sensor refuses when the sensor's quality is not good, whatever its value."""
    vib_ok = MitigationInterlock(name="vibration-sensor", node="ns=2;s=Pump1.Accelerometer1RMS", op="<", value=5)

    async def body(m):
        await fresh_plc.call("SetSensorStatus", "Accelerometer1RMS", "BadSensorFailure")
        await wait_until_async(lambda: _bad(fresh_plc, "Accelerometer1RMS"), what="bad sensor")
        rec = await refused(m, event(), Guard.INTERLOCK)
        assert rec.detail.startswith("vibration-sensor: ") and "quality BAD" in rec.detail
        await fresh_plc.call("SetSensorStatus", "Accelerometer1RMS", "Good")
        await wait_until_async(lambda: _bad(fresh_plc, "Accelerometer1RMS", False), what="good sensor")
        assert (await m.on_alarm_event(event(alarm_id="alarm-2")))[0].status == "written"

    run_mitigator(fresh_plc, tmp_path, make_cfg(interlocks=(RUNNING, vib_ok)), body)


def test_guard_readback(fresh_plc, tmp_path):
    """The target allows 120 but the PLC clamps its setpoint to 100: the read-back catches it.

    The simulator declares 0..100 for the node, which would refuse to arm these limits: here it
    stands for a PLC whose scan clamps tighter than the range it declares (0..200)."""
    cfg = make_cfg(rule_kw=dict(change_by=None, set_value=120.0),
                   target_kw=dict(max=150.0, max_step=None, engineering_range=(0.0, 200.0)), readback_delay_s=0.5)

    async def body(m):
        async def wider(node):
            return (0.0, 200.0)
        m.writer.declared_range = wider
        await fresh_plc.write("SpeedSetpoint", 90.0)
        recs = await m.on_alarm_event(event())
        assert [(r.status, r.guard) for r in recs] == [("failed", "readback")]
        assert "read back 100" in recs[0].detail and "expected 120" in recs[0].detail

    run_mitigator(fresh_plc, tmp_path, cfg, body)


def test_guard_alarm_state_and_replays(fresh_plc, tmp_path):
    async def body(m):
        for st in (AlarmState.SHELVED, AlarmState.SUPPRESSED, AlarmState.OUT_OF_SERVICE):
            rec = await refused(m, event(state=st), "alarm_state")
            assert st.value in rec.detail
        # A replayed (historical) alarm never acts and is not even proposed.
        assert await m.on_alarm_event(event(historical=True)) == []
        assert await fresh_plc.read("SpeedSetpoint") == 100.0

    run_mitigator(fresh_plc, tmp_path, make_cfg(), body)


def test_guard_approval_by_named_technician(fresh_plc, tmp_path):
    async def body(m):
        recs = await m.on_alarm_event(event())
        assert [(r.status, r.guard) for r in recs] == [("pending_approval", "approval")]
        pid = recs[0].proposal_id
        assert [p["proposal_id"] for p in m.pending()] == [pid]
        await asyncio.sleep(0.4)
        assert await fresh_plc.read("SpeedSetpoint") == 100.0          # nothing written while pending
        with pytest.raises(MitigationError):
            await m.approve(pid, "  ")
        rec = await m.approve(pid, "ana")
        assert (rec.status, rec.actor, rec.new_value) == ("written", "ana", 80.0)
        assert await fresh_plc.read("SpeedSetpoint") == 80.0
        with pytest.raises(MitigationError, match="no pending proposal"):
            await m.approve(pid, "ana")
        # Rejected, and withdrawn when the alarm clears first.
        r2 = (await m.on_alarm_event(event(alarm_id="alarm-2", kind="escalated", level=Level.CRITICAL)))[0]
        assert (await m.reject(r2.proposal_id, "bob", "process engineer on site")).status == "rejected"
        r3 = (await m.on_alarm_event(event(alarm_id="alarm-3")))[0]
        cleared = await m.on_alarm_event(event(alarm_id="alarm-3", kind="cleared", active=False))
        assert [(c.proposal_id, c.status) for c in cleared] == [(r3.proposal_id, "withdrawn")]
        assert m.pending() == []

    run_mitigator(fresh_plc, tmp_path, make_cfg(require_approval=True), body)
    rows = audit_rows(tmp_path)
    assert [(r["status"], r["actor"]) for r in rows] == [
        ("pending_approval", "appliance"), ("approved", "ana"), ("written", "ana"),
        ("pending_approval", "appliance"), ("rejected", "bob"), ("pending_approval", "appliance"),
        ("withdrawn", "appliance")]


def test_guard_approval_expires(fresh_plc, tmp_path):
    async def body(m):
        pid = (await m.on_alarm_event(event()))[0].proposal_id
        await asyncio.sleep(0.3)
        with pytest.raises(MitigationError):
            await m.approve(pid, "ana")
        assert await fresh_plc.read("SpeedSetpoint") == 100.0

    run_mitigator(fresh_plc, tmp_path, make_cfg(require_approval=True, approval_timeout_s=0.2), body)
    assert [(r["status"], r["guard"]) for r in audit_rows(tmp_path)] == [
        ("pending_approval", "approval"), ("expired", "approval")]


# ----------------------------------------------------------------------------- reverts


def test_revert_after_timeout_and_on_clear(fresh_plc, tmp_path):
    cfg = make_cfg(rules=(
        MitigationRule(name="timed", asset="pump1", node=SP, change_by=-20.0, revert_after_s=0.8),))
    cfg2 = make_cfg(rules=(
        MitigationRule(name="until-clear", asset="pump1", node=SP, change_by=-20.0, revert_on_clear=True),))

    async def body1(m):
        assert (await m.on_alarm_event(event()))[0].status == "written"
        await wait_until_async(lambda: _approx(fresh_plc, "SpeedSetpoint", 100.0), what="automatic revert")
        await wait_until_async(lambda: any(r["kind"] == "revert" and r["status"] == "written" for r in m.audit_log(5)),
                               what="revert audited")

    async def body2(m):
        assert (await m.on_alarm_event(event(alarm_id="alarm-2")))[0].status == "written"
        assert await fresh_plc.read("SpeedSetpoint") == 80.0
        recs = await m.on_alarm_event(event(alarm_id="alarm-2", kind="cleared", active=False))
        assert [(r.kind, r.status, r.old_value, r.new_value) for r in recs] == [("revert", "written", 80.0, 100.0)]
        assert await fresh_plc.read("SpeedSetpoint") == 100.0

    run_mitigator(fresh_plc, tmp_path / "a", cfg, body1)
    run_mitigator(fresh_plc, tmp_path / "b", cfg2, body2)


def test_revert_never_overwrites_an_operator(fresh_plc, tmp_path):
    cfg = make_cfg(rules=(MitigationRule(name="until-clear", asset="pump1", node=SP, change_by=-20.0,
                                         revert_on_clear=True),))

    async def body(m):
        assert (await m.on_alarm_event(event()))[0].status == "written"
        await fresh_plc.write("SpeedSetpoint", 70.0)                  # the operator takes over
        recs = await m.on_alarm_event(event(kind="cleared", active=False))
        assert [(r.kind, r.status, r.guard) for r in recs] == [("revert", "refused", "changed_externally")]
        assert await fresh_plc.read("SpeedSetpoint") == 70.0

    run_mitigator(fresh_plc, tmp_path, cfg, body)


def test_plugin_factory_uses_the_shared_opcua_connection(fresh_plc, tmp_path):
    app = parse_config({"data_dir": str(tmp_path), "connections": {"opcua": {
        "endpoint": fresh_plc.endpoint, "username": USER, "password": PASSWORD}}})
    cfg = make_cfg(armed=False)

    async def go():
        output = build_mitigation(cfg, PluginEnv(config=app, data_dir=tmp_path, sensors=()))
        m = output.mitigator
        try:
            recs = await m.on_alarm_event(event())
            assert [(r.status, r.old_value, r.new_value) for r in recs] == [("advised", 100.0, 80.0)]
        finally:
            await m.close()          # also closes the writer's session
        assert await fresh_plc.session_count() == 0
    asyncio.run(go())


# ----------------------------------------------------------------------------- helpers


async def _running_is(plc, want: bool) -> bool:
    return bool(await plc.read("Running")) is want


async def _approx(plc, name: str, want: float) -> bool:
    return abs(float(await plc.read(name)) - want) < 1e-6


async def _bad(plc, name: str, bad: bool = True) -> bool:
    dv = await plc.read_dv(name)
    return (dv.StatusCode is not None and dv.StatusCode.is_bad()) is bad


# ----------------------------------------------------------------------------- the PLC's declared ranges


def test_limits_outside_the_range_the_plc_declares_refuse_to_arm(fresh_plc, tmp_path):
    """Issue 24 item 8: limits inside the configured engineering_range, outside the node's EURange (0..100)."""
    cfg = make_cfg(target_kw=dict(min=0.0, max=150.0, engineering_range=(0.0, 200.0)))

    async def body(m):
        assert await m.writer.declared_range(SP) == (0.0, 100.0)  # the simulator's EURange property
        assert await m.writer.declared_range(RUNNING.node) == (0.0, 1.0)  # no EURange: a Boolean's range
        why = await m.check_ranges()
        assert why == f"{SP}: limits [0, 150] are outside the range the PLC declares for it [0, 100]"
        assert m.armed is False and m.status()["arm_refused"] == why
        with pytest.raises(MitigationError, match="refused to arm: .*outside the range the PLC declares"):
            await m.set_armed(True, user="eve")
        recs = await m.on_alarm_event(event())
        assert [r.status for r in recs] == ["advised"]
        assert await fresh_plc.read("SpeedSetpoint") == 100.0

    run_mitigator(fresh_plc, tmp_path, cfg, body)
    rows = audit_rows(tmp_path)
    assert (rows[0]["kind"], rows[0]["status"]) == ("disarm", "disarmed")
    assert rows[0]["detail"].startswith("refused to arm: ")


def test_an_armed_write_checks_the_declared_range_first(fresh_plc, tmp_path):
    cfg = make_cfg(target_kw=dict(min=0.0, max=150.0, engineering_range=(0.0, 200.0)))

    async def body(m):  # no check at start: the first proposal does it, and is only advice
        recs = await m.on_alarm_event(event())
        assert [r.status for r in recs] == ["advised"] and m.armed is False
        assert await fresh_plc.read("SpeedSetpoint") == 100.0

    run_mitigator(fresh_plc, tmp_path, cfg, body)


def test_limits_inside_the_declared_range_arm(fresh_plc, tmp_path):
    async def body(m):
        assert await m.check_ranges() is None and m.armed is True and m.status()["arm_refused"] is None
        recs = await m.on_alarm_event(event())
        assert [r.status for r in recs] == ["written"]

    run_mitigator(fresh_plc, tmp_path, make_cfg(), body)
