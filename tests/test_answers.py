"""Every adapter answers a store that does not answer, and misuse, with the one answer of ``session_core._answers``.

Flask, WSGI, ASGI and Django are driven the same way, each through its own
framework, over a store that stops answering (a :class:`MemoryStore` whose
every call raises the seam's StoreError, as Datastore past
``SESSION_REQUEST_TIMEOUT`` does): a load that fails, a save that fails, and
a library call misused in a view. The answers must be the same four times:
503 with the text, ``Retry-After`` from the settings' request deadline,
``Vary: Cookie`` and no ``Set-Cookie``; 400 with the reason; one log line each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import flask
import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client as DjangoClient
from django.test import override_settings
from django.urls import path
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from structlog.testing import capture_logs
from werkzeug.test import Client as WerkzeugClient

from session_core import Session, Settings, _answers
from session_core._answers import UNAVAILABLE
from session_core.asgi import SessionMiddleware as ASGIMiddleware
from session_core.asgi import session_of
from session_core.errors import MisuseError, StoreError
from session_core.flask import DatastoreSessionInterface
from session_core.rules import new_key
from session_core.store import SessionRecord
from session_core.testing import MemoryStore
from session_core.wsgi import ENVIRON_KEY
from session_core.wsgi import SessionMiddleware as WSGIMiddleware
from tests.django_site import configure

configure()

DEADLINE = 7  # seconds: SESSION_REQUEST_TIMEOUT, hence Retry-After
MISUSE = "sessions need a Datastore client (client=...) or a store (store=...)"  # Session(None, settings)'s reason


class Unanswering(MemoryStore):
    """The store seam past its deadline: every call raises StoreError, naming its operation."""

    def lookup_all(self, cookie_keys: Sequence[str]) -> dict[str, SessionRecord]:
        raise StoreError("lookup", TimeoutError("deadline exceeded"))

    def insert(self, record: SessionRecord, *, delete: Sequence[str] = ()) -> bool:
        raise StoreError("insert", TimeoutError("deadline exceeded"))


@dataclass
class Answered:
    status: int
    headers: dict[str, str]  # lower-case names; repeated ones joined with ", "
    body: bytes


@pytest.fixture
def down() -> Unanswering:
    return Unanswering(Settings(cookie_secure=False, rampup=False, request_timeout=timedelta(seconds=DEADLINE)))


def headers_of(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    joined: dict[str, list[str]] = {}
    for name, value in pairs:
        joined.setdefault(name.lower(), []).append(value)
    return {name: ", ".join(values) for name, values in joined.items()}


def misuse(settings: Settings) -> None:
    """A library call misused in a view: a session with neither client nor store (plain MisuseError)."""
    Session(None, settings)


# -- each framework, through its own test client ---------------------------------------------------


def through_flask(store: Unanswering, method: str, route: str, cookie: str | None) -> Answered:
    app = flask.Flask(__name__)
    app.session_interface = DatastoreSessionInterface(settings=store.settings, store=store)

    @app.get("/read")
    def read() -> str:
        return str(flask.session.get("n"))

    @app.post("/write")
    def write() -> str:
        flask.session["n"] = 1
        return "written"

    @app.post("/misuse")
    def misused() -> str:
        misuse(store.settings)
        return "unreachable"

    browser = app.test_client()
    if cookie is not None:
        browser.set_cookie("session", cookie)  # Flask's SESSION_COOKIE_NAME
    response = browser.open(route, method=method)
    return Answered(response.status_code, headers_of(response.headers.items()), response.data)


def through_wsgi(store: Unanswering, method: str, route: str, cookie: str | None) -> Answered:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        session: Session = environ[ENVIRON_KEY]
        if environ["PATH_INFO"] == "/misuse":
            misuse(store.settings)
        if environ["PATH_INFO"] == "/write":
            session["n"] = 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(session.get("n")).encode()]

    browser = WerkzeugClient(WSGIMiddleware(app, settings=store.settings, store=store))
    if cookie is not None:
        browser.set_cookie(store.settings.cookie_name, cookie)
    response = browser.open(route, method=method)
    return Answered(response.status_code, headers_of(response.headers.items()), response.data)


def through_asgi(store: Unanswering, method: str, route: str, cookie: str | None) -> Answered:
    async def read(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(session_of(request).get("n")))

    async def write(request: Request) -> PlainTextResponse:
        session_of(request)["n"] = 1
        return PlainTextResponse("written")

    async def misused(request: Request) -> PlainTextResponse:
        misuse(store.settings)
        return PlainTextResponse("unreachable")

    app = Starlette(
        routes=[
            Route("/read", read),
            Route("/write", write, methods=["POST"]),
            Route("/misuse", misused, methods=["POST"]),
        ],
        middleware=[Middleware(ASGIMiddleware, settings=store.settings, store=store)],
    )
    with TestClient(app) as http:
        if cookie is not None:
            http.cookies.set(store.settings.cookie_name, cookie)
        response = http.request(method, route)
    return Answered(response.status_code, headers_of(response.headers.multi_items()), response.content)


def django_read(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(request.session.get("n")))


def django_write(request: HttpRequest) -> HttpResponse:
    request.session["n"] = 1
    return HttpResponse("written")


def django_misuse(request: HttpRequest) -> HttpResponse:
    misuse(request.session.settings)
    return HttpResponse("unreachable")


urlpatterns = [path("read", django_read), path("write", django_write), path("misuse", django_misuse)]


def through_django(store: Unanswering, method: str, route: str, cookie: str | None) -> Answered:
    # Only the store's own settings: SESSION_CORE_SETTINGS is unset, so a Retry-After can come from nowhere else.
    with override_settings(ROOT_URLCONF=__name__, SESSION_CORE_STORE=store, SESSION_CORE_SETTINGS=None):
        browser = DjangoClient()
        if cookie is not None:
            browser.cookies["sessionid"] = cookie
        response = browser.generic(method, route)
    return Answered(response.status_code, headers_of(response.headers.items()), response.content)


ADAPTERS = {"flask": through_flask, "wsgi": through_wsgi, "asgi": through_asgi, "django": through_django}


@pytest.fixture(params=sorted(ADAPTERS))
def adapter(request: pytest.FixtureRequest) -> Callable[[Unanswering, str, str, str | None], Answered]:
    return ADAPTERS[request.param]


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with capture_logs() as captured:
        yield captured


# -- the answers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "route", "with_cookie", "operation"),
    [("GET", "/read", True, "lookup"), ("POST", "/write", False, "insert")],
    ids=["load", "save"],
)
def test_a_store_that_does_not_answer_gets_the_one_503_in_every_adapter(
    adapter: Callable[[Unanswering, str, str, str | None], Answered],
    down: Unanswering,
    logs: list[MutableMapping[str, Any]],
    method: str,
    route: str,
    with_cookie: bool,
    operation: str,
) -> None:
    answered = adapter(down, method, route, new_key() if with_cookie else None)
    assert answered.status == 503
    assert answered.body == UNAVAILABLE.encode()
    assert answered.headers["retry-after"] == str(DEADLINE)
    assert answered.headers["content-type"] == "text/plain; charset=utf-8"
    assert "Cookie" in answered.headers["vary"]
    assert "set-cookie" not in answered.headers  # the browser keeps its cookie
    assert [line["operation"] for line in logs if line["event"] == "session_unavailable"] == [operation]


def test_misuse_in_a_view_gets_the_one_400_with_its_reason_in_every_adapter(
    adapter: Callable[[Unanswering, str, str, str | None], Answered],
    down: Unanswering,
    logs: list[MutableMapping[str, Any]],
) -> None:
    answered = adapter(down, "POST", "/misuse", None)
    assert answered.status == 400
    if adapter is through_flask:  # Flask's own 400 page (an app's errorhandler(400) restyles it) shows the reason
        assert MISUSE.replace("'", "&#x27;").encode() in answered.body.replace(b"&#39;", b"&#x27;")
    else:
        assert answered.body == f"Bad request: {MISUSE}".encode()
        assert answered.headers["content-type"] == "text/plain; charset=utf-8"
    assert [line["error"] for line in logs if line["event"] == "session_misuse"] == [MISUSE]


def test_the_answers_are_framework_free_data_spelled_once() -> None:
    """What the four adapters above render: the 503's status line and headers, the 400's body and its reason."""
    settings = Settings(request_timeout=timedelta(seconds=1.5))
    with capture_logs():
        refused = _answers.unavailable(settings, RuntimeError("no store error behind it"))
        misused = _answers.misused(MisuseError("why"))
    assert (refused.status_line, dict(refused.headers)) == (
        "503 Service Unavailable",
        {"Retry-After": "1", "Vary": "Cookie"},  # whole seconds of the deadline
    )
    assert (misused.status_line, misused.body, misused.detail) == ("400 Bad Request", b"Bad request: why", "why")
    assert misused.all_headers() == [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(misused.body))),
    ]
