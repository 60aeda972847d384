"""What mitigation owes (reverts) or awaits (approvals) survives a stop, a crash or a power loss, still guarded."""

from __future__ import annotations

import asyncio
import time

import pytest

from appliance.actions.mitigation import MitigationError, Mitigator
from appliance.config import MitigationRule
from tests.support.plc import wait_for
from tests.test_mitigation_guards import (SP, RUNNING, FakeWriter, audit_rows, event, fresh, make_cfg,  # noqa: F401
                                          plc, writer_for)

TIMED = MitigationRule(name="timed", asset="pump1", node=SP, change_by=-20.0, revert_after_s=2.0)
ON_CLEAR = MitigationRule(name="until-clear", asset="pump1", node=SP, change_by=-20.0, revert_on_clear=True)


def fake_plc() -> FakeWriter:
    return FakeWriter({SP: 100.0, RUNNING.node: 1.0})


def cfg_with(rule, **kw):
    return make_cfg(rules=(rule,), readback_delay_s=0, **kw)


async def write_then_stop(tmp_path, cfg, writer, clean: bool) -> None:
    """Mitigate once; then stop cleanly, or just vanish as on a power loss (a pending revert timer
    dies with the event loop, so a crash must run in its own ``asyncio.run``)."""
    m = Mitigator(cfg, tmp_path, writer)
    recs = await m.on_alarm_event(event())
    assert [(r.status, r.new_value) for r in recs] == [("written", 80.0)]
    if clean:
        await m.close()
    # else: no close(); asyncio.run() tears the pending revert timer down with the loop.


def crash_after_writing(plc_sim, data_dir, cfg) -> None:
    """Against the real PLC: mitigate, then vanish without a clean stop."""
    async def go():
        w = writer_for(plc_sim)
        await write_then_stop(data_dir, cfg, w, clean=False)
        await w.close()
    asyncio.run(go())
    assert asyncio.run(plc_sim.read("SpeedSetpoint")) == 80.0


def test_timed_revert_survives_a_power_loss_against_the_real_plc(fresh, tmp_path):
    cfg = make_cfg(rules=(TIMED,))

    crash_after_writing(fresh, tmp_path, cfg)
    stopped = time.monotonic()

    async def restart():
        w = writer_for(fresh)
        m = Mitigator(cfg, tmp_path, w)
        try:
            assert await m.resume(set()) == []  # time is left on the timer: nothing decided yet
            assert m.status()["pending_reverts"] == 1
            await wait_for(lambda: len(m.audit_log(10)) == 2, timeout=10, what="the owed revert")
            assert await _setpoint_is(fresh, 100.0)
        finally:
            await m.close()
            await w.close()
    asyncio.run(restart())
    # The timer kept the time it had left instead of starting over.
    assert time.monotonic() - stopped < 2.0 + 5.0
    rows = audit_rows(tmp_path)
    assert [(r["kind"], r["status"]) for r in rows] == [("mitigate", "written"), ("revert", "written")]
    assert rows[1]["proposal_id"] == rows[0]["proposal_id"] and (rows[1]["old_value"], rows[1]["new_value"]) == \
        (80.0, 100.0)
    assert Mitigator(cfg, tmp_path, None).audit.reverts_owed() == []


async def _setpoint_is(plc, want: float) -> bool:
    return abs(float(await plc.read("SpeedSetpoint")) - want) < 1e-6


def test_clean_stop_defers_and_the_next_start_reverts_an_alarm_that_ended_meanwhile(tmp_path):
    cfg, plc_ = cfg_with(ON_CLEAR), fake_plc()

    async def go():
        await write_then_stop(tmp_path, cfg, plc_, clean=True)
        m = Mitigator(cfg, tmp_path, plc_)
        try:
            recs = await m.resume(open_alarm_ids=set())
            assert [(r.kind, r.status, r.new_value) for r in recs] == [("revert", "written", 100.0)]
            assert "alarm ended while the appliance was down" in recs[0].reason
        finally:
            await m.close()
    asyncio.run(go())
    assert plc_.writes == [(SP, 80.0), (SP, 100.0)]
    assert [r["status"] for r in audit_rows(tmp_path)] == ["written", "deferred", "written"]


