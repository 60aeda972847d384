"""Commissioning: the running appliance records an asset's readings, then `appliance train --from-store`
trains a bundle on exactly that span, aligned as the live path aligns them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from appliance.cli import main
from appliance.commission import CommissionError, commission, recorded_rows
from appliance.core import Alarm, AlarmState, Level
from appliance.detector.bundle import load_bundle
from appliance.detector.train import TrainSettings, read_csv_rows, train_from_csv
from appliance.store import Store
from tests.support.appliance import RunningAppliance, make_config

pytestmark = pytest.mark.integration  # a real Mosquitto, the appliance recording, a model trained on SKAB

ASSET = "pump-c"
ROWS = 700


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, skab_dir, skab_bundle):
    """A real appliance behind a real broker records ROWS rows of SKAB's normal run, replayed over MQTT."""
    from appliance.broker import Mosquitto, free_port
    from firmware_sim.replay import replay_csv

    root = tmp_path_factory.mktemp("commission")
    csv = root / "normal.csv"
    lines = (skab_dir / "anomaly-free" / "anomaly-free.csv").read_text().splitlines()
    csv.write_text("\n".join(lines[:ROWS + 1]) + "\n")
    broker = Mosquitto(root / "broker", port=free_port()).start()
    try:
        cfg = make_config(root, broker.port, skab_bundle)
        with RunningAppliance(cfg) as ra:
            stats = replay_csv(csv, "127.0.0.1", broker.port, ASSET, "max")
            assert stats.complete
            ra.wait_until(lambda: ra.counter("readings") >= ROWS * 8, timeout=60, what="all readings stored")
            ra.app.store.flush()
    finally:
        broker.stop()
    (root / "appliance.toml").write_text(f'data_dir = "{root / "data"}"\n')
    return root, csv, cfg


def test_cli_trains_on_the_recorded_span_like_on_the_same_rows_from_csv(recorded, tmp_path, capsys):
    root, csv, _ = recorded
    out = tmp_path / "bundle"
    assert main(["train", "--from-store", ASSET, "--config", str(root / "appliance.toml"), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "bundle written" in said
    # The config names no model yet: the gateway's lifecycle would start on this one.
    assert "no model at" in said and "the appliance starts on this bundle" in said
    stored, from_csv = load_bundle(out), load_bundle(train_from_csv([csv], tmp_path / "csv"))
    assert stored.sensors == from_csv.sensors
    grid_rows = [json.loads((b.path / "bundle.json").read_text())["training"]["grid_rows"] for b in (stored, from_csv)]
    # Same 1 s grid (SKAB's 2 s gaps held over); the live builder may drop a row at either end not final yet.
    assert grid_rows[1] - 3 <= grid_rows[0] <= grid_rows[1]
    np.testing.assert_allclose(stored.scaler.center, from_csv.scaler.center, rtol=1e-3)


def test_last_seconds_are_counted_back_from_the_newest_reading(recorded):
    root, csv, cfg = recorded
    grid = recorded_rows(cfg.path(cfg.store.path), ASSET, last_s=199.0)
    ts, rows = grid.ts, grid.values
    _, csv_ts, csv_rows = read_csv_rows([csv])
    assert 195 <= len(rows) <= 200 and ts[-1] - ts[0] <= 199.0 and ts[-1] <= csv_ts[-1]
    # Grid rows are the recorded values, held as the window builder holds them.
    i = np.searchsorted(csv_ts, ts[0], side="right") - 1
    np.testing.assert_allclose(rows[0], csv_rows[i], rtol=1e-6)


def test_a_span_with_an_alarm_is_refused_unless_allowed(recorded, tmp_path):
    root, csv, cfg = recorded
    db = cfg.path(cfg.store.path)
    ts = recorded_rows(db, ASSET).ts
    store = Store(db)
    store.start()
    store.put_alarm(Alarm(id="a-during", asset=ASSET, level=Level.ANOMALY, state=AlarmState.UNACKED,
                          start=float(ts[300]), peak_ratio=2.0, top_sensors=("Current",), active=False,
                          end=float(ts[320])))
    store.flush()
    store.close()
    quick = TrainSettings(max_iter=20)
    with pytest.raises(CommissionError, match="in alarm during the span: a-during"):
        commission(db, ASSET, tmp_path / "b", quick)
    # A span that ends before the alarm is fine, and so is an explicit decision to train across it.
    assert load_bundle(commission(db, ASSET, tmp_path / "before", quick, until=float(ts[290])))
    assert load_bundle(commission(db, ASSET, tmp_path / "across", quick, allow_alarms=True))


@pytest.mark.parametrize("argv, message", [
    (["--from-store", "nope"], "no readings of asset 'nope'"),
    (["--from-store", ASSET, "--sensors", "Current", "Humidity"], "no readings of ['Humidity']"),
    (["--from-store", ASSET, "--since", "2031-01-01T00:00:00"], "no readings of asset"),
    (["--from-store", ASSET, "--since", "yesterday"], "--since: cannot parse time 'yesterday'"),
])
def test_bad_requests_get_a_clear_error_and_write_nothing(recorded, tmp_path, capsys, argv, message):
    root, _, _ = recorded
    out = tmp_path / "bundle"
    try:
        rc = main(["train", *argv, "--config", str(root / "appliance.toml"), "--out", str(out)])
    except SystemExit as e:
        rc, err = 2, str(e)
    else:
        err = capsys.readouterr().err
    assert rc == 2 and message in err and not out.exists()


def test_missing_store_is_named(tmp_path):
    with pytest.raises(CommissionError, match="no appliance store here"):
        recorded_rows(tmp_path / "nothing.db", ASSET)


def test_going_live_says_whether_the_running_gateway_takes_the_bundle_in_shadow_or_needs_a_restart(
        tmp_path, release_bundles):
    from appliance.commission import going_live
    from appliance.config import parse_config
    from tests.support.detector import edited_bundle

    cfg = parse_config({"data_dir": str(tmp_path), "detector": {"bundle": str(release_bundles[0])}})
    assert "runs in shadow beside it" in going_live(cfg, release_bundles[1])
    strided = edited_bundle(release_bundles[1], tmp_path / "strided", lambda meta: meta.update(stride=4))
    said = going_live(cfg, strided)
    assert "cannot be replaced without a restart: candidate stride 4 differs" in said, said
