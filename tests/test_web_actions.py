"""Mitigation approval through the dashboard API (the runtime's command path is faked)."""

from appliance.actions.mitigation import MitigationError
from appliance.store import Store
from web import create_app


class FakeAppliance:
    def __init__(self):
        self.calls = []

    def status(self):
        return {"mitigation": {"armed": True, "pending_approval": [{"id": "p1", "rule": "slow-down"}]}}

    def command(self, name, **kwargs):
        self.calls.append((name, kwargs))
        if kwargs.get("proposal_id") == "gone":
            raise MitigationError("no pending proposal 'gone' (unknown, decided or expired)")

        class Rec:
            def to_dict(self):
                return {"proposal_id": kwargs["proposal_id"], "status": "written"}
        return [Rec()]


def client(tmp_path):
    st = Store(tmp_path / "a.db")
    fake = FakeAppliance()
    return create_app(fake, st.path).test_client(), fake


def test_pending_and_approve(tmp_path):
    c, fake = client(tmp_path)
    assert c.get("/api/actions/pending").get_json()["pending"][0]["id"] == "p1"
    r = c.post("/api/actions/p1/approve", json={"user": "ana"})
    assert r.status_code == 200 and r.get_json()["events"][0]["status"] == "written"
    assert fake.calls == [("approve_action", {"proposal_id": "p1", "user": "ana"})]


def test_approve_refusals(tmp_path):
    c, _ = client(tmp_path)
    assert c.post("/api/actions/p1/approve", json={}).status_code == 400
    r = c.post("/api/actions/gone/reject", json={"user": "ana", "note": "not now"})
    assert r.status_code == 409 and "no pending proposal" in r.get_json()["error"]