def test_owed_revert_waits_for_its_alarm_when_it_is_still_open(tmp_path):
    cfg, plc_ = cfg_with(ON_CLEAR), fake_plc()

    async def go():
        await write_then_stop(tmp_path, cfg, plc_, clean=False)
        m = Mitigator(cfg, tmp_path, plc_)
        try:
            assert await m.resume(open_alarm_ids={"alarm-1"}) == []
            assert plc_.values[SP] == 80.0
            recs = await m.on_alarm_event(event(kind="cleared", active=False))
            assert [(r.kind, r.status) for r in recs] == [("revert", "written")]
        finally:
            await m.close()
    asyncio.run(go())
    assert plc_.values[SP] == 100.0


def test_an_operator_change_while_down_is_never_overwritten(tmp_path):
    cfg, plc_ = cfg_with(ON_CLEAR), fake_plc()

    async def go():
        await write_then_stop(tmp_path, cfg, plc_, clean=False)
        plc_.values[SP] = 90.0  # a technician set the speed by hand meanwhile
        m = Mitigator(cfg, tmp_path, plc_)
        try:
            recs = await m.resume(set())
            assert [(r.status, r.guard) for r in recs] == [("refused", "changed_externally")]
            assert m.audit.reverts_owed() == []  # decided: not retried at every start
        finally:
            await m.close()
    asyncio.run(go())
    assert plc_.values[SP] == 90.0 and plc_.writes == [(SP, 80.0)]


def test_disarmed_at_restart_nothing_is_written_and_it_says_so(tmp_path):
    plc_ = fake_plc()

    async def go():
        await write_then_stop(tmp_path, cfg_with(ON_CLEAR), plc_, clean=False)
        m = Mitigator(cfg_with(ON_CLEAR, armed=False), tmp_path, plc_)
        try:
            recs = await m.resume(set())
            assert [(r.status, r.guard) for r in recs] == [("refused", "armed")]
            assert "PLC left at 80" in recs[0].detail
        finally:
            await m.close()
    asyncio.run(go())
    assert plc_.writes == [(SP, 80.0)]


def test_a_removed_rule_still_gets_its_write_reverted(tmp_path):
    plc_ = fake_plc()

    asyncio.run(write_then_stop(tmp_path, cfg_with(TIMED), plc_, clean=False))  # its loop and timer die
    time.sleep(2.1)  # the whole revert_after_s passes while the appliance is down

    async def go():
        other = MitigationRule(name="something-else", asset="fan*", node=SP, set_value=50.0)
        m = Mitigator(cfg_with(other), tmp_path, plc_)
        try:
            recs = await m.resume(set())
            assert [(r.rule, r.status) for r in recs] == [("timed", "written")]
            assert "revert_after_s elapsed while the appliance was down" in recs[0].reason
        finally:
            await m.close()
    asyncio.run(go())
    assert plc_.values[SP] == 100.0


def test_the_running_appliance_takes_up_owed_reverts_at_start(fresh, tmp_path, mosquitto, skab_bundle):
    """Through `appliance run`'s own build: the alarm of an owed on-clear revert is not open any more."""
    from tests.support.appliance import RunningAppliance, make_config
    from tests.support.plc import PASSWORD, USER

    data_dir = tmp_path / "data"
    cfg = make_cfg(rules=(ON_CLEAR,))

    crash_after_writing(fresh, data_dir, cfg)

    mitigation = cfg.model_dump(mode="json")
    mitigation["plc"] = {"endpoint": fresh.endpoint, "username": USER, "password": PASSWORD}
    app_cfg = make_config(tmp_path, mosquitto.port, skab_bundle, mitigation=mitigation)
    with RunningAppliance(app_cfg) as ra:
        ra.wait_for(lambda: ra.app.mitigator.counters.get("reverted") == 1, timeout=30, what="the owed revert")
        assert ra.app.mitigator.audit.reverts_owed() == []
    assert asyncio.run(fresh.read("SpeedSetpoint")) == 100.0
    rows = audit_rows(data_dir)
    assert [(r["kind"], r["status"]) for r in rows] == [("mitigate", "written"), ("revert", "written")]
    assert "alarm ended while the appliance was down" in rows[1]["reason"]


