"""A candidate judged on the gateway's labelled history before its shadow run, on the real runtime and store.

The models are transparent stand-ins (score = mean |value| x gain, threshold 1):
the runtime's live model (gain 1) raises on a fault (values 3.0) and on a bump
(1.2) that the technician calls a false alarm; a mild bump (0.8) raises nothing
live. Verdicts go in through the store's ``set_verdict`` command, as the
dashboard sends them.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from appliance.config import parse_config
from appliance.core import Reading, Score
from appliance.lifecycle.config import BacktestBounds
from appliance.lifecycle.shadow import ModelCommandError, ShadowBounds
from appliance.runtime import build
from appliance.store import StoreReader
from tests.support.detector import NO_LATENCY_BOUND, StandIn

SENSORS = ("a", "b")
T0 = 1_765_000_000.0
# (start, end, value): seconds from T0
# (more than the back-test's match_s = 300 s apart, so no alarm is taken for its neighbour's)
PLAN = [(0, 400, 0.5), (400, 430, 3.0), (430, 1000, 0.5), (1000, 1030, 1.2), (1030, 1600, 0.5), (1600, 1630, 0.8),
        (1630, 2000, 0.5)]
HISTORY = BacktestBounds(min_history_s=600, max_extra_false_alarms=0)


class Gain(StandIn):
    sensors = SENSORS

    def __init__(self, version: str, gain: float = 1.0):
        self.version, self.gain = version, gain

    def score_one(self, w) -> Score:
        v = float(np.abs(np.asarray(w.values)).mean()) * self.gain
        return Score(w.asset, w.t_end, v, self.threshold, {"a": 0.5, "b": 0.5}, self.version)


class Broken(Gain):
    def score_one(self, w) -> Score:
        raise RuntimeError("no model file")


def make_app(tmp_path, current):
    cfg = parse_config({"data_dir": str(tmp_path), "log_level": "WARNING", "web": {"enabled": False},
                        "inputs": {"mqtt": {"enabled": False}},
                        "outputs": {"mqtt_alarm": {"enabled": False}, "history": {"enabled": False}},
                        "decision": {"raise_k": 2, "raise_n": 3, "clear_n": 2}})
    return build(cfg, detector=current)


def feed(app, start: int, end: int, value: float) -> None:
    for i in range(start, end):
        app.submit([Reading("pump1", s, T0 + i, value) for s in SENSORS])


async def settle(app) -> None:
    await app.drain()
    assert app.store.flush()


async def record_history_with_verdicts(app) -> dict[str, str]:
    """The plan fed through the runtime; the fault and the bump judged by a technician."""
    for start, end, value in PLAN:
        feed(app, start, end, value)
        await settle(app)
    episodes = StoreReader(app.store.path).labelled_episodes()
    assert len(episodes) == 2, episodes
    fault, bump = episodes
    for e, verdict, cause in ((fault, "fault", "bearing"), (bump, "false_alarm", None)):
        await asyncio.to_thread(app.command, "set_verdict", alarm_id=e["id"], asset="pump1", user="tech",
                                verdict=verdict, cause=cause)
    return {"fault": fault["id"], "bump": bump["id"]}


@pytest.mark.parametrize("gain, rejected_for", [
    (0.3, "misses pump1 episode {fault} (fault: bearing, at "),
    (1.5, "2 false alarms against 1 (allowed 1; 86.443/day against 43.222/day): a new alarm on pump1 at "),
])
def test_a_worse_candidate_is_rejected_by_the_backtest_naming_the_episode(tmp_path, gain, rejected_for):
    app = make_app(tmp_path, Gain("live"))
    candidate = Gain("cand", gain)

    async def go():
        await app.start()
        try:
            ids = await record_history_with_verdicts(app)
            with pytest.raises(ModelCommandError) as refused:
                await app.models.consider(candidate, ShadowBounds(**NO_LATENCY_BOUND), HISTORY)
            await settle(app)
            return ids, str(refused.value)
        finally:
            await app.shutdown()

    ids, reason = asyncio.run(go())
    assert rejected_for.format(**ids) in reason and "\n" not in reason
    assert app.detector.version == "live" and app.models.shadow is None
    (rejected,) = StoreReader(app.store.path).model_changes()
    assert rejected["event"] == "rejected" and rejected["version"] == "cand" and rejected["reason"] == reason
    status = app.status()["model"]
    assert status["last_refusal"]["stage"] == "backtest" and status["last_backtest"]["ok"] is False


def test_a_better_candidate_passes_the_backtest_and_runs_in_shadow(tmp_path):
    app = make_app(tmp_path, Gain("live"))
    better = Gain("better", 0.7)  # still catches the fault (2.1), quiet on the false alarm (0.84)

    async def go():
        await app.start()
        try:
            await record_history_with_verdicts(app)
            await app.models.consider(better, ShadowBounds(**NO_LATENCY_BOUND), HISTORY)
            await settle(app)
        finally:
            await app.shutdown()

    asyncio.run(go())
    (started,) = StoreReader(app.store.path).model_changes()
    assert started["event"] == "shadow_started" and started["version"] == "better"
    assert "within bounds, 1 of 1 fault episodes caught (current 1), 0 false alarms (current 1)" in started["reason"]
    assert app.models.shadow is not None and app.models.last_backtest["ok"] is True


def test_too_little_labelled_history_leaves_it_to_the_shadow_run_and_says_so(tmp_path):
    app = make_app(tmp_path, Gain("live"))

    async def go():
        await app.start()
        try:
            feed(app, 0, 300, 0.5)  # no episode yet
            await settle(app)
            await app.models.consider(Gain("deaf", 0.3), ShadowBounds(**NO_LATENCY_BOUND), HISTORY)
        finally:
            await app.shutdown()

    asyncio.run(go())
    (started,) = StoreReader(app.store.path).model_changes()
    assert started["event"] == "shadow_started"
    assert "too little labelled history to back-test (0 labelled episodes, need 1" in started["reason"]
    assert "judged by its shadow run alone" in started["reason"]


def test_a_shadow_run_does_not_promote_while_an_alarm_is_active(tmp_path):
    app = make_app(tmp_path, Gain("live"))
    candidate = Gain("cand")
    waiting = {}

    async def go():
        await app.start()
        try:
            feed(app, 0, 20, 0.5)
            feed(app, 20, 30, 3.0)  # an alarm is raised and stays active
            await settle(app)
            app.models.begin_shadow(candidate, ShadowBounds(**NO_LATENCY_BOUND, duration_s=0, min_windows=5))
            feed(app, 30, 60, 3.0)
            await settle(app)
            waiting["detector"] = app.detector.version
            waiting["shadow"] = app.status()["model"]["shadow"]
            feed(app, 60, 80, 0.5)  # the fault is over: the alarm clears, and the run concludes
            await settle(app)
        finally:
            await app.shutdown()

    asyncio.run(go())
    assert waiting["detector"] == "live" and waiting["shadow"]["waiting_for_alarms"] == ["pump1"]
    assert waiting["shadow"]["windows"] >= 30
    assert app.detector is candidate
    assert [c["event"] for c in StoreReader(app.store.path).model_changes()] == ["promoted", "shadow_started"]


def test_a_backtest_that_fails_leaves_the_candidate_to_its_shadow_run(tmp_path):
    app = make_app(tmp_path, Gain("live"))

    async def go():
        await app.start()
        try:
            feed(app, 0, 100, 0.5)
            await settle(app)
            await app.models.consider(Broken("cand"), ShadowBounds(**NO_LATENCY_BOUND), HISTORY)
        finally:
            await app.shutdown()

    asyncio.run(go())
    (started,) = StoreReader(app.store.path).model_changes()
    assert started["event"] == "shadow_started"
    assert "back-test failed (RuntimeError: no model file): judged by its shadow run alone" in started["reason"]
