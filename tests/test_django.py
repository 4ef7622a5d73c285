"""Django's session contract, from Django 5.2's documentation and its own session tests, on the emulator.

``SESSION_ENGINE = "session_core.django"`` through Django's test client and
``override_settings``: the backend methods (load, exists, create,
save(must_create), delete, cycle_key, flush, the expiry methods, their async
twins, clear_expired), the cookie settings Django's SessionMiddleware honours,
and django.contrib.auth (login, logout, password-change invalidation) on top.
What we add: the user is the indexed ``user`` (so kill-by-user logs a Django
user out), each session stores its own lifetime, nothing is ever resurrected,
and a store that does not answer gives 503. Where we differ on purpose: our
key format (Django's 8-character minimum does not make a key).
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.cookies import Morsel
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings as django_settings
from django.contrib.sessions.backends.base import CreateError, UpdateError
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import AsyncClient, Client, RequestFactory, override_settings
from django.test.utils import setup_test_environment, teardown_test_environment
from google.cloud import datastore

from session_core import (
    ConfigError,
    MisuseError,
    Session,
    SessionDataError,
    Settings,
    StoreError,
    kill_sessions,
    rules,
)
from session_core.rules import GUEST_USER, hash_key, is_valid_key
from session_core.store import SessionRecord
from session_core.store import SessionStore as RecordStore
from tests.conftest import ROOT, Ctx, RpcCounter, doc_python_blocks, startproject
from tests.django_site import configure

configure()

from django.contrib.auth import SESSION_KEY  # noqa: E402 - needs the configured apps
from django.contrib.auth.models import User  # noqa: E402

from session_core.django import SessionStore  # noqa: E402

COOKIE = "sessionid"  # Django's SESSION_COOKIE_NAME


@pytest.fixture(scope="module", autouse=True)
def _test_environment() -> Iterator[None]:
    setup_test_environment()
    yield
    teardown_test_environment()


@pytest.fixture(autouse=True)
def engine(settings: Settings, client: datastore.Client) -> Iterator[None]:
    """The engine on the emulator, in this test's own namespace, with the test's (countable) client."""
    with override_settings(SESSION_CORE_SETTINGS=settings, SESSION_CORE_CLIENT=client):
        yield


@pytest.fixture
def browser() -> Client:
    return Client()


def entity(client: datastore.Client, settings: Settings, cookie: str) -> datastore.Entity | None:
    key: datastore.Key = client.key(settings.kind, hash_key(cookie), namespace=settings.namespace)
    return client.get(key)


def cookie_of(browser: Client) -> str:
    morsel: Morsel[str] = browser.cookies[COOKIE]
    return morsel.value


def user(username: str) -> User:
    """A user of this test's own (the sqlite database is shared by the module)."""
    name = f"{username}-{rules.new_key()[:8]}"
    return User.objects.create_user(name, password="first password")


# -- the basics ----------------------------------------------------------------------------


@pytest.mark.smoke  # CI's Python 3.13 pass runs it after make check
def test_a_visit_counter_lives_across_requests_under_our_key_stored_by_its_hash(
    browser: Client, client: datastore.Client, settings: Settings
) -> None:
    assert browser.get("/visits/").json() == {"visits": 1}
    response = browser.get("/visits/")
    assert response.json() == {"visits": 2}
    assert response.headers["Vary"] == "Cookie"
    cookie = cookie_of(browser)
    assert is_valid_key(cookie)
    stored = entity(client, settings, cookie)
    assert stored is not None
    assert stored["data"] == {"visits": 2} and stored["user"] == GUEST_USER
    assert client.get(client.key(settings.kind, cookie, namespace=settings.namespace)) is None  # no plain name


def test_a_request_that_does_not_use_the_session_costs_no_rpc_and_sets_no_cookie(
    browser: Client, rpcs: RpcCounter
) -> None:
    browser.get("/visits/")
    rpcs.reset()
    response = browser.get("/nothing/")
    assert rpcs.total == 0
    assert COOKIE not in response.cookies and "Vary" not in response.headers


def test_a_read_only_request_costs_one_lookup_writes_nothing_and_varies_on_cookie(
    browser: Client, rpcs: RpcCounter
) -> None:
    browser.get("/visits/")
    rpcs.reset()
    response = browser.get("/peek/")
    assert response.json() == {"visits": 1}
    assert dict(rpcs.calls) == {"lookup": 1}
    assert COOKIE not in response.cookies and response.headers["Vary"] == "Cookie"


