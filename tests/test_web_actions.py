"""Mitigation through the dashboard API: pending proposals, the audit log, approval by an engineer
(the command path is faked)."""

import pytest

from appliance.actions.alarms import AlarmCommandError
from appliance.actions.mitigation.config import MitigationConfig
from appliance.actions.mitigation.mitigator import MitigationError, Mitigator
from appliance.actions.mitigation.output import MitigationOutput
from appliance.core import MitigationAction
from appliance.store import Store
from web.app import create_app
from tests.support.web import signed_in

PENDING = {"proposal_id": "p1", "rule": "slow-down", "asset": "pump1", "alarm_id": "a1", "node": "ns=2;s=Speed",
           "reason": "alarm a1 on pump1", "expires_in_s": 840.0}


class FakeAppliance:
    """The runtime's status/command/output calls; ``mitigation`` is a real output over a real audit log."""

    def __init__(self, mitigation: MitigationOutput | None):
        self.mitigation = mitigation
        self.calls = []

    def status(self):
        outputs = {"store": {"queued": 0}}
        if self.mitigation is not None:
            outputs["mitigation"] = {"enabled": True, "armed": True, "pending_approval": [PENDING]}
        return {"inputs": {}, "outputs": outputs}

    def output(self, name):
        return self.mitigation if name == "mitigation" else None

    def command(self, name, **kwargs):
        self.calls.append((name, kwargs))
        if self.mitigation is None:
            raise AlarmCommandError("mitigation is not enabled")
        if kwargs.get("proposal_id") == "gone":
            raise MitigationError("no pending proposal 'gone' (unknown, decided or expired)")
        return [action(kwargs["proposal_id"], "written", kwargs["user"])]


def action(proposal_id: str, status: str, actor: str, ts: float = 1_700_000_000.0) -> MitigationAction:
    return MitigationAction(proposal_id=proposal_id, ts=ts, kind="mitigate", status=status, actor=actor,
                            rule="slow-down", asset="pump1", alarm_id="a1", node="ns=2;s=Speed", old_value=80.0,
                            new_value=70.0, reason="alarm a1 on pump1", armed=True)


@pytest.fixture
def mitigation(tmp_path):
    out = MitigationOutput(Mitigator(MitigationConfig(enabled=True, armed=True), tmp_path, None))
    yield out
    out.mitigator.audit.close()


def client(tmp_path, mitigation, accounts, role="engineer"):
    fake = FakeAppliance(mitigation)
    app = create_app(fake, Store(tmp_path / "a.db").path, accounts=accounts)
    return signed_in(app, "eve" if role == "engineer" else "tom", role), fake


def test_pending_and_approve(tmp_path, mitigation, accounts):
    c, fake = client(tmp_path, mitigation, accounts)
    assert c.get("/api/actions/pending").get_json() == {"enabled": True, "armed": True, "pending": [PENDING]}
    r = c.post("/api/actions/p1/approve", json={})
    assert r.status_code == 200
    (rec,) = r.get_json()["records"]
    # The approval is the signed-in engineer's: the audit log names them.
    assert (rec["proposal_id"], rec["status"], rec["actor"], rec["new_value"]) == ("p1", "written", "eve", 70.0)
    assert fake.calls == [("approve_action", {"proposal_id": "p1", "user": "eve", "role": "engineer"})]


def test_approve_refusals(tmp_path, mitigation, accounts):
    c, fake = client(tmp_path, mitigation, accounts)
    r = c.post("/api/actions/p1/approve", json={"user": "somebody-else"})
    assert r.status_code == 400 and r.get_json()["field"] == "user"
    r = c.post("/api/actions/gone/reject", json={"note": "not now"})
    assert r.status_code == 409 and "no pending proposal" in r.get_json()["error"]
    assert fake.calls == [("reject_action", {"proposal_id": "gone", "user": "eve", "note": "not now",
                                             "role": "engineer"})]


def test_a_technician_may_not_approve_nor_reject(tmp_path, mitigation, accounts):
    c, fake = client(tmp_path, mitigation, accounts, role="technician")
    assert c.get("/api/actions/pending").status_code == 200
    for verdict in ("approve", "reject"):
        r = c.post(f"/api/actions/p1/{verdict}", json={})
        assert r.status_code == 403 and "engineer" in r.get_json()["error"]
    assert fake.calls == []


def test_audit_log_latest_first(tmp_path, mitigation, accounts):
    for i, status in enumerate(("pending_approval", "approved", "written")):
        mitigation.mitigator.audit.append(action("p1", status, "ana", ts=1_700_000_000.0 + i).to_dict())
    c, _ = client(tmp_path, mitigation, accounts)
    body = c.get("/api/actions/log?limit=2").get_json()
    assert body["count"] == 2
    assert [(a["seq"], a["status"]) for a in body["actions"]] == [(3, "written"), (2, "approved")]
    assert body["actions"][0]["armed"] is True and body["actions"][0]["node"] == "ns=2;s=Speed"
    assert c.get("/api/actions/log?limit=0").get_json()["field"] == "limit"


def test_without_mitigation(tmp_path, accounts):
    c, _ = client(tmp_path, None, accounts)
    assert c.get("/api/actions/pending").get_json() == {"enabled": False, "armed": False, "pending": []}
    r = c.get("/api/actions/log")
    assert r.status_code == 404 and r.get_json()["error"] == "mitigation is not enabled"
    r = c.post("/api/actions/p1/approve", json={})
    assert r.status_code == 409 and r.get_json()["error"] == "mitigation is not enabled"
    # Arming from the dashboard needs a mitigator that offers it; this appliance does not.
    r = c.post("/api/mitigation/arm", json={"armed": True})
    assert r.status_code == 409 and r.get_json()["command"] == "set_armed"
