"""Alarm-system KPIs (ISA-18.2 / IEC 62682, EEMUA 191) computed from the store's alarm episodes.

What a plant measures its alarm system by, over a span (24 h, 7 d, 30 d), per asset
and for the whole gateway:

* alarms per day; the share of the verdicts given that say ``false_alarm``; the
  alarms nobody has given a verdict on;
* time to acknowledge (median, p90), from the raise to the first acknowledgement;
* time in alarm (from the raise to the clear, or to now while active);
* **chattering**: an asset whose alarm raised and cleared ``chatter_count`` (3) or
  more times within ``chatter_window_s`` (10 min);
* **stale** alarms: active longer than ``stale_s`` (24 h);
* **floods** (EEMUA 191): ``flood_count`` (10) or more alarms raised within
  ``flood_window_s`` (10 min) across the gateway;
* **bad actors**: the assets with the most alarms.

Every number is a small function of :class:`Episode` records (doctested here);
:func:`report` and :func:`live_load` put them together, and :func:`episodes_from_rows`
reads what :meth:`~appliance.store.store.StoreReader.kpi_episodes` returns. Nothing
here runs on the detection path: the dashboard and ``/metrics`` call it on their own
threads, reading the store read-only. The thresholds are :class:`KpiThresholds`,
made from the ``[web.kpis]`` section (:class:`appliance.store.config.KpiConfig`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

DAY_S = 86400.0
#: The spans every report covers, by name.
SPANS: dict[str, float] = {"24h": DAY_S, "7d": 7 * DAY_S, "30d": 30 * DAY_S}


@dataclass(frozen=True, slots=True)
class KpiThresholds:
    chatter_count: int = 3
    chatter_window_s: float = 600.0
    flood_count: int = 10
    flood_window_s: float = 600.0
    stale_s: float = DAY_S
    bad_actors: int = 5


@dataclass(frozen=True, slots=True)
class Episode:
    """One alarm occurrence as the KPIs see it (times in seconds since the epoch)."""

    id: str
    asset: str
    start: float
    end: float | None = None           # the clear (None while active)
    raised_at: float | None = None     # when the raise was recorded (the alarm book's clock)
    acked_at: float | None = None      # the first acknowledgement
    verdict: str | None = None         # the current verdict (appliance.store.verdicts.Verdict value)

    @property
    def active(self) -> bool:
        return self.end is None


def episodes_from_rows(rows: Iterable[Sequence]) -> list[Episode]:
    """:class:`Episode` records from :meth:`StoreReader.kpi_episodes` rows (its fields, in order)."""
    return [Episode(*r) for r in rows]


# -- the numbers ----------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation between ranks; None for no values.

    >>> percentile([10, 20, 30, 40], 50), percentile([10, 20, 30, 40], 90), percentile([], 50)
    (25.0, 37.0, None)
    >>> percentile([7], 90)
    7.0
    """
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def per_day(count: int, span_s: float) -> float:
    """Alarms per day over a span.

    >>> per_day(14, 7 * 86400.0)
    2.0
    """
    return count * DAY_S / span_s if span_s > 0 else 0.0


def false_alarm_share(verdicts: Iterable[str | None]) -> float | None:
    """The share of the verdicts given that are ``false_alarm``; None while none is given.

    >>> false_alarm_share(["fault", "false_alarm", None, "maintenance", "false_alarm"])
    0.5
    >>> false_alarm_share([None, None]) is None
    True
    """
    given = [v for v in verdicts if v is not None]
    return sum(v == "false_alarm" for v in given) / len(given) if given else None


def ack_delays(episodes: Iterable[Episode]) -> list[float]:
    """Seconds from the raise to the first acknowledgement, of the acknowledged episodes.

    >>> ack_delays([Episode("a", "p", 100.0, raised_at=101.0, acked_at=131.0), Episode("b", "p", 200.0)])
    [30.0]
    """
    out = []
    for e in episodes:
        if e.acked_at is not None:
            raised = e.raised_at if e.raised_at is not None else e.start
            out.append(max(0.0, e.acked_at - raised))
    return out


def time_in_alarm(e: Episode, now: float) -> float:
    """Seconds the episode was (or is, until ``now``) in alarm.

    >>> time_in_alarm(Episode("a", "p", 100.0, end=160.0), 999.0), time_in_alarm(Episode("b", "p", 100.0), 250.0)
    (60.0, 150.0)
    """
    return max(0.0, (e.end if e.end is not None else now) - e.start)


