"""Small synthetic process data and windows the detector tests share, and the stand-in detectors' base."""

from __future__ import annotations

import json
import shutil

import numpy as np

from appliance.core import Score, Window

from rigs.pump_rows import SENSORS, normal_rows  # noqa: F401  (shared with benchmarks/fleet_poisoning.py)

WINDOW = 16
# Shadow bounds without the latency one: benchmarks judge scoring latency, and a loaded test
# machine must not turn a shadow verdict.
NO_LATENCY_BOUND = {"max_latency_p99_us": 10_000_000}


class StandIn:
    """The whole :class:`appliance.core.Detector` protocol for a transparent stand-in model.

    A subclass sets ``sensors``, ``window`` ... and scores with :meth:`score_one`; it
    has no bundle (never remembered as the model of the next start, no trained
    staleness) and records what the runtime tells it about held values.
    """

    sensors: tuple[str, ...] = ("a", "b")
    period_s = 1.0
    window = 4
    stride = 1
    horizon = 1
    threshold = 1.0
    version = "stand-in"
    bundle = None
    held: int | None = None

    def score_one(self, window: Window) -> Score:
        raise NotImplementedError("a stand-in scores in its subclass")

    def allow_held(self, rows: int) -> None:
        self.held = rows


def circle_rows(n: int, seed: int = 0) -> np.ndarray:
    """Three sensors for the end-to-end ingest tests: two on a circle (one noisy), one of noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return np.stack([np.sin(t / 9.0), np.cos(t / 9.0) + 0.05 * rng.standard_normal(n),
                     0.1 * rng.standard_normal(n)], axis=1)


def make_window(values, sensors, mask=None):
    """A live window of pump1 holding ``values`` (rows x sensors); every value present unless ``mask`` says."""
    mask = np.ones(values.shape, dtype=bool) if mask is None else mask
    return Window(asset="pump1", t_end=1234.0, period=1.0, sensors=tuple(sensors), values=values, mask=mask)


def record_rows(db, rows: np.ndarray, asset: str, t0: float, alarms=()):
    """Write ``rows`` (one a second from ``t0``, columns :data:`SENSORS`) and ``alarms`` through the store,
    as the running appliance does; returns ``db``."""
    from appliance.core import Reading
    from appliance.store import Store

    store = Store(db)
    store.start()
    for i, row in enumerate(rows):
        for s, v in zip(SENSORS, row):
            store.put_reading(Reading(asset, s, t0 + i, float(v)))
    for a in alarms:
        store.put_alarm(a)
    assert store.flush(120), "the store did not commit the recorded rows"
    store.close()
    return db


def edited_bundle(src, dst, change):
    """A copy of bundle directory ``src`` at ``dst`` with ``change(meta)`` applied to its bundle.json."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "bundle.json").read_text())
    change(meta)
    (dst / "bundle.json").write_text(json.dumps(meta))
    return dst
