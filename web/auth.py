"""Who may do what on the dashboard: sessions, roles, CSRF and the Host check, before any view runs.

Every view declares its access with :func:`public` or :func:`requires`; a view
without a declaration is refused to everyone (fail closed), and the tests check
that every route has one. Each request goes through :func:`_gate`, in order:

1. the Host header must be one of ``TRUSTED_HOSTS`` (Flask answers 400 otherwise:
   a page on another site that resolves its own name to the gateway - DNS
   rebinding - gets nothing);
2. public views (``/login``, ``/healthz``, ``/metrics``, static files) pass;
3. the session: a signed cookie carries a random token, checked against the
   accounts file (:class:`~appliance.accounts.Accounts`) for the idle and
   absolute timeouts; none or expired is 401 for the API, a redirect to the
   sign-in page for pages;
4. every state-changing request (POST, PUT, PATCH, DELETE) must carry the
   session's CSRF token (header ``X-CSRFToken`` or form field ``csrf_token``),
   Flask-WTF's check; the sign-in form too, so nobody can sign a browser in
   as someone else;
5. the role the view requires (viewer < technician < engineer): 403 otherwise.

The user signed in is ``g.user``; commands are given in their name, never in a
name the request brings. Background reads (the page's polling, the live event
stream) do not count as activity for the idle timeout; page loads, commands and
``POST /api/session/touch`` (sent by the page on a tap or key press) do.
"""

from __future__ import annotations

import hmac
import logging
from typing import Callable
from urllib.parse import urlsplit

from flask import Flask, abort, current_app, g, has_request_context, jsonify, redirect, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf
from werkzeug.exceptions import HTTPException, SecurityError

from appliance.accounts import ROLES, Accounts, Session, User, allows

log = logging.getLogger(__name__)

PUBLIC = "public"
UNSAFE_METHODS = frozenset(("POST", "PUT", "PATCH", "DELETE"))
COOKIE = "appliance_session"

csrf = CSRFProtect()


def public(fn: Callable) -> Callable:
    """Anyone may call this view (the sign-in page, health, metrics with its own token)."""
    fn._access = PUBLIC
    return fn


def requires(role: str) -> Callable[[Callable], Callable]:
    """Only a signed-in user with at least ``role`` may call this view."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    def mark(fn: Callable) -> Callable:
        fn._access = role
        return fn
    return mark


def access_of(view: Callable | None) -> str | None:
    return getattr(view, "_access", None)


class _Sessions(SecureCookieSessionInterface):
    """Flask's signed-cookie session; Secure whenever the request came over TLS (or the config says always)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or (has_request_context() and request.is_secure)


class Auth:
    """The accounts, timeouts and tokens of one web app (``app.extensions['appliance_auth']``)."""

    def __init__(self, accounts: Accounts, idle_s: float, max_age_s: float, metrics_token: str | None = None,
                 metrics_public: bool = False):
        self.accounts = accounts
        self.idle_s = idle_s
        self.max_age_s = max_age_s
        self.metrics_token = metrics_token
        self.metrics_public = metrics_public

    def sign_in(self, user: User) -> None:
        """A fresh session (new token, new CSRF secret: nothing carried over from before sign-in)."""
        session.clear()
        session["sid"] = self.accounts.open_session(user, client_addr(), self.max_age_s)
        g.user = user

    def sign_out(self) -> None:
        sid = session.get("sid")
        if sid:
            self.accounts.close_session(sid, client_addr())
        session.clear()
        g.user = None

    def metrics_allowed(self) -> bool:
        """``/metrics`` names the site, the model version and the threshold: closed unless opted in.

        A scraper's bearer token (``metrics_token_file``) or a signed-in user
        (who sees the same on the pages) may read it; anyone only if
        ``metrics_public`` says so.
        """
        if self.metrics_public or getattr(g, "user", None) is not None:
            return True
        if self.metrics_token is None:
            return False
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.metrics_token.encode())


def auth() -> Auth:
    return current_app.extensions["appliance_auth"]


def client_addr() -> str:
    return (request.remote_addr or "")[:64]


