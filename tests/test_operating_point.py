"""Operating point not seen in training: the envelope a bundle records (label-free, from its training rows), the
scorer naming the sensors outside it, the status with hysteresis (raised once, held, counted), the alarm point
judging against the threshold in force while it lasts, the store counting episodes per day, and the dashboard.
Pump-like synthetic rows; one tiny model trained for the module.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from appliance.actions.alarms import AlarmBook
from appliance.actions.config import DecisionConfig
from appliance.actions.decide import Decider
from appliance.actions.operating_point import OperatingPointWatch
from appliance.core import OperatingPointChange, Score
from appliance.detector.bundle import BundleError, load_bundle
from appliance.detector.envelope import OperatingEnvelope, next_block_reach, window_levels
from appliance.detector.replay import replay_rows
from appliance.detector.scorer import Detector
from appliance.detector.train import TrainSettings, train_bundle
from tests.support.detector import SENSORS, edited_bundle, make_window, normal_rows

T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    with threadpool_limits(1):
        return train_bundle(normal_rows(600, seed=1), SENSORS, tmp_path_factory.mktemp("op") / "B",
                            TrainSettings(window=16, max_iter=30))


# -- the envelope ---------------------------------------------------------------------------
def test_window_levels_and_the_next_block_reach_are_label_free_statistics():
    rows = np.arange(10.0)[:, None]
    assert window_levels(rows, 5)[:, 0].tolist() == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    # Four blocks of a steady rise: an end block reaches one block's rise beyond the others.
    assert next_block_reach(np.arange(40.0)[:, None], 4).tolist() == [10.0]


def test_a_drifting_sensor_gets_the_margin_its_blocks_showed_and_a_steady_one_a_quarter_of_its_range():
    rng = np.random.default_rng(0)
    t = np.arange(800.0)
    rows = np.c_[t / 100 + rng.normal(0, 0.01, 800), rng.normal(0, 1.0, 800)]
    env = OperatingEnvelope.fit(rows, ["drift", "noise"], span=20)
    assert env.margin["drift"] == pytest.approx(2.0, abs=0.1)  # a block of 200 rows rises 2
    spread = env.high["noise"] - env.low["noise"]
    assert env.margin["noise"] >= 0.25 * spread - 1e-12


def test_level_free_sensors_are_not_judged_and_a_short_record_is_refused():
    rows = normal_rows(300, seed=2)
    env = OperatingEnvelope.fit(rows, SENSORS, span=16, level_free=["Temperature"])
    assert set(env.low) == {"Current", "Pressure", "Flow"}
    lo, hi = env.bounds(SENSORS)
    assert np.isinf(lo[2]) and np.isinf(hi[2])
    with pytest.raises(ValueError, match="at least 4 windows"):
        OperatingEnvelope.fit(rows[:18], SENSORS, span=16)


def test_the_envelope_round_trips_and_a_bad_one_is_refused():
    env = OperatingEnvelope({"a": 1.0}, {"a": 2.0}, {"a": 0.5}, span=10)
    assert OperatingEnvelope.from_dict(env.to_dict(), ["a"]) == env
    for bad, why in (({**env.to_dict(), "low": {"b": 1.0}}, "same sensors"),
                     ({**env.to_dict(), "low": {"zz": 1.0}, "high": {"zz": 2.0}, "margin": {"zz": 0.1}}, "lacks"),
                     ({**env.to_dict(), "margin": {"a": -1.0}}, "margin >= 0"),
                     ({**env.to_dict(), "span": 0}, "span")):
        with pytest.raises(ValueError, match=why):
            OperatingEnvelope.from_dict(bad, ["a"])


# -- the bundle and the scorer ---------------------------------------------------------------
def test_training_records_the_envelope_of_its_rows(bundle):
    b = load_bundle(bundle)
    assert b.envelope is not None and b.envelope.span == b.span
    assert set(b.envelope.low) == set(SENSORS) - set(b.level_free)
    assert "calibration block" in b.meta["envelope"]["how"]


def test_a_bundle_with_a_broken_envelope_is_refused(bundle, tmp_path):
    def broken(meta):
        meta["envelope"]["high"]["Current"] = -1e9  # below its low
    bad = edited_bundle(bundle, tmp_path / "bad", broken)
    with pytest.raises(BundleError, match="envelope of 'Current'"):
        load_bundle(bad, verify_hashes=False)


def test_the_score_names_the_sensors_whose_level_was_never_seen(bundle):
    det = Detector.load(bundle)
    rows = normal_rows(200, seed=3)[-det.window:]
    judged = [s for s in SENSORS if s in det.bundle.envelope.low]
    assert det.score_one(make_window(rows, SENSORS)).unseen == ()
    moved = rows.copy()
    col = SENSORS.index(judged[0])
    moved[:, col] += 10 * (det.bundle.envelope.high[judged[0]] - det.bundle.envelope.low[judged[0]]) + 1.0
    assert det.score_one(make_window(moved, SENSORS)).unseen == (judged[0],)


# -- the status: raised once, held, counted --------------------------------------------------
def scores(ratios, unseen, asset="pump1"):
    return [Score(asset, T0 + i, r, 1.0, {"a": 1.0}, unseen=("a",) if u else ()) for i, (r, u) in
            enumerate(zip(ratios, unseen))]


def judge(watch, book, score):
    """The runtime's order: the status first, then the alarm point with the score it judges."""
    change = watch.update(score)
    return change, book.on_score(watch.alarm_score(score))


