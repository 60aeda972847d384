"""Fixtures every test module may ask for, and the process settings the whole suite runs under."""

import os
import sys
import warnings

if "numpy" in sys.modules:  # a pytest plugin got there first: the pin below is too late for this process
    warnings.warn("numpy was imported before tests/conftest.py; BLAS threads are pinned only in child processes")

# Before anything imports numpy (below, or any test module): OpenBLAS and OpenMP size their thread
# pools once, when loaded. One thread each, here and, through the environment, in every child the
# tests start (the appliance, the demo, training): on a loaded 2-core machine a pool per core in
# each of them oversubscribes the cores, and a CLI training test that passes in 20 s alone took over
# 600 s. The product also pins training with threadpoolctl; this is the belt to those braces.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

# The mitigation audit key lives outside any data folder (default /etc/edge-anomaly/audit.key):
# the suite's, here and in every child it starts, in a folder of its own, removed at exit.
if "EDGE_ANOMALY_AUDIT_KEY" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _audit_key_dir = tempfile.mkdtemp(prefix="edge-anomaly-audit-key-")
    atexit.register(shutil.rmtree, _audit_key_dir, True)
    os.environ["EDGE_ANOMALY_AUDIT_KEY"] = os.path.join(_audit_key_dir, "audit.key")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from appliance.eval.datasets import skab_dir as skab_data_dir  # noqa: E402
from appliance.store import Store  # noqa: E402
# Shared fixtures live in tests/support/; importing them here registers them for every module.
from tests.support.mosquitto import mosquitto  # noqa: E402, F401
from tests.support.plc import fresh_plc, plc  # noqa: E402, F401
from tests.support.victoria import victoria  # noqa: E402, F401
from tests.support.tuf_repo import release_bundles_fixture, tls_files_fixture, tuf_server_fixture  # noqa: E402, F401
from tests.support.web import accounts, book_appliance  # noqa: E402, F401

SKAB = skab_data_dir()  # the repository's data/skab (GPL-3.0 data), or $SKAB_DIR


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


@pytest.fixture
def store(tmp_path):
    """A started store in the test's directory, closed afterwards."""
    s = Store(tmp_path / "store.db")
    s.start()
    yield s
    s.close()
