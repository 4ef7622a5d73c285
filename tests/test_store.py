"""The Datastore mapping: mutations, ViUR's layout, hashed-key migration."""

from __future__ import annotations

import time

import pytest
from google.cloud import datastore

from session_core import Session, SessionDataError, Settings, StoreError
from session_core._datastore import commit
from session_core.rules import hash_key, new_key
from session_core.store import SessionRecord, SessionStore
from tests.conftest import Ctx, RpcCounter


def viur_writes(client: datastore.Client, settings: Settings, cookie: str, **data: object) -> None:
    """Write a session exactly as ViUR's core.session does (client.put, plain key name)."""
    entity = datastore.Entity(
        client.key("viur-session", cookie, namespace=settings.namespace), exclude_from_indexes=["data"]
    )
    embedded = datastore.Entity()
    embedded.update(data)
    entity["data"] = embedded
    entity["static_security_key"] = "abcdefghijklm"
    entity["lastseen"] = time.time()
    entity["user"] = "__guest__"
    client.put(entity)


def get(client: datastore.Client, settings: Settings, name: str) -> datastore.Entity | None:
    return client.get(client.key(settings.kind, name, namespace=settings.namespace))


def record(name: str) -> SessionRecord:
    return SessionRecord(key_name=name, data={"a": 1}, user="u", static_security_key="k" * 13, seen=time.time())


def test_update_mutation_fails_for_a_missing_entity(client: datastore.Client, settings: Settings) -> None:
    store = SessionStore(client, settings)
    assert store.update(record("missing")) is False
    assert get(client, settings, "missing") is None


def test_insert_mutation_refuses_an_existing_entity(client: datastore.Client, settings: Settings) -> None:
    store = SessionStore(client, settings)
    assert store.insert(record("one")) is True
    assert store.insert(record("one")) is False


def test_commit_sends_all_mutations_in_one_rpc(client: datastore.Client, settings: Settings, rpcs: RpcCounter) -> None:
    store = SessionStore(client, settings)
    store.insert(record("old"))
    store.insert(record("kept"))
    rpcs.reset()
    commit(
        client,
        insert=[store.to_entity(record("new"))],
        update=[store.to_entity(record("kept"))],
        delete=[store.key("old")],
    )
    assert rpcs.calls == {"commit": 1}
    assert get(client, settings, "old") is None
    assert get(client, settings, "new") is not None


def test_unstorable_values_are_named_before_any_rpc(
    offline_client: datastore.Client, offline_settings: Settings, offline_rpcs: RpcCounter
) -> None:
    store = SessionStore(offline_client, offline_settings)
    with pytest.raises(SessionDataError, match=r"session\['cart'\]\[1\]: set cannot be stored"):
        store.insert(SessionRecord("x", {"cart": [1, {2}]}, "u", "k", 1.0))
    with pytest.raises(SessionDataError, match="keys must be strings"):
        store.insert(SessionRecord("x", {"m": {1: "a"}}, "u", "k", 1.0))
    assert offline_rpcs.total == 0


def test_other_datastore_errors_become_store_errors(client: datastore.Client, settings: Settings) -> None:
    store = SessionStore(client, settings)
    with pytest.raises(StoreError) as raised:
        store.insert(SessionRecord("x" * 1600, {}, "u", "k", 1.0))  # key names are limited to 1500 bytes
    assert raised.value.operation == "insert"


def test_schema_is_viurs_plus_unindexed_expiry_fields(client: datastore.Client, settings: Settings) -> None:
    store = SessionStore(client, settings)
    store.insert(record("s"))
    entity = get(client, settings, "s")
    assert entity is not None
    assert set(entity) == {"data", "static_security_key", "lastseen", "user", "expires", "seen", "lifetime"}
    assert isinstance(entity["lastseen"], float) and isinstance(entity["data"], datastore.Entity)
    assert entity.exclude_from_indexes == {"data", "expires", "seen", "lifetime"}
    assert entity["expires"].timestamp() == pytest.approx(entity["lastseen"] + 3600)
    assert entity["lastseen"] == pytest.approx(entity["seen"]) and entity["lifetime"] == 3600  # the default lifetime


def test_session_written_by_viur_loads(client: datastore.Client, plain_settings: Settings) -> None:
    cookie = new_key()
    viur_writes(client, plain_settings, cookie, language="de", cart=["x"])
    session = Session(client, plain_settings)
    assert session.load(Ctx({plain_settings.cookie_name: cookie}))
    assert dict(session) == {"language": "de", "cart": ["x"]}
    assert session.static_security_key == "abcdefghijklm"


def test_plain_storage_writes_viur_layout(client: datastore.Client, plain_settings: Settings) -> None:
    cookie = new_key()
    viur_writes(client, plain_settings, cookie, n=1)
    session = Session(client, plain_settings)
    session.load(Ctx({plain_settings.cookie_name: cookie}))
    session["n"] = 2
    session.save(Ctx())
    assert get(client, plain_settings, cookie) is not None
    assert get(client, plain_settings, hash_key(cookie)) is None


def test_viur_session_moves_to_its_hashed_key_on_save(
    client: datastore.Client, settings: Settings, rpcs: RpcCounter
) -> None:
    cookie = new_key()
    viur_writes(client, settings, cookie, language="de")
    session = Session(client, settings)
    rpcs.reset()
    assert session.load(Ctx({settings.cookie_name: cookie}))
    assert rpcs.calls == {"lookup": 1}  # both names, one RPC
    session["language"] = "en"
    ctx = Ctx()
    session.save(ctx)
    assert get(client, settings, cookie) is None
    moved = get(client, settings, hash_key(cookie))
    assert moved is not None and moved["data"]["language"] == "en"
    assert ctx.set_cookies[0].startswith(f"{settings.cookie_name}={cookie};")  # the browser keeps its cookie
    again = Session(client, settings)
    assert again.load(Ctx({settings.cookie_name: cookie})) and again["language"] == "en"


def test_hashed_session_still_loads_with_plain_storage(
    client: datastore.Client, settings: Settings, plain_settings: Settings
) -> None:
    session = Session(client, settings)
    session.load(Ctx())
    session["a"] = 1
    ctx = Ctx()
    session.save(ctx)
    cookie = session.cookie_key or ""
    reader = Session(client, plain_settings)
    assert reader.load(Ctx({settings.cookie_name: cookie}))
    reader["a"] = 2
    reader.save(Ctx())
    assert get(client, settings, hash_key(cookie)) is not None
    assert get(client, settings, cookie) is None


def test_session_id_is_the_hashed_name_for_both_layouts() -> None:
    cookie = new_key()
    assert record(cookie).session_id == hash_key(cookie)
    assert record(hash_key(cookie)).session_id == hash_key(cookie)
