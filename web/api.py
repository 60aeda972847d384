"""The JSON API: live status from the appliance, history from the store, operator commands.

Who may call what (see :mod:`web.auth`; every command is given in the name of
the signed-in user, and every POST needs the session's CSRF token):

    GET  /api/session                        who is signed in, the CSRF token, the timeouts   anyone
    POST /api/session/touch                  the user is active (restarts the idle clock)    viewer
    GET  /api/status                         appliance.status(), live, with severities        viewer
    GET  /api/events                         live alarm events and mode changes (SSE)        viewer
    GET  /api/severity                       what a severity means: explanation and bands    viewer
    GET  /api/assets                         every asset with its state and latest severity  viewer
    GET  /api/assets/<asset>/trend?range=    score and sensor trends, alarm episodes          viewer
    GET  /api/assets/<asset>/modes?limit=N   an alarm point's stored mode changes            viewer
    GET  /api/assets/<asset>/operating-point "operating point not seen in training": now, episodes, per day  viewer
    GET  /api/alarms?active=&asset=&limit=   stored alarm occurrences, latest first          viewer
    GET  /api/alarms/<id>/events             an alarm's stored transitions, oldest first     viewer
    GET  /api/alarms/<id>/journal            transitions, mode changes and comments, in order viewer
    POST /api/alarms/<id>/comments           {"text"}                                         technician
    GET  /api/alarms/<id>/verdicts           the episode's verdicts, oldest first (last = label) viewer
    POST /api/alarms/<id>/verdict            {"verdict", "cause"?, "note"?, "replaces"?}        technician
    GET  /api/verdicts/causes                the verdicts and the configured fault causes     viewer
    GET  /api/kpis, /api/alarm-load          alarm-system KPIs, the live load (web/kpis.py)   viewer
    GET  /api/scores?asset=&since=&limit=    stored scores (ratio and severity)               viewer
    GET  /api/readings?asset=&sensor=&since=&limit=                                           viewer
    GET  /api/dead-letters?since=&code=&limit=   rejected input with a payload preview        viewer
    POST /api/alarms/<asset>/ack             {"note"?}                                        technician
    POST /api/alarms/<asset>/shelve          {"duration_s", "note"?}                          technician
    POST /api/alarms/<asset>/mode            {"mode": in_service, "note"?}                    technician
                                             {"mode": suppressed|out_of_service, "note"?}     engineer
    GET  /api/actions/pending                mitigation proposals waiting for approval        viewer
    GET  /api/actions/log?limit=N            the mitigation audit log, latest first           viewer
    POST /api/actions/<proposal_id>/approve  {}                                               engineer
    POST /api/actions/<proposal_id>/reject   {"note"?}                                        engineer
    POST /api/mitigation/arm                 {"armed": true|false, "note"?}                   engineer
    POST /api/sync/now                       {"duration_s"?}                                  engineer
    GET  /api/model                          the model: version, training, INT8 vs FP32, shadow, history  viewer
    POST /api/model/<promote|reject|rollback>  {"note"?}                                      engineer
    GET  /api/system                         connectors, outboxes, silent sensors, CPU, memory  viewer
    GET  /api/auth-log?limit=N               sign-ins, failures, sign-outs, account changes  engineer
    GET  /api/users                          the accounts (no hashes)                         engineer
    GET  /healthz                            200 {"status": "ok"} or 503 with the problems    anyone
    GET  /metrics                            Prometheus text; bearer token or a session       token/viewer

Errors are JSON ``{"error": ..., "field": ...}`` with a one-line reason: 400 for
a bad parameter or body (the field is named; a body nested too deep), 401 when
not signed in, 403 for a role that may not, 404 for an unknown id, 409 when the
alarm book, the mitigator or the model lifecycle refuses a command (its message
is passed on), 413 for a body over 64 KiB, 415 for a command that is not JSON,
503 when the appliance or the store cannot answer.

The store is read through :class:`~appliance.store.store.StoreReader` (read
only, its own connection per call, so the writer thread is never held up).
Commands go through ``appliance.command``, which runs them on the appliance's
event loop and answers with the records they made; this module never touches
the alarm book or the mitigator's state directly.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from pathlib import Path

from flask import Blueprint, Response, current_app, g, jsonify, request, stream_with_context
from flask_wtf.csrf import generate_csrf

from appliance.actions.alarms import AlarmCommandError
from appliance.actions.mitigation.mitigator import MitigationError
from appliance.core.records import OPERATING_POINT_WORDING
from appliance.core.severity import BANDS, EXPLANATION, band, severity
from appliance.store import CommentError, StoreUnavailable
from appliance.store.comments import MAX_COMMENT
from appliance.store.verdicts import DEFAULT_CAUSES, Verdict, VerdictError
from appliance.lifecycle.shadow import ModelCommandError
from web import trends
from web.auth import auth, current_user, public, requires
from web.context import WebContext
from web.validation import (ApiError, bool_arg, bool_field, check_name, choice_arg, code_arg, duration_field,
                            float_arg, json_body, limit_arg, mode_field, name_arg, note_field, text_field)

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__)

PAYLOAD_PREVIEW = 300  # characters of a dead letter's payload shown; the store keeps all of it
ENGINEER_MODES = ("suppressed", "out_of_service")


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
        log.warning("web: store not readable query=%s path=%s error=%s", getattr(method, "__name__", method),
                    _ctx().store.path, exc)
        raise ApiError(f"the local store cannot be read: {exc}", status=503) from None


def _sev(ratio) -> dict:
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool):
        return {"severity": None, "band": None}
    s = severity(float(ratio))
    return {"severity": s, "band": band(s)}


def _alarm_view(a: dict) -> dict:
    """An alarm dict with the severity of its peak (the ratio stays, for engineers and tools)."""
    peak = _sev(a.get("peak_ratio"))
    return {**a, "peak_severity": peak["severity"], "peak_band": peak["band"]}


# -- who am I ----------------------------------------------------------------------
@bp.get("/api/session")
@public
def session_info():
    user = g.user
    a = auth()
    out = {"user": None, "role": None, "csrf_token": generate_csrf(), "idle_timeout_s": a.idle_s,
           "session_max_s": a.max_age_s}
    if user is not None:
        out.update(user=user.name, role=user.role, signed_in_at=g.session.created)
    return jsonify(out)


@bp.post("/api/session/touch")
@requires("viewer")
def session_touch():
    return jsonify({"ok": True, "user": current_user().name})


# -- live state -----------------------------------------------------------------
@bp.get("/api/status")
@requires("viewer")
def status():
    st = dict(_ctx().status())
    if isinstance(st.get("alarms"), list):
        st["alarms"] = [_alarm_view(a) if isinstance(a, dict) else a for a in st["alarms"]]
    return jsonify(st)


@bp.get("/api/severity")
@requires("viewer")
def severity_scale():
    return jsonify({"explanation": EXPLANATION, "threshold_severity": severity(1.0),
                    "bands": [{"from": lo, "name": name} for lo, name in BANDS]})


@bp.get("/api/events")
@requires("viewer")
def events():
    hub = _ctx().live
    if not hub.try_open():
        return jsonify({"error": "too many live connections; the page polls instead"}), 503
    last = request.headers.get("Last-Event-ID", "")
    last_id = int(last) if last.isdigit() else None
    resp = Response(stream_with_context(hub.stream(last_id)), mimetype="text/event-stream")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp


@bp.get("/healthz")
@public
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
@public
def metrics():
    if not auth().metrics_allowed():
        return jsonify({"error": "sign in, or send the bearer token of web.metrics_token_file"}), 401, \
            {"WWW-Authenticate": 'Bearer realm="metrics"'}
    body, content_type = _ctx().metrics()
    return Response(body, mimetype=None, content_type=content_type)


# -- assets and trends -------------------------------------------------------------
@bp.get("/api/assets")
@requires("viewer")
def assets():
    st = _ctx().status()
    alarms = {a.get("asset"): a for a in st.get("alarms") or () if isinstance(a, dict)}
    modes = st.get("point_modes") or {}
    names = sorted(set(alarms) | set(modes))
    out = []
    for name in names:
        latest = _read(_ctx().store.scores, asset=name, limit=1)
        last = latest[0] if latest else None
        a = alarms.get(name)
        out.append({"asset": name, "mode": modes.get(name, "in_service"),
                    "state": a.get("state") if a else "normal", "alarm": _alarm_view(a) if a else None,
                    "last_score_at": last["t_end"] if last else None, **_sev(last["ratio"] if last else None),
                    "top_sensors": _top(last["contributions"]) if last else []})
    return jsonify({"assets": out, "sensors": (st.get("model") or {}).get("sensors") or []})


def _top(contributions: dict, n: int = 3) -> list[dict]:
    items = sorted(((k, v) for k, v in (contributions or {}).items() if isinstance(v, (int, float))),
                   key=lambda kv: kv[1], reverse=True)
    total = sum(v for _, v in items) or 1.0
    return [{"sensor": k, "share": round(v / total, 3)} for k, v in items[:n]]


@bp.get("/api/assets/<asset>/trend")
@requires("viewer")
def asset_trend(asset: str):
    asset = check_name(asset, "asset")
    range_key = choice_arg(request.args, "range", tuple(trends.RANGES), trends.DEFAULT_RANGE)
    until = float_arg(request.args, "until")
    ctx = _ctx()
    st = ctx.status()
    sensors = list((st.get("model") or {}).get("sensors") or [])
    sensor = name_arg(request.args, "sensor")
    if sensor is not None:
        sensors = [sensor]
    offset = (st.get("clock") or {}).get("offset_s")
    if until is None and isinstance(offset, (int, float)) and offset:
        until = time.time() + offset  # the gateway's clock is behind the data: end the trend at the data's now
    data = _read(trends.trend, ctx.store, ctx.history(), asset, sensors, range_key, until)
    episodes = _read(ctx.store.live_alarms_during, asset, data["since"], data["until"])
    data["episodes"] = [{"id": a.id, "start": a.start, "end": a.end, "level": a.level.name.lower(),
                         "state": a.state.value, **_sev(a.peak_ratio)} for a in episodes]
    latest = _read(ctx.store.scores, asset=asset, limit=1)
    data["top_sensors"] = _top(latest[0]["contributions"]) if latest else []
    data["latest"] = ({"t_end": latest[0]["t_end"], **_sev(latest[0]["ratio"])} if latest else None)
    return jsonify(data)


@bp.get("/api/assets/<asset>/modes")
@requires("viewer")
def mode_changes(asset: str):
    asset = check_name(asset, "asset")
    limit = limit_arg(request.args, default=100)
    rows = _read(_ctx().store.mode_changes, asset, limit=limit)
    return jsonify({"asset": asset, "mode_changes": rows, "count": len(rows)})


def operating_point_view(asset: str, limit: int = 20) -> dict:
    """The asset's "operating point not seen in training": the current episode (None when the point is known),
    the stored episodes (latest first) and the episodes begun per UTC day over the last week."""
    store = _ctx().store
    episodes = _read(store.operating_points, asset, limit=limit)
    current = next((e for e in episodes if e["active"]), None)
    return {"asset": asset, "status": OPERATING_POINT_WORDING if current else "operating point seen in training",
            "current": current, "episodes": episodes, "per_day": _read(store.operating_points_per_day, asset)}


@bp.get("/api/assets/<asset>/operating-point")
@requires("viewer")
def operating_point(asset: str):
    return jsonify(operating_point_view(check_name(asset, "asset"), limit_arg(request.args, default=20)))


# -- history from the store -------------------------------------------------------
@bp.get("/api/alarms")
@requires("viewer")
def alarms():
    active = bool_arg(request.args, "active")
    limit = limit_arg(request.args, default=100)
    asset = name_arg(request.args, "asset")
    rows = _read(_ctx().store.alarms, active=active, limit=limit if asset is None else 1000)
    if asset is not None:
        rows = [r for r in rows if r["asset"] == asset][:limit]
    # An open alarm's stored row follows its rising peak only now and then; the live one is exact.
    try:
        live = {a.get("id"): a for a in _ctx().status().get("alarms") or () if isinstance(a, dict)}
    except ApiError:
        live = {}
    rows = [_alarm_view({**r, **{k: live[r["id"]][k] for k in ("peak_ratio", "state", "acked_by", "level")
                                 if k in live[r["id"]]}} if r["id"] in live else r) for r in rows]
    verdicts = _read(_ctx().store.verdicts_for, [r["id"] for r in rows])
    rows = [{**r, **verdict_summary(verdicts.get(r["id"], []))} for r in rows]
    return jsonify({"alarms": rows, "count": len(rows)})


def _alarm_id_arg(alarm_id: str) -> str:
    return check_name(alarm_id, "alarm_id")


@bp.get("/api/alarms/<alarm_id>/events")
@requires("viewer")
def alarm_events(alarm_id: str):
    alarm_id = _alarm_id_arg(alarm_id)
    rows = _read(_ctx().store.alarm_events, alarm_id)
    if rows is None:
        raise ApiError(f"no alarm with id {alarm_id!r}", "alarm_id", status=404)
    return jsonify({"alarm_id": alarm_id, "events": rows, "count": len(rows)})


@bp.get("/api/alarms/<alarm_id>/journal")
@requires("viewer")
def alarm_journal(alarm_id: str):
    """Every transition of one alarm, the mode changes of its point while it lasted, and the comments, in order."""
    alarm_id = _alarm_id_arg(alarm_id)
    ctx = _ctx()
    events = _read(ctx.store.alarm_events, alarm_id)
    if events is None:
        raise ApiError(f"no alarm with id {alarm_id!r}", "alarm_id", status=404)
    entries = [{"ts": e["ts"], "type": "transition", "what": e["kind"], "user": e["user"], "note": e["note"],
                "state": (e["alarm"] or {}).get("state")} for e in events]
    asset = next(((e["alarm"] or {}).get("asset") for e in events if e["alarm"]), None)
    if asset:
        for m in _read(ctx.store.mode_changes, asset, limit=500):
            if m["alarm_id"] == alarm_id:
                what = m["event"] + (f" until {m['shelved_until']}" if m.get("shelved_until") else "")
                entries.append({"ts": m["ts"], "type": "mode", "what": what, "user": m["user"], "note": m["note"],
                                "state": m["mode"], "shelved_until": m.get("shelved_until")})
    for c in _read(ctx.store.alarm_comments, alarm_id):
        entries.append({"ts": c["ts"], "type": "comment", "what": "comment", "user": c["user"], "note": c["text"],
                        "state": None})
    for v in _read(ctx.store.alarm_verdicts, alarm_id):
        entries.append({"ts": v["ts"], "type": "verdict", "what": "verdict " + _verdict_words(v), "user": v["user"],
                        "note": v["note"], "state": v["verdict"], "cause": v["cause"], "seq": v["seq"]})
    entries.sort(key=lambda e: e["ts"])
    return jsonify({"alarm_id": alarm_id, "asset": asset, "entries": entries, "count": len(entries)})


@bp.post("/api/alarms/<alarm_id>/comments")
@requires("technician")
def add_comment(alarm_id: str):
    """Store the signed-in user's comment with the alarm; answered once it is committed."""
    alarm_id = _alarm_id_arg(alarm_id)
    body = json_body(request)
    text = text_field(body, "text", MAX_COMMENT)
    events = _read(_ctx().store.alarm_events, alarm_id)
    if events is None:
        raise ApiError(f"no alarm with id {alarm_id!r}", "alarm_id", status=404)
    asset = next(((e["alarm"] or {}).get("asset") for e in events if e["alarm"]), "")
    try:
        return _command("add_comment", alarm_id=alarm_id, asset=asset or "", text=text)
    except CommentError as exc:
        raise ApiError(str(exc), "text") from None