@pytest.mark.parametrize("cookie", ["12345678", "a" * 32, "x" * 41, "é" * 42, ""])
def test_a_cookie_not_of_our_format_is_no_session_no_rpc_and_never_becomes_the_key(
    browser: Client, rpcs: RpcCounter, cookie: str
) -> None:
    """Django keeps any key of 8 characters or more; we keep only the 42-character keys we issue."""
    assert SessionStore(cookie).session_key is None
    browser.cookies[COOKIE] = cookie
    assert browser.get("/peek/").json() == {"visits": None}
    assert rpcs.total == 0
    browser.get("/visits/")
    assert cookie_of(browser) != cookie and is_valid_key(cookie_of(browser))


def test_an_unknown_key_of_our_format_is_never_adopted(
    browser: Client, client: datastore.Client, settings: Settings
) -> None:
    """Django's test_session_load_does_not_create_record: no fixation, no record from a load."""
    chosen = rules.new_key()
    browser.cookies[COOKIE] = chosen
    assert browser.get("/visits/").json() == {"visits": 1}
    assert cookie_of(browser) != chosen
    assert entity(client, settings, chosen) is None
    assert SessionStore(chosen).load() == {} and not SessionStore().exists(chosen)


# -- the backend methods ---------------------------------------------------------------------


def test_create_stores_a_new_key_at_once_in_one_insert_without_an_exists_lookup(
    client: datastore.Client, settings: Settings, rpcs: RpcCounter
) -> None:
    session = SessionStore()
    session.create()
    assert dict(rpcs.calls) == {"commit": 1}
    assert session.session_key is not None and is_valid_key(session.session_key)
    assert session.modified is True
    stored = entity(client, settings, session.session_key)
    assert stored is not None and stored["data"] == {}


def test_save_must_create_on_a_taken_key_raises_create_error_and_changes_nothing(
    client: datastore.Client, settings: Settings
) -> None:
    first = SessionStore()
    first["who"] = "first"
    first.save()
    assert first.session_key is not None
    second = SessionStore(first.session_key)
    second.clear()  # Django's clear() empties it without loading it
    second["who"] = "second"
    with pytest.raises(CreateError):
        second.save(must_create=True)
    stored = entity(client, settings, first.session_key)
    assert stored is not None and stored["data"] == {"who": "first"}


def test_a_session_deleted_in_another_request_is_never_resurrected(
    client: datastore.Client, settings: Settings
) -> None:
    """Django's test_session_save_does_not_resurrect_session_logged_out_in_other_context."""
    s1 = SessionStore()
    s1["test_data"] = "value1"
    s1.save(must_create=True)
    assert s1.session_key is not None
    SessionStore(s1.session_key).delete()
    s1["test_data"] = "value2"
    with pytest.raises(UpdateError):
        s1.save()
    assert entity(client, settings, s1.session_key) is None
    assert s1.load() == {}


def test_through_the_middleware_a_session_deleted_meanwhile_gives_400_session_interrupted(
    browser: Client, client: datastore.Client, settings: Settings
) -> None:
    browser.get("/visits/")
    cookie = cookie_of(browser)
    response = browser.post("/deleted-meanwhile/")
    assert response.status_code == 400  # Django's SessionInterrupted
    assert entity(client, settings, cookie) is None


def test_exists_delete_and_flush(client: datastore.Client, settings: Settings, rpcs: RpcCounter) -> None:
    session = SessionStore()
    session["foo"] = "bar"
    session.save()
    key = session.session_key
    assert key is not None and session.exists(key)
    rpcs.reset()
    session.delete(key)
    assert dict(rpcs.calls) == {"commit": 1}
    assert not session.exists(key)

    session = SessionStore()
    session["foo"] = "bar"
    session.save()
    key = session.session_key
    session.flush()
    assert key is not None and not session.exists(key) and entity(client, settings, key) is None
    assert session.session_key is None and session.modified is True and session.accessed is True
    assert dict(session.items()) == {}


def test_cycle_key_moves_the_data_to_a_new_key_in_one_transaction(
    client: datastore.Client, settings: Settings, rpcs: RpcCounter
) -> None:
    session = SessionStore()
    session["a"], session["b"] = "c", "d"
    session.save()
    old = session.session_key
    assert old is not None
    loaded = SessionStore(old)  # Django's test_cycle_with_no_session_cache
    rpcs.reset()
    loaded.cycle_key()
    assert dict(rpcs.calls) == {"lookup": 1, "begin_transaction": 1, "commit": 2}  # a move, then the delete
    new = loaded.session_key
    assert new is not None and new != old
    assert dict(loaded.items()) == {"a": "c", "b": "d"}
    assert entity(client, settings, old) is None
    stored = entity(client, settings, new)
    assert stored is not None and stored["data"] == {"a": "c", "b": "d"}


