"""The alarm KPI report of the dashboard's store, cached, and its gauges for ``/metrics`` (see :mod:`web.kpis`)."""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from appliance.store import StoreReader
from appliance.store.kpis import SPANS, KpiThresholds, episodes_from_rows, live_load, report


class KpiSource:
    """The KPI report of one store, cached ``cache_s`` seconds (thread-safe: the web's threads share it)."""

    def __init__(self, store: StoreReader, thresholds: KpiThresholds, now: Callable[[], float],
                 cache_s: float = 10.0):
        self.store = store
        self.thresholds = thresholds
        self.cache_s = cache_s
        self._now = now
        self._lock = threading.Lock()
        self._cached: tuple[float, dict] | None = None  # (monotonic time taken, report)

    def report(self) -> dict:
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < self.cache_s:
                return self._cached[1]
            now = self._now()
            longest = max(SPANS.values())
            episodes = episodes_from_rows(self.store.kpi_episodes(now - longest))
            out = report(episodes, now, self.thresholds)
            self._cached = (time.monotonic(), out)
            return out

    def live(self) -> dict:
        """The live load only: read fresh (the window is short), so a flood shows within a poll."""
        now = self._now()
        window = max(self.thresholds.flood_window_s, self.thresholds.chatter_window_s)
        rows = self.store.kpi_episodes(now - window)
        return live_load(episodes_from_rows(rows), now, self.thresholds)

    def forget(self) -> None:
        """Drop the cached report (a verdict was given: the page should show it at once)."""
        with self._lock:
            self._cached = None


# -- /metrics -------------------------------------------------------------------------------------

class KpiCollector:
    """Gauges of the KPI report: ``scope="gateway"`` (asset "") or ``scope="asset"``, per span."""

    def __init__(self, source: KpiSource):
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rep = self.source.report()
        labels = ["span", "scope", "asset"]
        fams = {key: GaugeMetricFamily(f"appliance_alarm_kpi_{name}", help_, labels=labels)
                for key, name, help_ in _GAUGES}
        ack = GaugeMetricFamily("appliance_alarm_kpi_ack_seconds", "Time to acknowledge (quantile over the span)",
                                labels=[*labels, "quantile"])
        for span, sr in rep["spans"].items():
            groups = [("gateway", "", sr["gateway"])] + [("asset", a, f) for a, f in sr["assets"].items()]
            for scope, asset, f in groups:
                for key, fam in fams.items():
                    if f.get(key) is not None:
                        fam.add_metric([span, scope, asset], float(f[key]))
                for q, key in (("0.5", "ack_median_s"), ("0.9", "ack_p90_s")):
                    if f.get(key) is not None:
                        ack.add_metric([span, scope, asset, q], float(f[key]))
        yield from fams.values()
        yield ack
        yield from _span_events(rep)
        yield from _live(rep["live"])


_GAUGES = (
    ("alarms", "alarms", "Alarms raised in the span"),
    ("per_day", "alarms_per_day", "Alarms per day over the span"),
    ("false_alarm_share", "false_alarm_share", "Share of the verdicts given that say false_alarm"),
    ("without_verdict", "without_verdict", "Alarms of the span nobody gave a verdict on"),
    ("time_in_alarm_s", "time_in_alarm_seconds", "Seconds in alarm, summed over the span's alarms"),
    ("chattering", "chattering_bursts", "Chattering bursts (raise-and-clear cycles close together)"),
)


def _span_events(rep: dict) -> Iterator[GaugeMetricFamily]:
    floods = GaugeMetricFamily("appliance_alarm_kpi_floods", "Alarm floods in the span (EEMUA 191)",
                               labels=["span"])
    stale = GaugeMetricFamily("appliance_alarm_kpi_stale", "Alarms active longer than the stale limit")
    for span, sr in rep["spans"].items():
        floods.add_metric([span], float(len(sr["floods"])))
    stale.add_metric([], float(len(rep["live"]["stale"])))
    yield floods
    yield stale


def _live(live: dict) -> Iterator[GaugeMetricFamily]:
    yield GaugeMetricFamily("appliance_alarm_flood_active", "1 while an alarm flood is going on",
                            value=1.0 if live["flood"] else 0.0)
    chat = GaugeMetricFamily("appliance_alarm_chattering", "1 for an asset chattering now", labels=["asset"])
    for c in live["chattering"]:
        chat.add_metric([c["asset"]], 1.0)
    yield chat


def metrics_text(source: KpiSource) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KpiCollector(source))
    return generate_latest(registry)
