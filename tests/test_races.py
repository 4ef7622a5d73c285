"""Races: kill vs save, login rotation vs a concurrent request, refresh vs cleanup at the boundary."""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import replace
from datetime import timedelta

import pytest
from google.cloud import datastore

from session_core import Session, Settings, kill_sessions
from session_core.maintenance.cleanup import start_clear_sessions
from session_core.rules import cutoff_for, hash_key
from session_core.store import SessionStore
from tests.conftest import Ctx
from tests.test_cleanup import remaining
from tests.test_session import cookie_from

INTERLEAVINGS = 1000


def logged_in(client: datastore.Client, settings: Settings, user: str, count: int) -> list[str]:
    """``count`` saved sessions of ``user``; their cookies."""
    cookies = []
    for _ in range(count):
        session = Session(client, settings)
        session.load(Ctx())
        session.login(user)
        ctx = Ctx()
        session.save(ctx)
        cookies.append(cookie_from(ctx))
    return cookies


def holding(client: datastore.Client, settings: Settings, cookie: str, **kwargs: object) -> Session:
    session = Session(client, settings, **kwargs)  # type: ignore[arg-type]
    assert session.load(Ctx({settings.cookie_name: cookie}))
    return session


def test_kill_between_load_and_save_never_recreates_a_session(client: datastore.Client, settings: Settings) -> None:
    """1,000 requests hold a session while its user is killed, at three different points, some concurrently."""
    cookies = logged_in(client, settings, "victim", INTERLEAVINGS)
    sessions = [holding(client, settings, cookie) for cookie in cookies]
    third = INTERLEAVINGS // 3
    for session in sessions[:third]:
        session["changed_before_kill"] = True  # changed, not yet saved
    barrier = threading.Barrier(2)
    saves: list[Ctx] = []

    def save_concurrently() -> None:
        barrier.wait()
        for session in sessions[2 * third :]:
            session["racing"] = True
            ctx = Ctx()
            session.save(ctx)
            saves.append(ctx)

    racer = threading.Thread(target=save_concurrently)
    racer.start()
    barrier.wait()
    kill_sessions("victim", client=client, settings=settings)
    racer.join()
    for session in sessions[third : 2 * third]:
        session["changed_after_kill"] = True
    for session in sessions[: 2 * third]:
        session.save(Ctx())
    assert remaining(client, settings) == set()
    names = [hash_key(cookie) for cookie in cookies]
    assert not any(client.get_multi([client.key(settings.kind, n, namespace=settings.namespace) for n in names]))


def test_cleared_after_expiry_while_held_is_not_recreated(client: datastore.Client, settings: Settings) -> None:
    cookies = logged_in(client, settings, "sleeper", 50)
    late = time.time() + settings.life_time.total_seconds() - 1  # still alive for the request
    sessions = [holding(client, settings, cookie, clock=lambda: late) for cookie in cookies]
    start_clear_sessions(client, settings, now=late + settings.clear_grace.total_seconds() + 2)
    for session in sessions:
        session["late_write"] = True
        session.save(Ctx())
    assert remaining(client, settings) == set()


