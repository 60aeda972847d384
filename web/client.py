"""A small client for the dashboard's API, for scripts and the ``appliance`` CLI (standard library only).

It signs in like a browser does: it fetches a CSRF token (``GET /api/session``),
posts the user name and password to ``/login``, keeps the session cookie, and
sends the token with every command::

    c = DashboardClient("http://127.0.0.1:8080")
    c.login("ana", password)
    status, body = c.post("/api/sync/now", {})
"""

from __future__ import annotations

import http.cookiejar
import json
import urllib.error
import urllib.request


class DashboardError(Exception):
    """The dashboard refused (``status`` set) or could not be reached (``status`` None)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class DashboardClient:
    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.cookies = http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))
        self._csrf: str | None = None

    def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None,
                csrf: bool = True) -> tuple[int, object, dict]:
        """(status, parsed JSON or text, headers); never raises for an HTTP error status."""
        data = None
        hdrs = dict(headers or {})
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if csrf and method not in ("GET", "HEAD") and self._csrf is not None:
            hdrs.setdefault("X-CSRFToken", self._csrf)
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                status, raw, rh = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as err:
            status, raw, rh = err.code, err.read(), err.headers
        except (urllib.error.URLError, OSError) as err:
            raise DashboardError(f"the dashboard at {self.url} did not answer: {getattr(err, 'reason', err)}") from None
        if (rh.get("Content-Type") or "").startswith("application/json"):
            try:
                return status, json.loads(raw), dict(rh)
            except ValueError:
                pass
        return status, raw.decode("utf-8", "replace"), dict(rh)

    def refresh_csrf(self) -> str:
        status, body, _ = self.request("GET", "/api/session")
        if status != 200 or not isinstance(body, dict) or "csrf_token" not in body:
            raise DashboardError(f"no session information from {self.url} (HTTP {status})", status)
        self._csrf = body["csrf_token"]
        return self._csrf

    def login(self, name: str, password: str) -> dict:
        self.refresh_csrf()
        status, body, _ = self.request("POST", "/login", {"name": name, "password": password})
        if status != 200:
            why = body.get("error") if isinstance(body, dict) else str(body)[:200]
            raise DashboardError(f"sign-in refused: {why}", status)
        self.refresh_csrf()  # a new session has a new token
        return body

    def logout(self) -> None:
        self.request("POST", "/logout", {})
        self._csrf = None

    def get(self, path: str) -> tuple[int, object]:
        status, body, _ = self.request("GET", path)
        return status, body

    def post(self, path: str, body: dict | None = None) -> tuple[int, object]:
        status, out, _ = self.request("POST", path, body if body is not None else {})
        return status, out
