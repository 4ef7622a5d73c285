"""A Datastore that stops answering mid-run: web requests answer 503 with Retry-After within the deadline.

Never a hang (the client library alone would retry for 60 s), and never a
fresh session in place of a logged-in user's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import flask
import pytest
from werkzeug.test import Client

from session_core import Settings
from session_core.flask import DatastoreSessionInterface
from session_core.testing import DatastoreEmulator
from session_core.wsgi import ENVIRON_KEY, SessionMiddleware

MARGIN = 3.0  # seconds of slack for a shared 2-core machine


@pytest.fixture(scope="module")
def emulator() -> Iterator[DatastoreEmulator]:
    with DatastoreEmulator() as running:
        yield running


def flask_app(emulator: DatastoreEmulator, settings: Settings) -> flask.Flask:
    app = flask.Flask(__name__)
    app.session_interface = DatastoreSessionInterface(client=emulator.client(settings), settings=settings)

    @app.post("/login/<user>")
    def login(user: str) -> str:
        flask.session.login(user)  # type: ignore[attr-defined]
        return "ok"

    @app.get("/me")
    def me() -> str:
        return str(flask.session.user)  # type: ignore[attr-defined]

    @app.post("/write")
    def write() -> str:
        flask.session["n"] = 1
        return "written"

    return app


def counter(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    session = environ[ENVIRON_KEY]
    session["n"] = session.get("n", 0) + 1
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(session["n"]).encode()]


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


@pytest.mark.slow
def test_a_stopped_datastore_gives_503_with_retry_after_never_a_hang_never_a_logout(
    emulator: DatastoreEmulator,
) -> None:
    default = emulator.settings()
    assert default.request_timeout == timedelta(seconds=5)
    short = replace(default, request_timeout=timedelta(seconds=2))
    app, quick_app = flask_app(emulator, default), flask_app(emulator, short)
    browser, quick_browser = app.test_client(), quick_app.test_client()
    assert browser.post("/login/alice").text == "ok" and browser.get("/me").text == "alice"
    quick_browser.post("/login/bob")
    wsgi = Client(SessionMiddleware(counter, client=emulator.client(short), settings=short))
    assert wsgi.get("/").text == "1" and wsgi.get("/").text == "2"

    emulator.stop()  # the store is gone mid-run

    response, elapsed = timed(lambda: browser.get("/me"))  # a load, with the default 5 s deadline
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert 4.5 <= elapsed <= 5 + MARGIN  # retried within the deadline, then answered
    assert "Set-Cookie" not in response.headers  # the user's cookie is kept: no fresh session replaced it

    response, elapsed = timed(lambda: quick_browser.get("/me"))
    assert response.status_code == 503 and response.headers["Retry-After"] == "2" and elapsed <= 2 + MARGIN

    fresh = quick_app.test_client()  # no cookie: nothing to load, the save is what fails
    response, elapsed = timed(lambda: fresh.post("/write"))
    assert response.status_code == 503 and "Retry-After" in response.headers and elapsed <= 2 + MARGIN
    assert response.text != "written" and "Set-Cookie" not in response.headers

    response, elapsed = timed(lambda: wsgi.get("/"))  # the WSGI middleware's load
    assert response.status_code == 503 and response.headers["Retry-After"] == "2" and elapsed <= 2 + MARGIN
    response, elapsed = timed(
        lambda: Client(SessionMiddleware(counter, client=emulator.client(short), settings=short)).get("/")
    )
    assert response.status_code == 503 and elapsed <= 2 + MARGIN  # the WSGI middleware's save
