"""The Flask application factory: the dashboard's pages and JSON API for one appliance."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable

from flask import Flask, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from appliance.accounts import FILE_NAME as ACCOUNTS_FILE
from appliance.accounts import Accounts
from appliance.store import AlarmComment, StoreUnavailable, import_comments
from web.config import WebConfig
from web.context import ApplianceLike, WebContext


log = logging.getLogger(__name__)

# The page loads only its own files; inline script or a foreign origin is refused.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'")
_JSON_PREFIXES = ("/api/", "/healthz", "/metrics")
MAX_BODY = 64 * 1024  # every command is a small JSON object; the sign-in form is smaller still


def _plain(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become null (browsers reject them), numpy scalars become numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    item = getattr(obj, "item", None)  # numpy scalar
    if callable(item):
        try:
            return _plain(item())
        except (TypeError, ValueError):
            pass
    value = getattr(obj, "value", None)  # enums
    if isinstance(value, (str, int, float)):
        return _plain(value)
    return str(obj)


class _StrictJSON(DefaultJSONProvider):
    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("ensure_ascii", False)
        return json.dumps(_plain(obj), allow_nan=False, **kwargs)


def move_legacy_comments(accounts: Accounts, store_path: str | Path) -> int | None:
    """Move the alarm comments an accounts file of an earlier release holds into the store; how many were new.

    Copied first, in one committed transaction that skips what the store has
    already, and only then dropped from the accounts file: a start interrupted
    between the two copies them again at the next start and adds nothing. If the
    store cannot take them now they stay where they are until a later start.
    ``None`` when there was nothing to move.
    """
    legacy = accounts.legacy_comments()
    if legacy is None:
        return None
    comments = [AlarmComment(c["alarm_id"], c["asset"] or "", float(c["ts"]), c["user"], c["text"]) for c in legacy]
    try:
        added = import_comments(store_path, comments)
    except StoreUnavailable as exc:
        log.warning("web: alarm comments stay in %s until the store can take them count=%d error=%s",
                    accounts.path, len(comments), exc)
        return None
    accounts.drop_legacy_comments()
    log.info("web: alarm comments moved from %s to the store count=%d new=%d", accounts.path, len(comments), added)
    return added


def create_app(appliance_like: ApplianceLike, store_path: str | Path,
               metrics_provider: Callable[[], str | bytes] | None = None, *,
               config: WebConfig | None = None, accounts: Accounts | str | Path | None = None,
               data_dir: str | Path | None = None) -> Flask:
    """The dashboard app for one appliance.

    ``appliance_like`` needs ``status() -> dict``, ``command(name, **kwargs)`` and
    ``output(name)`` (the real :class:`appliance.runtime.Appliance`, or a fake in
    tests), and may offer ``add_event_listener`` (live updates) and ``detector``
    (the model page); ``store_path`` is the SQLite store, read through
    :class:`~appliance.store.store.StoreReader` (read only, never in the writer's way);
    ``metrics_provider``, if given, returns the Prometheus text for ``/metrics``,
    otherwise it is built from the status counters. ``config`` is the ``[web]``
    section (defaults otherwise); ``accounts`` the accounts file or an open
    :class:`~appliance.accounts.Accounts` (default: ``config.accounts`` under
    ``data_dir``, else ``accounts.db`` beside the store).
    """
    from web import api, auth, kpis, pages

    cfg = config or WebConfig()
    store_path = Path(store_path)
    base = Path(data_dir) if data_dir is not None else store_path.parent
    if not isinstance(accounts, Accounts):
        if accounts is None:
            accounts = base / cfg.accounts if cfg.accounts else store_path.parent / ACCOUNTS_FILE
        accounts = Accounts(accounts)
    metrics_token = None
    if cfg.metrics_token_file:
        metrics_token = _read_token(base / cfg.metrics_token_file)

    move_legacy_comments(accounts, store_path)
    if not accounts.users():
        log.warning("web: no dashboard accounts yet in %s; nobody can sign in until one is added: "
                    "appliance user add NAME --role engineer", accounts.path)

    app = Flask(__name__)
    app.json = _StrictJSON(app)
    # Static files are cached for a day; their URLs carry a content hash (see pages), so an
    # upgraded gateway is never served yesterday's script.
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY, MAX_FORM_MEMORY_SIZE=MAX_BODY, MAX_FORM_PARTS=50,
                      SEND_FILE_MAX_AGE_DEFAULT=86400)
    app.extensions["appliance_web"] = WebContext(appliance_like, store_path, metrics_provider,
                                                 max_streams=cfg.live_streams,
                                                 kpi_thresholds=cfg.kpis.thresholds(), kpi_cache_s=cfg.kpis.cache_s)
    auth.init_app(app, accounts, idle_s=cfg.idle_timeout_s, max_age_s=cfg.session_max_s,
                  secure_cookies=cfg.secure_cookies, trusted_hosts=cfg.allowed_hosts(), metrics_token=metrics_token,
                  metrics_public=cfg.metrics_public)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(kpis.bp)

    @app.after_request
    def _headers(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        # same-origin, not no-referrer: Flask-WTF checks the Referer of a form posted over HTTPS.
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        if resp.mimetype == "text/html":
            resp.headers.setdefault("Content-Security-Policy", CSP)
            resp.headers.setdefault("Cache-Control", "no-store")
        if request.path.startswith("/api/"):
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        reason = _one_line(err)
        if request.path.startswith(_JSON_PREFIXES) or request.is_json:
            return jsonify({"error": reason, "status": err.code}), err.code
        if isinstance(err, RequestRedirect) or err.code is None or err.code < 400:
            return err
        return f"{err.code} {err.name}: {reason}", err.code, {"Content-Type": "text/plain; charset=utf-8"}

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        log.exception("web: unhandled error method=%s path=%s", request.method, request.path)
        if request.path.startswith(_JSON_PREFIXES):
            return jsonify({"error": f"internal error: {type(err).__name__}"}), 500
        return "Internal error, see the appliance log.", 500

    return app


def _one_line(err: HTTPException) -> str:
    text = (f"the request body is over {MAX_BODY // 1024} KiB" if err.code == 413
            else err.description or err.name)
    return " ".join(str(text).split())[:300]


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"web.metrics_token_file: cannot read {path}: {exc}") from None
    if len(token) < 16:
        raise ValueError(f"web.metrics_token_file: the token in {path} is shorter than 16 characters")
    return token