def init_app(app: Flask, accounts: Accounts, *, idle_s: float, max_age_s: float, secure_cookies: bool,
             trusted_hosts: list[str], metrics_token: str | None, metrics_public: bool = False) -> None:
    app.secret_key = accounts.secret_key()
    app.session_interface = _Sessions()
    app.config.update(
        TRUSTED_HOSTS=list(trusted_hosts),
        SESSION_COOKIE_NAME=COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=secure_cookies,
        # The gate below calls csrf.protect() itself, after the session check, for every unsafe method.
        WTF_CSRF_CHECK_DEFAULT=False,
        # A token lives as long as its session (bounded by session_max_s), not an hour: a
        # tablet left on the overview must still be able to acknowledge.
        WTF_CSRF_TIME_LIMIT=None,
    )
    csrf.init_app(app)
    app.extensions["appliance_auth"] = Auth(accounts, idle_s, max_age_s, metrics_token, metrics_public)
    app.before_request(_gate)

    @app.context_processor
    def _template_globals():
        return {"current_user": getattr(g, "user", None), "csrf_token": generate_csrf, "can": _can}

    @app.errorhandler(CSRFError)
    def _csrf_error(err: CSRFError):
        log.warning("web: refused without a valid CSRF token method=%s path=%s addr=%s reason=%s",
                    request.method, request.path, client_addr(), err.description)
        return _refuse(400, f"refused: {err.description} Reload the page and try again.")


def _can(role: str) -> bool:
    user = getattr(g, "user", None)
    return user is not None and user.can(role)


def _is_api() -> bool:
    return request.path.startswith("/api/")


def _refuse(status: int, message: str):
    if _is_api() or request.path in ("/metrics", "/healthz") or request.is_json:
        return jsonify({"error": message}), status
    return message, status, {"Content-Type": "text/plain; charset=utf-8"}


def _gate():
    g.user = None
    exc = request.routing_exception
    if isinstance(exc, SecurityError):
        # Before anything else: a foreign Host gets nothing, not even a redirect to the sign-in page.
        log.warning("web: refused a request for an untrusted host addr=%s host=%r", client_addr(),
                    request.environ.get("HTTP_HOST", "")[:100])
        raise exc
    if isinstance(exc, HTTPException):
        return None  # 404 or 405: Flask answers
    view = current_app.view_functions.get(request.endpoint)
    access = access_of(view) or (PUBLIC if request.endpoint == "static" else None)
    if access is None:
        log.error("web: view %s declares no access rule; refused", request.endpoint)
        abort(403, "this page has no access rule")
    a = auth()
    state: Session | str = "unknown"
    sid = session.get("sid")
    if sid:
        touch = request.method in UNSAFE_METHODS or (request.method == "GET" and not _is_api())
        state = a.accounts.session(sid, a.idle_s, a.max_age_s, touch=touch)
        if isinstance(state, Session):
            g.user = state.user
            g.session = state
        else:
            session.pop("sid", None)
    if access == PUBLIC:
        if request.method in UNSAFE_METHODS:
            csrf.protect()
        return None
    if g.user is None:
        message = {"idle": "signed out after a while without use; sign in again",
                   "expired": "the session has ended; sign in again"}.get(state, "sign in first")
        if _is_api() or request.method != "GET":
            return _refuse(401, message)
        return redirect(url_for("pages.login", next=_safe_next(request.full_path)))
    if request.method in UNSAFE_METHODS:
        csrf.protect()
    if not allows(g.user.role, access):
        log.warning("web: refused user=%s role=%s needs=%s method=%s path=%s", g.user.name, g.user.role, access,
                    request.method, request.path)
        return _refuse(403, f"this needs the {access} role; {g.user.name} is {g.user.role}")
    return None


def _safe_next(target: str | None) -> str:
    """A local path to return to after sign-in; anything else (another site, a scheme) becomes ``/``."""
    if not target:
        return "/"
    target = target.rstrip("?")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


safe_next = _safe_next


def current_user() -> User:
    user = getattr(g, "user", None)
    if user is None:  # the gate runs first; this is a guard against a view without a rule
        abort(401)
    return user