# -- verdicts ----------------------------------------------------------------------------
def verdict_summary(history: list[dict]) -> dict:
    """What a journal row shows of an episode's verdicts: the current one, the history, and whether they disagree.

    ``disputed``: two people have said different things of the episode (the latest still labels it).

    >>> a = {"seq": 1, "user": "ana", "verdict": "fault", "cause": "bearing"}
    >>> b = {"seq": 2, "user": "bo", "verdict": "false_alarm", "cause": None}
    >>> s = verdict_summary([a, b]); s["verdict"]["user"], s["disputed"], len(s["verdicts"])
    ('bo', True, 2)
    >>> verdict_summary([a, {**a, "seq": 3}])["disputed"], verdict_summary([])["verdict"]
    (False, None)
    """
    said = {(v["verdict"], v["cause"]) for v in history}
    return {"verdict": history[-1] if history else None, "verdicts": history,
            "disputed": len(said) > 1 and len({v["user"] for v in history}) > 1}


def _verdict_words(v: dict) -> str:
    return v["verdict"].replace("_", " ") + (f" ({v['cause'].replace('_', ' ')})" if v.get("cause") else "")


def _verdict_causes() -> tuple[str, ...]:
    store = _ctx().appliance.output("store")
    return tuple(getattr(store, "verdict_causes", None) or DEFAULT_CAUSES)