def bursts(times: Sequence[float], count: int, window_s: float) -> list[tuple[float, float, int]]:
    """Periods where ``count`` or more of the (sorted) instants fall within ``window_s``, merged when they
    overlap: (first, last, instants in it).

    >>> bursts([0, 10, 20, 1000, 1001], 3, 60)
    [(0, 20, 3)]
    >>> bursts([0, 50, 100, 150, 400], 3, 120)
    [(0, 150, 4)]
    >>> bursts([0, 500], 3, 600)
    []
    """
    return _runs(times, times, count, window_s)


def _runs(starts: Sequence[float], ends: Sequence[float], count: int,
          window_s: float) -> list[tuple[float, float, int]]:
    """Merged runs of ``count`` consecutive items whose span (first start to last end) is within ``window_s``."""
    out: list[tuple[float, float, int]] = []
    first: int | None = None  # the run being built, as indexes
    last = -1
    for j in range(count - 1, len(starts)):
        i = j - count + 1
        if ends[j] - starts[i] > window_s:
            continue
        if first is not None and i <= last:
            last = j  # overlaps the run being built: extend it
            continue
        if first is not None:
            out.append((starts[first], ends[last], last - first + 1))
        first, last = i, j
    if first is not None:
        out.append((starts[first], ends[last], last - first + 1))
    return out


def chatter_bursts(episodes: Sequence[Episode], t: KpiThresholds) -> list[tuple[float, float, int]]:
    """One asset's chattering: ``chatter_count`` raise-and-clear cycles within ``chatter_window_s``
    (from the first raise to the last clear).

    >>> eps = [Episode(str(k), "p", k * 100.0, end=k * 100.0 + 30) for k in range(4)]
    >>> chatter_bursts(eps, KpiThresholds())
    [(0.0, 330.0, 4)]
    >>> chatter_bursts(eps[:2], KpiThresholds())
    []
    """
    cycles = sorted((e for e in episodes if e.end is not None), key=lambda e: e.start)
    return _runs([e.start for e in cycles], [e.end or e.start for e in cycles], t.chatter_count,
                 t.chatter_window_s)


def floods(episodes: Iterable[Episode], t: KpiThresholds) -> list[tuple[float, float, int]]:
    """EEMUA 191 floods across the gateway: ``flood_count`` raises or more within ``flood_window_s``.

    >>> eps = [Episode(str(k), f"p{k}", 1000.0 + 30 * k) for k in range(12)] + [Episode("x", "p", 9000.0)]
    >>> floods(eps, KpiThresholds())
    [(1000.0, 1330.0, 12)]
    """
    return bursts(sorted(e.start for e in episodes), t.flood_count, t.flood_window_s)


def stale(episodes: Iterable[Episode], now: float, t: KpiThresholds) -> list[Episode]:
    """The active alarms older than ``stale_s``.

    >>> [e.id for e in stale([Episode("a", "p", 0.0), Episode("b", "q", 90_000.0)], 100_000.0, KpiThresholds())]
    ['a']
    """
    return [e for e in episodes if e.end is None and now - e.start > t.stale_s]


def bad_actors(episodes: Iterable[Episode], top: int) -> list[dict]:
    """The ``top`` assets by alarm count, with their share of all alarms.

    >>> bad_actors([Episode("1", "p1", 0), Episode("2", "p1", 1), Episode("3", "p2", 2)], 1)
    [{'asset': 'p1', 'alarms': 2, 'share': 0.667}]
    """
    counts = Counter(e.asset for e in episodes)
    total = sum(counts.values())
    return [{"asset": a, "alarms": n, "share": round(n / total, 3)}
            for a, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]


# -- reports ---------------------------------------------------------------------------------------

def figures(episodes: Sequence[Episode], span_s: float, now: float, t: KpiThresholds) -> dict:
    """The KPIs of one group of episodes (one asset, or the gateway) over the span ending ``now``.

    >>> eps = [Episode("a", "p", 0.0, end=60.0, raised_at=0.0, acked_at=20.0, verdict="false_alarm"),
    ...        Episode("b", "p", 100.0, end=200.0, raised_at=100.0, acked_at=140.0, verdict="fault"),
    ...        Episode("c", "p", 300.0, raised_at=300.0)]
    >>> f = figures(eps, 86400.0, 400.0, KpiThresholds())
    >>> f["alarms"], f["per_day"], f["false_alarm_share"], f["without_verdict"], f["ack_median_s"]
    (3, 3.0, 0.5, 1, 30.0)
    >>> f["time_in_alarm_s"], f["chattering"], f["active"]
    (260.0, 0, 1)
    """
    delays = ack_delays(episodes)
    durations = [time_in_alarm(e, now) for e in episodes]
    verdicts = [e.verdict for e in episodes]
    chatter = chatter_bursts(episodes, t) if _one_asset(episodes) else []
    return {
        "alarms": len(episodes),
        "per_day": round(per_day(len(episodes), span_s), 3),
        "false_alarm_share": _round(false_alarm_share(verdicts)),
        "verdicts": dict(Counter(v for v in verdicts if v is not None)),
        "without_verdict": sum(v is None for v in verdicts),
        "acknowledged": len(delays),
        "ack_median_s": _round(percentile(delays, 50)),
        "ack_p90_s": _round(percentile(delays, 90)),
        "time_in_alarm_s": round(sum(durations), 3),
        "time_in_alarm_median_s": _round(percentile(durations, 50)),
        "active": sum(e.end is None for e in episodes),
        "chattering": len(chatter),
    }