def test_a_whole_run_at_an_unseen_point_is_one_status_and_no_alarm():
    cfg = DecisionConfig()
    watch, book = OperatingPointWatch.from_config(cfg), AlarmBook(Decider.from_config(cfg), clock=lambda: T0)
    rng = np.random.default_rng(0)
    ratios = 15.0 * np.exp(rng.normal(0, 0.2, 2000)) * np.linspace(1.0, 1.8, 2000)  # far off, drifting slowly
    changes, events = [], []
    for s in scores(ratios, [True] * 2000):
        c, e = judge(watch, book, s)
        changes += [c] if c else []
        events += e
    assert [c.event for c in changes] == ["entered"]
    assert changes[0].to_dict()["status"] == "operating point not seen in training"
    assert "appliance commission" in changes[0].to_dict()["advice"]
    assert events == []
    assert watch.held > 1900  # windows over the bundle's threshold, not raised


def test_a_fault_on_top_of_an_unseen_point_is_still_raised():
    cfg = DecisionConfig()
    watch, book = OperatingPointWatch.from_config(cfg), AlarmBook(Decider.from_config(cfg), clock=lambda: T0)
    ratios = [10.0] * 200 + [40.0] * 20 + [10.0] * 100
    kinds = []
    for s in scores(ratios, [True] * len(ratios)):
        kinds += [e.kind.value for e in judge(watch, book, s)[1]]
    assert kinds[0] == "raised" and kinds.count("raised") == 1


def test_an_episode_entered_with_normal_scores_keeps_the_bundles_threshold():
    cfg = DecisionConfig()
    watch, book = OperatingPointWatch.from_config(cfg), AlarmBook(Decider.from_config(cfg), clock=lambda: T0)
    ratios = [0.3] * 50 + [1.5] * 10
    raised_at = [i for i, s in enumerate(scores(ratios, [True] * 60)) if judge(watch, book, s)[1]]
    assert watch.active and not watch.follows
    assert raised_at and raised_at[0] == 52  # the third window over the threshold, as without the status


def test_a_level_that_leaves_with_a_jump_of_the_score_is_raised_as_an_anomaly():
    """A step (a fault, or a set point moved at once) moves the level and the score together: an alarm."""
    cfg = DecisionConfig()
    watch, book = OperatingPointWatch.from_config(cfg), AlarmBook(Decider.from_config(cfg), clock=lambda: T0)
    ratios, unseen = [0.3] * 100 + [10.0] * 100, [False] * 100 + [True] * 100
    kinds = [e.kind.value for s in scores(ratios, unseen) for e in judge(watch, book, s)[1]]
    assert watch.active and not watch.follows
    assert kinds == ["raised"]  # one alarm, held by its hysteresis: not a flood


