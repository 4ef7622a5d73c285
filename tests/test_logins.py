"""Kill and login records (``session_core.logins``): what refuses a remember-me login after a kill."""

from __future__ import annotations

import hashlib
import time

import pytest
from google.cloud import datastore

from session_core import Session, Settings, kill_sessions
from session_core._datastore import settings_key
from session_core.logins import KIND, record_login, remembered_login_allowed
from tests.conftest import Ctx

USERS = ("*", "all", "user:x", "alice", "bob")


def signed_in(client: datastore.Client, settings: Settings, user: str) -> str:
    """An interactive login of ``user``: a stored session and a login record; the session's cookie."""
    session = Session(client, settings)
    session.load(Ctx())
    session.login(user)
    session.save(Ctx())
    record_login(client, settings, user, time.time() - 1)
    assert session.cookie_key is not None
    return session.cookie_key


def user_of(client: datastore.Client, settings: Settings, cookie: str) -> str | None:
    session = Session(client, settings)
    return session.user if session.load(Ctx({settings.cookie_name: cookie})) else None


def put_record(client: datastore.Client, settings: Settings, name: str, at: float) -> None:
    entity = datastore.Entity(settings_key(client, settings, KIND, name))
    entity["at"] = at
    client.put(entity)


def digest(user: str) -> str:
    return hashlib.sha256(user.encode()).hexdigest()


@pytest.mark.parametrize("victim", ["*", "all", "user:x"])
def test_a_user_named_like_a_record_is_killed_without_touching_anyone_else(
    client: datastore.Client, settings: Settings, victim: str
) -> None:
    """``*`` used to be the everyone-record: killing user ``*`` refused every user's remember-me login."""
    cookies = {user: signed_in(client, settings, user) for user in USERS}

    kill_sessions(victim, client=client, settings=settings)

    allowed = {user: remembered_login_allowed(client, settings, user) for user in USERS}
    assert allowed == {user: user != victim for user in USERS}
    sessions = {user: user_of(client, settings, cookie) for user, cookie in cookies.items()}
    assert sessions == {user: None if user == victim else user for user in USERS}


def test_a_kill_of_everyone_still_refuses_every_user(client: datastore.Client, settings: Settings) -> None:
    for user in USERS:
        signed_in(client, settings, user)
    kill_sessions(None, client=client, settings=settings)
    assert [remembered_login_allowed(client, settings, user) for user in USERS] == [False] * len(USERS)
    record_login(client, settings, "*", time.time() + 1)  # an interactive login after the kill
    assert [remembered_login_allowed(client, settings, user) for user in USERS] == [True, False, False, False, False]


def test_a_kill_recorded_before_the_upgrade_still_refuses_a_remember_me_login(
    client: datastore.Client, settings: Settings
) -> None:
    """Records of 0.12 and earlier (``kill:<sha256>``, ``login:<sha256>``, ``kill:*``) are still read."""
    put_record(client, settings, f"login:{digest('alice')}", 100.0)
    put_record(client, settings, f"kill:{digest('alice')}", 200.0)
    put_record(client, settings, f"login:{digest('bob')}", 300.0)
    put_record(client, settings, f"kill:{digest('bob')}", 200.0)
    assert remembered_login_allowed(client, settings, "alice") is False  # killed after her last login
    assert remembered_login_allowed(client, settings, "bob") is True  # logged in again after his kill

    put_record(client, settings, "kill:*", 400.0)  # an old kill of everyone (or of a user named "*": same name)
    assert remembered_login_allowed(client, settings, "bob") is False
    assert remembered_login_allowed(client, settings, "carol") is False

    record_login(client, settings, "bob", 500.0)  # a new-style interactive login after both kills
    assert remembered_login_allowed(client, settings, "bob") is True
    assert remembered_login_allowed(client, settings, "alice") is False
