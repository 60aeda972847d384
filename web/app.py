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

from web.context import ApplianceLike, WebContext


log = logging.getLogger(__name__)

# The page loads only its own files; inline script or a foreign origin is refused.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
_JSON_PREFIXES = ("/api/", "/healthz", "/metrics")


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


def create_app(appliance_like: ApplianceLike, store_path: str | Path,
               metrics_provider: Callable[[], str | bytes] | None = None) -> Flask:
    """The dashboard app for one appliance.

    ``appliance_like`` needs ``status() -> dict``, ``command(name, **kwargs)`` and
    ``output(name)`` (the real :class:`appliance.runtime.Appliance`, or a fake in
    tests); ``store_path`` is the SQLite store, read through
    :class:`~appliance.store.store.StoreReader` (read only, never in the writer's way);
    ``metrics_provider``, if given, returns the Prometheus text for ``/metrics``,
    otherwise it is built from the status counters.
    """
    from web import api, pages

    app = Flask(__name__)
    app.json = _StrictJSON(app)
    # Static files are cached for a day; their URLs carry a content hash (see pages), so an
    # upgraded gateway is never served yesterday's script.
    app.config.update(MAX_CONTENT_LENGTH=64 * 1024, SEND_FILE_MAX_AGE_DEFAULT=86400)
    app.extensions["appliance_web"] = WebContext(appliance_like, store_path, metrics_provider)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)

    @app.after_request
    def _headers(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        if resp.mimetype == "text/html":
            resp.headers.setdefault("Content-Security-Policy", CSP)
        if request.path.startswith("/api/"):
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        if request.path.startswith(_JSON_PREFIXES):
            return jsonify({"error": err.description, "status": err.code}), err.code
        return err

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        log.exception("web: unhandled error method=%s path=%s", request.method, request.path)
        if request.path.startswith(_JSON_PREFIXES):
            return jsonify({"error": f"internal error: {type(err).__name__}"}), 500
        return "Internal error, see the appliance log.", 500

    return app
