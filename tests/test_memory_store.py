"""Session and every adapter on :class:`session_core.testing.MemoryStore`: an app's own tests, without Java.

What the memory store promises (the Datastore store's contract) is checked in
tests/test_store_contract.py; here the library runs on it end to end: a
counter, a login that rotates the key, and a kill-by-user through ``store=``,
in ``Session`` and in the Flask, WSGI, ASGI and Django adapters. Nothing here
requests the emulator (the last test proves it, with no gcloud on the PATH).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flask
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client as DjangoClient
from django.test import override_settings
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from werkzeug.test import Client as WerkzeugClient

from session_core import MisuseError, Session, Settings, akill_sessions, alist_user_sessions, kill_sessions
from session_core.asgi import SessionMiddleware as ASGIMiddleware
from session_core.asgi import session_of
from session_core.flask import DatastoreSessionInterface
from session_core.rules import GUEST_USER, hash_key
from session_core.store import SessionRecord
from session_core.testing import MemoryStore
from session_core.wsgi import ENVIRON_KEY
from session_core.wsgi import SessionMiddleware as WSGIMiddleware
from tests.conftest import ROOT, Ctx
from tests.django_site import configure

configure()

NOW = 1_900_000_000.0


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(Settings(cookie_secure=False, rampup=False))


# -- Session ---------------------------------------------------------------------------------------


def request(store: MemoryStore, cookie: str | None, change: Callable[[Session], None]) -> tuple[Session, str | None]:
    """One request: load the session from ``cookie``, ``change`` it, save; the session and the cookie sent back."""
    session = Session(None, store.settings, store=store, clock=lambda: NOW)
    ctx = Ctx({store.settings.cookie_name: cookie} if cookie else {})
    session.load(ctx)
    change(session)
    session.save(ctx)
    sent = [header.split(";")[0].split("=", 1)[1] for header in ctx.set_cookies]
    return session, (sent[0] or None) if sent else cookie


def count(session: Session) -> None:
    session["n"] = session.get("n", 0) + 1


def test_session_counts_rotates_its_key_at_login_and_is_killed_through_store(store: MemoryStore) -> None:
    session, cookie = request(store, None, count)
    session, cookie = request(store, cookie, count)
    assert session["n"] == 2 and cookie is not None
    session, logged_in = request(store, cookie, lambda s: s.login("alice", keep=["n"]))
    assert logged_in not in (None, cookie)  # a new key at login: no fixation
    assert store.lookup_all([cookie]) == {}  # the guest session is gone
    assert [r.user for r in store.sessions_of("alice")] == ["alice"]
    assert kill_sessions("alice", store=store).deleted == 1
    session, _ = request(store, logged_in, lambda s: None)
    assert session.user == GUEST_USER and "n" not in session


def test_a_session_needs_a_client_or_a_store() -> None:
    with pytest.raises(MisuseError, match="store"):
        Session(None, Settings())


def test_the_memory_store_serves_threads_one_at_a_time(store: MemoryStore) -> None:
    name = hash_key("x" * 42)
    won: list[bool] = []
    threads = [
        threading.Thread(target=lambda: won.append(store.insert(SessionRecord(name, {}, "u", "k", NOW))))
        for _ in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == [False] * 15 + [True]


# -- Flask -----------------------------------------------------------------------------------------


def flask_app(store: MemoryStore) -> flask.Flask:
    app = flask.Flask(__name__)
    app.session_interface = DatastoreSessionInterface(settings=store.settings, store=store)

    @app.post("/count")
    def counted() -> dict[str, object]:
        flask.session["n"] = flask.session.get("n", 0) + 1
        return {"n": flask.session["n"]}

    @app.post("/login/<user>")
    def login(user: str) -> str:
        flask.session.login(user)  # type: ignore[attr-defined]
        return ""

    return app


def test_flask_on_the_memory_store(store: MemoryStore) -> None:
    browser = flask_app(store).test_client()
    assert browser.post("/count").json == {"n": 1}
    assert browser.post("/count").json == {"n": 2}
    guest = browser.get_cookie("session")  # Flask's SESSION_COOKIE_NAME
    browser.post("/login/alice")
    alice = browser.get_cookie("session")
    assert guest is not None and alice is not None and alice.value != guest.value
    assert kill_sessions("alice", store=store).deleted == 1
    assert browser.post("/count").json == {"n": 1}  # signed out: a fresh session


# -- WSGI ------------------------------------------------------------------------------------------


def wsgi_counter(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    session: Session = environ[ENVIRON_KEY]
    if environ["PATH_INFO"] == "/login":
        session.login("alice")
    else:
        count(session)
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"n": session.get("n")}).encode()]


def test_wsgi_on_the_memory_store(store: MemoryStore) -> None:
    browser = WerkzeugClient(WSGIMiddleware(wsgi_counter, settings=store.settings, store=store))
    assert browser.post("/").json == {"n": 1}
    assert browser.post("/").json == {"n": 2}
    browser.post("/login")
    assert [r.user for r in store.sessions_of(None)] == ["alice"]
    assert kill_sessions(None, store=store).deleted == 1
    assert browser.post("/").json == {"n": 1}


def test_an_adapter_without_client_or_store_is_refused_at_once(store: MemoryStore) -> None:
    with pytest.raises(MisuseError, match="store"):
        WSGIMiddleware(wsgi_counter, settings=store.settings)


# -- ASGI ------------------------------------------------------------------------------------------


async def asgi_count(request: Request) -> JSONResponse:
    session = session_of(request)
    session["n"] = session.get("n", 0) + 1
    return JSONResponse({"n": session["n"]})


async def asgi_login(request: Request) -> JSONResponse:
    session_of(request).login(request.path_params["user"])
    return JSONResponse({})


def test_asgi_on_the_memory_store(store: MemoryStore) -> None:
    app = Starlette(
        routes=[Route("/count", asgi_count, methods=["POST"]), Route("/login/{user}", asgi_login, methods=["POST"])],
        middleware=[Middleware(ASGIMiddleware, settings=store.settings, store=store)],
    )
    with TestClient(app) as http:
        assert http.post("/count").json() == {"n": 1}
        assert http.post("/count").json() == {"n": 2}
        http.post("/login/alice")
        [device] = asyncio.run(alist_user_sessions(store=store, user="alice"))
        assert asyncio.run(akill_sessions("alice", store=store)).deleted == 1
        assert store.lookup_all([]) == {} and store.sessions_of(None) == []
        assert device.session_id == hash_key(http.cookies[store.settings.cookie_name])
        assert http.post("/count").json() == {"n": 1}


# -- Django ----------------------------------------------------------------------------------------


@pytest.fixture
def django_store(store: MemoryStore) -> Iterator[MemoryStore]:
    with override_settings(SESSION_CORE_STORE=lambda: store, SESSION_CORE_SETTINGS=None):
        yield store


def test_django_on_the_memory_store(django_store: MemoryStore) -> None:
    from django.contrib.auth.models import User

    User.objects.create_user("dora", password="pw")
    browser = DjangoClient()
    assert browser.get("/visits/").json() == {"visits": 1}
    assert browser.get("/visits/").json() == {"visits": 2}
    guest = browser.cookies["sessionid"].value
    assert browser.get("/login/dora/").status_code == 200
    assert browser.cookies["sessionid"].value != guest  # cycle_key at login
    [dora] = django_store.sessions_of(str(User.objects.get(username="dora").pk))
    assert kill_sessions(dora.user, store=django_store).deleted == 1
    assert browser.get("/visits/").json() == {"visits": 1}


def test_django_store_setting_must_be_a_store(store: MemoryStore) -> None:
    from session_core.django import SessionStore

    with override_settings(SESSION_CORE_STORE="memory"), pytest.raises(ImproperlyConfigured, match="STORE"):
        SessionStore()
    with override_settings(SESSION_CORE_STORE=store):  # a store itself, as well as a callable
        assert SessionStore().store is store


# -- no Java -----------------------------------------------------------------------------------------


def test_these_tests_and_the_memory_half_of_the_contract_suite_need_no_java() -> None:
    """Run them again with no gcloud (nor Java) on the PATH: any use of the emulator would fail."""
    env = {**os.environ, "PATH": str(ROOT / ".venv" / "bin")}
    env.pop("DATASTORE_EMULATOR_HOST", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_memory_store.py",
            "tests/test_store_contract.py",
            "-k",
            "not need_no_java and (memory or upserts)",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "passed" in done.stdout and "skipped" not in done.stdout
