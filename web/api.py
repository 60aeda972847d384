"""The JSON API: live status from the appliance, history from the store, operator commands.

    GET  /api/status                         appliance.status(), live
    GET  /api/alarms?active=0|1&limit=N      stored alarm occurrences, latest first
    GET  /api/alarms/<id>/events             an alarm's stored transitions, oldest first
    GET  /api/assets/<asset>/modes?limit=N   an alarm point's stored mode changes, latest first
    GET  /api/scores?asset=&since=&limit=    stored scores (with ratio = value / threshold)
    GET  /api/readings?asset=&sensor=&since=&limit=
    GET  /api/dead-letters?since=&code=&limit=   rejected input with a payload preview
    POST /api/alarms/<asset>/ack             {"user", "note"?}
    POST /api/alarms/<asset>/shelve          {"user", "duration_s", "note"?}
    POST /api/alarms/<asset>/mode            {"user", "mode": in_service|suppressed|out_of_service, "note"?}
    GET  /api/actions/pending                mitigation proposals waiting for approval
    GET  /api/actions/log?limit=N            the mitigation audit log, latest first
    POST /api/actions/<proposal_id>/approve  {"user"}
    POST /api/actions/<proposal_id>/reject   {"user", "note"?}
    GET  /healthz                            200 {"status": "ok"} or 503 with the problems
    GET  /metrics                            Prometheus text

Errors are JSON ``{"error": ..., "field": ...}``: 400 for a bad parameter (the
field is named), 415 for a command that is not JSON, 404 for an unknown alarm
id or a mitigation log without mitigation, 409 when the alarm book or the
mitigator refuses a command (its message is passed on), 503 when the appliance
or the store cannot answer.

The store is read through :class:`~appliance.store.store.StoreReader` (read
only, its own connection per call, so the writer thread is never held up).
Commands go through ``appliance.command``, which runs them on the appliance's
event loop and answers with the records they made; this module never touches
the alarm book or the mitigator's state directly.
"""

from __future__ import annotations

import concurrent.futures
import logging

from flask import Blueprint, Response, current_app, jsonify, request

from appliance.actions.alarms import AlarmCommandError
from appliance.actions.mitigation.mitigator import MitigationError
from appliance.store import StoreUnavailable
from appliance.sync.shadow import ModelCommandError
from web.context import WebContext
from web.validation import (ApiError, bool_arg, check_name, code_arg, duration_field, float_arg, json_body, limit_arg,
                            mode_field, name_arg, note_field, user_field)

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__)

PAYLOAD_PREVIEW = 300  # characters of a dead letter's payload shown; the store keeps all of it


def _ctx() -> WebContext:
    return current_app.extensions["appliance_web"]


@bp.app_errorhandler(ApiError)
def _api_error(err: ApiError):
    return jsonify(err.to_dict()), err.status


def _read(method, *args, **kwargs):
    """Call a store read method; an unreadable store is the gateway's trouble (503), not the client's."""
    try:
        return method(*args, **kwargs)
    except StoreUnavailable as exc:
        log.warning("web: store not readable query=%s path=%s error=%s", method.__name__, _ctx().store.path, exc)
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
        _ctx().store.ping()
    except StoreUnavailable as exc:
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
    rows = _read(_ctx().store.alarms, active=active, limit=limit)
    return jsonify({"alarms": rows, "count": len(rows)})


@bp.get("/api/alarms/<alarm_id>/events")
def alarm_events(alarm_id: str):
    alarm_id = check_name(alarm_id, "alarm_id")
    rows = _read(_ctx().store.alarm_events, alarm_id)
    if rows is None:
        raise ApiError(f"no alarm with id {alarm_id!r}", "alarm_id", status=404)
    return jsonify({"alarm_id": alarm_id, "events": rows, "count": len(rows)})


@bp.get("/api/assets/<asset>/modes")
def mode_changes(asset: str):
    asset = check_name(asset, "asset")
    limit = limit_arg(request.args, default=100)
    rows = _read(_ctx().store.mode_changes, asset, limit=limit)
    return jsonify({"asset": asset, "mode_changes": rows, "count": len(rows)})


