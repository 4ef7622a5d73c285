"""Kill-all that takes effect on the next request (the epoch), and the absolute lifetime, in every adapter.

Each adapter serves one counter. A session loaded before a kill of everyone
and saved after it (the deletes still queued) never loads again; a session
kept busy past ``SESSION_ABSOLUTE_LIFE_TIME`` loads as a fresh one and the
cleanup deletes it. Clocks are passed in: nothing sleeps.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import flask
import pytest
from django.test import Client as DjangoClient
from django.test import override_settings
from google.cloud import datastore
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from werkzeug.test import Client as WerkzeugClient

from session_core import Session, Settings, kill_sessions
from session_core.asgi import SessionMiddleware as ASGIMiddleware
from session_core.flask import DatastoreSessionInterface
from session_core.maintenance.cleanup import start_clear_sessions
from session_core.wsgi import ENVIRON_KEY
from session_core.wsgi import SessionMiddleware as WSGIMiddleware
from tests.conftest import Clock
from tests.django_site import configure
from tests.test_cleanup import remaining

configure()

T0 = 2_000_000_000.0
ABSOLUTE = 3600.0
Visit = Callable[[str], int]  # one request to the counter ("/" or "/across-kill"): the count it answers


def _bump(session: Any, across_kill: bool, client: datastore.Client, settings: Settings) -> int:
    visits = int(session.get("visits", 0)) + 1
    if across_kill:  # everyone is signed out while this request holds its session; the deletes stay queued
        kill_sessions(None, client=client, settings=settings, enqueue=lambda step: None)
    session["visits"] = visits
    return visits


def flask_visit(client: datastore.Client, settings: Settings, clock: Clock) -> Visit:
    app = flask.Flask(__name__)
    app.session_interface = DatastoreSessionInterface(client=client, settings=settings, clock=clock)
    app.config["PERMANENT_SESSION_LIFETIME"] = settings.life_time

    @app.post("/<path:where>")
    @app.post("/")
    def count(where: str = "") -> dict[str, int]:
        flask.session.permanent = True
        return {"visits": _bump(flask.session, where == "across-kill", client, settings)}

    browser = app.test_client()
    return lambda path: int(browser.post(path, base_url="https://localhost").json["visits"])  # type: ignore[index]


def wsgi_visit(client: datastore.Client, settings: Settings, clock: Clock) -> Visit:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        visits = _bump(environ[ENVIRON_KEY], environ["PATH_INFO"] == "/across-kill", client, settings)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"visits": visits}).encode()]

    browser = WerkzeugClient(WSGIMiddleware(app, client=client, settings=settings, clock=clock))
    return lambda path: int(browser.post(path, base_url="https://localhost").json["visits"])  # type: ignore[index]


def asgi_visit(client: datastore.Client, settings: Settings, clock: Clock) -> Visit:
    async def count(request: Request) -> JSONResponse:
        across = request.url.path == "/across-kill"
        return JSONResponse({"visits": _bump(request.session, across, client, settings)})

    app = Starlette(
        routes=[Route("/", count, methods=["POST"]), Route("/across-kill", count, methods=["POST"])],
        middleware=[Middleware(ASGIMiddleware, client=client, settings=settings, clock=clock)],
    )
    browser = TestClient(app, base_url="https://testserver")
    return lambda path: int(browser.post(path).json()["visits"])


def django_visit(client: datastore.Client, settings: Settings, clock: Clock) -> Visit:
    browser = DjangoClient()
    paths = {"/": "/visits/", "/across-kill": "/visits-across-a-kill/"}
    return lambda path: int(browser.post(paths[path], secure=True).json()["visits"])


ADAPTERS = {"flask": flask_visit, "wsgi": wsgi_visit, "asgi": asgi_visit, "django": django_visit}


@pytest.fixture
def absolute(settings: Settings) -> Settings:
    return replace(settings, life_time=timedelta(minutes=30), absolute_life_time=timedelta(seconds=ABSOLUTE))


@pytest.fixture
def engine(absolute: Settings, client: datastore.Client, clock: Clock) -> Iterator[None]:
    """Django's engine on the emulator and the test's clock (the other adapters take them as arguments)."""
    with override_settings(SESSION_CORE_SETTINGS=absolute, SESSION_CORE_CLIENT=client, SESSION_CORE_CLOCK=clock):
        yield


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_session_held_across_a_kill_of_everyone_and_saved_after_it_never_loads_again(
    adapter: str, client: datastore.Client, absolute: Settings, clock: Clock, engine: None
) -> None:
    visit = ADAPTERS[adapter](client, absolute, clock)
    assert [visit("/"), visit("/")] == [1, 2]
    assert visit("/across-kill") == 3  # loaded before the kill, saved after it (its deletes still queued)
    assert len(remaining(client, absolute)) >= 1  # the deletes have not reached it
    assert visit("/") == 1  # it loads as a fresh session: the kill took effect on the next request


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_session_kept_busy_past_its_absolute_lifetime_loads_fresh_and_the_cleanup_deletes_it(
    adapter: str, client: datastore.Client, absolute: Settings, clock: Clock, engine: None
) -> None:
    clock.now = T0
    visit = ADAPTERS[adapter](client, absolute, clock)
    counts = []
    while clock.now < T0 + ABSOLUTE - 600:  # a request every 10 minutes: never idle for its 30 minutes
        counts.append(visit("/"))
        clock.advance(600)
    assert counts == list(range(1, len(counts) + 1)) and len(counts) == 5
    clock.now = T0 + ABSOLUTE - 1
    assert visit("/") == 6  # alive to its absolute end
    before = remaining(client, absolute)
    clock.now = T0 + ABSOLUTE + 1  # 20 minutes after its last request: idle-alive, past its absolute end
    grace = absolute.clear_grace.total_seconds()
    start_clear_sessions(client, absolute, now=clock.now + grace)  # the one cleanup query sees it expired
    assert before and not remaining(client, absolute) & before
    assert visit("/") == 1  # a fresh session


def test_the_core_api_keeps_the_absolute_end_across_refreshes_and_rotations_and_sets_it_anew_at_login(
    client: datastore.Client, absolute: Settings
) -> None:
    from tests.conftest import Ctx

    now = [T0]
    session = Session(client, absolute, clock=lambda: now[0])
    session.load(Ctx())
    session["n"] = 1
    ctx = Ctx()
    session.save(ctx)
    assert session.absolute_end == T0 + ABSOLUTE and session.expires == T0 + 1800
    now[0] = T0 + 3000
    session.reset()  # a key rotation without a login keeps it
    session.commit()
    assert session.absolute_end == T0 + ABSOLUTE and session.expires == T0 + ABSOLUTE  # the earlier of the two
    session.login("alice")  # a login sets it anew
    session.commit()
    assert session.absolute_end == T0 + 3000 + ABSOLUTE and session.lifetime == timedelta(minutes=30)
    legacy = replace(absolute, absolute_life_time=None)
    old = Session(client, legacy, clock=lambda: T0)
    old.load(Ctx())
    old["n"] = 1
    old_ctx = Ctx()
    old.save(old_ctx)  # stored before the setting was on: no absolute end
    cookie = old_ctx.set_cookies[0].split(";")[0].split("=", 1)[1]
    first = Session(client, absolute, clock=lambda: T0 + 60)
    assert first.load(Ctx({absolute.cookie_name: cookie})) and first.absolute_end == T0 + 60 + ABSOLUTE