def test_the_status_leaves_only_after_leave_n_windows_back_inside():
    watch = OperatingPointWatch(enter_k=3, enter_n=5, leave_n=10)
    pattern = [True] * 20 + [False, True] * 20 + [False] * 10
    events = [c.event for c in (watch.update(s) for s in scores([5.0] * len(pattern), pattern)) if c]
    assert events == ["entered", "left"]


def test_the_decision_section_checks_the_status_settings():
    with pytest.raises(ValueError, match="unseen_enter_k"):
        DecisionConfig(unseen_enter_k=6, unseen_enter_n=5)
    with pytest.raises(ValueError):
        DecisionConfig(unseen_rise=1.0)


def test_replay_reports_the_status_per_row_and_holds_the_flood(bundle):
    det = Detector.load(bundle)
    rows = normal_rows(400, seed=4)
    rows[:, SENSORS.index(sorted(det.bundle.envelope.low)[0])] += 50.0  # the whole run elsewhere
    ts = T0 + np.arange(len(rows), dtype=float)
    held = replay_rows(det, SENSORS, ts, rows, Decider.from_config(DecisionConfig()))
    free = replay_rows(det, SENSORS, ts, rows, Decider.from_config(DecisionConfig()), hold_alarms=False)
    assert held.unseen_episodes == free.unseen_episodes == 1
    assert held.unseen.mean() > 0.9
    assert free.alarm.mean() > 0.9 and held.alarm.sum() == 0 and held.windows_held > 300


# -- the store and the dashboard --------------------------------------------------------------
def test_the_store_keeps_episodes_and_counts_them_per_day(store):
    day = 86400.0 * 19_700
    for since in (day + 100, day + 5000, day + 86400 + 10):
        store.put_operating_point(OperatingPointChange("pump1", "entered", since, since, ("Flow",), "v1"))
        store.put_operating_point(OperatingPointChange("pump1", "left", since + 60, since, ("Flow", "Current"),
                                                       "v1", held_windows=7))
    store.put_operating_point(OperatingPointChange("pump1", "entered", day + 90000, day + 90000, ("Flow",), "v1"))
    assert store.flush(30)
    episodes = store.reader.operating_points("pump1")
    assert [e["active"] for e in episodes] == [True, False, False, False]
    assert episodes[1]["sensors"] == ["Flow", "Current"] and episodes[1]["held_windows"] == 7
    per_day = store.reader.operating_points_per_day("pump1", days=7, now=day + 90000)
    assert [d["episodes"] for d in per_day] == [2, 2]


def test_an_episode_left_open_by_a_stop_ends_where_the_next_begins(store):
    store.put_operating_point(OperatingPointChange("pump1", "entered", T0, T0, ("Flow",)))
    store.put_operating_point(OperatingPointChange("pump1", "entered", T0 + 500, T0 + 500, ("Flow",)))
    assert store.flush(30)
    first = store.reader.operating_points("pump1")[-1]
    assert first["end"] == T0 + 500 and not first["active"]


def test_the_asset_page_shows_the_status_its_advice_and_the_days(book_appliance, store, accounts):
    from tests.support.web import signed_in
    from web.app import create_app

    now = time.time()  # the page counts the last seven days
    store.put_operating_point(OperatingPointChange("pump1", "entered", now, now, ("Temperature",), "v1"))
    assert store.flush(30)
    client = signed_in(create_app(book_appliance, store.path, accounts=accounts), "ana", "technician")
    page = client.get("/assets/pump1").get_data(as_text=True)
    assert "operating point not seen in training" in page and "Temperature" in page
    assert "appliance commission" in page and "Episodes of" in page
    body = client.get("/api/assets/pump1/operating-point").get_json()
    assert body["current"]["sensors"] == ["Temperature"] and body["per_day"][0]["episodes"] == 1
    other = client.get("/assets/pump2").get_data(as_text=True)
    assert "operating point seen in training" in other
