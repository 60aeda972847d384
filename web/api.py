"""The JSON API: live status from the appliance, history from the store, operator commands.

    GET  /api/status                         appliance.status(), live
    GET  /api/alarms?active=0|1&limit=N      stored alarm occurrences, newest first
    GET  /api/alarms/<id>/events             an alarm's stored transitions, oldest first
    GET  /api/scores?asset=&since=&limit=    stored scores (with ratio = value / threshold)
    GET  /api/readings?asset=&sensor=&since=&limit=
    GET  /api/dead-letters?since=&limit=     rejected input with a payload preview
    POST /api/alarms/<asset>/ack             {"user", "note"?}
    POST /api/alarms/<asset>/shelve          {"user", "duration_s", "note"?}
    POST /api/alarms/<asset>/mode            {"user", "mode": in_service|suppressed|out_of_service, "note"?}
    GET  /healthz                            200 {"status": "ok"} or 503 with the problems
    GET  /metrics                            Prometheus text

Errors are JSON ``{"error": ..., "field": ...}``: 400 for a bad parameter (the
field is named), 415 for a command that is not JSON, 404 for an unknown alarm
id, 409 when the alarm book refuses a command (its message is passed on), 503
when the appliance or the store cannot answer.

Reads of the store use a read-only SQLite connection opened per request (the
writer thread keeps the only write connection). Commands go through
``appliance.command``, which runs them on the appliance's event loop; this
module never touches the alarm book directly.
"""

from __future__ import annotations

import concurrent.futures
import logging
import sqlite3

from flask import Blueprint, Response, current_app, g, jsonify, request

from appliance.actions.alarms import AlarmCommandError
from appliance.actions.mitigation import MitigationError
from web import queries
from web.context import WebContext
from web.validation import (MAX_NAME, ApiError, bool_arg, check_name, duration_field, float_arg, json_body, limit_arg,
                            mode_field, name_arg, note_field, user_field)

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__)


def _ctx() -> WebContext:
    return current_app.extensions["appliance_web"]


def _reader() -> sqlite3.Connection:
    if "store_reader" not in g:
        try:
            g.store_reader = _ctx().open_reader()
        except sqlite3.Error as exc:
            log.warning("web: store not readable path=%s error=%r", _ctx().store_path, exc)
            raise ApiError(f"the local store cannot be read: {exc}", status=503) from None
    return g.store_reader


@bp.teardown_app_request
def _close_reader(_exc) -> None:
    conn = g.pop("store_reader", None)
    if conn is not None:
        conn.close()


@bp.app_errorhandler(ApiError)
def _api_error(err: ApiError):
    return jsonify(err.to_dict()), err.status


def _query(fn, *args):
    try:
        return fn(_reader(), *args)
    except sqlite3.Error as exc:
        log.warning("web: store query failed query=%s error=%r", fn.__name__, exc)
        raise ApiError(f"the local store cannot be read: {exc}", status=503) from None


# -- live state -----------------------------------------------------------------
@bp.get("/api/status")
def status():
    return jsonify(_ctx().status())


@bp.get("/healthz")
def healthz():
    problems = {}
    try:
        _ctx().status()
    except ApiError as err:
        problems["appliance"] = err.message
    try:
        conn = _ctx().open_reader()
        try:
            queries.ping(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        problems["store"] = str(exc)
    if problems:
        return jsonify({"status": "unhealthy", "problems": problems}), 503
    return jsonify({"status": "ok"})


@bp.get("/metrics")
def metrics():
    body, content_type = _ctx().metrics()
    return Response(body, mimetype=None, content_type=content_type)


# -- history from the store -------------------------------------------------------
@bp.get("/api/alarms")
def alarms():
    active = bool_arg(request.args, "active")
    limit = limit_arg(request.args, default=100)
    rows = _query(queries.alarms, active, limit)
    return jsonify({"alarms": rows, "count": len(rows)})


@bp.get("/api/alarms/<alarm_id>/events")
def alarm_events(alarm_id: str):
    alarm_id = check_name(alarm_id, "alarm_id", max_len=MAX_NAME + len("point-"))
    rows = _query(queries.alarm_events, alarm_id)
    if rows is None:
        raise ApiError(f"no alarm with id {alarm_id!r}", "alarm_id", status=404)
    return jsonify({"alarm_id": alarm_id, "events": rows, "count": len(rows)})


@bp.get("/api/scores")
def scores():
    asset = name_arg(request.args, "asset")
    since = float_arg(request.args, "since")
    limit = limit_arg(request.args, default=120)
    rows = _query(queries.scores, asset, since, limit)
    return jsonify({"scores": rows, "count": len(rows)})


@bp.get("/api/readings")
def readings():
    asset = name_arg(request.args, "asset")
    sensor = name_arg(request.args, "sensor")
    since = float_arg(request.args, "since")
    limit = limit_arg(request.args, default=100)
    rows = _query(queries.readings, asset, sensor, since, limit)
    return jsonify({"readings": rows, "count": len(rows)})


@bp.get("/api/dead-letters")
def dead_letters():
    since = float_arg(request.args, "since")
    limit = limit_arg(request.args, default=50)
    rows = _query(queries.dead_letters, since, limit)
    return jsonify({"dead_letters": rows, "count": len(rows)})


# -- operator commands ---------------------------------------------------------
@bp.post("/api/alarms/<asset>/ack")
def acknowledge(asset: str):
    body = json_body(request)
    return _command("acknowledge", asset=check_name(asset, "asset"), user=user_field(body),
                    note=note_field(body))


@bp.post("/api/alarms/<asset>/shelve")
def shelve(asset: str):
    body = json_body(request)
    return _command("shelve", asset=check_name(asset, "asset"), user=user_field(body),
                    duration_s=duration_field(body), note=note_field(body))


@bp.post("/api/alarms/<asset>/mode")
def set_mode(asset: str):
    body = json_body(request)
    return _command("set_mode", asset=check_name(asset, "asset"), user=user_field(body),
                    mode=mode_field(body), note=note_field(body))


@bp.get("/api/actions/pending")
def pending_actions():
    status = _ctx().appliance.status().get("mitigation") or {}
    return jsonify({"pending": status.get("pending_approval", []), "armed": status.get("armed")})


@bp.post("/api/actions/<proposal_id>/approve")
def approve_action(proposal_id: str):
    body = json_body(request)
    return _command("approve_action", proposal_id=check_name(proposal_id, "proposal_id"),
                    user=user_field(body))


@bp.post("/api/actions/<proposal_id>/reject")
def reject_action(proposal_id: str):
    body = json_body(request)
    return _command("reject_action", proposal_id=check_name(proposal_id, "proposal_id"),
                    user=user_field(body), note=note_field(body))


def _command(name: str, **kwargs):
    try:
        events = _ctx().appliance.command(name, **kwargs)
    except (AlarmCommandError, MitigationError) as exc:
        return jsonify({"error": str(exc), "command": name}), 409
    except (concurrent.futures.TimeoutError, TimeoutError):
        log.warning("web: command timed out command=%s asset=%s", name, kwargs.get("asset"))
        return jsonify({"error": "the appliance did not answer in time; the command may still apply",
                        "command": name}), 503
    log.info("web: command %s asset=%s user=%s", name, kwargs.get("asset"), kwargs.get("user"))
    out = []
    for e in events or ():
        out.append(e.to_dict() if hasattr(e, "to_dict") else e)
    return jsonify({"ok": True, "command": name, "events": out})
