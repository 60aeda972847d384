"""An engineer arms and disarms mitigation at run time: audited in their name, not kept across a restart."""

import asyncio

from appliance.actions.mitigation.config import MitigationConfig
from appliance.actions.mitigation.mitigator import Mitigator
from appliance.actions.mitigation.output import MitigationOutput


def test_arming_at_run_time_is_audited_and_a_restart_returns_to_the_configured_state(tmp_path):
    out = MitigationOutput(Mitigator(MitigationConfig(enabled=True, armed=False), tmp_path, None))
    try:
        assert out.status()["armed"] is False
        (armed,) = asyncio.run(out.commands()["set_armed"](True, user="eve", note="commissioning done"))
        assert (armed.kind, armed.status, armed.actor, armed.detail) == ("arm", "armed", "eve", "commissioning done")
        assert out.status()["armed"] is True
        (disarmed,) = asyncio.run(out.commands()["set_armed"](False, user="ana"))
        assert (disarmed.kind, disarmed.status, disarmed.old_value, disarmed.new_value) == ("disarm", "disarmed",
                                                                                             1.0, 0.0)
        log = out.mitigator.audit.tail(10)
        assert [(r["kind"], r["actor"]) for r in log] == [("disarm", "ana"), ("arm", "eve")]
        assert out.mitigator.audit.verify() is None  # the hash chain holds with the new records
    finally:
        out.mitigator.audit.close()
    again = Mitigator(MitigationConfig(enabled=True, armed=False), tmp_path, None)
    try:
        assert again.armed is False and again.status()["armed"] is False
    finally:
        again.audit.close()
