"""What the web app needs from the rest of the appliance, held on ``app.extensions``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from prometheus_client import CONTENT_TYPE_LATEST

from appliance.store import StoreReader, StoreUnavailable
from appliance.store.kpis import KpiThresholds
from web import metrics as web_metrics
from web.kpi_source import KpiSource, metrics_text
from web.live import LiveHub
from web.system import ProcessMeter
from web.validation import ApiError

log = logging.getLogger(__name__)

STATUS_ATTEMPTS = 3


class ApplianceLike(Protocol):
    """The calls the dashboard makes on the appliance (the real one or a test fake)."""

    def status(self) -> dict: ...

    def command(self, name: str, **kwargs) -> Any: ...

    def output(self, name: str) -> Any: ...


class WebContext:
    """The appliance, its store (read only) and the metrics source of one web app."""

    def __init__(self, appliance: ApplianceLike, store_path: str | Path,
                 metrics_provider: Callable[[], str | bytes] | None = None, max_streams: int = 8,
                 kpi_thresholds: KpiThresholds = KpiThresholds(), kpi_cache_s: float = 10.0):
        self.appliance = appliance
        self.store = StoreReader(store_path)
        self.kpis = KpiSource(self.store, kpi_thresholds, self.gateway_now, kpi_cache_s)
        self.metrics_provider = metrics_provider
        self.registry = None if metrics_provider is not None else web_metrics.status_registry(self.status)
        self.live = LiveHub(max_streams)
        self.meter = ProcessMeter()
        listen = getattr(appliance, "add_event_listener", None)
        if callable(listen):
            listen(self.live.on_change)

    def close(self) -> None:
        """The server is stopping: end the live streams so their threads are free."""
        self.live.close()

    def history(self):
        """The appliance's history sink (local trends), if it has one."""
        out = self.appliance.output("history") if hasattr(self.appliance, "output") else None
        return getattr(out, "history", None)

    def detector(self):
        return getattr(self.appliance, "detector", None)

    def status(self) -> dict:
        """A status snapshot taken from a web thread.

        The appliance builds it from structures its event loop owns; a snapshot
        taken at the instant a new asset appears can fail with "dictionary
        changed size during iteration". That is transient, so try again before
        reporting the appliance unavailable.
        """
        last: Exception | None = None
        for _ in range(STATUS_ATTEMPTS):
            try:
                s = self.appliance.status()
            except RuntimeError as exc:
                last = exc
                continue
            except Exception as exc:
                log.exception("web: appliance status failed")
                raise ApiError(f"appliance status unavailable: {type(exc).__name__}: {exc}", status=503) from None
            if not isinstance(s, dict):
                raise ApiError("appliance status is not a mapping", status=503)
            return s
        log.warning("web: appliance status failed after %d attempts error=%r", STATUS_ATTEMPTS, last)
        raise ApiError(f"appliance status unavailable: {last}", status=503)

    def gateway_now(self) -> float:
        """The gateway's "now": the wall clock plus the offset its clock keeps while behind the data."""
        try:
            offset = (self.status().get("clock") or {}).get("offset_s")
        except ApiError:
            offset = None
        return time.time() + (offset if isinstance(offset, (int, float)) and not isinstance(offset, bool) else 0.0)

    def metrics(self) -> tuple[bytes, str]:
        """The Prometheus exposition (the status', then the alarm KPIs') and its content type."""
        if self.metrics_provider is not None:
            body = self.metrics_provider()
            body = body.encode() if isinstance(body, str) else bytes(body)
        else:
            body = web_metrics.render(self.registry)
        return body + self._kpi_metrics(), CONTENT_TYPE_LATEST

    def _kpi_metrics(self) -> bytes:
        try:
            return metrics_text(self.kpis)
        except StoreUnavailable as exc:  # the status' metrics still go out; /healthz says what is wrong
            log.warning("web: alarm KPIs not in /metrics, store unreadable error=%s", exc)
            return b""
