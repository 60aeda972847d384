"""Parameters and inputs are validated at the edge, with errors that say what is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.detector.autoencoder import WindowAutoencoder
from appliance.detector.train import TrainSettings, calibrate_threshold, read_csv_rows, train_bundle

X = np.random.default_rng(0).standard_normal((40, 6, 3)).astype(np.float32)


@pytest.mark.parametrize("kwargs,message", [
    (dict(hidden=()), "hidden"), (dict(hidden=(8, 0)), "hidden"), (dict(hidden="ab"), "hidden"),
    (dict(hidden=(8.5,)), "hidden"), (dict(alpha=-1.0), "alpha"), (dict(noise=float("nan")), "noise"),
    (dict(learning_rate_init=0), "learning_rate_init"), (dict(max_iter=0), "max_iter"),
    (dict(batch_size=2.5), "batch_size"), (dict(threshold_quantile=1.0), "threshold_quantile"),
    (dict(random_state="x"), "random_state"),
])
def test_autoencoder_rejects_bad_params(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WindowAutoencoder(**kwargs).fit(X)


@pytest.mark.parametrize("data,message", [
    (X[0], "3-D"), (X[:0], "no windows"), (X[:1], "at least 2"),
    (np.where(np.arange(3) == 1, np.nan, X), "NaN"), (np.full((3, 2, 2), "a"), "numeric"),
])
def test_autoencoder_rejects_bad_data(data, message):
    with pytest.raises(ValueError, match=message):
        WindowAutoencoder(hidden=(4,), max_iter=5).fit(data)


def test_autoencoder_needs_fit_and_matching_shape():
    ae = WindowAutoencoder(hidden=(4,), max_iter=5)
    with pytest.raises(ValueError, match="not fitted"):
        ae.errors(X)
    ae.fit(X)
    with pytest.raises(ValueError, match="expected 6"):
        ae.errors(X[:, :5])
    with pytest.raises(ValueError, match="expected 3"):
        ae.errors(X[:, :, :2])
    assert ae.decision_function(X).shape == (40,) and set(ae.predict(X)) <= {-1, 1}


ROWS = np.random.default_rng(1).standard_normal((300, 2))


@pytest.mark.parametrize("kwargs,message", [
    (dict(window=1), "window"), (dict(window=4.0), "window"), (dict(window=True), "window"),
    (dict(window=np.int64(8)), None), (dict(stride=0), "stride"),
    (dict(train_stride=-1), "train_stride"), (dict(period_s=0.0), "period_s"),
    (dict(period_s=float("inf")), "period_s"), (dict(holdout=1.0), "holdout"), (dict(holdout=0), "holdout"),
    (dict(hidden=()), "hidden"), (dict(hidden=(8, 0)), "hidden"), (dict(hidden=(8.5,)), "hidden"),
    (dict(threshold_method="max"), "threshold_method"), (dict(int8_exclude="dense0"), "int8_exclude"),
    (dict(seed=-1), "seed"), (dict(risk=float("nan")), "risk"), (dict(trend_limit=0), "trend_limit"),
    (dict(period_s=2.0, staleness_s=1.0), "staleness_s"), (dict(windw=8), "windw"),
])
def test_train_settings_are_validated_when_built(kwargs, message):
    if message is None:
        assert TrainSettings(**kwargs).window == 8  # numpy ints are ints
        return
    with pytest.raises(ValueError, match=message):
        TrainSettings(**kwargs)


def test_slow_processes_get_the_wider_next_block_bound_unless_told_otherwise():
    # Averaged scores (slow processes) take 0.99: a short record understates how far the next
    # goes; at 1 s the bound stays at 0.95, where SKAB was measured; either can be given.
    assert TrainSettings(period_s=180).horizon > 1
    assert TrainSettings(period_s=180).block_confidence == 0.99
    assert TrainSettings(period_s=180, horizon=1).block_confidence == 0.95
    assert TrainSettings().block_confidence == 0.95
    assert TrainSettings(period_s=180, block_confidence=0.9).block_confidence == 0.9
    with pytest.raises(ValueError, match="block_confidence"):
        TrainSettings(period_s=180, block_confidence=0.3)


def test_train_settings_are_frozen():
    settings = TrainSettings()
    with pytest.raises(ValueError):
        settings.window = 2


@pytest.mark.parametrize("kwargs,message", [
    (dict(settings=TrainSettings(window=200, max_iter=5)), "windows; need >="),
    (dict(ts=np.arange(5.0)), "ts has shape"),
    (dict(ts=np.full(300, np.nan)), "ts contains NaN"),
    (dict(settings={"window": 8}), "TrainSettings"),
])
def test_train_bundle_rejects_bad_data_and_settings(tmp_path, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        train_bundle(ROWS, ["a", "b"], tmp_path / "b", **{"settings": TrainSettings(window=8, max_iter=5), **kwargs})
    assert not (tmp_path / "b").exists()


def test_train_bundle_rejects_bad_rows(tmp_path):
    bad = ROWS.copy()
    bad[10, 1] = np.inf
    settings = TrainSettings(window=8)
    with pytest.raises(ValueError, match=r"NaN or infinite values in sensors \['b'\]"):
        train_bundle(bad, ["a", "b"], tmp_path / "b", settings)
    with pytest.raises(ValueError, match="rows must be"):
        train_bundle(ROWS, ["a"], tmp_path / "b", settings)
    with pytest.raises(ValueError, match="unique"):
        train_bundle(ROWS, ["a", "a"], tmp_path / "b", settings)


def test_calibrate_threshold_validation():
    with pytest.raises(ValueError, match="finite"):
        calibrate_threshold(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="risk"):
        calibrate_threshold(np.ones(5), risk=0)
    with pytest.raises(ValueError, match="all zero"):
        calibrate_threshold(np.zeros(50))


def test_pot_threshold_extrapolates_beyond_sample_quantile():
    e = np.random.default_rng(3).exponential(1.0, 20000)
    t, info = calibrate_threshold(e, "pot", risk=1e-4)
    assert info["method"] == "pot" and info["n_peaks"] >= 20
    # Exponential tail: the 1e-4 level is ln(1e4) = 9.21.
    assert 8.0 < t < 10.5


SKAB = """datetime;Accelerometer1RMS;Current;Pressure;anomaly;changepoint
2020-03-09 10:14:33;0.0265;1.33;0.054;0.0;0.0
2020-03-09 10:14:34;0.0261;1.35;0.382;0.0;0.0
2020-03-09 10:14:35;0.0270;1.31;0.250;1.0;1.0
"""


def test_read_skab_csv(tmp_path):
    p = tmp_path / "0.csv"
    p.write_text(SKAB)
    sensors, ts, rows = read_csv_rows(p)
    assert sensors == ["Accelerometer1RMS", "Current", "Pressure"]
    assert rows.shape == (3, 3) and rows[1, 1] == 1.35
    assert ts[0] == 1583748873.0 and np.all(np.diff(ts) == 1.0)  # naive datetimes are UTC


def test_read_comma_csv_with_ts_and_reorders_second_file(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("ts,x,y\n100.0,1,2\n101.0,3,4\n")
    b = tmp_path / "b.csv"
    b.write_text("y,ts,x\n6,200.5,5\n")
    sensors, ts, rows = read_csv_rows([a, b])
    assert sensors == ["x", "y"] and ts.tolist() == [100.0, 101.0, 200.5]
    assert rows.tolist() == [[1, 2], [3, 4], [5, 6]]


@pytest.mark.parametrize("text,message", [
    ("", "empty file"), ("x,y\n1,2\n", "no time column"), ("ts,x\n", "no data rows"),
    ("ts,x\n1,abc\n", "column 'x' is not a number"), ("ts,x\n1,2,3\n", "3 fields"),
    ("ts,x\nyesterday,2\n", "cannot parse time"), ("ts,anomaly\n1,0\n", "no sensor columns"),
])
def test_bad_csv_errors(tmp_path, text, message):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_csv_rows(p)


def test_csv_files_with_different_sensors(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("ts,x\n1,2\n")
    b = tmp_path / "b.csv"
    b.write_text("ts,z\n1,2\n")
    with pytest.raises(ValueError, match="differ"):
        read_csv_rows([a, b])
    with pytest.raises(ValueError, match="cannot read"):
        read_csv_rows(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="no CSV"):
        read_csv_rows([])