def test_values_round_trip_with_their_type_and_what_datastore_cannot_hold_fails_before_any_rpc(
    rpcs: RpcCounter,
) -> None:
    moment = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    session = SessionStore()
    session.update({"tuple": (1, "a"), "bytes": b"\x00\x01", "when": moment, "nested": {"list": [[1, 2], [3]]}})
    session.save()
    again = SessionStore(session.session_key)
    assert dict(again.items()) == {
        "tuple": (1, "a"),
        "bytes": b"\x00\x01",
        "when": moment,
        "nested": {"list": [[1, 2], [3]]},
    }
    again["set"] = {1, 2}
    rpcs.reset()
    with pytest.raises(SessionDataError, match="set"):
        again.save()
    assert rpcs.total == 0


# -- expiry: Django's settings and set_expiry, stored as each session's own lifetime ---------


def stored_lifetime(client: datastore.Client, settings: Settings, cookie: str) -> tuple[float, float, float]:
    """(lifetime, expires - seen, lastseen - (expires - SESSION_LIFE_TIME)) of the stored session."""
    stored = entity(client, settings, cookie)
    assert stored is not None
    expires = stored["expires"].timestamp()
    lastseen_offset = stored["lastseen"] - (expires - settings.life_time.total_seconds())
    return stored["lifetime"], expires - stored["seen"], lastseen_offset


def max_age(response: Any) -> Any:
    """The cookie's Max-Age as Django set it (an int), or "" for a browser-session cookie."""
    return response.cookies[COOKIE]["max-age"]


def about(value: float, seconds: int) -> bool:
    """Within the whole second or two a datetime expiry loses between the view and the save."""
    return seconds - 2 <= value <= seconds


@override_settings(SESSION_COOKIE_AGE=600)
def test_a_session_lives_session_cookie_age_on_the_server_and_in_the_cookie(
    browser: Client, client: datastore.Client, settings: Settings
) -> None:
    response = browser.get("/visits/")
    assert max_age(response) == 600
    lifetime, span, lastseen_offset = stored_lifetime(client, settings, cookie_of(browser))
    assert lifetime == 600 and span == pytest.approx(600) and lastseen_offset == pytest.approx(0, abs=0.01)


@pytest.mark.parametrize(
    ("spec", "age"),
    [("seconds:90", 90), ("delta:120", 120), ("date:300", 300), ("default", 1209600)],
)
def test_set_expiry_gives_the_session_its_own_lifetime_on_the_server_and_in_the_cookie(
    browser: Client, client: datastore.Client, settings: Settings, spec: str, age: int
) -> None:
    response = browser.post(f"/expiry/{spec}/")
    assert about(int(response.content), age) and about(max_age(response), age)
    lifetime, span, _ = stored_lifetime(client, settings, cookie_of(browser))
    assert about(lifetime, age) and span == pytest.approx(lifetime)


def test_set_expiry_zero_is_a_browser_cookie_that_lives_session_cookie_age_on_the_server(
    browser: Client, client: datastore.Client, settings: Settings
) -> None:
    response = browser.post("/expiry/seconds:0/")
    assert max_age(response) == "" and response.cookies[COOKIE]["expires"] == ""
    assert stored_lifetime(client, settings, cookie_of(browser))[0] == django_settings.SESSION_COOKIE_AGE


@override_settings(SESSION_EXPIRE_AT_BROWSER_CLOSE=True, SESSION_COOKIE_AGE=900)
def test_expire_at_browser_close_gives_a_browser_cookie_and_the_cookie_age_on_the_server(
    browser: Client, client: datastore.Client, settings: Settings
) -> None:
    response = browser.get("/visits/")
    assert max_age(response) == ""
    assert stored_lifetime(client, settings, cookie_of(browser))[0] == 900
    response = browser.post("/expiry/seconds:60/")  # set_expiry overrides the setting
    assert max_age(response) == 60


def test_an_expired_session_loads_empty_and_the_browser_gets_a_new_key(
    browser: Client, client: datastore.Client, settings: Settings
) -> None:
    """Django's test_actual_expiry: an expiry in the past ends the session at once."""
    browser.post("/expiry/seconds:-10/")
    expired = cookie_of(browser)
    assert entity(client, settings, expired) is not None  # stored, already dead: cleanup removes it
    assert browser.get("/peek/").json() == {"visits": None}
    assert SessionStore(expired).session_key == expired and SessionStore(expired).load() == {}
    browser.get("/visits/")
    assert cookie_of(browser) != expired