@bp.get("/api/scores")
def scores():
    asset = name_arg(request.args, "asset")
    since = float_arg(request.args, "since")
    limit = limit_arg(request.args, default=120)
    rows = _read(_ctx().store.scores, asset=asset, since=since, limit=limit)
    return jsonify({"scores": rows, "count": len(rows)})


@bp.get("/api/readings")
def readings():
    asset = name_arg(request.args, "asset")
    sensor = name_arg(request.args, "sensor")
    since = float_arg(request.args, "since")
    limit = limit_arg(request.args, default=100)
    rows = _read(_ctx().store.readings, asset=asset, sensor=sensor, since=since, limit=limit)
    return jsonify({"readings": rows, "count": len(rows)})


@bp.get("/api/dead-letters")
def dead_letters():
    since = float_arg(request.args, "since")
    code = code_arg(request.args, "code")
    limit = limit_arg(request.args, default=50)
    # Four bytes per character at most in UTF-8: enough bytes for the preview whatever the payload.
    rows = _read(_ctx().store.dead_letters, since=since, code=code, limit=limit, payload_bytes=PAYLOAD_PREVIEW * 4)
    out = [_dead_letter_view(r) for r in rows]
    return jsonify({"dead_letters": out, "count": len(out)})


def _dead_letter_view(row: dict) -> dict:
    """A stored dead letter with a text preview of its payload, safe to show whatever the bytes are."""
    text = row["payload"].decode("utf-8", "replace")
    return {"id": row["id"], "source": row["source"], "code": row["code"], "detail": row["detail"],
            "received_at": row["received_at"], "size": row["size"], "payload": text[:PAYLOAD_PREVIEW],
            "truncated": len(text) > PAYLOAD_PREVIEW or row["size"] > len(row["payload"])}


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


# -- mitigation ------------------------------------------------------------------
@bp.get("/api/actions/pending")
def pending_actions():
    # From the status snapshot, which the appliance takes on its event loop: the
    # mitigator's pending proposals change there, not safe to walk from this thread.
    st = (_ctx().status().get("outputs") or {}).get("mitigation")
    if st is None:
        return jsonify({"enabled": False, "armed": False, "pending": []})
    return jsonify({"enabled": True, "armed": bool(st.get("armed")), "pending": st.get("pending_approval") or []})


@bp.get("/api/actions/log")
def action_log():
    limit = limit_arg(request.args, default=100)
    mitigation = _ctx().appliance.output("mitigation")
    if mitigation is None:
        raise ApiError("mitigation is not enabled", status=404)
    # The audit log is its own append-only database with a thread-safe reader.
    rows = mitigation.mitigator.audit_log(limit)
    return jsonify({"actions": rows, "count": len(rows)})


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


# -- sync and the model's life ----------------------------------------------------------
@bp.post("/api/sync/now")
def sync_now():
    """Open a connectivity window now (``duration_s`` optional): anomalies go up, models come in."""
    body = json_body(request)
    duration = body.get("duration_s")
    return _command("sync_now", **({"duration_s": duration_field(body)} if duration is not None else {}))


@bp.post("/api/model/<action>")
def model_command(action: str):
    """``promote`` or ``reject`` the candidate in shadow, or ``rollback`` to the previous model."""
    names = {"promote": "promote_model", "reject": "reject_model", "rollback": "rollback_model"}
    if action not in names:
        raise ApiError(f"action must be one of {', '.join(names)}", status=404)
    body = json_body(request)
    return _command(names[action], user=user_field(body), note=note_field(body))


def _command(name: str, **kwargs):
    """Run one operator command; the answer lists the records it made (alarm events, mode changes, actions)."""
    try:
        records = _ctx().appliance.command(name, **kwargs)
    except (AlarmCommandError, MitigationError, ModelCommandError) as exc:
        return jsonify({"error": str(exc), "command": name}), 409
    except (concurrent.futures.TimeoutError, TimeoutError):
        log.warning("web: command timed out command=%s asset=%s", name, kwargs.get("asset"))
        return jsonify({"error": "the appliance did not answer in time; the command may still apply",
                        "command": name}), 503
    log.info("web: command %s asset=%s user=%s", name, kwargs.get("asset"), kwargs.get("user"))
    return jsonify({"ok": True, "command": name,
                    "records": [r.to_dict() if hasattr(r, "to_dict") else r for r in records or ()]})
