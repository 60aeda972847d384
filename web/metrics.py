"""Prometheus exposition built from the appliance's ``status()``.

A custom collector on a private registry: each scrape reads one fresh status
snapshot, so the metrics are always consistent with ``/api/status`` and nothing
in the detection path has to know about Prometheus. The private registry keeps
the process-wide default one (and its Python/GC collectors) out of the output,
and lets several apps live in one process (tests).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from appliance.core import AlarmState, PointMode

ALARM_STATES = tuple(s.value for s in AlarmState)
# A point without an occurrence yet shows its mode as its state; every mode but in
# service has the state of the same name (AlarmState() raises here if one ever has not).
_MODE_STATE = {m.value: m.alarm_state.value for m in PointMode if m.alarm_state is not None}
_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(name: str) -> str:
    """``name`` as a valid Prometheus metric name part (lower case, ``_`` for anything else)."""
    name = _BAD_CHARS.sub("_", str(name)).strip("_").lower() or "unnamed"
    return name if not name[0].isdigit() else f"_{name}"


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    return None


def _flatten(prefix: str, value: Any, out: dict[str, float], depth: int = 0) -> None:
    """Numeric leaves of a component's status, keyed ``a_b_c``; lists and text are skipped."""
    n = _number(value)
    if n is not None:
        out[prefix] = n
    elif isinstance(value, dict) and depth < 3:
        for k, v in value.items():
            _flatten(f"{prefix}_{metric_name(k)}" if prefix else metric_name(k), v, out, depth + 1)


