"""A plain WSGI app wrapped in SessionMiddleware, through Werkzeug's test client."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from google.cloud import datastore
from werkzeug.test import Client

from session_core import Session, Settings, logout_everywhere_else
from session_core.rules import hash_key
from session_core.wsgi import ENVIRON_KEY, SessionMiddleware


def counter_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    session: Session = environ[ENVIRON_KEY]
    if environ["REQUEST_METHOD"] == "POST":
        session["visits"] = session.get("visits", 0) + 1
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"visits": session.get("visits", 0)}).encode()]


@pytest.mark.smoke  # CI's Python 3.13 pass runs it after make check
def test_wsgi_middleware_counts_visits(client: datastore.Client, settings: Settings) -> None:
    browser = Client(SessionMiddleware(counter_app, client=client, settings=settings))
    first = browser.post("/")
    assert first.json == {"visits": 1}
    assert first.headers.getlist("Set-Cookie")[0].startswith(f"{settings.cookie_name}=")
    assert browser.post("/").json == {"visits": 2}
    read = browser.get("/")
    assert read.json == {"visits": 2}
    assert read.headers.getlist("Set-Cookie") == []


def test_wsgi_middleware_ignores_foreign_cookies(client: datastore.Client, settings: Settings) -> None:
    browser = Client(SessionMiddleware(counter_app, client=client, settings=settings))
    browser.set_cookie(settings.cookie_name, "not-ours")
    response = browser.post("/")
    assert response.json == {"visits": 1}
    cookie = browser.get_cookie(settings.cookie_name)
    assert cookie is not None and cookie.value != "not-ours" and len(cookie.value) == 42


def test_misuse_is_answered_400_and_a_new_sessions_id_is_known_at_login(
    client: datastore.Client, settings: Settings
) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        session: Session = environ[ENVIRON_KEY]
        if environ["PATH_INFO"] == "/everywhere-else":
            body = {"ended": logout_everywhere_else(session)}
        else:
            session.login(environ["PATH_INFO"].removeprefix("/login/"))
            body = {"session_id": session.session_id}  # the new key's id, before the save
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    wrapped = SessionMiddleware(app, client=client, settings=settings)
    refused = Client(wrapped).post("/everywhere-else")
    assert refused.status_code == 400
    assert refused.text == "Bad request: only a logged-in session can log out its other sessions"
    assert refused.headers.getlist("Set-Cookie") == []
    laptop, phone = Client(wrapped), Client(wrapped)
    signed_in = laptop.post("/login/alice")
    cookie = laptop.get_cookie(settings.cookie_name)
    assert cookie is not None and signed_in.json == {"session_id": hash_key(cookie.value)}
    phone.post("/login/alice")
    assert laptop.post("/everywhere-else").json == {"ended": 1}


def test_a_slow_request_on_the_old_session_leaves_a_parallel_logins_cookie_alone(
    client: datastore.Client, settings: Settings
) -> None:
    """Request 1 loads the guest session, request 2 logs in (a new key), request 1 then saves a change.

    Request 1 finds its session gone: its change is dropped and it sends no ``Set-Cookie`` (no ``Max-Age=0``).
    """
    name = settings.cookie_name
    meanwhile: list[Callable[[], object]] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        session: Session = environ[ENVIRON_KEY]
        path = environ["PATH_INFO"]
        if path == "/guest":
            session["cart"] = ["book"]
        elif path == "/login":
            session.login("alice")
        elif path == "/slow":
            for other_request in meanwhile:
                other_request()  # runs to its end while this request holds the session
            session["note"] = "written on the old key"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [session.user.encode()]

    wrapped = SessionMiddleware(app, client=client, settings=settings)
    login_tab = Client(wrapped)
    login_tab.post("/guest")
    guest = login_tab.get_cookie(name)
    assert guest is not None
    slow_tab = Client(wrapped)
    slow_tab.set_cookie(name, guest.value)
    meanwhile.append(lambda: login_tab.post("/login"))

    response = slow_tab.post("/slow")

    assert response.status_code == 200 and response.headers.getlist("Set-Cookie") == []
    fresh = login_tab.get_cookie(name)
    assert fresh is not None and fresh.value != guest.value
    assert login_tab.get("/me").text == "alice"
    names = [entity.key.name for entity in client.query(kind=settings.kind, namespace=settings.namespace).fetch()]
    assert names == [hash_key(fresh.value)]  # the old session is not resurrected
