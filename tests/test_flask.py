"""Flask's own session contract, point by point from Flask's documentation, through Flask's test client.

What Flask documents (flask.sessions, the configuration page, "Sessions" in the
quickstart) and tests: the cookie comes from ``app.config``; ``modified`` is the
flag that makes a save; ``accessed`` gives ``Vary: Cookie``; an emptied session
loses its cookie; ``permanent`` and ``PERMANENT_SESSION_LIFETIME`` give the
cookie an expiry; ``SESSION_REFRESH_EACH_REQUEST`` re-sends it. Where we differ
on purpose: no ``SECRET_KEY`` is needed (nothing is signed).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import flask
import flask_login
import grpc
import pytest
from flask.testing import FlaskClient
from google.cloud import datastore
from markupsafe import Markup
from structlog.testing import capture_logs
from werkzeug.http import parse_date

from session_core import ConfigError, MisuseError, Settings, kill_sessions, logout_everywhere_else
from session_core.flask import DatastoreSessionInterface
from session_core.rules import hash_key
from tests.conftest import RpcCounter
from tests.test_faults import Faults, InjectedError, faulty_client


def stored(client: datastore.Client, settings: Settings, cookie: str | None) -> datastore.Entity | None:
    assert cookie is not None
    return client.get(client.key(settings.kind, hash_key(cookie), namespace=settings.namespace))


def make_app(client: datastore.Client, settings: Settings, **config: object) -> flask.Flask:
    app = flask.Flask(__name__)
    app.config.update(config)
    app.session_interface = DatastoreSessionInterface(client=client, settings=settings)

    @app.post("/cart/<item>")
    def add(item: str) -> dict[str, object]:
        flask.session.setdefault("cart", []).append(item)
        return {"cart": flask.session["cart"]}

    @app.get("/cart")
    def show() -> dict[str, object]:
        return {"cart": flask.session.get("cart", [])}

    @app.get("/nothing")
    def nothing() -> str:
        return ""

    @app.post("/permanent/<int:on>")
    def permanent(on: int) -> str:
        flask.session["n"] = 1
        flask.session.permanent = bool(on)
        return ""

    @app.post("/in-place")
    def in_place() -> str:
        flask.session["cart"].append("in place")  # not seen by the session ...
        flask.session.modified = True  # ... until the app says so, as Flask documents
        return ""

    @app.post("/clear")
    def clear() -> str:
        flask.session.clear()
        return ""

    @app.post("/flash/<category>/<message>")
    def flash(category: str, message: str) -> flask.Response:
        flask.flash(Markup(f"<b>{message}</b>") if category == "markup" else message, category)
        return flask.redirect("/messages")

    @app.get("/messages")
    def messages() -> list[list[str]]:
        return [[category, str(message)] for category, message in flask.get_flashed_messages(with_categories=True)]

    @app.post("/login/<user>")
    def login(user: str) -> str:
        flask.session.login(user)  # type: ignore[attr-defined]
        return "ok"

    return app


@pytest.fixture
def app(client: datastore.Client, settings: Settings) -> flask.Flask:
    return make_app(client, settings)


def cookie_header(response: flask.Response | object, name: str = "session") -> str:
    headers = [h for h in response.headers.getlist("Set-Cookie") if h.startswith(f"{name}=")]  # type: ignore[attr-defined]
    assert len(headers) == 1, headers
    return headers[0]


# -- the basics -------------------------------------------------------------------------


@pytest.mark.smoke  # CI's Python 3.13 pass runs it after make check
def test_a_cart_lives_across_requests_in_the_store_under_the_hashed_cookie(
    app: flask.Flask, client: datastore.Client, settings: Settings
) -> None:
    browser = app.test_client()
    assert browser.get("/cart").json == {"cart": []}
    assert browser.post("/cart/book").json == {"cart": ["book"]}
    assert browser.post("/cart/pen").json == {"cart": ["book", "pen"]}
    cookie = browser.get_cookie("session")
    assert cookie is not None and stored(client, settings, cookie.value) is not None
    assert browser.get("/cart").json == {"cart": ["book", "pen"]}


def test_no_secret_key_is_needed_where_flask_cookie_sessions_need_one(app: flask.Flask) -> None:
    assert app.secret_key is None
    browser = app.test_client()
    browser.post("/flash/error/bad")
    assert browser.post("/flash/markup/saved", follow_redirects=True).json == [
        ["error", "bad"],
        ["markup", "<b>saved</b>"],
    ]
    assert browser.get("/messages").json == []  # shown once


def test_session_login_rotates_the_cookie(app: flask.Flask) -> None:
    browser = app.test_client()
    browser.post("/cart/book")
    before = browser.get_cookie("session")
    browser.post("/login/alice")
    after = browser.get_cookie("session")
    assert before is not None and after is not None and before.value != after.value
    assert browser.get("/cart").json == {"cart": []}


# -- app.config drives the cookie ----------------------------------------------------


def test_flask_config_drives_every_cookie_attribute(client: datastore.Client, settings: Settings) -> None:
    app = make_app(
        client,
        settings,
        SESSION_COOKIE_NAME="__Secure-sid",
        SESSION_COOKIE_DOMAIN=".example.com",
        SESSION_COOKIE_PATH="/shop",
        SESSION_COOKIE_HTTPONLY=False,
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_PARTITIONED=True,
    )
    browser = app.test_client()
    header = cookie_header(browser.post("/cart/book", base_url="https://www.example.com"), "__Secure-sid").lower()
    for attribute in ("domain=example.com", "path=/shop", "secure", "samesite=strict", "partitioned"):
        assert attribute in header
    assert "httponly" not in header and "expires" not in header  # not permanent: a browser-session cookie
    cleared = cookie_header(browser.post("/clear", base_url="https://www.example.com"), "__Secure-sid").lower()
    assert cleared.startswith("__secure-sid=;") and "max-age=0" in cleared
    for attribute in ("domain=example.com", "path=/shop", "secure", "samesite=strict", "partitioned"):
        assert attribute in cleared


@pytest.mark.parametrize("name", ["__Host-sid", "__Secure-sid", "__secure-sid"])
def test_a_prefixed_cookie_name_without_secure_is_a_config_error_on_the_first_request(
    client: datastore.Client, settings: Settings, rpcs: RpcCounter, name: str
) -> None:
    """Browsers drop a __Host-/__Secure- cookie without Secure: every login would silently fail."""
    app = make_app(client, settings, SESSION_COOKIE_NAME=name, TESTING=True)
    with pytest.raises(ConfigError, match=f"SESSION_COOKIE_SECURE: expected True for a cookie named {name}"):
        app.test_client().post("/cart/book")
    assert rpcs.total == 0


def test_a_host_cookie_with_a_domain_or_a_path_other_than_root_is_a_config_error(
    client: datastore.Client, settings: Settings
) -> None:
    app = make_app(
        client, settings, SESSION_COOKIE_NAME="__Host-sid", SESSION_COOKIE_SECURE=True, SESSION_COOKIE_PATH="/shop"
    )
    app.testing = True
    with pytest.raises(ConfigError, match=r"SESSION_COOKIE_PATH: expected '/' and no SESSION_COOKIE_DOMAIN"):
        app.test_client().post("/cart/book")


def test_a_cookie_without_secure_outside_debug_and_testing_logs_one_warning(
    client: datastore.Client, settings: Settings
) -> None:
    with capture_logs() as logs:
        for config in ({}, {"TESTING": True}, {"DEBUG": True}, {"SESSION_COOKIE_SECURE": True}):
            browser = make_app(client, settings, **config).test_client()
            for _ in range(3):
                assert browser.post("/cart/book").status_code == 200
    warned = [line for line in logs if line["event"] == "session_cookie_not_secure"]
    assert len(warned) == 1  # the app without Secure, in production mode; once, on its first request
    assert warned[0]["log_level"] == "warning" and "SESSION_COOKIE_SECURE = True" in warned[0]["fix"]


def test_the_cookie_path_falls_back_to_application_root(client: datastore.Client, settings: Settings) -> None:
    app = make_app(client, settings, APPLICATION_ROOT="/app")
    assert "Path=/app" in cookie_header(app.test_client().post("/cart/book"))


def test_a_bad_samesite_raises_value_error_as_flask_does_and_stores_nothing(
    client: datastore.Client, settings: Settings, rpcs: RpcCounter
) -> None:
    app = make_app(client, settings, SESSION_COOKIE_SAMESITE="sometimes", TESTING=True)
    with pytest.raises(ValueError, match="SameSite"):
        app.test_client().post("/cart/book")
    assert rpcs.calls["commit"] == 0


# -- modified, accessed, Vary ---------------------------------------------------------


def test_modified_starts_false_and_setting_it_saves_an_in_place_change(app: flask.Flask) -> None:
    with app.test_request_context():
        assert flask.session.modified is False  # a fresh session
    browser = app.test_client()
    browser.post("/cart/book")
    with browser:
        browser.get("/cart")
        assert flask.session.modified is False  # a loaded one
        assert flask.session.accessed is True
    browser.post("/in-place")
    assert browser.get("/cart").json == {"cart": ["book", "in place"]}


@pytest.mark.parametrize(("method", "path"), [("GET", "/cart"), ("POST", "/cart/x"), ("POST", "/clear")])
def test_vary_cookie_on_every_response_that_accessed_the_session(app: flask.Flask, method: str, path: str) -> None:
    browser = app.test_client()
    browser.post("/cart/book")
    response = browser.open(path, method=method)
    assert response.headers.getlist("Vary") == ["Cookie"]


def test_no_vary_and_no_cookie_when_the_session_was_not_used(app: flask.Flask, rpcs: RpcCounter) -> None:
    response = app.test_client().get("/nothing")
    assert "Vary" not in response.headers and "Set-Cookie" not in response.headers
    assert rpcs.total == 0  # no cookie, no RPC


def test_a_read_only_request_writes_nothing_and_sets_no_cookie(app: flask.Flask, rpcs: RpcCounter) -> None:
    browser = app.test_client()
    browser.post("/cart/book")
    rpcs.reset()
    response = browser.get("/cart")
    assert response.headers.getlist("Set-Cookie") == [] and rpcs.calls == {"lookup": 1}


def test_an_emptied_guest_session_is_deleted_with_its_cookie(
    app: flask.Flask, client: datastore.Client, settings: Settings
) -> None:
    browser = app.test_client()
    browser.post("/cart/book")
    cookie = browser.get_cookie("session")
    assert cookie is not None
    response = browser.post("/clear")
    assert cookie_header(response).startswith("session=;") and "Max-Age=0" in cookie_header(response)
    assert stored(client, settings, cookie.value) is None and browser.get_cookie("session") is None


# -- permanent sessions and lifetimes -------------------------------------------------


def test_a_permanent_session_gets_expires_and_max_age_and_lives_that_long_on_the_server(
    client: datastore.Client, settings: Settings
) -> None:
    app = make_app(client, settings, PERMANENT_SESSION_LIFETIME=timedelta(days=14))
    browser = app.test_client()
    header = cookie_header(browser.post("/permanent/1"))
    assert "Max-Age=1209600" in header
    expires = parse_date(header.split("Expires=")[1].split(";")[0])
    assert expires is not None
    cookie = browser.get_cookie("session")
    entity = stored(client, settings, cookie.value if cookie else None)
    assert entity is not None and entity["lifetime"] == 14 * 86400
    assert abs(expires.timestamp() - entity["expires"].timestamp()) < 2


def test_a_non_permanent_session_has_a_browser_cookie_and_lives_the_permanent_lifetime_idle(
    client: datastore.Client, settings: Settings
) -> None:
    app = make_app(client, settings, PERMANENT_SESSION_LIFETIME=timedelta(hours=2))
    browser = app.test_client()
    header = cookie_header(browser.post("/permanent/0"))
    assert "Expires" not in header and "Max-Age" not in header
    cookie = browser.get_cookie("session")
    entity = stored(client, settings, cookie.value if cookie else None)
    assert entity is not None and entity["lifetime"] == 2 * 3600  # as Flask-Session does


@pytest.mark.parametrize(("refresh", "permanent", "resent"), [(True, 1, True), (False, 1, False), (True, 0, False)])
def test_refresh_each_request_resends_a_permanent_cookie_without_an_extra_write(
    client: datastore.Client, settings: Settings, rpcs: RpcCounter, refresh: bool, permanent: int, resent: bool
) -> None:
    app = make_app(client, settings, SESSION_REFRESH_EACH_REQUEST=refresh)
    browser = app.test_client()
    browser.post(f"/permanent/{permanent}")
    rpcs.reset()
    response = browser.get("/nothing")  # a page that does not even use the session
    assert ("Set-Cookie" in response.headers) is resent
    assert rpcs.calls == {"lookup": 1}  # inside the refresh window: no write


# -- Flask-Login ------------------------------------------------------------------------


class User(flask_login.UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


@pytest.fixture
def login_app(client: datastore.Client, settings: Settings) -> flask.Flask:
    return make_login_app(client, settings)


def make_login_app(client: datastore.Client, settings: Settings, **config: object) -> flask.Flask:
    settings_with_fields = Settings(
        **{**settings.__dict__, "persistent_fields_on_login": ("language",), "persistent_fields_on_logout": ()}
    )
    app = make_app(client, settings_with_fields, SECRET_KEY="flask-login signs its remember cookie", **config)
    manager = flask_login.LoginManager(app)
    manager.user_loader(User)

    @app.post("/set/<key>/<value>")
    def set_value(key: str, value: str) -> str:
        flask.session[key] = value
        return ""

    @app.post("/sign-in/<user>")
    def sign_in(user: str) -> str:
        flask_login.login_user(User(user), remember=flask.request.args.get("remember") == "1")
        return ""

    @app.post("/sign-out")
    def sign_out() -> str:
        flask_login.logout_user()
        return ""

    @app.get("/me")
    @app.get("/site/me")
    def me() -> str:
        return str(flask_login.current_user.get_id() or "anonymous")

    @app.get("/site/private")
    @flask_login.login_required
    def private() -> str:
        return f"private page of {flask_login.current_user.get_id()}"

    return app


def test_login_user_stores_the_user_rotates_the_key_and_keeps_flask_logins_keys(
    login_app: flask.Flask, client: datastore.Client, settings: Settings
) -> None:
    browser = login_app.test_client()
    browser.post("/set/language/de")
    browser.post("/set/cart/full")
    guest = browser.get_cookie("session")
    browser.post("/sign-in/alice?remember=1")
    signed_in = browser.get_cookie("session")
    assert guest is not None and signed_in is not None and guest.value != signed_in.value
    assert stored(client, settings, guest.value) is None  # the old key is gone: no fixation
    entity = stored(client, settings, signed_in.value)
    assert entity is not None and entity["user"] == "alice"
    assert {"_user_id", "_fresh", "_id", "language"} <= set(entity["data"]) and "cart" not in entity["data"]
    assert browser.get("/me").text == "alice"


def test_logout_user_makes_a_guest_and_lets_flask_login_clear_its_remember_cookie(
    login_app: flask.Flask, client: datastore.Client, settings: Settings
) -> None:
    browser = login_app.test_client()
    browser.post("/sign-in/alice?remember=1")
    assert browser.get_cookie("remember_token") is not None
    signed_in = browser.get_cookie("session")
    response = browser.post("/sign-out")
    assert any(h.startswith("remember_token=;") for h in response.headers.getlist("Set-Cookie"))
    assert browser.get_cookie("remember_token") is None
    assert signed_in is not None and stored(client, settings, signed_in.value) is None
    assert browser.get("/me").text == "anonymous"


def test_a_kill_logs_the_browser_out_on_its_next_request(
    login_app: flask.Flask, client: datastore.Client, settings: Settings
) -> None:
    browser = login_app.test_client()
    browser.post("/sign-in/alice")
    assert browser.get("/me").text == "alice"
    kill_sessions("alice", client=client, settings=settings)
    assert browser.get("/me").text == "anonymous"


def test_a_remember_me_cookie_cannot_undo_a_kill_until_the_next_interactive_login(
    login_app: flask.Flask, client: datastore.Client, settings: Settings, rpcs: RpcCounter
) -> None:
    browser = login_app.test_client()
    browser.post("/sign-in/alice?remember=1")
    browser.delete_cookie("session")  # the browser was closed: only the remember-me cookie is left
    rpcs.reset()
    assert browser.get("/me").text == "alice"  # Flask-Login's remember-me works ...
    assert rpcs.calls["lookup"] == 1  # ... for one lookup: the kill record (no session cookie, no session lookup)
    rpcs.reset()
    assert browser.get("/me").text == "alice"  # the remembered login became a session: no kill-record lookup
    assert rpcs.calls["lookup"] == 1
    kill_sessions("alice", client=client, settings=settings)
    response = browser.get("/me")
    assert (response.status_code, response.text) == (200, "anonymous")  # refused: the request goes on anonymous
    assert browser.get_cookie("remember_token") is None  # and its cookie is gone
    assert browser.get("/me").text == "anonymous"
    browser.post("/sign-in/alice?remember=1")  # an interactive login
    browser.delete_cookie("session")
    assert browser.get("/me").text == "alice"  # remember-me works again


# -- misuse is a 400, and a new session's id is known at once ---------------------------------


def test_misuse_through_flask_session_is_a_400_never_a_500(client: datastore.Client, settings: Settings) -> None:
    app = flask.Flask(__name__)
    app.session_interface = DatastoreSessionInterface(client=client, settings=settings)

    @app.post("/login/<user>")
    def login(user: str) -> dict[str, object]:
        flask.session.login(None if user == "nobody" else user)  # type: ignore[attr-defined]
        return {"session_id": flask.session.session_id}  # type: ignore[attr-defined]

    @app.post("/everywhere-else")
    def everywhere_else() -> dict[str, object]:
        return {"ended": logout_everywhere_else(flask.session)}  # type: ignore[arg-type]

    guest = app.test_client()
    refused = guest.post("/everywhere-else")
    assert refused.status_code == 400 and b"only a logged-in session can log out its other sessions" in refused.data
    assert guest.post("/login/nobody").status_code == 400
    assert guest.get_cookie("session") is None  # nothing was stored for the refused requests

    laptop, phone = app.test_client(), app.test_client()
    signed_in = laptop.post("/login/alice").json
    cookie = laptop.get_cookie("session")
    assert cookie is not None and signed_in == {"session_id": hash_key(cookie.value)}  # known in the login request
    phone.post("/login/alice")
    assert laptop.post("/everywhere-else").json == {"ended": 1}


def test_a_maintenance_calls_misuse_in_a_view_is_a_400_through_the_apps_own_400_page(
    client: datastore.Client, settings: Settings
) -> None:
    app = flask.Flask(__name__)
    app.session_interface = DatastoreSessionInterface(client=client, settings=settings)
    app.register_error_handler(400, lambda exc: (f"our 400 page: {exc.description}", 400))

    @app.post("/kill/<user>")
    def kill(user: str) -> dict[str, object]:
        return kill_sessions(user, client=client, settings=settings, except_session="not-an-id").to_json()

    refused = app.test_client().post("/kill/alice")
    assert refused.status_code == 400
    assert refused.text == "our 400 page: except_session must be a session id (64 hex digits)"


def test_set_expiry_in_flask_is_refused_with_a_400_as_flask_gives_every_session_one_lifetime(
    client: datastore.Client, settings: Settings
) -> None:
    app = flask.Flask(__name__)
    app.session_interface = DatastoreSessionInterface(client=client, settings=settings)

    @app.post("/remember")
    def remember() -> str:
        flask.session.set_expiry(timedelta(days=30))  # type: ignore[attr-defined]
        return "remembered"

    refused = app.test_client().post("/remember")
    assert refused.status_code == 400 and b"PERMANENT_SESSION_LIFETIME" in refused.data


def test_an_app_can_restyle_misuse_with_its_own_handler(client: datastore.Client, settings: Settings) -> None:
    app = flask.Flask(__name__)
    app.session_interface = DatastoreSessionInterface(client=client, settings=settings)
    app.register_error_handler(MisuseError, lambda exc: ({"error": str(exc)}, 422))

    @app.post("/everywhere-else")
    def everywhere_else() -> dict[str, object]:
        return {"ended": logout_everywhere_else(flask.session)}  # type: ignore[arg-type]

    answer = app.test_client().post("/everywhere-else")
    assert (answer.status_code, answer.json) == (
        422,
        {"error": "only a logged-in session can log out its other sessions"},
    )


SITE = "https://www.example.com"
REMEMBER = {
    "REMEMBER_COOKIE_SECURE": True,
    "REMEMBER_COOKIE_SAMESITE": "None",
    "REMEMBER_COOKIE_HTTPONLY": True,
    "REMEMBER_COOKIE_PATH": "/site",
    "REMEMBER_COOKIE_DOMAIN": "example.com",
}


def holding_only(app: flask.Flask, remember_token: str) -> FlaskClient:
    """A browser that was closed: only Flask-Login's remember-me cookie is left."""
    browser = app.test_client()
    browser.set_cookie(
        "remember_token", remember_token, domain="example.com", origin_only=False, path="/site", secure=True
    )
    return browser


