"""The dashboard's pages and the sign-in and sign-out forms.

Each page is a server-rendered shell; its data comes from the JSON API (see
:mod:`web.api`), refreshed by polling and at once when the live event stream
says something changed. Everything a page loads ships in ``web/static`` (uPlot
for the charts is vendored there), so it works on a gateway with no internet.
"""

from __future__ import annotations

import hashlib
import math
import time
from functools import lru_cache
from pathlib import Path

from flask import Blueprint, current_app, g, jsonify, redirect, render_template, request, url_for

from appliance.accounts import LoginRefused
from appliance.core.severity import BANDS, EXPLANATION, severity
from web.api import operating_point_view
from web.auth import auth, client_addr, public, requires, safe_next
from web.trends import DEFAULT_RANGE, RANGES
from web.validation import MAX_NAME, ApiError, check_name, json_body

bp = Blueprint("pages", __name__)

POLL_MS = 2000
NAV = (("pages.overview", "Overview"), ("pages.alarms", "Alarms"), ("kpis.kpi_page", "KPIs"),
       ("pages.mitigation", "Mitigation"),
       ("pages.model", "Model"), ("pages.system", "System"))


@lru_cache(maxsize=64)
def _digest(path: str, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


@bp.app_template_global()
def static_url(filename: str) -> str:
    """URL of a static file with its content hash, so browsers cache it safely."""
    path = Path(current_app.static_folder) / filename
    try:
        version = _digest(str(path), path.stat().st_mtime_ns)
    except OSError:
        version = "missing"
    return url_for("static", filename=filename, v=version)


def _utc(ts: float | None) -> str:
    """A stored instant as the pages print it.

    >>> _utc(1700000000.0)
    '2023-11-14 22:13:20 UTC'
    """
    return "–" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _page(template: str, active: str, **kw):
    poll_ms = current_app.config.get("DASHBOARD_POLL_MS", POLL_MS)
    return render_template(template, nav=NAV, active=active, poll_ms=poll_ms, user=g.user,
                           severity_explanation=EXPLANATION, severity_bands=BANDS,
                           threshold_severity=severity(1.0), **kw)


# -- signing in and out --------------------------------------------------------------
@bp.get("/login")
@public
def login():
    if g.user is not None:
        return redirect(safe_next(request.args.get("next")))
    return render_template("login.html", next=safe_next(request.args.get("next")), error=None, name="")


@bp.post("/login")
@public
def login_post():
    as_json = request.is_json
    if as_json:
        try:
            data = json_body(request)
        except ApiError as err:
            return jsonify(err.to_dict()), err.status
    else:
        data = request.form
    name = data.get("name") if isinstance(data.get("name"), str) else ""
    password = data.get("password") if isinstance(data.get("password"), str) else ""
    target = safe_next(data.get("next") if isinstance(data.get("next"), str) else None)
    name = name.strip()[:MAX_NAME]
    a = auth()
    try:
        if not name or not password:
            raise LoginRefused("enter your user name and password")
        user = a.accounts.authenticate(name, password, client_addr())
    except LoginRefused as refused:
        status = 429 if refused.retry_after else 401
        headers = {"Retry-After": str(max(1, math.ceil(refused.retry_after)))} if refused.retry_after else {}
        if as_json:
            return jsonify({"error": str(refused)}), status, headers
        return render_template("login.html", next=target, error=str(refused), name=name), status, headers
    a.sign_in(user)
    if as_json:
        return jsonify({"ok": True, "user": user.name, "role": user.role})
    return redirect(target, code=303)


@bp.post("/logout")
@public
def logout():
    auth().sign_out()
    if request.is_json:
        return jsonify({"ok": True})
    return redirect(url_for("pages.login"), code=303)


# -- pages ------------------------------------------------------------------------------
@bp.get("/")
@requires("viewer")
def overview():
    return _page("overview.html", "pages.overview")


@bp.get("/assets/<asset>")
@requires("viewer")
def asset(asset: str):
    try:
        asset = check_name(asset, "asset")
    except ApiError as err:
        return err.message, 400
    range_key = request.args.get("range", DEFAULT_RANGE)
    if range_key not in RANGES:
        range_key = DEFAULT_RANGE
    try:
        operating_point = operating_point_view(asset)
    except ApiError:  # the store cannot be read now: the page still loads, its data from the API
        operating_point = None
    return _page("asset.html", "pages.overview", asset=asset, ranges=list(RANGES), range_key=range_key,
                 operating_point=operating_point, utc=_utc)


@bp.get("/alarms")
@requires("viewer")
def alarms():
    return _page("alarms.html", "pages.alarms")


@bp.get("/mitigation")
@requires("viewer")
def mitigation():
    return _page("mitigation.html", "pages.mitigation")


@bp.get("/model")
@requires("viewer")
def model():
    return _page("model.html", "pages.model")


@bp.get("/system")
@requires("viewer")
def system():
    return _page("system.html", "pages.system")
