"""A candidate model in shadow, its promotion by hot swap, rejection and automatic rollback.

The runtime is the real one (store, window builder, alarm book) on its own event
loop; the models are transparent stand-ins whose scores the test controls, so
each verdict is known in advance. Readings go in through the runtime's sink.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from appliance.config import parse_config
from appliance.core import Reading, Score
from appliance.runtime import build
from appliance.store import StoreReader
from appliance.core import Detector
from appliance.lifecycle.shadow import ModelCommandError, ShadowBounds
from tests.support.detector import NO_LATENCY_BOUND, StandIn

SENSORS = ("a", "b")


class ScaledDetector(StandIn):
    """Score = mean |value| x ``gain``: gain 1 is quiet on values of 0.5, gain 4 alarms on them."""

    sensors = SENSORS

    def __init__(self, version: str, gain: float = 1.0, window: int = 4):
        self.version, self.gain, self.window = version, gain, window
        self.scored = 0

    def score_one(self, w) -> Score:
        self.scored += 1
        v = float(np.abs(np.asarray(w.values)).mean()) * self.gain
        return Score(w.asset, w.t_end, v, self.threshold, {"a": 0.5, "b": 0.5}, self.version)


def make_app(tmp_path, current):
    cfg = parse_config({"data_dir": str(tmp_path), "log_level": "WARNING", "web": {"enabled": False},
                        "inputs": {"mqtt": {"enabled": False}},
                        "outputs": {"mqtt_alarm": {"enabled": False}, "history": {"enabled": False}},
                        "decision": {"raise_k": 2, "raise_n": 3, "clear_n": 2}})
    return build(cfg, detector=current)


def feed(app, start: int, n: int, value: float = 0.5) -> None:
    for i in range(start, start + n):
        app.submit([Reading("pump1", s, 1_700_000_000.0 + i, value) for s in SENSORS])


async def settle(app) -> None:
    await app.drain()
    assert app.store.flush()


def run(coro):
    return asyncio.run(coro)


def test_a_quiet_candidate_is_promoted_by_hot_swap_and_no_window_goes_unscored(tmp_path):
    current, candidate = ScaledDetector("v1"), ScaledDetector("v2")
    app = make_app(tmp_path, current)

    async def go():
        await app.start()
        try:
            feed(app, 0, 10)
            await settle(app)
            app.models.begin_shadow(candidate, ShadowBounds(**NO_LATENCY_BOUND, duration_s=0, min_windows=20))
            feed(app, 10, 40)
            await settle(app)
        finally:
            await app.shutdown()

    run(go())
    assert app.detector is candidate
    scored = app.counters.get("windows_scored")
    # Every window was scored by exactly one live model; the candidate also scored its shadow windows.
    assert current.scored + (candidate.scored - 20) == scored
    changes = StoreReader(app.store.path).model_changes()
    assert [c["event"] for c in changes] == ["promoted", "shadow_started"]
    assert changes[0]["version"] == "v2" and changes[0]["previous"] == "v1"
    assert "within bounds over 20 windows" in changes[0]["reason"]


def test_a_candidate_that_would_alarm_on_normal_data_is_rejected(tmp_path):
    current, noisy = ScaledDetector("v1"), ScaledDetector("v2-noisy", gain=4.0)
    app = make_app(tmp_path, current)

    async def go():
        await app.start()
        try:
            app.models.begin_shadow(noisy, ShadowBounds(**NO_LATENCY_BOUND, duration_s=0, min_windows=10, max_extra_alarms=0))
            feed(app, 0, 30)
            await settle(app)
        finally:
            await app.shutdown()

    run(go())
    assert app.detector is current and app.counters.get("alarm_raised") == 0  # the shadow raised nothing real
    (rejected, _started) = StoreReader(app.store.path).model_changes()
    assert rejected["event"] == "rejected" and "would raise 1 alarms where the current model raised 0" \
        in rejected["reason"]


def test_an_incompatible_candidate_is_refused_with_the_reason(tmp_path):
    app = make_app(tmp_path, ScaledDetector("v1"))

    async def go():
        await app.start()
        try:
            with pytest.raises(ModelCommandError, match="window 8 differs .* needs a restart"):
                app.models.begin_shadow(ScaledDetector("v2", window=8), ShadowBounds())
        finally:
            await app.shutdown()

    run(go())


def test_a_promoted_model_that_misbehaves_in_probation_is_rolled_back(tmp_path):
    current, flaky = ScaledDetector("v1"), ScaledDetector("v2")
    app = make_app(tmp_path, current)
    bounds = ShadowBounds(**NO_LATENCY_BOUND, duration_s=0, min_windows=5, probation_s=3600, max_probation_alarms=0)

    async def go():
        await app.start()
        try:
            app.models.begin_shadow(flaky, bounds)
            feed(app, 0, 10)
            await settle(app)
            assert app.detector is flaky
            flaky.gain = 4.0  # the field disagrees with the shadow run
            feed(app, 10, 10)
            await settle(app)
        finally:
            await app.shutdown()

    run(go())
    assert app.detector is current
    events = [c["event"] for c in StoreReader(app.store.path).model_changes()]
    assert events == ["rolled_back", "promoted", "shadow_started"]


def test_an_engineer_promotes_or_rolls_back_by_hand(tmp_path):
    current, candidate = ScaledDetector("v1"), ScaledDetector("v2")
    app = make_app(tmp_path, current)

    async def go():
        await app.start()
        try:
            with pytest.raises(ModelCommandError, match="no candidate"):
                app.models.command("promote_model", user="eve")
            app.models.begin_shadow(candidate, ShadowBounds(**NO_LATENCY_BOUND, duration_s=3600, min_windows=10_000))
            feed(app, 0, 8)
            await settle(app)
            assert app.detector is current  # the run is not over
            app.models.command("promote_model", user="eve")
            assert app.detector is candidate
            app.models.command("rollback_model", user="eve", note="operators prefer v1")
            assert app.detector is current
            with pytest.raises(ModelCommandError, match="no previous model"):
                app.models.command("rollback_model", user="eve")
        finally:
            await app.shutdown()

    run(go())
    users = [(c["event"], c["user"]) for c in StoreReader(app.store.path).model_changes()]
    assert users[:2] == [("rolled_back", "eve"), ("promoted", "eve")]


def test_every_model_learns_how_long_the_live_grid_may_hold_a_value(tmp_path):
    """The frozen-sensor check must not read a value held over missing reports as frozen: the runtime tells
    the running model and every candidate its grid's staleness in periods (5 s at 1 s by default)."""
    current, candidate = ScaledDetector("v1"), ScaledDetector("v2")
    app = make_app(tmp_path, current)
    assert current.held == 5

    async def go():
        await app.start()
        try:
            app.models.begin_shadow(candidate, ShadowBounds(**NO_LATENCY_BOUND))
            assert candidate.held == 5
        finally:
            await app.shutdown()

    run(go())