@bp.get("/api/verdicts/causes")
@requires("viewer")
def verdict_causes():
    return jsonify({"verdicts": [v.value for v in Verdict], "causes": list(_verdict_causes())})


@bp.get("/api/alarms/<alarm_id>/verdicts")
@requires("viewer")
def alarm_verdicts(alarm_id: str):
    alarm_id = _alarm_id_arg(alarm_id)
    if _read(_ctx().store.alarm_events, alarm_id) is None:
        raise ApiError(f"no alarm with id {alarm_id!r}", "alarm_id", status=404)
    history = _read(_ctx().store.alarm_verdicts, alarm_id)
    return jsonify({"alarm_id": alarm_id, **verdict_summary(history), "count": len(history)})


@bp.post("/api/alarms/<alarm_id>/verdict")
@requires("technician")
def give_verdict(alarm_id: str):
    """Store the signed-in user's verdict on the episode; answered once it is committed.

    ``replaces`` (optional; the page always sends it) is the ``seq`` of the verdict the
    user saw, ``null`` for none: if someone else gave one meanwhile, the answer is 409 with
    what they said, so nobody overwrites a colleague's verdict without having seen it.
    """
    alarm_id = _alarm_id_arg(alarm_id)
    body = json_body(request)
    kinds = tuple(v.value for v in Verdict)
    kind = body.get("verdict")
    if not isinstance(kind, str) or kind not in kinds:
        raise ApiError(f"verdict must be one of {', '.join(kinds)}", "verdict")
    cause = body.get("cause")
    if cause is not None and not isinstance(cause, str):
        raise ApiError("cause must be a text", "cause")
    note = note_field(body)
    ctx = _ctx()
    events = _read(ctx.store.alarm_events, alarm_id)
    if events is None:
        raise ApiError(f"no alarm with id {alarm_id!r}", "alarm_id", status=404)
    asset = next(((e["alarm"] or {}).get("asset") for e in events if e["alarm"]), "")
    if "replaces" in body:
        _check_not_changed(alarm_id, body["replaces"])
    try:
        out = _command("set_verdict", alarm_id=alarm_id, asset=asset or "", verdict=kind, cause=cause or None,
                       note=note or None)
    except VerdictError as exc:
        raise ApiError(str(exc), "cause" if "cause" in str(exc) else "verdict") from None
    ctx.kpis.forget()
    return out


