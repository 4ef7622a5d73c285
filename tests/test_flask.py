"""A Flask app with DatastoreSessionInterface, through Flask's test client."""

from __future__ import annotations

import flask
import pytest
from google.cloud import datastore
from markupsafe import Markup

from session_core import Settings
from session_core.flask import DatastoreSessionInterface
from session_core.rules import hash_key


@pytest.fixture
def app(client: datastore.Client, settings: Settings) -> flask.Flask:
    app = flask.Flask(__name__)
    app.session_interface = DatastoreSessionInterface(client=client, settings=settings)

    @app.post("/cart/<item>")
    def add(item: str) -> dict[str, object]:
        flask.session.setdefault("cart", []).append(item)
        return {"cart": flask.session["cart"]}

    @app.get("/cart")
    def show() -> dict[str, object]:
        return {"cart": flask.session.get("cart", [])}

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


def test_flask_app_keeps_a_cart_across_requests(app: flask.Flask, client: datastore.Client, settings: Settings) -> None:
    browser = app.test_client()
    assert browser.get("/cart").json == {"cart": []}
    first = browser.post("/cart/book")
    assert first.headers.getlist("Set-Cookie")[0].startswith(f"{settings.cookie_name}=")
    assert "Cookie" in first.headers.get("Vary", "")
    assert browser.post("/cart/pen").json == {"cart": ["book", "pen"]}
    assert browser.get("/cart").json == {"cart": ["book", "pen"]}
    cookie = browser.get_cookie(settings.cookie_name)
    assert cookie is not None
    assert client.get(client.key(settings.kind, hash_key(cookie.value), namespace=settings.namespace)) is not None


def test_flask_read_only_request_sets_no_cookie(app: flask.Flask) -> None:
    response = app.test_client().get("/cart")
    assert response.headers.getlist("Set-Cookie") == []


def test_flask_login_rotates_the_cookie(app: flask.Flask, settings: Settings) -> None:
    browser = app.test_client()
    browser.post("/cart/book")
    before = browser.get_cookie(settings.cookie_name)
    browser.post("/login/alice")
    after = browser.get_cookie(settings.cookie_name)
    assert before is not None and after is not None and before.value != after.value
    assert browser.get("/cart").json == {"cart": []}


def test_flash_messages_survive_a_redirect_and_are_shown_once(app: flask.Flask) -> None:
    browser = app.test_client()
    browser.post("/flash/error/bad")
    redirected = browser.post("/flash/markup/saved", follow_redirects=True)
    assert redirected.status_code == 200
    assert redirected.json == [["error", "bad"], ["markup", "<b>saved</b>"]]
    assert browser.get("/messages").json == []
