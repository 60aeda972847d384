"""Verdicts feed training: false alarms are normal operation and kept; faults, maintenance and (for the fleet
client) episodes nobody judged are left out with a margin; commissioning refuses unjudged ones unless allowed.
Both say how many of each they used."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.cli import main
from appliance.commission import CommissionError, commission_with_labels
from appliance.core import Alarm, AlarmState, Level
from appliance.detector.bundle import load_bundle
from appliance.detector.train import TrainSettings
from appliance.fleet.data import StoreSource
from appliance.store import Store
from appliance.store.verdicts import AlarmVerdict
from tests.support.detector import SENSORS, normal_rows, record_rows

ASSET = "pump-t"
T0 = 1_700_000_000.0
# (id, start, end, verdict, cause): seconds from T0
EPISODES = (("flt", 200, 230, "fault", "bearing"), ("fls", 400, 430, "false_alarm", None),
            ("mnt", 600, 640, "maintenance", None), ("unj", 800, 820, None, None))


def recorded(tmp_path, episodes=EPISODES, n=1000):
    db = record_rows(tmp_path / "store.db", normal_rows(n, 7), ASSET, T0, [
        Alarm(id=i, asset=ASSET, level=Level.ANOMALY, state=AlarmState.NORMAL, start=T0 + a, end=T0 + b,
              active=False, peak_ratio=2.0, top_sensors=("Current",)) for i, a, b, _, _ in episodes])
    store = Store(db)
    store.start()
    for i, _, _, verdict, cause in episodes:
        if verdict:
            store.put_verdict(AlarmVerdict.new(i, ASSET, "tech", verdict, cause=cause, ts=T0 + 900))
    assert store.flush()
    store.close()
    return db


def kept(grid, a: float, b: float) -> int:
    ts = grid.ts - T0
    return int(((ts >= a) & (ts <= b)).sum())


def test_the_fleet_client_keeps_false_alarms_and_leaves_out_the_rest_saying_how_many(tmp_path):
    db = recorded(tmp_path)
    grid, info = StoreSource(db, ASSET, recent_s=10_000, margin_s=20).normal_grid(SENSORS, 1.0)
    assert {k: info[k] for k in ("false_alarms_kept", "faults_left_out", "maintenance_left_out",
                                 "unlabelled_left_out", "alarms_left_out")} == {
        "false_alarms_kept": 1, "faults_left_out": 1, "maintenance_left_out": 1, "unlabelled_left_out": 1,
        "alarms_left_out": 3}
    assert kept(grid, 400, 430) == 31                                   # the false alarm: normal operation
    for a, b in ((180, 250), (580, 660), (780, 840)):                   # the others, 20 s either side
        assert kept(grid, a, b) == 0
    assert info["normal_rows"] == info["rows"] - (71 + 81 + 61)


def test_commissioning_uses_the_verdicts_and_refuses_unjudged_episodes_unless_allowed(tmp_path):
    db = recorded(tmp_path)
    quick = TrainSettings(window=16, stride=2, hidden=(8, 2), max_iter=10, seed=1)
    with pytest.raises(CommissionError, match="in alarm during the span: unj \\(from 1700000800 to 1700000820\\); "
                                              "give each episode a verdict"):
        commission_with_labels(db, ASSET, tmp_path / "b", quick)
    out, use = commission_with_labels(db, ASSET, tmp_path / "b", quick, allow_alarms=True, margin_s=30)
    assert (use.false_alarm_kept, use.fault_left_out, use.maintenance_left_out, use.unlabelled_left_out) == (1, 1, 1, 1)
    assert use.line() == ("alarm episodes in the span: 1 false alarm(s) kept as normal operation; left out with 30 s "
                          "either side: 1 fault(s), 1 maintenance, 1 without a verdict")
    rows = load_bundle(out).meta["training"]["grid_rows"]
    assert rows == 1000 - (91 + 101 + 81)


def test_train_from_store_says_what_it_did_with_each_episode(tmp_path, capsys):
    db = recorded(tmp_path, EPISODES[:3])
    toml = tmp_path / "appliance.toml"
    toml.write_text(f'data_dir = "{tmp_path}"\n[store]\npath = "{db.name}"\n')
    assert main(["train", "--from-store", ASSET, "--config", str(toml), "--out", str(tmp_path / "b"),
                 "--window", "16", "--max-epochs", "10", "--settings", '{"hidden": [8, 2]}']) == 0
    said = capsys.readouterr().out
    assert "1 false alarm(s) kept as normal operation; left out with 60 s either side: 1 fault(s), " \
           "1 maintenance, 0 without a verdict" in said
    assert np.isfinite(load_bundle(tmp_path / "b").threshold("int8"))
