"""Who may do what on the dashboard: every route against anonymous callers, a missing CSRF token, a
foreign Host and each role; sign-in, back-off, timeouts, sign-out, cookies, and the accounts CLI."""

from __future__ import annotations

import os
import stat

import pytest

from appliance.accounts import ROLES, Accounts, allows
from tests.support.web import FAST_HASHER, PASSWORD, make_user, signed_in
from web.app import create_app
from web.auth import PUBLIC, access_of
from web.config import WebConfig

SAMPLE = {"asset": "pump1", "alarm_id": "0123456789abcdef", "proposal_id": "p1", "action": "promote",
          "filename": "dashboard.css"}
# What a valid body for each command looks like, so a refusal is about who asks, not what is sent.
BODIES = {"/api/alarms/pump1/shelve": {"duration_s": 60}, "/api/alarms/pump1/mode": {"mode": "in_service"},
          "/api/alarms/0123456789abcdef/comments": {"text": "seen"}, "/api/mitigation/arm": {"armed": True},
          "/api/alarms/0123456789abcdef/verdict": {"verdict": "false_alarm"},
          "/login": {"name": "nobody", "password": "x" * 10}}


class Clock:
    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def accounts(tmp_path, clock):
    return Accounts(tmp_path / "accounts.db", hasher=FAST_HASHER, clock=clock)


@pytest.fixture
def app(book_appliance, store, accounts):
    book_appliance.score("pump1", 1e9, 3.0)
    return create_app(book_appliance, store.path, accounts=accounts)


def routes(app):
    """(method, url, access) for every route of the app, with sample values for its parameters."""
    out = []
    for rule in app.url_map.iter_rules():
        url = rule.rule
        for arg in rule.arguments:
            url = url.replace(f"<{arg}>", SAMPLE[arg]).replace(f"<path:{arg}>", SAMPLE[arg])
        access = PUBLIC if rule.endpoint == "static" else access_of(app.view_functions[rule.endpoint])
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            out.append((method, url, access))
    return out


def get_as(app, client, host: str, url: str):
    """GET ``url`` addressed to ``host`` in ``client``'s session (a test client keeps cookies per domain)."""
    other = app.test_client()
    other.set_cookie("appliance_session", client.get_cookie("appliance_session").value, domain=host.split(":")[0])
    return other.get(url, headers={"Host": host})


def call(client, method, url, **kw):
    if method == "POST":
        kw.setdefault("json", BODIES.get(url, {}))
    return client.open(url, method=method, **kw)


# -- every route declares who may call it -------------------------------------------------
def test_every_route_declares_its_access(app):
    found = routes(app)
    assert len(found) > 35
    assert [(m, u) for m, u, a in found if a not in (PUBLIC, *ROLES)] == []
    public = sorted((m, u) for m, u, a in found if a == PUBLIC)
    assert public == [("GET", "/api/session"), ("GET", "/healthz"), ("GET", "/login"), ("GET", "/metrics"),
                      ("GET", "/static/dashboard.css"), ("POST", "/login"), ("POST", "/logout")]
    # Every state change needs a role; none is merely "viewer" except saying the user is there.
    assert [(m, u) for m, u, a in found if m == "POST" and a == "viewer"] == [("POST", "/api/session/touch")]


def test_anonymous_callers_are_refused_everywhere_but_the_public_routes(app):
    c = app.test_client()
    token = c.get("/api/session").get_json()["csrf_token"]
    for method, url, access in routes(app):
        if access == PUBLIC:
            continue
        r = call(c, method, url, headers={"X-CSRFToken": token})
        if url.startswith("/api/") or method == "POST":
            assert r.status_code == 401, (method, url, r.status_code)
            assert r.get_json()["error"] == "sign in first"
        else:  # a page: to the sign-in form, and back here afterwards
            assert r.status_code == 302 and r.headers["Location"] == f"/login?next={url}", (url, r.headers)


def test_a_state_change_without_the_csrf_token_is_refused(app, book_appliance):
    c = signed_in(app, "eve", "engineer")
    good = c.environ_base.pop("HTTP_X_CSRFTOKEN")
    posts = [(m, u) for m, u, a in routes(app) if m == "POST"]
    assert len(posts) >= 12
    for method, url in posts:
        for headers in ({}, {"X-CSRFToken": "forged"}, {"X-CSRFToken": good[:-2] + "xx"}):
            r = call(c, method, url, headers=headers)
            assert r.status_code == 400, (url, headers, r.status_code)
            assert "CSRF" in r.get_data(as_text=True)
    assert book_appliance.commands == []
    # With it, the same session may.
    assert c.post("/api/alarms/pump1/ack", json={}, headers={"X-CSRFToken": good}).status_code == 200