class StatusCollector(Collector):
    """Metric families from one fresh ``status()`` snapshot per scrape."""

    def __init__(self, status: Callable[[], dict]):
        self._status = status

    def collect(self) -> Iterator:
        s = self._status()
        names = set()
        for fam in (*self._appliance(s), *self._alarms(s), *self._ingest(s), *self._components(s)):
            # A counter whose name collides with a fixed metric would make the whole
            # exposition invalid for the scraper; keep the first and drop the clash.
            if fam.name not in names:
                names.add(fam.name)
                yield fam

    @staticmethod
    def _appliance(s: dict) -> Iterator:
        model = s.get("model") or {}
        info = GaugeMetricFamily("appliance_info", "Site and model version (value is always 1)",
                                 labels=["site", "model_version"])
        info.add_metric([str(s.get("site", "")), str(model.get("version", ""))], 1.0)
        yield info
        if _number(s.get("uptime_s")) is not None:
            yield GaugeMetricFamily("appliance_uptime_seconds", "Seconds since the appliance started",
                                    value=_number(s["uptime_s"]))
        clock = s.get("clock") or {}
        if _number(clock.get("offset_s")) is not None:
            # Not 0 while the gateway's clock is unsynchronised and behind: "now" is the data's time.
            yield GaugeMetricFamily("appliance_clock_data_offset_seconds",
                                    "Offset added to the gateway clock, taken from the data's timestamps",
                                    value=_number(clock["offset_s"]))
        if _number(clock.get("synchronised")) is not None:
            yield GaugeMetricFamily("appliance_clock_synchronised", "1 if the system clock is synchronised",
                                    value=_number(clock["synchronised"]))
        if _number(model.get("threshold")) is not None:
            yield GaugeMetricFamily("appliance_model_threshold", "Anomaly score threshold of the model",
                                    value=_number(model["threshold"]))
        # One metric per counter (readings, windows_scored, alarm_raised...): names
        # are stable in practice and read better in PromQL than a label would.
        for name, value in sorted((s.get("counters") or {}).items()):
            n = _number(value)
            if n is not None:
                yield CounterMetricFamily(f"appliance_{metric_name(name)}", f"Appliance counter {name}", value=n)
        dead = CounterMetricFamily("appliance_dead_letters_by_reason", "Rejected inputs by reason",
                                   labels=["reason"])
        for reason, value in sorted((s.get("dead_letters_by_reason") or {}).items()):
            if _number(value) is not None:
                dead.add_metric([str(reason)], _number(value))
        yield dead
        for key, value in sorted((s.get("windows") or {}).items()):
            if _number(value) is not None:
                yield GaugeMetricFamily(f"appliance_windowing_{metric_name(key)}",
                                        f"Window builder: {key}", value=_number(value))
        for key, value in sorted((s.get("in_flight") or {}).items()):
            if _number(value) is not None:
                yield GaugeMetricFamily(f"appliance_in_flight_{metric_name(key)}",
                                        f"Readings accepted, not yet stored: {key}", value=_number(value))
        latency = s.get("latency") or {}
        lat = GaugeMetricFamily("appliance_detection_latency_microseconds",
                                "Reading-in to decision-out time on the detection path", labels=["quantile"])
        for q, key in (("0.5", "p50_us"), ("0.99", "p99_us"), ("1", "max_us")):
            if _number(latency.get(key)) is not None:
                lat.add_metric([q], _number(latency[key]))
        yield lat
        silent = GaugeMetricFamily("appliance_sensor_silent_seconds", "Silent sensors and for how long",
                                   labels=["asset", "sensor"])
        for item in s.get("silent_sensors") or ():
            if isinstance(item, dict) and _number(item.get("silent_for_s")) is not None:
                silent.add_metric([str(item.get("asset", "")), str(item.get("sensor", ""))],
                                  _number(item["silent_for_s"]))
        yield silent

    @staticmethod
    def _alarms(s: dict) -> Iterator:
        state = GaugeMetricFamily("appliance_alarm_state", "Current alarm state per asset (1 = in that state)",
                                  labels=["asset", "state"])
        active = GaugeMetricFamily("appliance_alarm_active", "1 while the asset's alarm is active",
                                   labels=["asset", "level"])
        peak = GaugeMetricFamily("appliance_alarm_peak_ratio", "Peak score / threshold of the current alarm",
                                 labels=["asset"])
        seen = set()
        for a in s.get("alarms") or ():
            asset = str(a.get("asset", ""))
            seen.add(asset)
            for st in ALARM_STATES:
                state.add_metric([asset, st], 1.0 if a.get("state") == st else 0.0)
            active.add_metric([asset, str(a.get("level", ""))], 1.0 if a.get("active") else 0.0)
            if _number(a.get("peak_ratio")) is not None:
                peak.add_metric([asset], _number(a["peak_ratio"]))
        # Assets with a point but no occurrence yet are in state normal (or their mode).
        for asset, mode in sorted((s.get("point_modes") or {}).items()):
            if asset in seen:
                continue
            current = _MODE_STATE.get(str(mode), AlarmState.NORMAL.value)
            for st in ALARM_STATES:
                state.add_metric([str(asset), st], 1.0 if st == current else 0.0)
        yield state
        yield active
        yield peak
        # "Operating point not seen in training": its own status, never an alarm state.
        unseen = GaugeMetricFamily("appliance_operating_point_unseen",
                                   "1 while the asset runs at an operating point its model's training never saw",
                                   labels=["asset"])
        for asset in sorted(set(s.get("point_modes") or {}) | set(s.get("operating_points") or {})):
            unseen.add_metric([str(asset)], 1.0 if asset in (s.get("operating_points") or {}) else 0.0)
        yield unseen

    @staticmethod
    def _ingest(s: dict) -> Iterator:
        """Gaps in the inputs' data (readings lost upstream), from each input's ``gaps`` status."""
        gaps = CounterMetricFamily("appliance_ingest_gaps", "Gaps found in sensors' data, per input",
                                   labels=["input"])
        missing = CounterMetricFamily("appliance_ingest_missing_readings",
                                      "Readings missing in those gaps (estimated from each sensor's period)",
                                      labels=["input"])
        per_sensor = CounterMetricFamily("appliance_ingest_sensor_gaps", "Gaps per sensor (the worst sensors)",
                                         labels=["input", "asset", "sensor"])
        for name, st in sorted((s.get("inputs") or {}).items()):
            g = st.get("gaps") if isinstance(st, dict) else None
            if not isinstance(g, dict):
                continue
            if _number(g.get("gaps")) is not None:
                gaps.add_metric([str(name)], _number(g["gaps"]))
            if _number(g.get("missing_estimate")) is not None:
                missing.add_metric([str(name)], _number(g["missing_estimate"]))
            for item in g.get("by_sensor") or ():
                if isinstance(item, dict) and _number(item.get("gaps")) is not None:
                    per_sensor.add_metric([str(name), str(item.get("asset", "")), str(item.get("sensor", ""))],
                                          _number(item["gaps"]))
        yield gaps
        yield missing
        yield per_sensor

    @staticmethod
    def _components(s: dict) -> Iterator:
        fam = GaugeMetricFamily("appliance_component_stat",
                                "Numeric status values of the input and output plugins (store, history...)",
                                labels=["component", "name", "key"])
        for group, label in (("inputs", "input"), ("outputs", "output")):
            for name, st in sorted((s.get(group) or {}).items()):
                flat: dict[str, float] = {}
                _flatten("", st, flat)
                for key, value in sorted(flat.items()):
                    fam.add_metric([label, str(name), key], value)
        yield fam


def status_registry(status: Callable[[], dict]) -> CollectorRegistry:
    """A private registry whose only collector reads ``status()`` at each scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text exposition format."""
    return generate_latest(registry)