def test_the_expiry_methods_follow_django() -> None:
    """Django's test_custom_expiry_* and test_get_expire_at_browser_close, on our store."""
    session = SessionStore()
    assert session.get_expiry_age() == django_settings.SESSION_COOKIE_AGE
    modification = datetime.now(UTC)
    session.set_expiry(10)
    assert session.get_expiry_age(modification=modification) == 10
    assert session.get_expiry_date(modification=modification) == modification + timedelta(seconds=10)
    session.set_expiry(modification + timedelta(seconds=30))
    assert session.get_expiry_date(modification=modification) == modification + timedelta(seconds=30)
    session.set_expiry(0)
    assert session.get_expire_at_browser_close() is True
    assert session.get_expiry_age() == django_settings.SESSION_COOKIE_AGE
    session.set_expiry(None)
    assert session.get_expire_at_browser_close() is False
    with override_settings(SESSION_EXPIRE_AT_BROWSER_CLOSE=True):
        assert session.get_expire_at_browser_close() is True


def test_a_lifetime_over_ten_years_is_refused_before_any_rpc(rpcs: RpcCounter) -> None:
    session = SessionStore()
    session.set_expiry(11 * 365 * 86400)
    with pytest.raises(MisuseError, match="ten years"):
        session.save()
    assert rpcs.total == 0


@override_settings(SESSION_SAVE_EVERY_REQUEST=True)
def test_save_every_request_rewrites_the_session_and_renews_the_cookie(
    browser: Client, client: datastore.Client, settings: Settings, rpcs: RpcCounter
) -> None:
    browser.get("/visits/")
    before = entity(client, settings, cookie_of(browser))
    time.sleep(0.05)
    rpcs.reset()
    response = browser.get("/nothing/")
    assert dict(rpcs.calls) == {"lookup": 1, "commit": 1}
    assert COOKIE in response.cookies and response.headers["Vary"] == "Cookie"
    after = entity(client, settings, cookie_of(browser))
    assert before is not None and after is not None and after["seen"] > before["seen"]


def test_without_save_every_request_an_unchanged_session_is_not_written(browser: Client, rpcs: RpcCounter) -> None:
    browser.get("/visits/")
    rpcs.reset()
    browser.get("/peek/")
    assert rpcs.calls["commit"] == 0


# -- the cookie: Django's settings, honoured by Django's SessionMiddleware ------------------


@override_settings(
    SESSION_COOKIE_NAME="app_session",
    SESSION_COOKIE_DOMAIN=".example.test",
    SESSION_COOKIE_PATH="/shop/",
    SESSION_COOKIE_SECURE=True,
    SESSION_COOKIE_HTTPONLY=False,
    SESSION_COOKIE_SAMESITE="Strict",
)
def test_djangos_cookie_settings_drive_the_cookie(browser: Client) -> None:
    response = browser.get("/visits/")
    morsel = response.cookies["app_session"]
    assert is_valid_key(morsel.value)
    assert (morsel["domain"], morsel["path"], morsel["secure"], morsel["httponly"], morsel["samesite"]) == (
        ".example.test",
        "/shop/",
        True,
        "",
        "Strict",
    )
    assert COOKIE not in response.cookies


def test_a_flushed_session_is_deleted_with_its_cookie(
    browser: Client, client: datastore.Client, settings: Settings
) -> None:
    browser.get("/visits/")
    cookie = cookie_of(browser)
    response = browser.post("/flush/")
    assert response.cookies[COOKIE].value == "" and response.cookies[COOKIE]["max-age"] == 0
    assert entity(client, settings, cookie) is None


# -- django.contrib.auth ------------------------------------------------------------------------


def test_a_login_rotates_the_key_and_writes_the_user_id_to_the_indexed_user(
    browser: Client, client: datastore.Client, settings: Settings
) -> None:
    alice = user("alice")
    browser.get("/visits/")
    guest = cookie_of(browser)
    before = entity(client, settings, guest)
    assert browser.post(f"/login/{alice.username}/").content == b"signed in"
    signed_in = cookie_of(browser)
    assert signed_in != guest and entity(client, settings, guest) is None  # cycle_key: no fixation
    stored = entity(client, settings, signed_in)
    assert stored is not None and stored["user"] == str(alice.pk) == stored["data"][SESSION_KEY]
    assert before is not None and stored["static_security_key"] != before["static_security_key"]
    assert stored["data"]["visits"] == 1  # cycle_key keeps the data
    assert browser.get("/me/").content.decode() == alice.username


def sessions_in(client: datastore.Client, settings: Settings) -> list[datastore.Entity]:
    return list(client.query(kind=settings.kind, namespace=settings.namespace).fetch())


def test_a_login_on_a_session_deleted_meanwhile_is_a_400_and_re_creates_nothing(
    browser: Client, client: datastore.Client, settings: Settings
) -> None:
    """login()'s cycle_key is a move: with the old entity gone it writes nothing (Django's SessionInterrupted)."""
    alice = user("alice")
    browser.get("/visits/")
    response = browser.post(f"/login-after-a-concurrent-delete/{alice.username}/")
    assert response.status_code == 400
    assert sessions_in(client, settings) == []  # neither the guest's data nor alice's login was written
    assert response.cookies[COOKIE].value == "" and response.cookies[COOKIE]["max-age"] == 0
    assert browser.get("/me/").content == b"anonymous"