def _one_asset(episodes: Sequence[Episode]) -> bool:
    return len({e.asset for e in episodes}) <= 1


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def report(episodes: Sequence[Episode], now: float, t: KpiThresholds,
           spans: dict[str, float] = SPANS) -> dict:
    """The KPIs of every span (``24h``, ``7d``, ``30d``) ending ``now``, for the gateway and per asset,
    with the chattering assets, floods, stale alarms and bad actors of each span.

    ``episodes`` are those that started within the longest span, and any still active.
    """
    out: dict = {"now": now, "thresholds": {k: getattr(t, k) for k in t.__slots__}, "spans": {}}
    stale_now = [_brief(e, now) for e in stale(episodes, now, t)]  # the same in every span: they are active now
    for name, span_s in spans.items():
        out["spans"][name] = span_report(episodes, now, span_s, t, stale_now)
    out["live"] = live_load(episodes, now, t)
    return out


def span_report(episodes: Sequence[Episode], now: float, span_s: float, t: KpiThresholds,
                stale_now: list[dict] | None = None) -> dict:
    """One span's KPIs: the gateway's figures, each asset's, and what stood out in it (``stale_now``: the
    stale alarms, when the caller has them already)."""
    since = now - span_s
    inside = [e for e in episodes if since <= e.start <= now]
    by_asset: dict[str, list[Episode]] = {}
    for e in inside:
        by_asset.setdefault(e.asset, []).append(e)
    assets = {a: figures(eps, span_s, now, t) for a, eps in sorted(by_asset.items())}
    flood_list = floods(inside, t)
    gateway = figures(inside, span_s, now, t)
    gateway["chattering"] = sum(f["chattering"] for f in assets.values())
    return {
        "since": since, "span_s": span_s, "gateway": gateway, "assets": assets,
        "chattering_assets": [a for a, f in assets.items() if f["chattering"]],
        "floods": [{"start": s, "end": e, "alarms": n} for s, e, n in flood_list],
        "stale": stale_now if stale_now is not None else [_brief(e, now) for e in stale(episodes, now, t)],
        "bad_actors": bad_actors(inside, t.bad_actors),
    }


def live_load(episodes: Sequence[Episode], now: float, t: KpiThresholds) -> dict:
    """What is happening now: a flood (``flood_count`` raises in the last ``flood_window_s``), the
    assets chattering (``chatter_count`` cycles in the last ``chatter_window_s``) and the stale alarms.

    >>> eps = [Episode(str(k), "p1", 1000.0 + 60 * k, end=1000.0 + 60 * k + 20) for k in range(3)]
    >>> live = live_load(eps, 1200.0, KpiThresholds())
    >>> live["flood"], live["chattering"], live["raised_in_flood_window"]
    (False, [{'asset': 'p1', 'cycles': 3, 'since': 1000.0}], 3)
    >>> live_load(eps, 5000.0, KpiThresholds())["chattering"]
    []
    """
    recent = [e for e in episodes if now - t.flood_window_s <= e.start <= now]
    by_asset: dict[str, list[Episode]] = {}
    for e in episodes:
        if now - t.chatter_window_s <= e.start <= now and e.end is not None:
            by_asset.setdefault(e.asset, []).append(e)
    chattering = [{"asset": a, "cycles": len(eps), "since": min(e.start for e in eps)}
                  for a, eps in sorted(by_asset.items()) if len(eps) >= t.chatter_count]
    return {
        "now": now,
        "flood": len(recent) >= t.flood_count,
        "raised_in_flood_window": len(recent),
        "flood_since": min((e.start for e in recent), default=None) if len(recent) >= t.flood_count else None,
        "chattering": chattering,
        "stale": [_brief(e, now) for e in stale(episodes, now, t)],
        "thresholds": {"flood_count": t.flood_count, "flood_window_s": t.flood_window_s,
                       "chatter_count": t.chatter_count, "chatter_window_s": t.chatter_window_s,
                       "stale_s": t.stale_s},
    }


def _brief(e: Episode, now: float) -> dict:
    return {"id": e.id, "asset": e.asset, "start": e.start, "active_s": round(now - e.start, 3)}