def propose_then_crash(tmp_path, cfg, plc_) -> str:
    async def go():
        m = Mitigator(cfg, tmp_path, plc_)
        recs = await m.on_alarm_event(event())
        assert [r.status for r in recs] == ["pending_approval"]
        return recs[0].proposal_id
    return asyncio.run(go())


def test_a_proposal_waiting_for_approval_survives_a_restart(tmp_path):
    cfg, plc_ = cfg_with(ON_CLEAR, require_approval=True, approval_timeout_s=60.0), fake_plc()
    pid = propose_then_crash(tmp_path, cfg, plc_)

    async def go():
        m = Mitigator(cfg, tmp_path, plc_)
        try:
            assert await m.resume(open_alarm_ids={"alarm-1"}) == []
            [waiting] = m.pending()
            assert waiting["proposal_id"] == pid and 50 < waiting["expires_in_s"] <= 60
            rec = await m.approve(pid, "alice")
            assert (rec.status, rec.actor, rec.new_value) == ("written", "alice", 80.0)
            assert m.audit.held_for_approval() == []
        finally:
            await m.close()
    asyncio.run(go())
    assert plc_.writes == [(SP, 80.0)]


def test_waiting_proposals_whose_alarm_ended_or_time_ran_out_while_down_are_closed(tmp_path):
    plc_ = fake_plc()
    ended = propose_then_crash(tmp_path, cfg_with(ON_CLEAR, require_approval=True), plc_)
    short = cfg_with(ON_CLEAR, require_approval=True, approval_timeout_s=0.5)

    async def second_alarm():
        m = Mitigator(short, tmp_path, plc_)
        [rec] = await m.on_alarm_event(event(alarm_id="alarm-2"))
        return rec.proposal_id
    timed_out = asyncio.run(second_alarm())
    time.sleep(0.6)

    async def go():
        m = Mitigator(short, tmp_path, plc_)
        try:
            recs = await m.resume(open_alarm_ids={"alarm-2"})
            assert {(r.proposal_id, r.status) for r in recs} == {(ended, "withdrawn"), (timed_out, "expired")}
            assert m.pending() == [] and m.audit.held_for_approval() == []
            with pytest.raises(MitigationError, match="no pending proposal"):
                await m.approve(timed_out, "alice")
        finally:
            await m.close()
    asyncio.run(go())
    assert plc_.writes == []


def test_an_owed_revert_waits_for_a_plc_that_comes_back_later(tmp_path, monkeypatch):
    """After a power loss the gateway often starts before the PLC: the revert is retried, not dropped."""
    import appliance.actions.mitigation as mitigation

    monkeypatch.setattr(mitigation, "REVERT_RETRY_S", 0.2)

    class PlcStartingUp(FakeWriter):
        down = 2

        async def read(self, nodes):
            if self.down:
                self.down -= 1
                raise ConnectionError("connection refused")
            return await super().read(nodes)

    cfg, plc_ = cfg_with(ON_CLEAR), fake_plc()
    asyncio.run(write_then_stop(tmp_path, cfg, plc_, clean=False))
    late = PlcStartingUp(plc_.values)

    async def go():
        m = Mitigator(cfg, tmp_path, late)
        try:
            recs = await m.resume(set())
            assert [(r.status, r.guard) for r in recs] == [("refused", "plc_read")]
            assert len(m.audit.reverts_owed()) == 1  # still owed
            await wait_for(lambda: late.values[SP] == 100.0, timeout=5, what="the retried revert")
            await wait_for(lambda: m.audit.reverts_owed() == [], timeout=5, what="the revert settled")
        finally:
            await m.close()
    asyncio.run(go())
    statuses = [(r["kind"], r["status"], r["guard"]) for r in audit_rows(tmp_path)]
    assert statuses == [("mitigate", "written", None), ("revert", "refused", "plc_read"),
                        ("revert", "refused", "plc_read"), ("revert", "written", None)]
    assert audit_rows(tmp_path)[-1]["reason"].endswith(
        "alarm ended while the appliance was down (retry 2, PLC was not readable)")
