"""A gateway's fleet data from its own store, and the appliance wiring of its fleet client (no flwr needed).

The rows a fleet client trains on come the way ``appliance train --from-store``
gets them, with every live alarm (and a margin around it) left out and the runs
cut there; the appliance adds its fleet participant on the sync's connectivity
windows only when the sync is there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.config import ConfigError
from appliance.core import Alarm, AlarmState, Level, PluginError
from appliance.fleet.data import StoreSource
from appliance.fleet.model import ModelSpec, run_windows
from tests.support.detector import SENSORS, normal_rows, record_rows

ASSET = "pump-f"
T0 = 1_700_000_000.0


def record(db: Path, rows: np.ndarray, alarms=(), asset: str = ASSET) -> Path:
    return record_rows(db, rows, asset, T0, alarms)


def alarm(alarm_id: str, start: float, end: float | None, historical: bool = False) -> Alarm:
    return Alarm(id=alarm_id, asset=ASSET, level=Level.ANOMALY, state=AlarmState.UNACKED, start=start,
                 peak_ratio=2.0, top_sensors=("current",), active=end is None, end=end, historical=historical)


def test_rows_around_alarms_are_left_out_and_no_window_spans_the_hole(tmp_path):
    rows = normal_rows(900, 5)
    db = record(tmp_path / "store.db", rows, [alarm("closed", T0 + 300, T0 + 340), alarm("open", T0 + 800, None),
                                              alarm("replayed", T0 + 100, T0 + 120, historical=True)])
    source = StoreSource(db, ASSET, recent_s=10_000, margin_s=20)
    grid, info = source.normal_grid(SENSORS, 1.0)
    assert info["alarms_left_out"] == 2 and info["open_alarm"] is True
    ts = grid.ts - T0
    # Live alarms and their margins are gone; the open alarm takes everything from 20 s before its start.
    assert not ((ts >= 280) & (ts <= 360)).any() and ts.max() < 780
    # A replayed (historical) alarm is no fault of this gateway's operation: its rows stay.
    assert ((ts >= 100) & (ts <= 120)).sum() == 21
    assert info["rows"] - info["normal_rows"] == pytest.approx(81 + (info["rows"] - 780), abs=3)
    # Runs stop at the hole: every run is consecutive seconds, and none crosses 280..360.
    for a, b in grid.runs:
        assert np.allclose(np.diff(grid.ts[a:b]), 1.0)
        assert not (ts[a] < 280 and ts[b - 1] > 360)
    # The recorded values are what the store holds, on the grid.
    i = int(np.searchsorted(ts, 50.0))
    np.testing.assert_allclose(grid.values[i], rows[50], rtol=1e-6)
    # And the fleet model's windows come out of these runs.
    spec = ModelSpec(sensors=tuple(SENSORS), window=16, stride=1, period_s=1.0, center=(0.0,) * 4,
                     scale=(1.0,) * 4, level_free=(), hidden=(8, 2))
    X_train, X_held = run_windows(spec, grid.values, grid.runs, holdout=0.2)
    assert X_train.shape[1:] == (16, 4) and len(X_train) + len(X_held) < len(grid)


def test_recent_span_counts_back_from_the_newest_reading(tmp_path):
    db = record(tmp_path / "store.db", normal_rows(600, 6))
    grid, info = StoreSource(db, ASSET, recent_s=199.0).normal_grid(SENSORS, 1.0)
    assert 195 <= len(grid) <= 200 and info["alarms_left_out"] == 0


def test_nothing_recorded_is_a_clear_error(tmp_path):
    from appliance.commission import CommissionError

    with pytest.raises(CommissionError, match="no readings of asset 'nope'"):
        StoreSource(record(tmp_path / "store.db", normal_rows(50, 1)), "nope", recent_s=100).check()
    with pytest.raises(CommissionError, match="no readings"):
        StoreSource(tmp_path / "missing.db", ASSET, recent_s=100).check()


def appliance_config(tmp_path, **fleet):
    from appliance.config import parse_config

    return parse_config({"data_dir": str(tmp_path / "data"), "site": "hall-3", "log_level": "WARNING",
                         "web": {"enabled": False}, "inputs": {"mqtt": {"enabled": False}},
                         "detector": {"bundle": str(fleet.pop("bundle"))},
                         "outputs": {"mqtt_alarm": {"enabled": False}, "history": {"enabled": False},
                                     "sync": {"enabled": fleet.pop("sync")}},
                         "fleet": fleet}, "test")


def test_the_appliance_runs_its_fleet_client_on_the_sync_windows(tmp_path, release_bundles):
    import importlib.util

    from appliance.runtime import build

    if importlib.util.find_spec("flwr") is None:  # Python 3.10: the fleet extra does not install
        pytest.skip("participate = true is refused without Flower (test_fleet_participant checks that)")

    cfg = appliance_config(tmp_path, bundle=release_bundles[0], sync=True, participate=True, asset=ASSET,
                           server_address="10.0.0.5:9092")
    app = build(cfg)
    fleet, sync = app.output("fleet"), app.output("sync")
    assert fleet is not None and fleet.windows is sync.windows
    argv = fleet.command(1234.0)
    assert argv[argv.index("--from-store") + 1] == ASSET and argv[argv.index("--name") + 1] == "hall-3"
    assert argv[argv.index("--store") + 1] == str(cfg.path(cfg.store.path))
    assert argv[argv.index("--max-wait") + 1] == "1234.0" and argv[argv.index("--server") + 1] == "10.0.0.5:9092"
    assert fleet.status()["state"] == "waiting"
    # Without participate nothing of it is there; without the sync's windows it is refused, by the
    # config check already and by the registry for a config built by hand.
    assert build(appliance_config(tmp_path, bundle=release_bundles[0], sync=True)).output("fleet") is None
    with pytest.raises(ConfigError, match="fleet.participate: needs \\[outputs.sync\\] enabled"):
        appliance_config(tmp_path, bundle=release_bundles[0], sync=False, participate=True, asset=ASSET)
    unchecked = cfg.model_copy(update={"outputs": cfg.outputs.model_copy(
        update={"sync": cfg.outputs.sync.model_copy(update={"enabled": False})})})
    with pytest.raises(PluginError, match="\\[fleet\\] participate = true needs \\[outputs.sync\\] enabled"):
        build(unchecked)


def test_participate_needs_an_asset(tmp_path):
    with pytest.raises(ConfigError, match="participate = true needs asset"):
        appliance_config(tmp_path, bundle="x", sync=True, participate=True)
