import pytest

from appliance.actions.alarms import AlarmBook, AlarmCommandError
from appliance.actions.decide import Decider
from appliance.core import AlarmState, Level, ModeChange, PointMode, Score


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def score(t, ratio, asset="pump1", top="Current"):
    contrib = {"Current": 0.1, "Pressure": 0.1, "Temperature": 0.1}
    contrib[top] = 0.8
    return Score(asset, float(t), ratio, 1.0, contrib)


def book(**kw):
    args = dict(raise_k=2, raise_n=3, clear_n=2, clear_ratio=0.8, critical_ratio=2.0) | kw
    clock = Clock()
    return AlarmBook(Decider(**args), clock=clock), clock


def kinds(changes):
    """What happened, for alarm events (their kind) and mode changes (their name) alike."""
    return [c.name if isinstance(c, ModeChange) else c.kind for c in changes]


def test_debounce_needs_k_of_n():
    b, _ = book()
    assert kinds(b.on_score(score(1, 1.5))) == []
    assert kinds(b.on_score(score(2, 0.5))) == []
    assert kinds(b.on_score(score(3, 0.5))) == []
    assert kinds(b.on_score(score(4, 1.5))) == []
    assert kinds(b.on_score(score(5, 1.2))) == ["raised"]
    a = b.current("pump1")
    assert a.state == AlarmState.UNACKED and a.active and a.start == 5.0
    assert a.top_sensors[0] == "Current"


def test_hysteresis_holds_near_threshold_then_clears():
    b, _ = book()
    b.on_score(score(1, 1.5))
    b.on_score(score(2, 1.5))
    for t, r in enumerate([0.9, 0.95, 0.7, 0.85], start=3):  # never 2 in a row under 0.8
        assert kinds(b.on_score(score(t, r))) == []
    assert kinds(b.on_score(score(7, 0.5))) == []
    assert kinds(b.on_score(score(8, 0.5))) == ["cleared"]
    a = b.current("pump1")
    assert a.state == AlarmState.RTN_UNACKED and a.end == 8.0


def test_escalation_and_peak_with_top_sensors_at_peak():
    b, _ = book()
    b.on_score(score(1, 1.5))
    b.on_score(score(2, 1.5))
    ev = b.on_score(score(3, 3.0, top="Pressure"))
    assert kinds(ev) == ["escalated"] and ev[0].alarm.level == Level.CRITICAL
    a = b.current("pump1")
    assert a.peak_ratio == 3.0 and a.top_sensors[0] == "Pressure"


def test_isa_lifecycle_ack_before_and_after_return():
    b, _ = book()
    b.on_score(score(1, 1.5))
    b.on_score(score(2, 1.5))
    assert kinds(b.acknowledge("pump1", "ana", "checking")) == ["acknowledged"]
    assert b.current("pump1").state == AlarmState.ACKED
    assert b.current("pump1").acked_by == "ana"
    b.on_score(score(3, 0.1))
    b.on_score(score(4, 0.1))
    assert b.current("pump1").state == AlarmState.NORMAL
    with pytest.raises(AlarmCommandError):
        b.acknowledge("pump1", "ana")
    # second occurrence, returns before ack
    b.on_score(score(5, 1.5))
    b.on_score(score(6, 1.5))
    b.on_score(score(7, 0.1))
    b.on_score(score(8, 0.1))
    assert b.current("pump1").state == AlarmState.RTN_UNACKED
    b.acknowledge("pump1", "bo")
    assert b.current("pump1").state == AlarmState.NORMAL


def test_shelving_expires_and_needs_a_user():
    b, clock = book()
    b.on_score(score(1, 1.5))
    b.on_score(score(2, 1.5))
    with pytest.raises(AlarmCommandError):
        b.shelve("pump1", "  ", 60)
    assert kinds(b.shelve("pump1", "ana", 60, "nuisance during cleaning")) == ["shelved"]
    assert b.current("pump1").state == AlarmState.SHELVED
    clock.t += 30
    assert b.tick() == []
    clock.t += 31
    ev = b.tick()
    assert kinds(ev) == ["unshelved"] and ev[0].user == "system"
    assert b.current("pump1").state == AlarmState.UNACKED


def test_suppressed_and_out_of_service():
    b, _ = book()
    b.ensure("pump2")
    assert kinds(b.set_mode("pump2", "suppressed", "ana")) == ["suppressed"]
    b.on_score(score(1, 1.5, asset="pump2"))
    ev = b.on_score(score(2, 1.5, asset="pump2"))
    assert kinds(ev) == ["raised"] and ev[0].alarm.state == AlarmState.SUPPRESSED
    b.set_mode("pump2", "out_of_service", "ana", "maintenance")
    assert b.current("pump2").state == AlarmState.OUT_OF_SERVICE
    for t in range(3, 10):
        assert b.on_score(score(t, 5.0, asset="pump2")) == []
    assert kinds(b.set_mode("pump2", "in_service", "ana")) == ["returned_to_service"]
    with pytest.raises(AlarmCommandError):
        b.set_mode("pump2", "bogus", "ana")
    with pytest.raises(AlarmCommandError):
        b.acknowledge("nope", "ana")


def test_new_occurrence_supersedes_unacked_returned_one():
    b, _ = book()
    b.on_score(score(1, 1.5))
    b.on_score(score(2, 1.5))
    b.on_score(score(3, 0.1))
    b.on_score(score(4, 0.1))
    b.on_score(score(5, 1.5))
    ev = b.on_score(score(6, 1.5))
    assert kinds(ev) == ["superseded", "raised"]
    assert ev[0].alarm.id != ev[1].alarm.id


def test_restore_keeps_an_active_alarm_active():
    b, _ = book()
    b.on_score(score(1, 1.5))
    b.on_score(score(2, 1.5))
    alarm = b.current("pump1")
    b2, _ = book()
    b2.restore(alarm)
    assert b2.on_score(score(3, 1.5)) == []  # no duplicate raise after restart
    b2.on_score(score(4, 0.1))
    assert kinds(b2.on_score(score(5, 0.1))) == ["cleared"]


@pytest.mark.parametrize("kw", [dict(raise_k=4, raise_n=3), dict(clear_n=0), dict(clear_ratio=1.5),
                                dict(critical_ratio=0.9)])
def test_decider_validates(kw):
    with pytest.raises(ValueError):
        Decider(**(dict(raise_k=2, raise_n=3, clear_n=2, clear_ratio=0.8, critical_ratio=2.0) | kw))


def test_mode_changes_carry_the_point_and_its_occurrence():
    b, clock = book()
    b.ensure("pump2")
    (m,) = b.set_mode("pump2", "suppressed", "ana", "asset stopped")
    assert (m.asset, m.mode, m.previous, m.user, m.alarm) == ("pump2", PointMode.SUPPRESSED,
                                                              PointMode.IN_SERVICE, "ana", None)
    b.on_score(score(1, 1.5))
    b.on_score(score(2, 1.5))
    (m,) = b.shelve("pump1", "bo", 60)
    assert m.alarm is not None and m.alarm.state == AlarmState.SHELVED and m.shelved_until == clock.t + 60
    assert b.modes() == {"pump1": PointMode.SHELVED, "pump2": PointMode.SUPPRESSED}


def test_peak_rises_are_reported_between_events():
    peaks = []
    b = AlarmBook(Decider(raise_k=1, raise_n=1, clear_n=1), clock=Clock(), on_peak=peaks.append)
    b.on_score(score(1, 1.5))
    b.on_score(score(2, 1.8))
    b.on_score(score(3, 1.6))  # lower: not a new peak
    assert [a.peak_ratio for a in peaks] == [1.8]
