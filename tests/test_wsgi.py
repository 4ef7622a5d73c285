"""A plain WSGI app wrapped in SessionMiddleware, through Werkzeug's test client."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from google.cloud import datastore
from werkzeug.test import Client

from session_core import Session, Settings
from session_core.wsgi import ENVIRON_KEY, SessionMiddleware


def counter_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    session: Session = environ[ENVIRON_KEY]
    if environ["REQUEST_METHOD"] == "POST":
        session["visits"] = session.get("visits", 0) + 1
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"visits": session.get("visits", 0)}).encode()]


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
