"""Session behaviour against the real Datastore emulator."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
from google.cloud import datastore

from session_core import GUEST_USER, MisuseError, Session, Settings
from session_core._observers import registered_delete_observer
from session_core.rules import hash_key, is_valid_key, new_key
from tests.conftest import Ctx, RpcCounter


def cookie_from(ctx: Ctx) -> str:
    [header] = ctx.set_cookies
    name_value = header.split(";", 1)[0]
    return name_value.split("=", 1)[1]


def saved_session(client: datastore.Client, settings: Settings, **data: Any) -> str:
    """Create and save a session holding ``data``; return its cookie value."""
    session = Session(client, settings)
    session.load(Ctx())
    session.update(data)
    ctx = Ctx()
    session.save(ctx)
    return cookie_from(ctx)


def loaded(client: datastore.Client, settings: Settings, cookie: str, **kwargs: Any) -> Session:
    session = Session(client, settings, **kwargs)
    session.load(Ctx({settings.cookie_name: cookie}))
    return session


def stored(client: datastore.Client, settings: Settings, name: str) -> datastore.Entity | None:
    return client.get(client.key(settings.kind, name, namespace=settings.namespace))


# -- RPC counts --------------------------------------------------------------


def test_load_without_cookie_makes_no_rpc(
    offline_client: datastore.Client, offline_settings: Settings, offline_rpcs: RpcCounter
) -> None:
    session = Session(offline_client, offline_settings)
    assert session.load(Ctx()) is False
    assert offline_rpcs.total == 0
    assert len(session) == 0


@pytest.mark.parametrize(
    "cookie",
    ["", "short", "a" * 41, "a" * 43, "A" * 41 + "-", "é" * 42, "a" * 41 + "\n", hash_key("x"), " " + "a" * 41],
)
def test_malformed_cookie_gives_fresh_session_without_rpc(
    offline_client: datastore.Client, offline_settings: Settings, offline_rpcs: RpcCounter, cookie: str
) -> None:
    session = Session(offline_client, offline_settings)
    assert session.load(Ctx({offline_settings.cookie_name: cookie})) is False
    assert offline_rpcs.total == 0


@pytest.mark.smoke  # CI's Python 3.13 pass runs it after make check
def test_valid_cookie_costs_exactly_one_lookup(client: datastore.Client, settings: Settings, rpcs: RpcCounter) -> None:
    cookie = saved_session(client, settings, language="de")
    rpcs.reset()
    session = loaded(client, settings, cookie)
    assert session["language"] == "de"
    assert rpcs.calls == {"lookup": 1}


def test_unknown_but_wellformed_cookie_costs_one_lookup(
    client: datastore.Client, settings: Settings, rpcs: RpcCounter
) -> None:
    assert loaded(client, settings, new_key()).cookie_key is None
    assert rpcs.calls == {"lookup": 1}


def test_unchanged_save_makes_no_rpc_and_sends_no_cookie(
    client: datastore.Client, settings: Settings, rpcs: RpcCounter
) -> None:
    session = loaded(client, settings, saved_session(client, settings, a=1))
    rpcs.reset()
    ctx = Ctx()
    session.save(ctx)
    assert rpcs.total == 0
    assert ctx.headers == []


def test_changed_save_is_one_commit(client: datastore.Client, settings: Settings, rpcs: RpcCounter) -> None:
    session = Session(client, settings)
    session.load(Ctx())
    session["a"] = 1
    rpcs.reset()
    session.save(Ctx())
    assert rpcs.calls == {"commit": 1}

    session = loaded(client, settings, session.cookie_key or "")
    session["a"] = 2
    rpcs.reset()
    session.save(Ctx())
    assert rpcs.calls == {"commit": 1}


def test_reset_of_a_loaded_session_is_one_commit_that_deletes_the_old_entity(
    client: datastore.Client, settings: Settings, rpcs: RpcCounter
) -> None:
    old_cookie = saved_session(client, settings, a=1)
    session = loaded(client, settings, old_cookie)
    session.reset()
    session["b"] = 2
    rpcs.reset()
    ctx = Ctx()
    session.save(ctx)
    assert rpcs.calls == {"commit": 1}
    assert cookie_from(ctx) != old_cookie
    assert stored(client, settings, hash_key(old_cookie)) is None
    assert dict(loaded(client, settings, cookie_from(ctx))) == {"b": 2}


# -- no resurrection ---------------------------------------------------------


def test_session_deleted_while_request_holds_it_is_not_recreated(client: datastore.Client, settings: Settings) -> None:
    cookie = saved_session(client, settings, cart=["book"])
    session = loaded(client, settings, cookie)
    client.delete(client.key(settings.kind, hash_key(cookie), namespace=settings.namespace))

    session["cart"] = ["book", "pen"]
    ctx = Ctx()
    session.save(ctx)

    assert stored(client, settings, hash_key(cookie)) is None
    assert stored(client, settings, cookie) is None
    assert ctx.set_cookies == []  # the browser may hold a newer cookie by now: it is left alone
    assert len(session) == 0 and session.cookie_key is None


def test_a_slow_request_on_the_old_session_leaves_a_parallel_login_alone(
    client: datastore.Client, settings: Settings
) -> None:
    """Request 1 loads the guest session, request 2 logs in (a new key), request 1 then saves a change.

    Request 1's change is dropped and it sends no ``Set-Cookie``: a ``Max-Age=0`` would delete the login cookie.
    """
    guest = saved_session(client, settings, cart=["book"])
    slow = loaded(client, settings, guest)
    login = loaded(client, settings, guest)
    login.login("alice")
    login_ctx = Ctx()
    login.save(login_ctx)

    slow["cart"] = ["book", "pen"]
    ctx = Ctx()
    slow.save(ctx)

    assert ctx.set_cookies == []
    fresh = cookie_from(login_ctx)
    assert loaded(client, settings, fresh).user == "alice"
    assert stored(client, settings, hash_key(guest)) is None  # nothing resurrected
    assert not Session(client, settings).load(Ctx({settings.cookie_name: guest}))


def test_a_session_this_request_issued_and_lost_gets_its_cookie_cleared(
    client: datastore.Client, settings: Settings
) -> None:
    """The one case a gone session still clears the cookie: the response itself handed it out."""
    session = Session(client, settings)
    session.load(Ctx())
    session["a"] = 1
    ctx = Ctx()
    session.save(ctx)
    issued = cookie_from(ctx)
    client.delete(client.key(settings.kind, hash_key(issued), namespace=settings.namespace))
    session["a"] = 2
    session.save(ctx)
    first, last = ctx.set_cookies
    assert first.startswith(f"{settings.cookie_name}={issued};")
    assert last.startswith(f"{settings.cookie_name}=;") and "Max-Age=0" in last  # the browser keeps the last
    assert stored(client, settings, hash_key(issued)) is None


def test_plain_session_deleted_before_migration_is_not_recreated(
    client: datastore.Client, plain_settings: Settings, settings: Settings
) -> None:
    cookie = saved_session(client, plain_settings, a=1)
    session = loaded(client, settings, cookie)  # hashed storage: would migrate
    client.delete(client.key(settings.kind, cookie, namespace=settings.namespace))
    session["a"] = 2
    session.save(Ctx())
    assert stored(client, settings, cookie) is None
    assert stored(client, settings, hash_key(cookie)) is None


# -- expiry and refresh ------------------------------------------------------


def test_expired_session_is_treated_as_absent_and_gets_a_new_key(client: datastore.Client, settings: Settings) -> None:
    cookie = saved_session(client, settings, a=1)
    later = time.time() + settings.life_time.total_seconds() + 1
    session = loaded(client, settings, cookie, clock=lambda: later)
    assert len(session) == 0 and session.cookie_key is None
    session["b"] = 1
    ctx = Ctx()
    session.save(ctx)
    assert cookie_from(ctx) != cookie
    assert stored(client, settings, hash_key(cookie)) is None  # dropped in the same commit


def test_session_seen_within_five_minutes_is_not_rewritten(
    client: datastore.Client, settings: Settings, rpcs: RpcCounter
) -> None:
    cookie = saved_session(client, settings, a=1)
    soon = time.time() + 299
    session = loaded(client, settings, cookie, clock=lambda: soon)
    assert session.changed is False


def test_session_seen_over_five_minutes_ago_is_refreshed_on_save(client: datastore.Client, settings: Settings) -> None:
    cookie = saved_session(client, settings, a=1)
    later = time.time() + 301
    session = loaded(client, settings, cookie, clock=lambda: later)
    assert session.changed is False  # the data did not change (Flask's modified stays False) ...
    session.save(Ctx())  # ... but the refresh is due: it is written
    entity = stored(client, settings, hash_key(cookie))
    assert entity is not None and entity["lastseen"] == pytest.approx(later)
    assert entity["expires"].timestamp() == pytest.approx(later + settings.life_time.total_seconds())


# -- login, logout, keys -----------------------------------------------------


def test_login_keeps_only_allowlisted_fields_and_changes_the_key(client: datastore.Client, settings: Settings) -> None:
    settings = replace(settings, persistent_fields_on_login=("language", "theme"))
    old = saved_session(client, settings, language="de", theme="dark", cart=[1], csrf="x")
    session = loaded(client, settings, old)
    old_security_key = session.static_security_key
    session.login("user-42")
    ctx = Ctx()
    session.save(ctx)
    new = cookie_from(ctx)
    assert new != old
    assert stored(client, settings, hash_key(old)) is None
    again = loaded(client, settings, new)
    assert dict(again) == {"language": "de", "theme": "dark"}
    assert again.user == "user-42"
    assert again.static_security_key != old_security_key


def test_logout_keeps_only_logout_fields_and_becomes_guest(client: datastore.Client, settings: Settings) -> None:
    settings = replace(settings, persistent_fields_on_logout=("language",))
    session = loaded(client, settings, saved_session(client, settings))
    session.login("user-1")
    session.update(language="fr", basket=[1, 2])
    ctx = Ctx()
    session.save(ctx)
    logged_in = cookie_from(ctx)

    session = loaded(client, settings, logged_in)
    session.logout()
    ctx = Ctx()
    session.save(ctx)
    again = loaded(client, settings, cookie_from(ctx))
    assert dict(again) == {"language": "fr"}
    assert again.user == GUEST_USER
    assert cookie_from(ctx) != logged_in
    assert loaded(client, settings, logged_in).cookie_key is None


@pytest.mark.parametrize("user", ["", GUEST_USER, None, 0, False, 42, "a\nb", "x" * 1501, "\x00"])
def test_login_refuses_anything_kill_could_not_name_before_any_rpc(
    offline_client: datastore.Client, offline_settings: Settings, offline_rpcs: RpcCounter, user: Any
) -> None:
    session = Session(offline_client, offline_settings)
    session.load(Ctx())
    with pytest.raises(MisuseError):
        session.login(user)
    session.save(Ctx())
    assert offline_rpcs.total == 0 and session.user == GUEST_USER


def test_issued_keys_have_the_format_we_accept(client: datastore.Client, settings: Settings) -> None:
    cookie = saved_session(client, settings, a=1)
    assert is_valid_key(cookie) and len(cookie) == 42


def test_client_chosen_key_never_becomes_a_stored_session(client: datastore.Client, settings: Settings) -> None:
    chosen = new_key()
    session = loaded(client, settings, chosen)
    session["a"] = 1
    ctx = Ctx()
    session.save(ctx)
    assert cookie_from(ctx) != chosen
    assert stored(client, settings, hash_key(chosen)) is None
    assert stored(client, settings, chosen) is None


def test_security_key_is_static_per_session_and_checked(client: datastore.Client, settings: Settings) -> None:
    cookie = saved_session(client, settings, a=1)
    first = loaded(client, settings, cookie)
    second = loaded(client, settings, cookie)
    assert len(first.static_security_key) >= 13
    assert first.static_security_key == second.static_security_key
    assert first.validate_security_key(second.static_security_key)
    assert not first.validate_security_key(second.static_security_key[:-1] + "?")
    assert not first.validate_security_key(None)
    assert not first.validate_security_key("é")


# -- data ---------------------------------------------------------------------


def test_nested_and_large_values_round_trip(client: datastore.Client, settings: Settings) -> None:
    big = "x" * 5000  # longer than an indexed string may be
    value = {"profile": {"bio": big, "tags": ["a", big]}, "items": [{"sku": big, "n": 2}], "n": 1.5}
    cookie = saved_session(client, settings, **value)
    assert dict(loaded(client, settings, cookie)) == value


def test_every_mutating_call_marks_the_session_changed(
    offline_client: datastore.Client, offline_settings: Settings
) -> None:
    def fresh() -> Session:
        session = Session(offline_client, offline_settings)
        session.load(Ctx())
        session._data.update(a=1, b=2)  # preloaded, unchanged
        return session

    mutations = {
        "setitem": lambda s: s.__setitem__("c", 3),
        "delitem": lambda s: s.__delitem__("a"),
        "ior": lambda s: s.__ior__({"c": 3}),
        "update": lambda s: s.update(c=3),
        "pop": lambda s: s.pop("a"),
        "popitem": lambda s: s.popitem(),
        "setdefault": lambda s: s.setdefault("list", []).append(1),
        "clear": lambda s: s.clear(),
        "markChanged": lambda s: s.markChanged(),
        "reset": lambda s: s.reset(),
    }
    for name, mutate in mutations.items():
        session = fresh()
        mutate(session)
        assert session.changed, name
    session = fresh()
    _ = (session.get("a"), "a" in session, list(session.items()), list(session.keys()), session["b"], len(session))
    assert not session.changed


def test_dict_semantics(offline_client: datastore.Client, offline_settings: Settings) -> None:
    session = Session(offline_client, offline_settings)
    session.load(Ctx())
    session |= {"a": 1}
    session["b"] = 2
    assert session.get("missing", "d") == "d"
    assert sorted(session) == ["a", "b"] and list(session.values()) == [1, 2]
    assert dict(session.items()) == {"a": 1, "b": 2}
    with pytest.raises(KeyError):
        del session["missing"]
    with pytest.raises(KeyError):
        session["missing"]
    assert session.pop("missing", None) is None


def test_seed_attributes(offline_client: datastore.Client, offline_settings: Settings) -> None:
    session = Session(offline_client, replace(offline_settings, same_site="strict", use_session_cookie=False))
    assert (Session.kindName, Session.GUEST_USER) == ("viur-session", "__guest__")
    assert session.same_site == "strict" and session.use_session_cookie is False
    assert session.cookie_name == offline_settings.cookie_name


def test_on_delete_registers_for_the_process_that_deletes_and_unregisters() -> None:
    calls: list[Any] = []

    @Session.on_delete
    def observer(record: Any) -> None:
        calls.append(record)

    try:
        registered = registered_delete_observer()
        assert registered is not None
        registered("record")  # type: ignore[arg-type]
        assert calls == ["record"]
    finally:
        Session.remove_on_delete(observer)
    assert registered_delete_observer() is None


# -- a new key's id is known at once --------------------------------------------


@pytest.mark.parametrize("rotation", ["login", "logout", "reset"])
def test_a_rotations_new_session_id_is_known_at_once_and_written_only_on_save(
    client: datastore.Client, settings: Settings, rpcs: RpcCounter, rotation: str
) -> None:
    signed_in = Session(client, settings)
    signed_in.load(Ctx())
    signed_in.login("alice")
    first = Ctx()
    signed_in.save(first)
    session = loaded(client, settings, cookie_from(first))
    old_id = session.session_id
    rpcs.reset()
    {"login": lambda: session.login("bob"), "logout": session.logout, "reset": session.reset}[rotation]()
    new_id = session.session_id
    assert new_id is not None and new_id != old_id
    assert rpcs.total == 0  # nothing is written until the save
    assert stored(client, settings, new_id) is None
    saved = Ctx()
    session.save(saved)
    assert hash_key(cookie_from(saved)) == new_id and stored(client, settings, new_id) is not None
    assert old_id is not None and stored(client, settings, old_id) is None