def _check_not_changed(alarm_id: str, replaces) -> None:
    if replaces is not None and (not isinstance(replaces, int) or isinstance(replaces, bool)):
        raise ApiError("replaces must be the seq of the verdict shown, or null", "replaces")
    history = _read(_ctx().store.alarm_verdicts, alarm_id)
    current = history[-1] if history else None
    if (current["seq"] if current else None) != replaces:
        who = f"{current['user']} said {_verdict_words(current)}" if current else "the verdict was withdrawn"
        raise ApiError(f"the verdict changed meanwhile: {who}; look at it and give yours again", "replaces",
                       status=409)


@bp.get("/api/scores")
@requires("viewer")
def scores():
    asset = name_arg(request.args, "asset")
    since = float_arg(request.args, "since")
    limit = limit_arg(request.args, default=120)
    rows = _read(_ctx().store.scores, asset=asset, since=since, limit=limit)
    rows = [{**r, **_sev(r["ratio"])} for r in rows]
    return jsonify({"scores": rows, "count": len(rows)})


@bp.get("/api/readings")
@requires("viewer")
def readings():
    asset = name_arg(request.args, "asset")
    sensor = name_arg(request.args, "sensor")
    since = float_arg(request.args, "since")
    limit = limit_arg(request.args, default=100)
    rows = _read(_ctx().store.readings, asset=asset, sensor=sensor, since=since, limit=limit)
    return jsonify({"readings": rows, "count": len(rows)})