def test_a_refused_remember_me_cookie_leaves_an_anonymous_request_and_is_deleted_with_its_attributes(
    client: datastore.Client, settings: Settings, rpcs: RpcCounter
) -> None:
    app = make_login_app(client, settings, **REMEMBER)
    signing_in = app.test_client()
    signing_in.post("/sign-in/alice?remember=1", base_url=SITE)
    token = signing_in.get_cookie("remember_token", domain="example.com", path="/site")
    assert token is not None
    assert holding_only(app, token.value).get("/site/me", base_url=SITE).text == "alice"  # remember-me works
    kill_sessions("alice", client=client, settings=settings)

    public = holding_only(app, token.value).get("/site/me", base_url=SITE)
    assert (public.status_code, public.text) == (200, "anonymous")  # a public page answers, as for anyone anonymous
    deletion = cookie_header(public, "remember_token")  # one header: Flask-Login's path-and-domain-only one replaced
    for attribute in ("Max-Age=0", "Path=/site", "Domain=example.com", "Secure", "HttpOnly", "SameSite=None"):
        assert attribute in deletion.split("; ")

    browser = holding_only(app, token.value)
    private = browser.get("/site/private", base_url=SITE)
    assert private.status_code == 401  # login_required answers as it does for anyone anonymous
    assert "Max-Age=0" in cookie_header(private, "remember_token")
    assert browser.get_cookie("remember_token", domain="example.com", path="/site") is None
    rpcs.reset()
    later = browser.get("/site/me", base_url=SITE)
    assert (later.status_code, later.text) == (200, "anonymous") and "Set-Cookie" not in later.headers
    assert rpcs.total == 0  # a normal anonymous request: no cookie left, nothing looked up


class CommitsTimeOut(Faults):
    """Every Commit times out (DEADLINE_EXCEEDED), at the client's gRPC boundary: lookups still answer."""

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if details.method.rsplit("/", 1)[-1] == "Commit":
            return InjectedError(grpc.StatusCode.DEADLINE_EXCEEDED)
        return continuation(details, request)


def test_a_save_that_times_out_is_a_503_logged_with_the_saves_operation_not_load(settings: Settings) -> None:
    quick = replace(settings, request_timeout=timedelta(seconds=1))
    app = make_app(faulty_client(quick, CommitsTimeOut()), quick)
    with capture_logs() as logs:
        response = app.test_client().post("/cart/book")
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert [line["operation"] for line in logs if line["event"] == "session_unavailable"] == ["insert"]
