"""What mitigation owes survives a power loss against the real PLC, and the running appliance takes it up.

The decisions at restart (every case, over a fake PLC) are in test_mitigation_resume.py.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from appliance.actions.mitigation.config import MitigationRule
from appliance.actions.mitigation.mitigator import Mitigator
from tests.support.appliance import RunningAppliance, make_config
from tests.support.mitigation import ON_CLEAR, SP, audit_rows, make_cfg, write_then_stop, writer_for
from tests.support.plc import PASSWORD, USER
from tests.support.wait import wait_until_async

pytestmark = pytest.mark.integration  # the PLC simulator; a broker and a trained model for the appliance


def crash_after_writing(plc_sim, data_dir, cfg) -> None:
    """Against the real PLC: mitigate, then vanish without a clean stop."""
    async def go():
        w = writer_for(plc_sim)
        await write_then_stop(data_dir, cfg, w, clean=False)
        await w.close()
    asyncio.run(go())
    assert asyncio.run(plc_sim.read("SpeedSetpoint")) == 80.0


async def _setpoint_is(plc, want: float) -> bool:
    return abs(float(await plc.read("SpeedSetpoint")) - want) < 1e-6


def test_timed_revert_survives_a_power_loss_against_the_real_plc(fresh_plc, tmp_path):
    # Long enough that the restart below comes well before the timer runs out, even on a busy machine.
    revert_after_s, down_s = 8.0, 1.0
    cfg = make_cfg(rules=(MitigationRule(name="timed", asset="pump1", node=SP, change_by=-20.0,
                                         revert_after_s=revert_after_s),))

    crash_after_writing(fresh_plc, tmp_path, cfg)
    time.sleep(down_s)  # the appliance stays down a while: that time counts against the timer

    async def restart():
        w = writer_for(fresh_plc)
        m = Mitigator(cfg, tmp_path, w)
        try:
            assert await m.resume(set()) == []  # time is left on the timer: nothing decided yet
            assert m.status()["pending_reverts"] == 1
            await wait_until_async(lambda: len(m.audit_log(10)) == 2, timeout=60, what="the owed revert")
            assert await _setpoint_is(fresh_plc, 100.0)
        finally:
            await m.close()
            await w.close()
    asyncio.run(restart())
    rows = audit_rows(tmp_path)
    assert [(r["kind"], r["status"]) for r in rows] == [("mitigate", "written"), ("revert", "written")]
    assert rows[1]["proposal_id"] == rows[0]["proposal_id"] and (rows[1]["old_value"], rows[1]["new_value"]) == \
        (80.0, 100.0)
    # The timer kept the time it had left instead of starting over: the downtime was taken off.
    waited = re.search(r"revert_after_s=(\S+) elapsed", rows[1]["reason"])
    assert waited, rows[1]["reason"]
    assert 0 < float(waited.group(1)) <= revert_after_s - down_s
    assert Mitigator(cfg, tmp_path, None).audit.reverts_owed() == []


def test_the_running_appliance_takes_up_owed_reverts_at_start(fresh_plc, tmp_path, mosquitto, skab_bundle):
    """Through `appliance run`'s own build: the alarm of an owed on-clear revert is not open any more."""
    data_dir = tmp_path / "data"
    cfg = make_cfg(rules=(ON_CLEAR,))

    crash_after_writing(fresh_plc, data_dir, cfg)

    mitigation = cfg.model_dump(mode="json")
    mitigation["plc"] = {"endpoint": fresh_plc.endpoint, "username": USER, "password": PASSWORD}
    app_cfg = make_config(tmp_path, mosquitto.port, skab_bundle, outputs__mitigation=mitigation)
    with RunningAppliance(app_cfg) as ra:
        mitigator = ra.app.output("mitigation").mitigator
        ra.wait_until(lambda: mitigator.counters.get("reverted") == 1, what="the owed revert")
        # The counter moves before the audit record is appended (in a thread): wait for the record too.
        ra.wait_until(lambda: mitigator.audit.reverts_owed() == [], what="the revert recorded")
    assert asyncio.run(fresh_plc.read("SpeedSetpoint")) == 100.0
    rows = audit_rows(data_dir)
    assert [(r["kind"], r["status"]) for r in rows] == [("mitigate", "written"), ("revert", "written")]
    assert "alarm ended while the appliance was down" in rows[1]["reason"]