def test_a_foreign_host_is_refused_before_anything_else(app):
    """DNS rebinding: a page on evil.example resolving its name to the gateway gets nothing."""
    c = signed_in(app, "eve", "engineer")
    for method, url, _ in routes(app):
        r = call(c, method, url, headers={"Host": "evil.example"})
        assert r.status_code == 400, (method, url, r.status_code)
    r = c.get("/api/status", headers={"Host": "evil.example:8080"})
    assert r.get_json()["error"] == "Host 'evil.example:8080' is not trusted."
    for host in ("localhost", "127.0.0.1:8080", "localhost:80"):
        assert get_as(app, c, host, "/api/status").status_code == 200, host


def test_trusted_hosts_come_from_the_config(book_appliance, store, accounts):
    cfg = WebConfig(host="0.0.0.0", trusted_hosts=["gateway.line3.local", "10.1.2.3", ".plant.example"])
    assert cfg.allowed_hosts() == ["localhost", "127.0.0.1", "::1", "gateway.line3.local", "10.1.2.3",
                                   ".plant.example"]
    app = create_app(book_appliance, store.path, accounts=accounts, config=cfg)
    c = signed_in(app, "vic", "viewer")
    for host, code in (("gateway.line3.local:8080", 200), ("10.1.2.3", 200), ("hmi.plant.example", 200),
                       ("0.0.0.0:8080", 400), ("line3.local", 400), ("10.1.2.4", 400)):
        assert get_as(app, c, host, "/api/status").status_code == code, host
    assert WebConfig(host="192.168.7.2").allowed_hosts()[-1] == "192.168.7.2"
    with pytest.raises(ValueError, match="not a host name"):
        WebConfig(trusted_hosts=["http://gateway:8080"])


@pytest.mark.parametrize("role", ROLES)
def test_each_role_is_refused_what_it_may_not_do(app, book_appliance, role):
    c = signed_in(app, f"user-{role}", role)
    refused, allowed = [], []
    for method, url, access in routes(app):
        if access == PUBLIC or method == "GET" and url == "/api/events":
            continue
        r = call(c, method, url)
        if allows(role, access):
            assert r.status_code not in (401, 403), (role, method, url, r.status_code, r.get_data(as_text=True))
            allowed.append((method, url))
        else:
            assert r.status_code == 403, (role, method, url, r.status_code)
            assert f"needs the {access} role" in r.get_json()["error"]
            refused.append((method, url))
    expected_refusals = {
        "viewer": {"/api/alarms/pump1/ack", "/api/alarms/pump1/shelve", "/api/alarms/pump1/mode",
                   "/api/alarms/0123456789abcdef/comments", "/api/alarms/0123456789abcdef/verdict",
                   "/api/actions/p1/approve", "/api/actions/p1/reject", "/api/mitigation/arm", "/api/sync/now", "/api/model/promote", "/api/auth-log", "/api/users"},
        "technician": {"/api/actions/p1/approve", "/api/actions/p1/reject", "/api/mitigation/arm", "/api/sync/now",
                       "/api/model/promote", "/api/auth-log", "/api/users"},
        "engineer": set(),
    }[role]
    assert {u for _, u in refused} == expected_refusals
    # What reached the appliance was given in the signed-in user's name.
    assert {kw.get("user") for _, kw in book_appliance.commands} <= {f"user-{role}"}


def test_only_an_engineer_takes_a_point_out_of_service(app, book_appliance):
    tech = signed_in(app, "tom", "technician")
    r = tech.post("/api/alarms/pump1/mode", json={"mode": "suppressed"})
    assert r.status_code == 403 and "engineer" in r.get_json()["error"]
    assert tech.post("/api/alarms/pump1/shelve", json={"duration_s": 60}).status_code == 200
    assert tech.post("/api/alarms/pump1/mode", json={"mode": "in_service"}).status_code == 200
    eng = signed_in(app, "eve", "engineer")
    assert eng.post("/api/alarms/pump1/mode", json={"mode": "suppressed"}).status_code == 200
    assert [(n, kw["user"]) for n, kw in book_appliance.commands] == [("shelve", "tom"), ("set_mode", "tom"),
                                                                      ("set_mode", "eve")]


