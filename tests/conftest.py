import os
from pathlib import Path

import pytest

from tests.support.mosquitto import mosquitto  # noqa: F401  (fixture)

SKAB = Path(os.environ.get("SKAB_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "skab"))


@pytest.fixture(scope="session")
def skab_dir():
    if not (SKAB / "anomaly-free" / "anomaly-free.csv").exists():
        pytest.fail(f"SKAB data set not found at {SKAB} (set SKAB_DIR)")
    return SKAB


@pytest.fixture(scope="session")
def skab_bundle(tmp_path_factory, skab_dir):
    """One INT8 bundle trained on SKAB's anomaly-free run, shared by the integration tests."""
    from appliance.detector.train import read_csv_rows, train_bundle

    cached = os.environ.get("APPLIANCE_TEST_BUNDLE")  # a developer's shortcut; CI trains
    if cached:
        return Path(cached)
    sensors, ts, rows = read_csv_rows([skab_dir / "anomaly-free" / "anomaly-free.csv"])
    out = tmp_path_factory.mktemp("bundle") / "skab"
    return train_bundle(rows, sensors, out, ts=ts)
