"""A store holding weeks of alarm history (raises, acknowledgements, clears, verdicts), for the KPI benchmark
and the README's screenshots: what a gateway on a badly tuned line has after a month."""

from __future__ import annotations

import random
from pathlib import Path

from appliance.core import Alarm, AlarmEvent, AlarmState, EventKind, Level
from appliance.store import Store
from appliance.store.verdicts import AlarmVerdict

DAY_S = 86400.0
VERDICTS = (("fault", "bearing"), ("fault", "cavitation"), ("false_alarm", None), ("false_alarm", None),
            ("maintenance", None))


def fill_alarm_history(store: Store, now: float, days: float, per_day: float, assets: int = 20,
                       judged: float = 0.6, seed: int = 5) -> int:
    """Write ``days`` of alarms ending at ``now`` (``per_day`` on average, the first assets the busiest), each
    raised, mostly acknowledged and cleared, ``judged`` of them with a verdict (some changed once); the count."""
    rng = random.Random(seed)
    names = [f"pump{k + 1}" for k in range(assets)]
    weights = [1.0 / (k + 1) for k in range(assets)]  # a few bad actors, a long tail
    t = now - days * DAY_S
    n = 0
    while True:
        t += rng.expovariate(per_day / DAY_S)
        if t >= now - 60:
            return n
        asset = rng.choices(names, weights)[0]
        _episode(store, rng, asset, t, now, judged)
        n += 1


def _episode(store: Store, rng: random.Random, asset: str, start: float, now: float, judged: float) -> None:
    alarm = Alarm(id=Alarm.make_id(asset, start), asset=asset, level=Level.ANOMALY, state=AlarmState.UNACKED,
                  start=start, peak_ratio=1.0 + rng.random() * 3, top_sensors=("Current", "Pressure"))
    store.put_alarm_event(AlarmEvent(EventKind.RAISED, _copy(alarm), start))
    duration = min(rng.expovariate(1 / 900.0), now - start - 1)
    if rng.random() < 0.8:
        alarm.state, alarm.acked_by = AlarmState.ACKED, "ana"
        store.put_alarm_event(AlarmEvent(EventKind.ACKNOWLEDGED, _copy(alarm),
                                         start + min(duration, rng.expovariate(1 / 120.0)), user="ana"))
    alarm.end, alarm.active = start + duration, False
    alarm.state = AlarmState.NORMAL if alarm.acked_by else AlarmState.RTN_UNACKED
    store.put_alarm_event(AlarmEvent(EventKind.CLEARED, _copy(alarm), start + duration))
    if rng.random() < judged:
        for k in range(1 if rng.random() < 0.9 else 2):
            kind, cause = rng.choice(VERDICTS)
            store.put_verdict(AlarmVerdict.new(alarm.id, asset, ("ana", "bo")[k], kind, cause=cause,
                                               ts=start + duration + 60 * (k + 1)))


def _copy(a: Alarm) -> Alarm:
    return Alarm(a.id, a.asset, a.level, a.state, a.start, a.peak_ratio, a.top_sensors, a.end, a.active,
                 a.acked_by, a.shelved_until, a.historical)


def alarm_history_store(path: Path, now: float, days: float, per_day: float, **kw) -> int:
    """A new store at ``path`` filled by :func:`fill_alarm_history`, committed and closed; the alarm count."""
    store = Store(path)
    store.start()
    try:
        n = fill_alarm_history(store, now, days, per_day, **kw)
        if not store.flush(600):
            raise RuntimeError("the store did not commit the alarm history")
    finally:
        store.close()
    return n