# -- signing in ------------------------------------------------------------------------------
def _login(c, name, password, **kw):
    token = c.get("/api/session").get_json()["csrf_token"]
    return c.post("/login", json={"name": name, "password": password}, headers={"X-CSRFToken": token}, **kw)


def test_sign_in_out_and_the_log(app, accounts):
    make_user(accounts, "ana", "technician")
    c = app.test_client()
    assert _login(c, "ana", "wrong password").status_code == 401
    assert _login(c, "nobody", "wrong password").get_json()["error"] == "wrong user name or password"
    r = _login(c, "ana", PASSWORD)
    assert r.status_code == 200 and r.get_json() == {"ok": True, "user": "ana", "role": "technician"}
    me = c.get("/api/session").get_json()
    assert (me["user"], me["role"]) == ("ana", "technician")
    token = me["csrf_token"]
    assert c.get("/api/status").status_code == 200
    assert c.post("/logout", json={}, headers={"X-CSRFToken": token}).status_code == 200
    assert c.get("/api/status").status_code == 401
    events = [(e["event"], e["name"]) for e in accounts.auth_log()]
    assert events == [("logout", "ana"), ("login", "ana"), ("login_failed", "nobody"), ("login_failed", "ana"),
                      ("user_added", "ana")]
    assert accounts.auth_log()[0]["addr"] == "127.0.0.1"


def test_a_session_cookie_replayed_after_sign_out_is_dead(app, accounts):
    c = signed_in(app, "ana", "technician")
    cookie = c.get_cookie("appliance_session").value
    c.post("/logout", json={})
    thief = app.test_client()
    thief.set_cookie("appliance_session", cookie)
    assert thief.get("/api/status").status_code == 401


def test_signing_in_starts_a_new_session(app, accounts):
    """No session fixation: what an attacker planted before sign-in is not the signed-in session."""
    make_user(accounts, "ana", "technician")
    c = app.test_client()
    token_before = c.get("/api/session").get_json()["csrf_token"]
    cookie_before = c.get_cookie("appliance_session").value
    _login(c, "ana", PASSWORD)
    assert c.get_cookie("appliance_session").value != cookie_before
    assert c.get("/api/session").get_json()["csrf_token"] != token_before


def test_failed_sign_ins_back_off(app, accounts, clock):
    make_user(accounts, "ana", "technician")
    c = app.test_client()
    for _ in range(3):
        assert _login(c, "ana", "wrong password").status_code == 401
    # The fourth try within a second is not even checked, the right password neither.
    r = _login(c, "ana", PASSWORD)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1" and "too many" in r.get_json()["error"]
    clock.t += 1.1
    assert _login(c, "ana", "wrong password").status_code == 401
    r = _login(c, "ana", PASSWORD)
    assert r.status_code == 429 and r.headers["Retry-After"] == "2"
    clock.t += 2.1
    assert _login(c, "ana", PASSWORD).status_code == 200
    # A good sign-in clears the count.
    assert _login(app.test_client(), "ana", "wrong password").status_code == 401
    assert "login_throttled" in [e["event"] for e in accounts.auth_log()]


def test_failures_from_one_address_never_lock_the_user_out_of_another(app, accounts, clock):
    """Anyone who can reach /login can fail as "eng"; that slows them down, not the engineer at the panel."""
    make_user(accounts, "eng", "engineer")
    attacker = {"environ_base": {"REMOTE_ADDR": "127.0.0.2"}}
    for _ in range(3):
        assert _login(app.test_client(), "eng", "wrong password", **attacker).status_code == 401
    r = _login(app.test_client(), "eng", PASSWORD, **attacker)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"  # the attacking address is slowed ...
    assert _login(app.test_client(), "eng", "wrong password", **attacker).status_code == 429
    engineer = app.test_client()
    assert _login(engineer, "eng", PASSWORD).status_code == 200  # ... the engineer's own address is not
    assert engineer.get("/api/session").get_json()["user"] == "eng"
    # The same holds after the engineer mistypes a few times at the panel: the count is the panel's own.
    for _ in range(2):
        assert _login(app.test_client(), "eng", "wrong password").status_code == 401
    assert _login(app.test_client(), "eng", PASSWORD).status_code == 200


