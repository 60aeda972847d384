"""What the demo does for the dashboard: an engineer account with fresh credentials each run, and a store of
each run's own, so an earlier run's alarms never show as current (the whole demo runs in tests/test_demo.py)."""

from appliance.accounts import Accounts, default_path
from appliance.config import parse_config
from appliance.demo import RUNS_KEPT, _fresh_run, demo_account
from appliance.store import Store


def _cfg(tmp_path):
    return parse_config({"data_dir": str(tmp_path / "var"), "web": {"port": 0}}, "test")


def test_each_run_records_into_a_store_of_its_own(tmp_path):
    cfg = _cfg(tmp_path)
    first = _fresh_run(cfg, cfg, "20260101-000000-1")
    old = Store(first.path(first.store.path))
    old.start()
    old.close()
    second = _fresh_run(cfg, cfg, "20260101-000100-2")
    assert first.path(first.store.path) != second.path(second.store.path)
    assert not second.path(second.store.path).exists()  # nothing from the first run in it
    # The accounts file stays put (beside the configured store), so the dashboard's users carry over.
    assert default_path(first) == default_path(second) == default_path(cfg) == tmp_path / "var" / "accounts.db"
    for i in range(5):
        _fresh_run(cfg, cfg, f"20260101-0002{i:02d}-3")
    assert len(list((tmp_path / "var" / "demo-runs").iterdir())) == RUNS_KEPT


def test_the_demo_account_is_an_engineer_with_a_new_password_each_run(tmp_path):
    cfg = _cfg(tmp_path)
    name, first = demo_account(cfg)
    name2, second = demo_account(cfg)
    assert name == name2 == "demo" and first != second and len(second) >= 12
    accounts = Accounts(default_path(cfg))
    assert accounts.authenticate("demo", second).role == "engineer"
    assert [e["event"] for e in accounts.auth_log()][:3] == ["login", "password_changed", "role_changed"]