def test_a_password_change_racing_a_kill_is_a_400_and_never_brings_the_killed_session_back(
    browser: Client, client: datastore.Client, settings: Settings
) -> None:
    """update_session_auth_hash's cycle_key after a kill: no session of the user under any key."""
    alice = user("alice")
    browser.post(f"/login/{alice.username}/")
    response = browser.post("/password-after-a-kill/second-password/")
    assert response.status_code == 400
    assert [s for s in sessions_in(client, settings) if s["user"] == str(alice.pk)] == []
    assert browser.get("/me/").content == b"anonymous"


def test_a_new_sessions_id_is_known_in_the_login_request(browser: Client) -> None:
    alice = user("alice")
    shown = browser.post(f"/login-showing-id/{alice.username}/").json()
    assert shown == {"session_id": hash_key(cookie_of(browser))}


def test_misuse_in_a_view_is_answered_400_by_our_middleware_never_500(browser: Client) -> None:
    alice = user("alice")
    browser.force_login(alice)
    refused = browser.post("/everywhere-else/?keep=not-a-session-id")
    assert refused.status_code == 400
    assert refused.content == b"Bad request: except_session must be a session id (64 hex digits)"
    assert browser.post("/everywhere-else/").content == b"signed out everywhere else"


@override_settings(MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"])
def test_with_djangos_own_middleware_the_engines_misuse_is_still_a_400() -> None:
    refused = Client().get(f"/expiry/seconds:{11 * 365 * 86400}/")  # a lifetime over ten years: refused on save
    assert refused.status_code == 400  # Django answers SuspiciousOperation 400: never a 500
    assert COOKIE not in refused.cookies


def test_logout_deletes_the_session_and_its_cookie(
    browser: Client, client: datastore.Client, settings: Settings
) -> None:
    alice = user("alice")
    browser.post(f"/login/{alice.username}/")
    signed_in = cookie_of(browser)
    browser.post("/logout/")
    assert entity(client, settings, signed_in) is None
    assert browser.get("/me/").content == b"anonymous"


def test_kill_session_by_user_logs_a_django_user_out_on_every_device(
    client: datastore.Client, settings: Settings
) -> None:
    alice, bob = user("alice"), user("bob")
    laptop, phone, bobs = Client(), Client(), Client()
    laptop.force_login(alice)
    phone.post(f"/login/{alice.username}/")
    bobs.force_login(bob)
    assert [c.get("/me/").content.decode() for c in (laptop, phone, bobs)] == [alice.username] * 2 + [bob.username]

    kill_sessions(str(alice.pk), client=client, settings=settings)

    assert laptop.get("/me/").content == b"anonymous"
    response = phone.get("/me/")
    assert response.content == b"anonymous"
    assert bobs.get("/me/").content.decode() == bob.username


def test_a_password_change_logs_out_the_other_sessions_and_keeps_this_one(browser: Client) -> None:
    """Django's session-hash invalidation: update_session_auth_hash keeps the session that changed it."""
    alice = user("alice")
    other = Client()
    assert other.login(username=alice.username, password="first password")
    browser.force_login(alice)
    assert browser.post("/password/second-password/").content == b"changed"
    assert browser.get("/me/").content.decode() == alice.username
    assert other.get("/me/").content == b"anonymous"


def test_the_test_clients_session_property_and_login_use_the_engine(
    browser: Client, client: datastore.Client, settings: Settings
) -> None:
    session = browser.session
    assert isinstance(session, SessionStore)
    session["from_test"] = "yes"
    session.save()
    alice = user("alice")
    assert browser.login(username=alice.username, password="first password")
    stored = entity(client, settings, cookie_of(browser))
    assert stored is not None and stored["user"] == str(alice.pk) and stored["data"]["from_test"] == "yes"


# -- async ----------------------------------------------------------------------------------------


def test_the_async_methods_keep_the_same_contract(client: datastore.Client, settings: Settings) -> None:
    @async_to_sync
    async def scenario() -> None:
        session = SessionStore()
        await session.aset("cat", "dog")
        await session.aset_expiry(120)
        assert await session.aget_expiry_age() == 120
        assert await session.aget_expire_at_browser_close() is False
        await session.asave()
        key = session.session_key
        assert key is not None and await session.aexists(key)

        loaded = SessionStore(key)
        assert await loaded.aget("cat") == "dog" and await loaded.aload() == {"cat": "dog", "_session_expiry": 120}
        await loaded.acycle_key()
        assert loaded.session_key != key and not await loaded.aexists(key)
        assert dict(await loaded.aitems()) == {"cat": "dog", "_session_expiry": 120}

        await SessionStore(loaded.session_key).adelete()
        await loaded.aset("cat", "mouse")
        with pytest.raises(UpdateError):
            await loaded.asave()

        fresh = SessionStore()
        await fresh.acreate()
        created = fresh.session_key
        assert created is not None and await fresh.aexists(created)
        await fresh.aflush()
        assert fresh.session_key is None and not await fresh.aexists(created)

    scenario()


def test_an_asgi_request_uses_the_engine_too() -> None:
    browser = AsyncClient()

    @async_to_sync
    async def visit_twice() -> list[Any]:
        return [(await browser.get("/visits/")).json() for _ in range(2)]

    assert visit_twice() == [{"visits": 1}, {"visits": 2}]


# -- clear_expired: manage.py clearsessions runs our cleanup --------------------------------------


def save_session(**data: Any) -> str:
    session = SessionStore()
    session.update(data)
    session.save()
    assert session.session_key is not None
    return session.session_key


def test_clearsessions_deletes_the_expired_sessions_and_keeps_the_live_ones(
    client: datastore.Client, settings: Settings
) -> None:
    live = save_session(foo="bar", _session_expiry=3600)
    expired = save_session(foo="bar", _session_expiry=-3600)
    call_command("clearsessions")
    assert entity(client, settings, live) is not None
    assert entity(client, settings, expired) is None


def test_aclear_expired_does_the_same(client: datastore.Client, settings: Settings) -> None:
    expired = save_session(_session_expiry=-3600)
    async_to_sync(SessionStore.aclear_expired)()
    assert entity(client, settings, expired) is None


# -- the same entities as every other adapter ----------------------------------------------------


def test_a_django_session_is_the_entity_our_other_adapters_read(client: datastore.Client, settings: Settings) -> None:
    alice = user("alice")
    browser = Client()
    browser.force_login(alice)
    ours = Session(client, settings)
    assert ours.load(Ctx({settings.cookie_name: cookie_of(browser)}))
    assert ours.user == str(alice.pk) and ours[SESSION_KEY] == str(alice.pk)


def test_a_viur_plain_named_session_loads_and_moves_to_its_hashed_name_on_save(
    client: datastore.Client, settings: Settings
) -> None:
    cookie = rules.new_key()
    RecordStore(client, replace(settings, key_storage="plain")).insert(
        SessionRecord(cookie, {"visits": 4}, GUEST_USER, "viursecurity1", seen=time.time())
    )
    browser = Client()
    browser.cookies[COOKIE] = cookie
    assert browser.get("/visits/").json() == {"visits": 5}
    assert client.get(client.key(settings.kind, cookie, namespace=settings.namespace)) is None
    moved = entity(client, settings, cookie)
    assert moved is not None and moved["data"] == {"visits": 5} and moved["static_security_key"] == "viursecurity1"


def test_clear_then_save_of_a_viur_plain_named_session_that_was_never_loaded_moves_it(
    client: datastore.Client, settings: Settings
) -> None:
    cookie = rules.new_key()
    RecordStore(client, replace(settings, key_storage="plain")).insert(
        SessionRecord(cookie, {"visits": 4}, GUEST_USER, "viursecurity1", seen=time.time())
    )
    session = SessionStore(cookie)
    session.clear()  # Django empties it without loading it
    session["fresh"] = True
    session.save()
    moved = entity(client, settings, cookie)
    assert moved is not None and moved["data"] == {"fresh": True}


# -- a store that does not answer ------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def unreachable(settings: Settings) -> Iterator[Settings]:
    """Settings whose Datastore never answers, with the shortest request deadline (1 s)."""
    gone = replace(settings, emulator_host=f"127.0.0.1:{closed_port()}", request_timeout=timedelta(seconds=1))
    with override_settings(SESSION_CORE_SETTINGS=gone, SESSION_CORE_CLIENT=None):
        yield gone


def test_a_store_that_does_not_answer_gives_503_with_retry_after_and_keeps_the_cookie(
    unreachable: Settings,
) -> None:
    browser = Client()
    browser.cookies[COOKIE] = cookie = rules.new_key()
    started = time.monotonic()
    response = browser.get("/visits/")
    assert time.monotonic() - started < 4
    assert response.status_code == 503 and response["Retry-After"] == "1"
    assert COOKIE not in response.cookies  # neither replaced nor deleted
    assert cookie_of(browser) == cookie


@override_settings(MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"])
def test_with_djangos_own_middleware_the_store_error_propagates_never_a_fresh_session(
    unreachable: Settings,
) -> None:
    browser = Client()
    browser.cookies[COOKIE] = rules.new_key()
    with pytest.raises(StoreError):
        browser.get("/visits/")
    session = SessionStore(rules.new_key())
    with pytest.raises(StoreError):
        session.get("visits")
    started = time.monotonic()
    with pytest.raises(StoreError):  # the same failure again, at once: never an empty session
        session["visits"] = 1
    assert time.monotonic() - started < 0.5


# -- configuration ---------------------------------------------------------------------------


def test_without_session_core_settings_the_engine_says_how_to_configure_it() -> None:
    with (
        override_settings(SESSION_CORE_SETTINGS=None),
        pytest.raises(ImproperlyConfigured, match=r"Settings\.from_env"),
    ):
        SessionStore()


def test_session_core_settings_may_be_a_function_called_once_on_the_first_session_use(
    settings: Settings, client: datastore.Client
) -> None:
    calls: list[Settings] = []

    def build() -> Settings:
        calls.append(settings)
        return settings

    with override_settings(SESSION_CORE_SETTINGS=build):
        browser = Client()
        assert calls == []
        assert [browser.get("/visits/").json() for _ in range(3)] == [{"visits": n} for n in (1, 2, 3)]
    assert len(calls) == 1
    assert entity(client, settings, cookie_of(browser)) is not None


def test_a_settings_function_that_fails_is_its_config_error_on_the_first_session_use() -> None:
    with (
        override_settings(SESSION_CORE_SETTINGS=lambda: Settings.from_env({})),
        pytest.raises(ConfigError, match="GOOGLE_CLOUD_PROJECT: expected the Google Cloud project id"),
    ):
        SessionStore()


# -- manage.py check --deploy ----------------------------------------------------------------


def deploy_check() -> tuple[set[str], str]:
    """``manage.py check --deploy``: the ids of the engine's findings, and the whole report."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("check", deploy=True, stdout=out, stderr=err)
    except SystemCheckError as exc:
        report = str(exc)
    else:
        report = err.getvalue() + out.getvalue()
    return set(re.findall(r"\((session_core\.[EW]\d{3})\)", report)), report


@override_settings(SESSION_COOKIE_SECURE=True)
def test_check_deploy_passes_a_configured_engine_with_a_secure_cookie() -> None:
    assert deploy_check()[0] == set()


def test_check_deploy_reports_a_session_cookie_without_secure() -> None:
    ids, report = deploy_check()  # Django's default: SESSION_COOKIE_SECURE = False
    assert ids == {"session_core.W001"}
    assert "Set SESSION_COOKIE_SECURE = True" in report


@pytest.mark.parametrize("value", [None, "not settings", lambda: 42])
def test_check_deploy_reports_missing_session_core_settings(value: object) -> None:
    with override_settings(SESSION_CORE_SETTINGS=value):
        ids, report = deploy_check()
    assert ids == {"session_core.E001"}
    assert "SESSION_CORE_SETTINGS must be a session_core.Settings" in report


def test_check_deploy_reports_a_settings_function_that_fails() -> None:
    with override_settings(SESSION_CORE_SETTINGS=lambda: Settings.from_env({"SESSION_LIFE_TIME": "soon"})):
        ids, report = deploy_check()
    assert ids == {"session_core.E002"}
    assert "SESSION_CORE_SETTINGS() raised: GOOGLE_CLOUD_PROJECT" in report


@override_settings(SESSION_COOKIE_SECURE=True)
def test_check_deploy_reports_a_life_time_that_differs_from_the_functions_settings_file(
    settings: Settings, tmp_path: Path
) -> None:
    assert settings.life_time == timedelta(hours=1)
    same, longer, broken = tmp_path / "same.json", tmp_path / "longer.json", tmp_path / "broken.json"
    same.write_text(json.dumps({"GOOGLE_CLOUD_PROJECT": "p", "SESSION_LIFE_TIME": "3600"}))
    longer.write_text(json.dumps({"GOOGLE_CLOUD_PROJECT": "p", "SESSION_LIFE_TIME": "86400"}))
    broken.write_text(json.dumps({"SESSION_LIFE_TIME": 86400}))
    with override_settings(SESSION_CORE_FUNCTIONS_SETTINGS=str(same)):
        assert deploy_check()[0] == set()
    with override_settings(SESSION_CORE_FUNCTIONS_SETTINGS=str(longer)):
        ids, report = deploy_check()
    assert ids == {"session_core.E004"}
    assert (
        f"SESSION_LIFE_TIME is 3600 s in SESSION_CORE_SETTINGS but 86400 s in the functions' settings ({longer})"
        in (report)
    )
    with override_settings(SESSION_CORE_FUNCTIONS_SETTINGS=str(broken)):
        ids, report = deploy_check()
    assert ids == {"session_core.E003"} and "a flat JSON object whose values are all strings" in report


def manage(*args: str) -> subprocess.CompletedProcess[str]:
    """``manage.py ARGS`` on the test project with its settings built on first use, and no Google Cloud variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "DATASTORE_", "CLOUDSDK_"))}
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-m", "django", *args, "--settings=tests.django_site.deferred_settings"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_management_commands_run_without_datastore_settings_when_they_are_built_on_first_use() -> None:
    checked = manage("check")
    assert (checked.returncode, checked.stdout.strip()) == (0, "System check identified no issues (0 silenced).")
    planned = manage("migrate", "--plan")
    assert planned.returncode == 0 and "Planned operations:" in planned.stdout
    deploy = manage("check", "--deploy")
    assert deploy.returncode == 1  # the misconfiguration is still an error where it matters
    assert "(session_core.E002) SESSION_CORE_SETTINGS() raised: GOOGLE_CLOUD_PROJECT" in deploy.stderr


