"""Starlette's session contract, from its documentation and its own tests, through Starlette's TestClient and uvicorn.

Starlette documents ``request.session`` as a dict that ``SessionMiddleware``
fills from a cookie and saves when the response starts; its tests
(``tests/middleware/test_session.py``) check set, read and clear, the
cookie's ``Max-Age``, expiry, ``https_only``, ``path``, ``domain``, a
browser-session cookie, and that a bogus cookie gives an empty session, not an
error. The same behaviours are written here for our middleware, where the
cookie attributes come from the settings (``cookie_secure``,
``cookie_path``, ``cookie_domain``, ``use_session_cookie``). Where we differ
on purpose: no ``secret_key`` (nothing is signed; the store is server-side).
Then what the ASGI adapter adds: no RPC on the event loop's thread, 503 past
the request deadline, read-only WebSocket sessions, FastAPI, and kills that
log a browser out, through a real uvicorn server with httpx.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Annotated, Any

import httpx
import httpx2
import pytest
import uvicorn
from fastapi import Depends, FastAPI, Request
from google.cloud import datastore
from packaging.requirements import Requirement
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket, WebSocketDisconnect
from structlog.testing import capture_logs

from session_core import (
    MisuseError,
    Settings,
    aend_user_session,
    akill_sessions,
    alist_user_sessions,
    alogout_everywhere_else,
    logout_everywhere_else,
)
from session_core._wire import wire_of
from session_core.asgi import ASGISession, SessionMiddleware, session_of
from session_core.clients import datastore_client
from session_core.rules import GUEST_USER, hash_key, new_key
from session_core.testing import free_port
from tests.conftest import ROOT, Clock, RpcCounter, doc_python_blocks, in_the_environment

# -- the app: Starlette's test routes, and ours ------------------------------------------


def view_session(request: Request) -> JSONResponse:
    return JSONResponse({"session": request.session})


async def update_session(request: Request) -> JSONResponse:
    request.session.update(await request.json())
    return JSONResponse({"session": request.session})


async def clear_session(request: Request) -> JSONResponse:
    request.session.clear()
    return JSONResponse({"session": request.session})


async def count(request: Request) -> JSONResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return JSONResponse({"n": request.session["n"]})


async def login(request: Request) -> PlainTextResponse:
    session_of(request).login(request.path_params["user"])
    return PlainTextResponse("ok")


async def logout(request: Request) -> PlainTextResponse:
    session_of(request).logout()
    return PlainTextResponse("ok")


async def me(request: Request) -> JSONResponse:
    session = session_of(request)
    return JSONResponse({"user": session.user, "session_id": session.session_id})


async def expiry(request: Request) -> PlainTextResponse:
    session = session_of(request)
    session["n"] = 1
    session.set_expiry(int(request.path_params["seconds"]))
    return PlainTextResponse("ok")


async def touch(request: Request) -> PlainTextResponse:
    request.session  # noqa: B018 - Starlette 1.x marks the session accessed here, though no value is read
    return PlainTextResponse("touched")


async def ping(request: Request) -> PlainTextResponse:
    return PlainTextResponse("pong")


def sync_ping(request: Request) -> PlainTextResponse:
    return PlainTextResponse("pong from anyio's default thread pool")  # Starlette runs a sync endpoint there


async def loop_thread(request: Request) -> JSONResponse:
    return JSONResponse({"thread": threading.get_ident()})


async def dumps(request: Request) -> PlainTextResponse:
    assert isinstance(request.session, dict)
    return PlainTextResponse(json.dumps(request.session, sort_keys=True))


async def kill(request: Request) -> JSONResponse:
    session = session_of(request)
    result = await akill_sessions(request.path_params["user"], client=session.store.client, settings=session.settings)
    return JSONResponse({"deleted": result.deleted})


async def devices(request: Request) -> JSONResponse:
    session = session_of(request)
    infos = await alist_user_sessions(session.store.client, session.settings, session.user)
    return JSONResponse([info.session_id for info in infos])


async def end_device(request: Request) -> JSONResponse:
    session = session_of(request)
    ended = await aend_user_session(
        session.store.client, session.settings, session.user, request.path_params["session_id"]
    )
    return JSONResponse({"ended": ended})


async def websocket_view(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"user": session_of(websocket).user, "session": websocket.session})
    try:
        websocket.session["written"] = True
    except MisuseError as exc:
        await websocket.send_text(f"refused: {exc}")
    await websocket.close()


ROUTES = [
    Route("/view_session", view_session),
    Route("/update_session", update_session, methods=["POST"]),
    Route("/clear_session", clear_session, methods=["POST"]),
    Route("/count", count, methods=["POST"]),
    Route("/login/{user}", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/me", me),
    Route("/expiry/{seconds:int}", expiry, methods=["POST"]),
    Route("/touch", touch),
    Route("/ping", ping),
    Route("/sync-ping", sync_ping),
    Route("/loop-thread", loop_thread),
    Route("/dumps", dumps),
    Route("/admin/kill/{user}", kill, methods=["POST"]),
    Route("/devices", devices),
    Route("/devices/{session_id}/end", end_device, methods=["POST"]),
    WebSocketRoute("/ws", websocket_view),
]


def make_app(
    client: datastore.Client, settings: Settings, *, clock: Callable[[], float] = time.time, **app: Any
) -> Starlette:
    return Starlette(
        routes=app.pop("routes", ROUTES),
        middleware=[Middleware(SessionMiddleware, client=client, settings=settings, clock=clock)],
        **app,
    )


def browser(app: Any, *, base_url: str = "https://testserver", cookies: dict[str, str] | None = None) -> TestClient:
    """A TestClient over https (our cookie is Secure by default, as ViUR's is), holding ``cookies`` as if set."""
    http = TestClient(app, base_url=base_url)
    for name, value in (cookies or {}).items():
        http.cookies.set(name, value, domain="testserver.local")  # where the jar keeps what testserver sets
    return http


def set_cookie(response: httpx2.Response) -> str:
    [header] = response.headers.get_list("set-cookie")
    return header


def attributes(header: str) -> set[str]:
    return set(header.split("; ")[1:])


def stored_sessions(client: datastore.Client, settings: Settings) -> list[datastore.Entity]:
    return list(client.query(kind=settings.kind, namespace=settings.namespace).fetch())


@pytest.fixture
def app(client: datastore.Client, settings: Settings, clock: Clock) -> Starlette:
    """The test app, on a clock that moves when the test says so."""
    return make_app(client, settings, clock=clock)


@pytest.fixture
def plain_http(settings: Settings) -> Settings:
    """Settings for a browser on plain http (no Secure, as for local development)."""
    return replace(settings, cookie_secure=False)


# -- Starlette's SessionMiddleware tests, for ours ----------------------------------------


@pytest.mark.smoke  # CI's Python 3.13 pass runs it after make check
def test_set_read_and_clear_a_session(app: Starlette, client: datastore.Client, settings: Settings) -> None:
    """Starlette's ``test_session``: the session is {} at first, keeps what is set, and is {} once cleared."""
    http = browser(app)
    assert http.get("/view_session").json() == {"session": {}}

    response = http.post("/update_session", json={"some": "data"})
    assert response.json() == {"session": {"some": "data"}}
    header = set_cookie(response)
    cookie = http.cookies[settings.cookie_name]
    assert header.startswith(f"{settings.cookie_name}={cookie}; ")
    assert attributes(header) == {"Path=/", "HttpOnly", "Secure", "SameSite=Lax"}  # a browser-session cookie
    assert [entity.key.name for entity in stored_sessions(client, settings)] == [hash_key(cookie)]

    assert http.get("/view_session").json() == {"session": {"some": "data"}}

    response = http.post("/clear_session")
    assert response.json() == {"session": {}}
    assert set_cookie(response) == f"{settings.cookie_name}=; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=0"
    assert stored_sessions(client, settings) == []  # an emptied guest session is deleted, as Starlette drops its cookie
    assert http.get("/view_session").json() == {"session": {}}


def test_max_age_is_the_session_lifetime_unless_it_is_a_browser_session_cookie(
    client: datastore.Client, settings: Settings
) -> None:
    """Starlette's ``max_age`` (``test_session`` checks it; ``test_session_cookie``: None sends no Max-Age)."""
    lasting = replace(settings, use_session_cookie=False, life_time=timedelta(days=14))
    http = browser(make_app(client, lasting))
    response = http.post("/update_session", json={"some": "data"})
    assert re.search(r"; Max-Age=([0-9]+)", set_cookie(response))[1] == str(14 * 24 * 3600)  # type: ignore[index]
    response = http.post("/expiry/120")  # the session's own lifetime
    assert "Max-Age=120" in attributes(set_cookie(response))

    browser_session = browser(make_app(client, settings))
    response = browser_session.post("/update_session", json={"some": "data"})
    assert not any(part.startswith("Max-Age") for part in attributes(set_cookie(response)))
    browser_session.cookies.delete(settings.cookie_name)
    assert browser_session.get("/view_session").json() == {"session": {}}


def test_an_expired_session_reads_as_a_fresh_one(app: Starlette, settings: Settings, clock: Clock) -> None:
    """Starlette's ``test_session_expires``: the browser still sends the cookie, the session is {}."""
    http = browser(app)
    assert http.post("/expiry/1").text == "ok"
    cookie = http.cookies[settings.cookie_name]
    clock.advance(1.2)
    again = browser(app, cookies={settings.cookie_name: cookie})
    assert again.get("/view_session").json() == {"session": {}}
    again.post("/update_session", json={"some": "data"})
    assert again.cookies[settings.cookie_name] != cookie  # a new session under a new key


def test_a_secure_cookie_does_not_come_back_over_plain_http(app: Starlette) -> None:
    """Starlette's ``test_secure_session`` (``https_only``; ours is ``SESSION_COOKIE_SECURE``, on by default)."""
    insecure, secure = browser(app, base_url="http://testserver"), browser(app)
    assert insecure.post("/update_session", json={"some": "data"}).json() == {"session": {"some": "data"}}
    assert insecure.get("/view_session").json() == {"session": {}}
    assert secure.post("/update_session", json={"some": "data"}).json() == {"session": {"some": "data"}}
    assert secure.get("/view_session").json() == {"session": {"some": "data"}}
    assert secure.post("/clear_session").json() == {"session": {}}
    assert secure.get("/view_session").json() == {"session": {}}


def test_the_cookie_path_comes_from_the_settings(client: datastore.Client, settings: Settings) -> None:
    """Starlette's ``test_session_cookie_subpath``: a mounted app's cookie carries its path, set and cleared."""
    second = make_app(client, replace(settings, cookie_path="/second_app"))
    app = Starlette(routes=[Mount("/second_app", app=second)])
    http = browser(app)
    response = http.post("/second_app/update_session", json={"some": "data"})
    assert response.status_code == 200 and "Path=/second_app" in attributes(set_cookie(response))
    assert http.get("/second_app/view_session").json() == {"session": {"some": "data"}}
    assert "Path=/second_app" in attributes(set_cookie(http.post("/second_app/clear_session")))


def test_the_cookie_domain_comes_from_the_settings(client: datastore.Client, settings: Settings) -> None:
    """Starlette's ``test_domain_cookie``: ``Domain=.example.com`` on the cookie (so testserver never gets it back)."""
    http = browser(make_app(client, replace(settings, cookie_domain=".example.com")))
    response = http.post("/update_session", json={"some": "data"})
    assert response.json() == {"session": {"some": "data"}}
    assert "Domain=.example.com" in attributes(set_cookie(response))
    assert http.get("/view_session").json() == {"session": {}}


@pytest.mark.parametrize(
    "cookie",
    [  # the last: our format, never issued (its id is fixed, so that every process collects the same tests)
        *("invalid", "", "a" * 41, "a" * 43, "a" * 41 + "!", '"quoted"'),
        pytest.param(new_key(), id="our-format-never-issued"),
    ],
)
def test_a_bogus_cookie_gives_a_fresh_session_never_an_error(app: Starlette, settings: Settings, cookie: str) -> None:
    """Starlette's ``test_invalid_session_cookie``; and no client-chosen key ever becomes a session (no fixation)."""
    http = browser(app, cookies={settings.cookie_name: cookie})
    assert http.get("/view_session").json() == {"session": {}}
    assert http.post("/update_session", json={"some": "data"}).json() == {"session": {"some": "data"}}
    issued = http.cookies[settings.cookie_name]
    assert issued != cookie and len(issued) == 42


def test_a_cookie_header_of_any_bytes_is_not_an_error(app: Starlette, settings: Settings) -> None:
    headers = [(b"cookie", b"\xff\xfe; " + settings.cookie_name.encode() + b"=\x80\x81"), (b"cookie", b";;=;")]
    scope = {"type": "http", "method": "GET", "path": "/view_session", "headers": headers, "query_string": b""}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 200 and json.loads(sent[1]["body"]) == {"session": {}}


# -- request.session as Starlette documents it ----------------------------------------------


def test_request_session_is_a_dict_that_json_dumps_serialises(app: Starlette) -> None:
    http = browser(app)
    http.post("/update_session", json={"b": [1, 2], "a": {"x": None}})
    assert http.get("/dumps").text == '{"a": {"x": null}, "b": [1, 2]}'
    assert http.get("/view_session").json() == {"session": {"a": {"x": None}, "b": [1, 2]}}


def test_our_session_is_what_starlette_finds_in_the_scope(client: datastore.Client, settings: Settings) -> None:
    async def kind(request: Request) -> Response:
        return PlainTextResponse(type(HTTPConnection(request.scope).session).__name__)

    http = browser(make_app(client, settings, routes=[Route("/", kind)]))
    assert http.get("/").text == "ASGISession"


def test_vary_cookie_when_the_session_was_used_and_only_then(app: Starlette, rpcs: RpcCounter) -> None:
    """Starlette 1.x's ``request.session`` calls ``mark_accessed()``: even without reading a value, ``Vary: Cookie``."""
    http = browser(app)
    assert http.get("/touch").headers.get_list("vary") == ["Cookie"]
    assert http.get("/view_session").headers.get_list("vary") == ["Cookie"]
    response = http.get("/ping")
    assert response.headers.get_list("vary") == [] and "set-cookie" not in response.headers
    assert rpcs.total == 0  # no cookie: nothing to load, nothing to write


def test_a_cookie_costs_one_lookup_and_a_change_one_commit(app: Starlette, rpcs: RpcCounter) -> None:
    http = browser(app)
    http.post("/count")
    assert dict(rpcs.calls) == {"commit": 1}
    rpcs.reset()
    response = http.get("/view_session")
    assert dict(rpcs.calls) == {"lookup": 1} and "set-cookie" not in response.headers
    rpcs.reset()
    http.post("/count")
    assert dict(rpcs.calls) == {"lookup": 1, "commit": 1}
    rpcs.reset()
    http.get("/ping")  # a cookie of our format is loaded whether the route uses the session or not
    assert dict(rpcs.calls) == {"lookup": 1}


def test_popping_a_missing_key_writes_nothing_as_with_starlette(
    client: datastore.Client, settings: Settings, rpcs: RpcCounter
) -> None:
    async def pop_flash(request: Request) -> JSONResponse:
        return JSONResponse({"flash": request.session.pop("flash", None)})

    http = browser(make_app(client, settings, routes=[*ROUTES, Route("/flash", pop_flash)]))
    http.post("/update_session", json={"flash": "saved!", "theme": "dark"})
    assert http.get("/flash").json() == {"flash": "saved!"}
    rpcs.reset()
    assert http.get("/flash").json() == {"flash": None}
    assert dict(rpcs.calls) == {"lookup": 1}  # no commit: nothing changed
    assert http.get("/view_session").json() == {"session": {"theme": "dark"}}


def test_a_session_only_read_is_still_refreshed_so_an_active_user_stays(
    app: Starlette, rpcs: RpcCounter, clock: Clock
) -> None:
    http = browser(app)
    http.post("/expiry/2")  # a 2 s lifetime: rewritten by a request more than 1 s after the last write
    for _ in range(2):
        clock.advance(1.2)
        rpcs.reset()
        response = http.get("/view_session")
        assert dict(rpcs.calls) == {"lookup": 1, "commit": 1} and "set-cookie" in response.headers
    assert response.json() == {"session": {"n": 1}}  # alive 2.4 s after it was set: its expiry moved on


def test_login_rotates_the_cookie_and_logout_makes_a_guest(app: Starlette, settings: Settings) -> None:
    http = browser(app)
    http.post("/count")
    guest_cookie = http.cookies[settings.cookie_name]
    assert http.post("/login/alice").text == "ok"
    assert http.cookies[settings.cookie_name] != guest_cookie
    assert http.get("/me").json()["user"] == "alice"
    assert browser(app, cookies={settings.cookie_name: guest_cookie}).get("/me").json()["user"] == GUEST_USER
    http.post("/logout")
    assert http.get("/me").json()["user"] == GUEST_USER


@pytest.mark.parametrize("planted", ["x", new_key()], ids=["malformed", "well-formed-unknown"])
@pytest.mark.parametrize("split", [False, True], ids=["one-header", "split-headers"])
def test_every_cookie_of_our_name_is_tried_so_a_planted_one_cannot_hide_the_login(
    app: Starlette, client: datastore.Client, settings: Settings, planted: str, split: bool
) -> None:
    """``sid=x; sid=<alice>`` (a sibling subdomain planted the first): alice is loaded, as WSGI and Session.load do.

    Her next write goes to her session, under her cookie, instead of a guest's replacing it.
    """
    alice = browser(app)
    alice.post("/login/alice")
    cookie = alice.cookies[settings.cookie_name]
    name = settings.cookie_name
    sent = [("cookie", f"{name}={planted}"), ("cookie", f"{name}={cookie}")]
    headers = sent if split else [("cookie", f"{name}={planted}; {name}={cookie}")]
    http = TestClient(app, base_url="https://testserver")

    assert http.get("/me", headers=headers).json()["user"] == "alice"
    response = http.post("/count", headers=headers)
    assert response.json() == {"n": 1}
    assert set_cookie(response).startswith(f"{name}={cookie}; ")  # her own cookie again, never a guest's
    [entity] = stored_sessions(client, settings)
    assert (entity.key.name, entity["user"], entity["data"]["n"]) == (hash_key(cookie), "alice", 1)


def slow_write(request: Request) -> PlainTextResponse:
    """Hold the loaded session while another request runs to its end, then change it."""
    request.app.state.meanwhile()
    request.session["note"] = "written on the old key"
    return PlainTextResponse("ok")


def test_a_slow_request_on_the_old_session_leaves_a_parallel_logins_cookie_alone(
    client: datastore.Client, settings: Settings
) -> None:
    """Request 1 loads the guest session, request 2 logs in (a new key), request 1 then saves a change.

    Request 1 finds its session gone: its change is dropped and it sends no ``Set-Cookie`` at all, so the
    ``Max-Age=0`` that used to follow cannot delete the new login cookie.
    """
    app = make_app(client, settings, routes=[*ROUTES, Route("/slow-write", slow_write, methods=["POST"])])
    name = settings.cookie_name
    login_tab = browser(app)
    login_tab.post("/count")
    guest = login_tab.cookies[name]
    slow_tab = browser(app, cookies={name: guest})
    app.state.meanwhile = lambda: login_tab.post("/login/alice")

    response = slow_tab.post("/slow-write")

    assert response.status_code == 200 and response.headers.get_list("set-cookie") == []
    fresh = login_tab.cookies[name]
    assert fresh != guest
    assert browser(app, cookies={name: fresh}).get("/me").json()["user"] == "alice"
    [entity] = stored_sessions(client, settings)  # the login's session; the old one is not resurrected
    assert entity.key.name == hash_key(fresh) and "note" not in entity["data"]


def test_modified_and_mark_modified_are_the_one_change_flag(client: datastore.Client, settings: Settings) -> None:
    async def in_place(request: Request) -> PlainTextResponse:
        session = session_of(request)
        assert session.modified is False
        session.peek("cart").append("in place")  # not seen by the session ...
        session.mark_modified()  # ... until the app says so
        assert session.modified is session.changed is True
        return PlainTextResponse("ok")

    app = make_app(client, settings, routes=[*ROUTES, Route("/in-place", in_place, methods=["POST"])])
    http = browser(app)
    http.post("/update_session", json={"cart": ["book"]})
    http.post("/in-place")
    assert http.get("/view_session").json() == {"session": {"cart": ["book", "in place"]}}


def test_session_of_names_the_missing_middleware() -> None:
    app = Starlette(routes=[Route("/me", me)])
    with pytest.raises(MisuseError, match="SessionMiddleware"):
        TestClient(app).get("/me")


# -- the request deadline ------------------------------------------------------------------


@pytest.fixture
def stopped(settings: Settings) -> tuple[datastore.Client, Settings]:
    """A Datastore that does not answer (nothing listens on its port), with a 1 s request deadline."""
    down = replace(settings, emulator_host=f"127.0.0.1:{free_port()}", request_timeout=timedelta(seconds=1))
    return datastore_client(down), down


def test_a_datastore_past_the_deadline_gives_503_with_retry_after_for_a_load(
    stopped: tuple[datastore.Client, Settings],
) -> None:
    called: list[str] = []

    async def view(request: Request) -> PlainTextResponse:
        called.append("view")
        return PlainTextResponse("never")

    app = make_app(*stopped, routes=[Route("/", view)])
    started = time.monotonic()
    response = browser(app, cookies={stopped[1].cookie_name: new_key()}).get("/")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "set-cookie" not in response.headers and called == []  # the app never ran; the cookie is kept
    assert time.monotonic() - started < 1 + 3.0


def test_a_datastore_past_the_deadline_gives_503_for_a_save_and_drops_the_apps_answer(
    stopped: tuple[datastore.Client, Settings],
) -> None:
    response = browser(make_app(*stopped)).post("/count")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.text == "The session store did not answer in time. Please retry shortly."
    assert "set-cookie" not in response.headers


def test_a_websocket_is_refused_with_503_when_the_store_is_down(stopped: tuple[datastore.Client, Settings]) -> None:
    http = browser(make_app(*stopped), cookies={stopped[1].cookie_name: new_key()})
    with pytest.raises(WebSocketDenialResponse) as refused, http.websocket_connect("/ws"):
        pass
    assert refused.value.status_code == 503 and refused.value.headers["retry-after"] == "1"


# -- other scopes ------------------------------------------------------------------------


def test_a_websocket_gets_the_loaded_session_read_only(
    client: datastore.Client, plain_http: Settings, rpcs: RpcCounter
) -> None:
    http = browser(make_app(client, plain_http), base_url="http://testserver")  # TestClient's WebSockets are ws://
    http.post("/login/alice")
    http.post("/update_session", json={"theme": "dark"})
    rpcs.reset()
    with http.websocket_connect("/ws") as websocket:
        assert websocket.receive_json() == {"user": "alice", "session": {"theme": "dark"}}
        assert websocket.receive_text() == "refused: a WebSocket's session is read-only: no response carries its cookie"
        with pytest.raises(WebSocketDisconnect):
            websocket.receive_text()
    assert dict(rpcs.calls) == {"lookup": 1}
    assert http.get("/view_session").json() == {"session": {"theme": "dark"}}


def test_lifespan_passes_through(client: datastore.Client, settings: Settings) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        events.append("startup")
        yield
        events.append("shutdown")

    with browser(make_app(client, settings, lifespan=lifespan)) as http:
        assert http.get("/ping").text == "pong"
    assert events == ["startup", "shutdown"]


# -- FastAPI ------------------------------------------------------------------------------


def cart(request: Request) -> list[str]:
    """A FastAPI dependency on ``request.session``."""
    basket: list[str] = request.session.setdefault("cart", [])
    return basket


def current_session(request: Request) -> ASGISession:
    """A FastAPI dependency that hands out the typed session."""
    return session_of(request)


def fastapi_app(client: datastore.Client, settings: Settings) -> FastAPI:
    api = FastAPI()
    api.add_middleware(SessionMiddleware, client=client, settings=settings)

    @api.post("/cart/{item}")
    async def add(item: str, basket: Annotated[list[str], Depends(cart)]) -> dict[str, list[str]]:
        basket.append(item)
        return {"cart": basket}

    @api.post("/login/{user}")
    async def sign_in(user: str, session: Annotated[ASGISession, Depends(current_session)]) -> dict[str, object]:
        session.login(user, keep=["cart"])
        return {"user": session.user, "cart": session["cart"]}

    @api.get("/session")
    async def whole(request: Request) -> dict[str, Any]:
        return {"session": request.session}  # FastAPI's encoder reads it as the dict it is

    return api


def test_a_fastapi_app_uses_request_session_in_a_dependency(client: datastore.Client, settings: Settings) -> None:
    api = fastapi_app(client, settings)
    http = browser(api)
    assert http.post("/cart/book").json() == {"cart": ["book"]}
    assert http.post("/cart/pen").json() == {"cart": ["book", "pen"]}
    assert http.post("/login/alice").json() == {"user": "alice", "cart": ["book", "pen"]}
    assert http.get("/session").json() == {"session": {"cart": ["book", "pen"]}}
    assert browser(api).get("/session").json() == {"session": {}}


def test_a_fastapi_app_signs_out_everywhere_else_off_the_event_loop(
    client: datastore.Client, settings: Settings
) -> None:
    """``alogout_everywhere_else``: the other sessions of the user end, this one and other users' stay."""
    rpc_threads = RpcThreads(client)
    api = FastAPI()
    api.add_middleware(SessionMiddleware, client=client, settings=settings)

    @api.post("/login/{user}")
    async def sign_in(user: str, session: Annotated[ASGISession, Depends(current_session)]) -> str:
        session.login(user)
        return "ok"

    @api.get("/me")
    async def me(session: Annotated[ASGISession, Depends(current_session)]) -> str:
        return session.user

    @api.post("/everywhere-else")
    async def everywhere_else(session: Annotated[ASGISession, Depends(current_session)]) -> dict[str, int]:
        rpc_threads.threads.clear()
        ended = await alogout_everywhere_else(session)
        return {"ended": ended, "loop": threading.get_ident(), "rpcs": len(rpc_threads.threads)}

    laptop, phone, tablet, bob = browser(api), browser(api), browser(api), browser(api)
    refused = browser(api).post("/everywhere-else")
    assert (refused.status_code, refused.text) == (
        400,
        "Bad request: only a logged-in session can log out its other sessions",
    )
    for http, user in ((laptop, "alice"), (phone, "alice"), (tablet, "alice"), (bob, "bob")):
        assert http.post(f"/login/{user}").json() == "ok"

    answer = laptop.post("/everywhere-else").json()

    assert answer["ended"] == 2
    assert answer["rpcs"] > 0 and answer["loop"] not in rpc_threads.threads[: answer["rpcs"]]
    assert [http.get("/me").json() for http in (laptop, phone, tablet, bob)] == ["alice", GUEST_USER, GUEST_USER, "bob"]


# -- the examples of docs/how-to/starlette.md --------------------------------------------------


def page_app(block: str, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The ``app`` a page's example builds, configured as its reader would: by environment."""
    in_the_environment(settings, monkeypatch)
    module: dict[str, Any] = {"__name__": "page_example"}
    exec(compile(block, "docs/how-to/starlette.md", "exec"), module)
    return module["app"]


def test_the_starlette_pages_examples_run(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Starlette app counts a cart and logs in; the FastAPI app logs in and out and signs out elsewhere."""
    starlette_example, fastapi_example = doc_python_blocks("how-to/starlette.md")
    cookie = f"viur_cookie_{settings.project}"

    http = browser(page_app(starlette_example, settings, monkeypatch))
    assert http.post("/cart/book").json() == {"cart": ["book"]}
    assert http.post("/cart/pen").json() == {"cart": ["book", "pen"]}
    assert http.post("/login/alice").json() == {"user": "alice"}

    api = page_app(fastapi_example, settings, monkeypatch)
    laptop, phone, tablet = browser(api), browser(api), browser(api)
    assert [laptop.post("/visit").json() for _ in range(2)] == [{"visits": 1}, {"visits": 2}]
    guest_key = laptop.cookies[cookie]
    assert laptop.get("/devices").status_code == 401
    assert laptop.post("/sign-out-everywhere-else").status_code == 401
    assert laptop.post("/login/carol").json() == {"user": "carol"}
    assert laptop.cookies[cookie] != guest_key  # a login rotates the key
    assert laptop.post("/visit").json() == {"visits": 1}  # and keeps only SESSION_PERSISTENT_FIELDS_ON_LOGIN
    for device in (phone, tablet):
        assert device.post("/login/carol").json() == {"user": "carol"}
    assert sorted(laptop.get("/devices").json()) == sorted(hash_key(b.cookies[cookie]) for b in (laptop, phone, tablet))

    assert laptop.post(f"/devices/{hash_key(tablet.cookies[cookie])}/end").json() == {"ended": True}
    assert tablet.get("/devices").status_code == 401  # that device is signed out
    assert laptop.post("/sign-out-everywhere-else").json() == {"ended": 1}  # the phone
    assert phone.get("/devices").status_code == 401
    assert laptop.get("/devices").json() == [hash_key(laptop.cookies[cookie])]  # this browser stays

    assert laptop.post("/logout").json() == {"user": GUEST_USER}
    assert laptop.get("/devices").status_code == 401
    for device in (laptop, phone):
        device.post("/login/bob")
    assert phone.post("/sign-out-everywhere").json() == {"ended": 2}  # every device, this one too
    assert [device.get("/devices").status_code for device in (laptop, phone)] == [401, 401]


# -- a real server: uvicorn on 127.0.0.1, httpx clients ---------------------------------------------


class RpcThreads:
    """Records the thread of every Datastore RPC a client makes."""

    def __init__(self, client: datastore.Client) -> None:
        self.threads: list[int] = []
        for api in (client._datastore_api, wire_of(client)):
            for name in RpcCounter.METHODS:
                original = getattr(api, name, None)
                if original is None:
                    continue

                def recorded(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                    self.threads.append(threading.get_ident())
                    return _original(*args, **kwargs)

                setattr(api, name, recorded)


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port, in a thread of this process; yield its URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_twenty_concurrent_clients_each_count_to_five_and_no_rpc_runs_on_the_loop(
    client: datastore.Client, plain_http: Settings
) -> None:
    rpc_threads = RpcThreads(client)

    async def one_browser(url: str) -> list[int]:
        async with httpx.AsyncClient(base_url=url) as http:
            return [(await http.post("/count")).json()["n"] for _ in range(5)]

    async def twenty(url: str) -> tuple[list[list[int]], int]:
        counts = await asyncio.gather(*(one_browser(url) for _ in range(20)))
        async with httpx.AsyncClient(base_url=url) as http:
            loop = (await http.get("/loop-thread")).json()["thread"]
        return counts, loop

    with serving(make_app(client, plain_http)) as url:
        counts, loop = asyncio.run(twenty(url))

    assert counts == [[1, 2, 3, 4, 5]] * 20
    assert len(rpc_threads.threads) == 20 * 5 + 20 * 4  # a commit per request, a lookup for each with a cookie
    assert loop not in rpc_threads.threads  # every Datastore RPC ran in a worker thread, off the event loop
    sessions = stored_sessions(client, plain_http)
    assert len(sessions) == 20 and {entity["data"]["n"] for entity in sessions} == {5}


def test_a_kill_through_kill_session_by_user_logs_a_client_out(client: datastore.Client, plain_http: Settings) -> None:
    rpc_threads = RpcThreads(client)

    async def scenario(url: str) -> dict[str, Any]:
        async with (
            httpx.AsyncClient(base_url=url) as phone,
            httpx.AsyncClient(base_url=url) as laptop,
            httpx.AsyncClient(base_url=url) as bob,
            httpx.AsyncClient(base_url=url) as admin,
        ):
            for http, user in ((phone, "alice"), (laptop, "alice"), (bob, "bob")):
                assert (await http.post(f"/login/{user}")).text == "ok"
            phone_id = (await phone.get("/me")).json()["session_id"]
            laptop_id = (await laptop.get("/me")).json()["session_id"]
            seen = {"devices": sorted((await laptop.get("/devices")).json()), "both": sorted([phone_id, laptop_id])}
            seen["ended"] = (await laptop.post(f"/devices/{phone_id}/end")).json()  # "sign out that device"
            seen["phone after end"] = (await phone.get("/me")).json()["user"]
            seen["laptop after end"] = (await laptop.get("/me")).json()["user"]
            seen["killed"] = (await admin.post("/admin/kill/alice")).json()
            seen["laptop after kill"] = (await laptop.get("/me")).json()["user"]
            seen["bob after kill"] = (await bob.get("/me")).json()["user"]
            seen["loop"] = (await admin.get("/loop-thread")).json()["thread"]
            return seen

    with serving(make_app(client, plain_http)) as url:
        seen = asyncio.run(scenario(url))

    assert seen["devices"] == seen["both"]
    assert seen["ended"] == {"ended": True}
    assert (seen["phone after end"], seen["laptop after end"]) == (GUEST_USER, "alice")
    assert seen["killed"] == {"deleted": 1}
    assert (seen["laptop after kill"], seen["bob after kill"]) == (GUEST_USER, "bob")
    assert rpc_threads.threads and seen["loop"] not in rpc_threads.threads  # the awaitable forms ran off the loop too


def test_a_stalled_datastore_neither_blocks_the_loop_nor_takes_the_apps_threads(
    stopped: tuple[datastore.Client, Settings],
) -> None:
    """One session thread, a Datastore that never answers: session requests get 503, the rest of the app stays quick."""
    client, down = stopped
    app = Starlette(routes=ROUTES, middleware=[Middleware(SessionMiddleware, client=client, settings=down, threads=1)])

    async def timed(http: httpx.AsyncClient, path: str, **kwargs: Any) -> tuple[int, float]:
        started = time.monotonic()
        response = await http.get(path, **kwargs)
        return response.status_code, time.monotonic() - started

    async def scenario(url: str) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        async with httpx.AsyncClient(base_url=url) as http:
            cookie = {"cookie": f"{down.cookie_name}={new_key()}"}
            stuck = [asyncio.create_task(timed(http, "/view_session", headers=cookie)) for _ in range(4)]
            await asyncio.sleep(0.2)  # the one session thread is busy, three requests wait for it
            quick = [await timed(http, path) for path in ("/ping", "/sync-ping", "/ping", "/sync-ping")]
            return await asyncio.gather(*stuck), quick

    with capture_logs() as logged, serving(app) as url:
        stuck, quick = asyncio.run(scenario(url))

    assert [status for status, _ in quick] == [200] * 4 and max(elapsed for _, elapsed in quick) < 0.5
    assert [status for status, _ in stuck] == [503] * 4  # past the deadline, or no thread free within it
    failures = [line for line in logged if line["event"] == "session_unavailable"]
    assert {line["operation"] for line in failures} == {"lookup", "wait for a thread"}
    assert max(elapsed for _, elapsed in stuck) < 2 * 1 + 3.0  # a thread wait and a load, each at most 1 s


# -- packaging --------------------------------------------------------------------------------


def test_a_web_app_importing_the_middleware_loads_no_web_framework() -> None:
    code = "import sys, session_core.asgi\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    frameworks = ("starlette", "fastapi", "uvicorn", "httpx", "session_core.maintenance")
    assert [name for name in done.stdout.split() if name.startswith(frameworks)] == []


def test_the_asgi_extra_is_anyio_alone_and_the_dev_pins_fit_the_declared_ranges() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = [Requirement(line) for line in project["optional-dependencies"]["asgi"]]
    assert [requirement.name for requirement in extra] == ["anyio"]  # the middleware needs no web framework
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", (ROOT / "requirements-dev.txt").read_text(), re.M))
    assert {"starlette", "fastapi", "uvicorn", "httpx", "anyio"} <= set(pins)
    assert all(pins[requirement.name] in requirement.specifier for requirement in extra)


# -- misuse is a 400, and a new session's id is known at once ---------------------------------


async def login_showing_id(request: Request) -> JSONResponse:
    session = session_of(request)
    session.login(request.path_params["user"])
    return JSONResponse({"session_id": session.session_id})  # the new key's id, before the save


async def everywhere_else(request: Request) -> JSONResponse:
    return JSONResponse({"ended": logout_everywhere_else(session_of(request))})


def test_misuse_is_answered_400_never_500_and_a_new_sessions_id_is_known_at_login(
    client: datastore.Client, settings: Settings
) -> None:
    routes = [
        Route("/login/{user}", login_showing_id, methods=["POST"]),
        Route("/everywhere-else", everywhere_else, methods=["POST"]),
        Route("/expiry/{seconds:int}", expiry, methods=["POST"]),
    ]
    app = make_app(client, settings, routes=routes)
    guest = browser(app)
    refused = guest.post("/everywhere-else")
    assert refused.status_code == 400
    assert refused.text == "Bad request: only a logged-in session can log out its other sessions"
    assert "set-cookie" not in refused.headers
    assert guest.post("/expiry/0").status_code == 400  # a lifetime must be positive
    laptop, phone = browser(app), browser(app)
    signed_in = laptop.post("/login/alice").json()
    assert signed_in == {"session_id": hash_key(laptop.cookies[settings.cookie_name])}
    phone.post("/login/alice")
    assert laptop.post("/everywhere-else").json() == {"ended": 1}