def test_signing_in_to_an_own_account_does_not_clear_an_addresses_count(app, accounts, clock):
    make_user(accounts, "mallory", "viewer")
    make_user(accounts, "eng", "engineer")
    for name in ("eng", "x1", "x2"):
        assert _login(app.test_client(), name, "wrong password").status_code == 401
    clock.t += 1.1
    assert _login(app.test_client(), "mallory", PASSWORD).status_code == 200
    assert _login(app.test_client(), "x3", "wrong password").status_code == 401
    assert _login(app.test_client(), "x4", "wrong password").status_code == 429  # still counting
    clock.t += 900
    assert _login(app.test_client(), "x5", "wrong password").status_code == 401  # forgotten after a quiet while


def test_back_off_per_address_covers_many_user_names(app, accounts, clock):
    c = app.test_client()
    for name in ("a1", "a2", "a3"):
        assert _login(c, name, "wrong password").status_code == 401
    assert _login(c, "a4", "wrong password").status_code == 429


def test_idle_and_absolute_timeouts(book_appliance, store, accounts, clock):
    app = create_app(book_appliance, store.path, accounts=accounts,
                     config=WebConfig(idle_timeout_s=600, session_max_s=3600))
    c = signed_in(app, "ana", "technician")
    # Background reads (the page's polling) do not keep a session alive ...
    for _ in range(4):
        clock.t += 150
        assert c.get("/api/status").status_code == 200
    clock.t += 1
    r = c.get("/api/status")
    assert r.status_code == 401 and "without use" in r.get_json()["error"]
    # ... the user's taps (touch), page loads and commands do, up to the absolute limit.
    c = signed_in(app, "ana", "technician")
    for _ in range(7):
        clock.t += 500
        assert c.post("/api/session/touch", json={}).status_code == 200
    clock.t += 500
    r = c.get("/api/status")
    assert r.status_code == 401 and "has ended" in r.get_json()["error"]
    assert [e["event"] for e in accounts.auth_log()[:4] if e["event"].startswith("session_")] == [
        "session_expired", "session_idle"]
    # A page of an expired session sends the browser to the sign-in form.
    r = c.get("/alarms")
    assert r.status_code == 302 and r.headers["Location"] == "/login?next=/alarms"


def test_removing_a_user_or_changing_the_password_ends_their_sessions(app, accounts):
    c = signed_in(app, "ana", "technician")
    accounts.set_password("ana", "another password")
    assert c.get("/api/status").status_code == 401
    c = signed_in(app, "ana", "technician", "another password")
    accounts.set_role("ana", "viewer")
    assert c.post("/api/alarms/pump1/ack", json={}).status_code == 403  # the role is read at every request
    accounts.remove_user("ana")
    assert c.get("/api/status").status_code == 401


def test_cookie_flags(book_appliance, store, accounts):
    app = create_app(book_appliance, store.path, accounts=accounts)
    make_user(accounts, "ana", "technician")
    for base, secure in (("http://localhost", False), ("https://localhost", True)):
        c = app.test_client()
        token = c.get("/api/session", base_url=base).get_json()["csrf_token"]
        r = c.post("/login", json={"name": "ana", "password": PASSWORD}, base_url=base,
                   headers={"X-CSRFToken": token, "Referer": base + "/login"})
        assert r.status_code == 200, r.get_data(as_text=True)
        (header,) = [h for h in r.headers.getlist("Set-Cookie") if h.startswith("appliance_session=")]
        attrs = {a.strip().split("=")[0].lower() for a in header.split(";")[1:]}
        assert {"httponly", "samesite", "path"} <= attrs and "SameSite=Strict" in header
        assert ("secure" in attrs) is secure, header
    always = create_app(book_appliance, store.path, accounts=accounts, config=WebConfig(secure_cookies=True))
    r = always.test_client().get("/api/session")
    assert "Secure" in r.headers["Set-Cookie"]


def test_the_sign_in_form(app, accounts):
    make_user(accounts, "ana", "technician")
    c = app.test_client()
    r = c.get("/login?next=/alarms")
    html = r.get_data(as_text=True)
    assert r.status_code == 200 and 'name="csrf_token"' in html and 'value="/alarms"' in html
    token = html.split('name="csrf_token" value="')[1].split('"')[0]
    r = c.post("/login", data={"name": "ana", "password": PASSWORD, "next": "/alarms"})
    assert r.status_code == 400  # no token: a login CSRF from another site cannot sign the browser in
    r = c.post("/login", data={"name": "ana", "password": "nope", "csrf_token": token})
    assert r.status_code == 401 and "wrong user name or password" in r.get_data(as_text=True)
    r = c.post("/login", data={"name": "ana", "password": PASSWORD, "next": "/alarms", "csrf_token": token})
    assert r.status_code == 303 and r.headers["Location"] == "/alarms"
    assert c.get("/login").headers["Location"] == "/"  # signed in already


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:x"])
def test_sign_in_never_redirects_off_the_gateway(app, accounts, target):
    make_user(accounts, "ana", "technician")
    c = app.test_client()
    token = c.get("/api/session").get_json()["csrf_token"]
    r = c.post("/login", data={"name": "ana", "password": PASSWORD, "next": target, "csrf_token": token})
    assert r.status_code == 303 and r.headers["Location"] == "/"