@bp.get("/api/dead-letters")
@requires("viewer")
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
            "truncated": len(text) > PAYLOAD_PREVIEW or row["size"] > len(row["payload"]),
            "count": row.get("count", 1), "last_at": row.get("last_at")}


# -- operator commands ---------------------------------------------------------
@bp.post("/api/alarms/<asset>/ack")
@requires("technician")
def acknowledge(asset: str):
    body = json_body(request)
    return _command("acknowledge", asset=check_name(asset, "asset"), note=note_field(body))


@bp.post("/api/alarms/<asset>/shelve")
@requires("technician")
def shelve(asset: str):
    body = json_body(request)
    return _command("shelve", asset=check_name(asset, "asset"), duration_s=duration_field(body),
                    note=note_field(body))


@bp.post("/api/alarms/<asset>/mode")
@requires("technician")
def set_mode(asset: str):
    body = json_body(request)
    mode = mode_field(body)
    if mode.value in ENGINEER_MODES and not current_user().can("engineer"):
        raise ApiError(f"setting a point {mode.value} needs the engineer role; {current_user().name} is "
                       f"{current_user().role}", "mode", status=403)
    return _command("set_mode", asset=check_name(asset, "asset"), mode=mode, note=note_field(body))


# -- mitigation ------------------------------------------------------------------
@bp.get("/api/actions/pending")
@requires("viewer")
def pending_actions():
    # From the status snapshot, which the appliance takes on its event loop: the
    # mitigator's pending proposals change there, not safe to walk from this thread.
    st = (_ctx().status().get("outputs") or {}).get("mitigation")
    if st is None:
        return jsonify({"enabled": False, "armed": False, "pending": []})
    return jsonify({"enabled": True, "armed": bool(st.get("armed")), "pending": st.get("pending_approval") or []})


