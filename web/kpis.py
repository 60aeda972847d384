"""The alarm-system KPIs on the dashboard: the KPI page, its API, the live banner's API and ``/metrics``.

    GET /kpis                 the KPI page                                                    viewer
    GET /api/kpis             the report of every span (24h, 7d, 30d): gateway, per asset,   viewer
                              chattering assets, floods, stale alarms, bad actors
    GET /api/alarm-load       what is happening now: a flood, chattering assets, stale alarms viewer
                              (the banner every page shows)

The numbers are :mod:`appliance.store.kpis`' (thresholds from ``[web.kpis]``), computed
from the store read-only on the dashboard's threads, never on the detection path. One
report is reused for ``cache_s`` (10 s) by every page and scrape, so a busy dashboard
reads the store's alarm episodes at most once per interval. "Now" is the gateway's
(the status' clock offset added: a gateway whose clock is behind its data still sees
its latest alarms as recent).
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from appliance.store.kpis import SPANS
from web.api import _read
from web.auth import requires
from web.pages import _page

bp = Blueprint("kpis", __name__)


def _source():
    return current_app.extensions["appliance_web"].kpis


@bp.get("/api/kpis")
@requires("viewer")
def kpis():
    return jsonify(_read(_source().report))


@bp.get("/api/alarm-load")
@requires("viewer")
def alarm_load():
    return jsonify(_read(_source().live))


@bp.get("/kpis")
@requires("viewer")
def kpi_page():
    return _page("kpis.html", "kpis.kpi_page", spans=list(SPANS))