def test_healthz_is_open_and_metrics_take_a_bearer_token(book_appliance, store, accounts, tmp_path):
    # Without a token file /metrics is closed to anonymous callers (it names site, model version,
    # threshold), open to a signed-in user, and to anyone only when metrics_public says so.
    default_app = create_app(book_appliance, store.path, accounts=accounts)
    assert default_app.test_client().get("/healthz").status_code == 200
    r = default_app.test_client().get("/metrics")
    assert r.status_code == 401 and b"appliance_info" not in r.data
    assert signed_in(default_app, "vic", "viewer").get("/metrics").status_code == 200
    public_app = create_app(book_appliance, store.path, accounts=accounts, config=WebConfig(metrics_public=True))
    assert public_app.test_client().get("/metrics").status_code == 200
    (tmp_path / "metrics.token").write_text("s3cret-scrape-token-0123\n")
    app = create_app(book_appliance, store.path, accounts=accounts, data_dir=tmp_path,
                     config=WebConfig(metrics_token_file="metrics.token"))
    c = app.test_client()
    assert c.get("/healthz").status_code == 200
    r = c.get("/metrics")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = c.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape-token-0123"})
    assert r.status_code == 200 and b"appliance_info" in r.data


def test_the_accounts_file_is_private(accounts):
    assert stat.S_IMODE(os.stat(accounts.path).st_mode) == 0o600
    make_user(accounts, "ana", "engineer")
    with accounts._db() as db:
        (digest,) = db.execute("SELECT hash FROM users").fetchone()
    assert digest.startswith("$argon2id$") and PASSWORD not in digest


# -- the accounts CLI --------------------------------------------------------------------------
def test_user_cli(tmp_path, capsys):
    from appliance.cli import main

    cfg = tmp_path / "a.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "var"}"\n')
    pw = tmp_path / "pw"
    pw.write_text("first password\n")
    base = ["--config", str(cfg)]
    assert main(["user", "add", "ana", "--role", "technician", "--password-file", str(pw), *base]) == 0
    assert main(["user", "add", "ana", "--role", "engineer", "--password-file", str(pw), *base]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["user", "add", "bad name", "--role", "viewer", "--password-file", str(pw), *base]) == 2
    short = tmp_path / "short"
    short.write_text("abc\n")
    assert main(["user", "add", "bo", "--role", "viewer", "--password-file", str(short), *base]) == 2
    assert "at least 8" in capsys.readouterr().err
    acc = Accounts(tmp_path / "var" / "accounts.db")  # beside the store, as the dashboard finds it
    assert acc.authenticate("ana", "first password").role == "technician"
    pw.write_text("second password\n")
    assert main(["user", "passwd", "ana", "--password-file", str(pw), *base]) == 0
    assert main(["user", "role", "ana", "--role", "engineer", *base]) == 0
    assert acc.authenticate("ana", "second password").role == "engineer"
    capsys.readouterr()
    assert main(["user", "list", *base]) == 0
    assert "ana" in capsys.readouterr().out
    assert main(["user", "remove", "ana", *base]) == 0
    assert main(["user", "remove", "ana", *base]) == 2
    assert acc.users() == []


def test_a_hostile_sign_in_body_is_a_4xx(app):
    c = app.test_client()
    token = c.get("/api/session").get_json()["csrf_token"]
    for data, code in ((b"[" * 30000, 400), (b'{"a":' * 10000, 400), (b"x" * 100_000, 413),
                       (b'{"name": ["ana"], "password": {"x": 1}}', 401), (b'"just a string"', 400)):
        r = c.post("/login", data=data, content_type="application/json", headers={"X-CSRFToken": token})
        assert r.status_code == code, (data[:20], r.status_code, r.get_data(as_text=True)[:200])
        assert "\n" not in r.get_json()["error"]