@bp.get("/api/actions/log")
@requires("viewer")
def action_log():
    limit = limit_arg(request.args, default=100)
    mitigation = _ctx().appliance.output("mitigation")
    if mitigation is None:
        raise ApiError("mitigation is not enabled", status=404)
    # The audit log is its own append-only database with a thread-safe reader.
    rows = mitigation.mitigator.audit_log(limit)
    return jsonify({"actions": rows, "count": len(rows), "chain": mitigation.status().get("audit_chain")})


@bp.post("/api/actions/<proposal_id>/approve")
@requires("engineer")
def approve_action(proposal_id: str):
    json_body(request)
    return _command("approve_action", proposal_id=check_name(proposal_id, "proposal_id"), role=current_user().role)


@bp.post("/api/actions/<proposal_id>/reject")
@requires("engineer")
def reject_action(proposal_id: str):
    body = json_body(request)
    return _command("reject_action", proposal_id=check_name(proposal_id, "proposal_id"), note=note_field(body),
                    role=current_user().role)


@bp.post("/api/mitigation/arm")
@requires("engineer")
def arm_mitigation():
    """Arm (writes allowed) or disarm (advice only) mitigation, if the appliance offers the command."""
    body = json_body(request)
    return _command("set_armed", armed=bool_field(body, "armed"), note=note_field(body))


# -- sync and the model's life ----------------------------------------------------------
@bp.post("/api/sync/now")
@requires("engineer")
def sync_now():
    """Open a connectivity window now (``duration_s`` optional): anomalies go up, models come in."""
    body = json_body(request)
    duration = body.get("duration_s")
    return _command("sync_now", attribute=False,
                    **({"duration_s": duration_field(body)} if duration is not None else {}))


@bp.post("/api/model/<action>")
@requires("engineer")
def model_command(action: str):
    """``promote`` or ``reject`` the candidate in shadow, or ``rollback`` to the previous model."""
    names = {"promote": "promote_model", "reject": "reject_model", "rollback": "rollback_model"}
    if action not in names:
        raise ApiError(f"action must be one of {', '.join(names)}", status=404)
    body = json_body(request)
    return _command(names[action], note=note_field(body))


@bp.get("/api/model")
@requires("viewer")
def model_info():
    ctx = _ctx()
    st = ctx.status()
    model = dict(st.get("model") or {})
    detector = ctx.detector()
    bundle = getattr(detector, "bundle", None)
    meta = getattr(bundle, "meta", None)
    model["precision"] = getattr(detector, "precision", None)
    model["bundle"] = _bundle_summary(meta, getattr(bundle, "path", None)) if isinstance(meta, dict) else None
    changes = _read(ctx.store.model_changes, limit=50)
    sync = (st.get("outputs") or {}).get("sync")
    return jsonify({"model": model, "changes": changes, "sync": sync})