# -- docs/how-to/django.md ---------------------------------------------------------------------

# What a reader runs in the project's shell once it is set up: a login through Django's admin, then a page
# only a signed-in user sees, through the middleware and the engine the page's settings name.
ADMIN_LOGIN = """
from django.contrib.auth.models import User
from django.test import Client
from django.test.utils import setup_test_environment

setup_test_environment()
user = User.objects.create_superuser("ada", password="correct horse")
browser = Client()
answer = browser.post("/admin/login/?next=/admin/", {"username": "ada", "password": "correct horse"})
assert answer.status_code == 302, answer.status_code
assert browser.get("/admin/").status_code == 200
print(user.pk, browser.cookies["sessionid"].value)
"""


def test_the_django_pages_settings_edit_a_startproject_project(
    tmp_path: Path, client: datastore.Client, settings: Settings
) -> None:
    """The page's lines, appended to a fresh startproject's settings.py: check passes, an admin login is ours."""
    settings_block, _ = doc_python_blocks("how-to/django.md")
    settings_py = startproject(tmp_path)
    generated: dict[str, Any] = {"__file__": str(settings_py)}
    exec(settings_py.read_text(), generated)
    settings_py.write_text(settings_py.read_text() + "\n" + settings_block)
    edited: dict[str, Any] = {"__file__": str(settings_py)}
    exec(settings_py.read_text(), edited)
    assert edited["INSTALLED_APPS"] == [*generated["INSTALLED_APPS"], "session_core.django.SessionCoreConfig"]
    ours = [
        "session_core.django.SessionMiddleware" if name.endswith("sessions.middleware.SessionMiddleware") else name
        for name in generated["MIDDLEWARE"]
    ]
    assert edited["MIDDLEWARE"] == ours != generated["MIDDLEWARE"]  # in Django's place, before authentication
    assert edited["SESSION_ENGINE"] == "session_core.django"

    assert settings.emulator_host and settings.namespace
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "DATASTORE_", "DJANGO_"))},
        "PYTHONPATH": str(ROOT),
        "DATASTORE_EMULATOR_HOST": settings.emulator_host,
        "GOOGLE_CLOUD_PROJECT": settings.project,
        "SESSION_NAMESPACE": settings.namespace,
    }

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "manage.py", *args]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)

    checked = manage("check")
    assert (checked.returncode, checked.stdout.strip()) == (0, "System check identified no issues (0 silenced).")
    deploy = manage("check", "--deploy")  # startproject's DEBUG and SECRET_KEY warn; nothing of ours is an error
    assert deploy.returncode == 0 and "session_core.W001" in deploy.stderr and "session_core.E" not in deploy.stderr
    assert manage("migrate", "--noinput").returncode == 0
    shell = manage("shell", "-c", ADMIN_LOGIN)
    assert shell.returncode == 0, shell.stderr[-3000:]
    user_pk, cookie = shell.stdout.splitlines()[-1].split()  # after any log line
    stored = entity(client, settings, cookie)
    assert (
        stored is not None and stored["user"] == user_pk
    )  # in Datastore, indexed: what kill_sessions(str(user.pk)) finds


def test_the_django_pages_sign_out_everywhere_else_view_keeps_only_this_session(
    client: datastore.Client, settings: Settings
) -> None:
    _, view_block = doc_python_blocks("how-to/django.md")
    namespace: dict[str, Any] = {}
    exec(view_block, namespace)
    alice = user("alice")
    here, elsewhere = Client(), Client()
    here.force_login(alice)
    elsewhere.force_login(alice)
    request = RequestFactory().post("/sign-out-everywhere-else/")
    request.session = SessionStore(cookie_of(here))
    request.user = alice
    assert namespace["sign_out_everywhere_else"](request).content == b"signed out everywhere else"
    assert here.get("/me/").content.decode() == alice.username
    assert elsewhere.get("/me/").content == b"anonymous"
