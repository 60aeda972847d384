"""The live scoring path stands apart from training: it never loads the training or quantization stack.

A gateway that only scores must not pay for scikit-learn, the ONNX Runtime
quantization toolchain or the simulator (memory, start-up time, attack
surface), and a training-side change must not be able to break scoring.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from appliance.detector.autoencoder import WindowAutoencoder
from appliance.detector.train import TrainSettings, train_bundle

ROOT = Path(__file__).resolve().parents[1]
# Modules (and their submodules) the live path must not import.
TRAINING_SIDE = ("sklearn", "onnxruntime.quantization", "appliance.detector.train", "appliance.detector.calibration",
                 "appliance.detector.quantize", "appliance.detector.autoencoder", "appliance.eval", "firmware_sim")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    rng = np.random.default_rng(0)
    t = np.arange(1200)
    rows = np.stack([np.sin(t / 9.0), np.cos(t / 9.0) + 0.05 * rng.standard_normal(len(t)),
                     0.1 * rng.standard_normal(len(t))], axis=1)
    return train_bundle(rows, ["a", "b", "c"], tmp_path_factory.mktemp("live") / "bundle",
                        TrainSettings(window=8, hidden=(16, 4), max_iter=30, seed=2))


LIVE = textwrap.dedent("""
    import json, sys
    import appliance.runtime  # the running appliance's module, as `appliance run` imports it
    from appliance.actions.decide import Decider
    from appliance.core import Reading
    from appliance.detector.scorer import Detector
    from appliance.detector.windowing import WindowBuilder

    detector = Detector.load(sys.argv[1])
    builder = WindowBuilder(detector.sensors, detector.period_s, detector.window, detector.stride)
    decider = Decider(raise_k=3, raise_n=5, clear_n=5, clear_ratio=0.8, critical_ratio=2.0)
    scored = 0
    for t in range(40):
        for i, sensor in enumerate(detector.sensors):
            for window in builder.add(Reading("pump", sensor, 1000.0 + t, 0.1 * i)):
                decider.update(detector.score_one(window))
                scored += 1
    print(json.dumps({"scored": scored, "modules": sorted(sys.modules)}))
""")


def test_scoring_never_imports_training_quantization_or_the_simulator(bundle):
    # A fresh interpreter: in this one, training (the fixture) has imported everything already.
    done = subprocess.run([sys.executable, "-c", LIVE, str(bundle)], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["scored"] > 0, "the live path must really have scored windows"
    loaded = [m for m in report["modules"] if any(m == bad or m.startswith(bad + ".") for bad in TRAINING_SIDE)]
    assert loaded == []


@pytest.fixture
def blas_threads_seen(monkeypatch):
    """The BLAS/OpenMP thread counts in effect each time the autoencoder's MLP is fitted."""
    import sklearn.neural_network

    seen: list[set[int]] = []
    real_fit = sklearn.neural_network.MLPRegressor.fit

    def spy(self, *args, **kwargs):
        seen.append({pool["num_threads"] for pool in threadpool_info()})
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(sklearn.neural_network.MLPRegressor, "fit", spy)
    return seen


def test_training_runs_on_one_blas_thread_whatever_the_process_allows(tmp_path, blas_threads_seen):
    rows = np.random.default_rng(1).standard_normal((400, 2))
    # As many threads as a 2-core machine gives by default; no environment variable involved.
    with threadpool_limits(limits=2):
        before = [pool["num_threads"] for pool in threadpool_info()]
        train_bundle(rows, ["a", "b"], tmp_path / "b", TrainSettings(window=8, hidden=(8, 2), max_iter=5))
        WindowAutoencoder(hidden=(4,), max_iter=5).fit(rows.reshape(50, 8, 2))
        after = [pool["num_threads"] for pool in threadpool_info()]
    # Final model, out-of-fold models and the direct fit: every one pinned; the caller's limits come back.
    assert len(blas_threads_seen) >= 3 and all(s == {1} for s in blas_threads_seen)
    assert after == before