def _bundle_summary(meta: dict, path) -> dict:
    """What a technician or engineer wants to know about the model, from its bundle's metadata."""
    training = meta.get("training") or {}
    check = meta.get("int8_check") or {}
    holdout = check.get("holdout") or {}
    files = {}
    if path is not None:
        for name in (meta.get("files") or {}):
            try:
                files[name] = (Path(path) / name).stat().st_size
            except OSError:
                files[name] = None
    return {
        "created_at": meta.get("created_at"), "sensors": meta.get("sensors"), "window": meta.get("window"),
        "stride": meta.get("stride"), "period_s": meta.get("period_s"), "score": meta.get("score"),
        "level_free": meta.get("level_free"), "thresholds": meta.get("thresholds"),
        "expected_window_exceedance": meta.get("expected_window_exceedance"),
        "training": {k: training.get(k) for k in ("rows", "train_rows", "train_windows", "holdout_windows",
                                                  "grid_rows", "fit_seconds", "data_sha256", "seed")},
        "model_type": (training.get("model") or {}).get("type"),
        "hidden": (training.get("model") or {}).get("hidden"),
        "int8_vs_fp32": {"passed": check.get("passed"), "agreement": holdout.get("agreement"),
                         "error_correlation": holdout.get("error_correlation"),
                         "fp32_mean_error": holdout.get("fp32_mean_error"),
                         "int8_mean_error": holdout.get("int8_mean_error"),
                         "clear_flips": holdout.get("clear_flips")},
        "files": files,
    }


# -- the gateway ---------------------------------------------------------------------
@bp.get("/api/system")
@requires("viewer")
def system():
    ctx = _ctx()
    st = ctx.status()
    outputs = st.get("outputs") or {}
    try:
        counts = ctx.store.counts()
    except StoreUnavailable:
        counts = None
    return jsonify({
        "site": st.get("site"), "uptime_s": st.get("uptime_s"), "inputs": st.get("inputs") or {},
        "outputs": outputs, "silent_sensors": st.get("silent_sensors") or [],
        "dead_letters_by_reason": st.get("dead_letters_by_reason") or {}, "counters": st.get("counters") or {},
        "in_flight": st.get("in_flight") or {}, "latency": st.get("latency") or {}, "windows": st.get("windows") or {},
        "store_rows": counts, "process": ctx.meter.sample(), "live": ctx.live.status(),
        "checked_at": time.time(),
    })


@bp.get("/api/auth-log")
@requires("engineer")
def auth_log():
    limit = limit_arg(request.args, default=100)
    rows = auth().accounts.auth_log(limit)
    return jsonify({"entries": rows, "count": len(rows)})


@bp.get("/api/users")
@requires("engineer")
def users():
    return jsonify({"users": auth().accounts.users()})


def _command(name: str, attribute: bool = True, **kwargs):
    """Run one operator command as the signed-in user; the answer lists the records it made."""
    user = current_user()
    if attribute:
        kwargs["user"] = user.name
    try:
        records = _ctx().appliance.command(name, **kwargs)
    except (AlarmCommandError, MitigationError, ModelCommandError) as exc:
        log.info("web: command refused command=%s user=%s reason=%s", name, user.name, exc)
        return jsonify({"error": str(exc), "command": name}), 409
    except ValueError as exc:
        if "unknown command" in str(exc):
            return jsonify({"error": f"this appliance does not offer {name} (not enabled or not in this release)",
                            "command": name}), 409
        raise
    except (concurrent.futures.TimeoutError, TimeoutError):
        log.warning("web: command timed out command=%s asset=%s user=%s", name, kwargs.get("asset"), user.name)
        return jsonify({"error": "the appliance did not answer in time; the command may still apply",
                        "command": name}), 503
    log.info("web: command %s asset=%s user=%s role=%s", name, kwargs.get("asset"), user.name, user.role)
    return jsonify({"ok": True, "command": name,
                    "records": [r.to_dict() if hasattr(r, "to_dict") else r for r in records or ()]})