def test_old_key_never_becomes_valid_again_after_login_rotation(client: datastore.Client, settings: Settings) -> None:
    """A request on the old key races the login that rotates it, 200 times."""
    for _ in range(200):
        [old] = logged_in(client, settings, "guest-to-be", 1)
        slow = holding(client, settings, old)  # a concurrent request on the old key
        login = holding(client, settings, old)
        barrier = threading.Barrier(2)

        def rotate(session: Session = login, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            session.login("bob")
            session.save(Ctx())

        rotation = threading.Thread(target=rotate)
        rotation.start()
        barrier.wait()
        slow["note"] = "written on the old key"
        slow.save(Ctx())
        rotation.join()
        assert not Session(client, settings).load(Ctx({settings.cookie_name: old}))
        assert client.get(client.key(settings.kind, hash_key(old), namespace=settings.namespace)) is None


def backdate(client: datastore.Client, settings: Settings, cookie: str, seen: float) -> None:
    """Rewrite a stored session as if its last request had come at ``seen``."""
    store = SessionStore(client, settings)
    record = store.lookup(cookie)
    assert record is not None and store.update(dataclasses.replace(record, seen=seen))


@pytest.mark.parametrize("skew", [-300.0, -120.0, 0.0, 120.0, 300.0])
def test_grace_window_protects_a_session_refreshed_at_the_boundary(
    client: datastore.Client, settings: Settings, skew: float
) -> None:
    """App and worker clocks differ by ``skew`` (up to the grace, 300 s): a session the app
    just refreshed, or saw alive, is never deleted."""
    worker_now = 2_000_000_000.0
    app_now = worker_now + skew
    life = settings.life_time.total_seconds()
    # The app refreshed one session just now, and saw another alive at the very edge of its life time.
    [refreshed, at_edge] = logged_in(client, settings, "edge", 2)
    for cookie, seen in ((refreshed, app_now), (at_edge, app_now - life)):
        backdate(client, settings, cookie, seen)
    assert holding(client, settings, at_edge, clock=lambda: app_now).cookie_key == at_edge  # alive for the app
    start_clear_sessions(client, settings, now=worker_now)
    assert remaining(client, settings) == {hash_key(refreshed), hash_key(at_edge)}


def test_without_grace_clock_skew_would_delete_a_live_session(client: datastore.Client, settings: Settings) -> None:
    """The counterfactual: grace 0 and the worker 120 s ahead deletes what the app still sees alive."""
    worker_now = 2_000_000_000.0
    app_now = worker_now - 120
    [at_edge] = logged_in(client, settings, "edge", 1)
    backdate(client, settings, at_edge, app_now - settings.life_time.total_seconds() + 1)
    entity = client.get(client.key(settings.kind, hash_key(at_edge), namespace=settings.namespace))
    assert entity is not None
    assert holding(client, settings, at_edge, clock=lambda: app_now).cookie_key == at_edge
    no_grace = replace(settings, clear_grace=timedelta(0))
    assert cutoff_for(worker_now, no_grace) > entity["lastseen"]
    start_clear_sessions(client, no_grace, now=worker_now)
    assert remaining(client, settings) == set()


def test_a_slow_flask_request_on_the_old_session_leaves_a_parallel_logins_cookie_alone(
    client: datastore.Client, settings: Settings
) -> None:
    """Flask's adapter in the login race: request 1 holds the guest session while request 2 logs in.

    Request 1's save finds its session gone: its change is dropped and its response deletes no cookie.
    """
    import flask

    from session_core.flask import DatastoreSessionInterface

    app = flask.Flask(__name__)
    app.session_interface = DatastoreSessionInterface(client=client, settings=settings)
    login_tab, slow_tab = app.test_client(), app.test_client()

    @app.post("/cart")
    def cart() -> str:
        flask.session["cart"] = ["book"]
        return "ok"

    @app.post("/login")
    def login() -> str:
        flask.session.login("alice")  # type: ignore[attr-defined]
        return "ok"

    @app.post("/slow")
    def slow() -> str:
        flask.session.get("cart")  # loaded now
        login_tab.post("/login")  # runs to its end while this request holds the session
        flask.session["note"] = "written on the old key"
        return "ok"

    @app.get("/me")
    def me() -> str:
        return str(flask.session.user)  # type: ignore[attr-defined]

    login_tab.post("/cart")
    guest = login_tab.get_cookie("session")
    assert guest is not None
    slow_tab.set_cookie("session", guest.value)

    response = slow_tab.post("/slow")

    assert response.status_code == 200 and response.headers.getlist("Set-Cookie") == []
    fresh = login_tab.get_cookie("session")
    assert fresh is not None and fresh.value != guest.value
    assert login_tab.get("/me").text == "alice"
    assert remaining(client, settings) == {hash_key(fresh.value)}  # the old session is not resurrected
