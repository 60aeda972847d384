"""Verdicts on alarm episodes in the store: kept with every change, the latest is the episode's label."""

from __future__ import annotations

import sqlite3

import pytest

from appliance.core import Alarm, AlarmEvent, AlarmState, EventKind, Level
from appliance.store import Store, StoreReader
from appliance.store.store import SCHEMA_VERSION
from appliance.store.verdicts import AlarmVerdict, Verdict, VerdictError


def _episode(store: Store, alarm_id: str, asset: str, start: float) -> None:
    alarm = Alarm(id=alarm_id, asset=asset, level=Level.ANOMALY, state=AlarmState.UNACKED, active=True,
                  start=start, peak_ratio=1.5, top_sensors=("s1",))
    store.put_alarm_event(AlarmEvent(kind=EventKind.RAISED, alarm=alarm, ts=start))


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "a.db")
    s.start()
    yield s
    s.close()


def test_latest_verdict_labels_the_episode_and_every_verdict_is_kept(store, tmp_path):
    _episode(store, "e1", "pump1", 100.0)
    _episode(store, "e2", "pump1", 200.0)
    _episode(store, "e3", "pump2", 300.0)
    store.put_verdict(AlarmVerdict.new("e1", "pump1", "ana", "false_alarm", ts=150.0))
    store.put_verdict(AlarmVerdict.new("e1", "pump1", "bo", "fault", cause="bearing", ts=160.0))
    store.put_verdict(AlarmVerdict.new("e2", "pump1", "ana", "maintenance", note=" oil change ", ts=250.0))
    assert store.flush()
    reader = StoreReader(tmp_path / "a.db")
    history = reader.alarm_verdicts("e1")
    assert [(v["user"], v["verdict"], v["cause"]) for v in history] == [("ana", "false_alarm", None),
                                                                         ("bo", "fault", "bearing")]
    episodes = reader.labelled_episodes()
    assert [e["id"] for e in episodes] == ["e1", "e2", "e3"]
    assert [(e["verdict"] or {}).get("verdict") for e in episodes] == ["fault", "maintenance", None]
    assert episodes[1]["verdict"]["note"] == "oil change"
    assert [e["id"] for e in reader.labelled_episodes(since=150.0, until=300.0)] == ["e2"]
    assert [e["id"] for e in reader.labelled_episodes(asset="pump2")] == ["e3"]


def test_the_same_verdict_sent_twice_is_stored_once(store, tmp_path):
    _episode(store, "e1", "pump1", 100.0)
    v = AlarmVerdict.new("e1", "pump1", "ana", "false_alarm", ts=150.0)
    store.put_verdict(v)
    store.put_verdict(v)
    assert store.flush()
    assert len(StoreReader(tmp_path / "a.db").alarm_verdicts("e1")) == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"verdict": "broken"}, "is not one of"),
    ({"verdict": "fault"}, "names its cause"),
    ({"verdict": "fault", "cause": "gremlins"}, "gremlins"),
    ({"verdict": "false_alarm", "user": ""}, "author"),
    ({"verdict": "false_alarm", "note": "x" * 501}, "at most"),
])
def test_bad_verdicts_are_refused_with_a_reason(kwargs, message):
    args = {"alarm_id": "e1", "asset": "pump1", "user": "ana", **kwargs}
    with pytest.raises(VerdictError, match=message):
        AlarmVerdict.new(**args)


def test_a_store_of_schema_5_gains_the_verdicts_table(tmp_path):
    path = tmp_path / "old.db"
    s = Store(path)
    s.start()
    _episode(s, "e1", "pump1", 100.0)
    assert s.flush()
    s.close()
    with sqlite3.connect(path) as conn:  # as a release of schema 5 left it
        conn.execute("DROP TABLE alarm_verdicts")
        conn.execute("PRAGMA user_version = 5")
    s = Store(path)
    s.start()
    s.put_verdict(AlarmVerdict.new("e1", "pump1", "ana", "false_alarm", ts=150.0))
    assert s.flush()
    s.close()
    reader = StoreReader(path)
    assert reader.labelled_episodes()[0]["verdict"]["verdict"] == Verdict.FALSE_ALARM
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
