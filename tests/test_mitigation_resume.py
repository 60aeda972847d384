"""What mitigation owes (reverts) or awaits (approvals) is taken up at the next start, still guarded:
:meth:`Mitigator.resume` over a fake PLC, after a clean stop or a crash.

Against the real PLC simulator and through the running appliance: test_mitigation_restart.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from appliance.actions.mitigation.config import MitigationRule
from appliance.actions.mitigation.mitigator import MitigationError, Mitigator
from tests.support.fakes import FakeWriter
from tests.support.mitigation import ON_CLEAR, RUNNING, SP, audit_rows, event, make_cfg, write_then_stop
from tests.support.wait import wait_until_async

TIMED = MitigationRule(name="timed", asset="pump1", node=SP, change_by=-20.0, revert_after_s=2.0)
DOWN_S = 0.5  # how long the appliance stays down between two runs, where a test needs that time to count


def fake_plc() -> FakeWriter:
    return FakeWriter({SP: 100.0, RUNNING.node: 1.0})


def cfg_with(rule, **kw):
    return make_cfg(rules=(rule,), readback_delay_s=0, **kw)


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
    time.sleep(DOWN_S)

    async def go():
        m = Mitigator(cfg, tmp_path, plc_)
        try:
            assert await m.resume(open_alarm_ids={"alarm-1"}) == []
            [waiting] = m.pending()
            # It waits for the time it had left: the downtime counted, and it has not expired.
            assert waiting["proposal_id"] == pid and 0 < waiting["expires_in_s"] <= 60 - DOWN_S
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
    import appliance.actions.mitigation.mitigator as mitigation

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
            await wait_until_async(lambda: late.values[SP] == 100.0, what="the retried revert")
            await wait_until_async(lambda: m.audit.reverts_owed() == [], what="the revert settled")
        finally:
            await m.close()
    asyncio.run(go())
    statuses = [(r["kind"], r["status"], r["guard"]) for r in audit_rows(tmp_path)]
    assert statuses == [("mitigate", "written", None), ("revert", "refused", "plc_read"),
                        ("revert", "refused", "plc_read"), ("revert", "written", None)]
    assert audit_rows(tmp_path)[-1]["reason"].endswith(
        "alarm ended while the appliance was down (retry 2, PLC was not readable)")
