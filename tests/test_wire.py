"""The request path's raw protobufs: the client library's bytes, readable both ways, database and namespace kept."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.cloud import datastore
from google.cloud.datastore import helpers
from google.cloud.datastore.helpers import GeoPoint
from google.cloud.datastore_v1.services.datastore import DatastoreClient
from google.cloud.datastore_v1.services.datastore.transports import DatastoreGrpcTransport
from markupsafe import Markup

from session_core import Settings, _wire, values
from session_core._datastore import commit
from session_core.clients import datastore_client
from session_core.rules import hash_key, new_key, stored_lastseen
from session_core.store import SessionRecord, SessionStore, session_entity, session_pb
from tests.test_values import ROUND_TRIPS, same

SEEN = time.time()  # one moment for every record, so two written alike are byte-for-byte alike
# Every tagged form, and every native type ViUR writes too.
KEYED = datastore.Entity(datastore.Key("Thing", "t2", project="session-core-test"))
KEYED["x"] = 1
EVERY_VALUE: dict[str, Any] = {
    **ROUND_TRIPS,
    "none": None,
    "bools": [True, False],
    "int": 42,
    "a key": datastore.Key("Thing", "t1", project="session-core-test"),
    "a keyed entity": KEYED,
    "a geo point": GeoPoint(52.52, 13.405),
    "list of dicts": [{"a": 1}, {"b": [2, 3]}],
}


def record(name: str, data: dict[str, Any]) -> SessionRecord:
    return SessionRecord(key_name=name, data=data, user="u-1", static_security_key="k" * 13, seen=SEEN, lifetime=900.0)


def unindexed(properties: dict[str, Any], key: datastore.Key | None = None) -> datastore.Entity:
    entity = datastore.Entity(key, exclude_from_indexes=tuple(properties))
    entity.update(properties)
    return entity


def documented(value: Any) -> Any:
    """A session value in its documented stored form, built by hand as client-library values (the oracle)."""
    if isinstance(value, tuple):
        return unindexed({values.TUPLE: [item_form(item) for item in value]})
    if isinstance(value, uuid.UUID):
        return unindexed({values.UUID: str(value)})
    if isinstance(value, Markup):
        return unindexed({values.MARKUP: str(value)})
    if isinstance(value, list):
        return [item_form(item) for item in value]
    if isinstance(value, datastore.Entity) and value.key is not None:
        return unindexed({name: documented(item) for name, item in value.items()}, value.key)
    if isinstance(value, dict):
        inner = unindexed({name: documented(item) for name, item in value.items()})
        return unindexed({values.DICT: inner}) if len(value) == 1 and next(iter(value)) in values.TAGS else inner
    return value


def item_form(value: Any) -> Any:
    return unindexed({values.LIST: [item_form(item) for item in value]}) if type(value) is list else documented(value)


def tags_in(value: Any) -> set[str]:
    if isinstance(value, list):
        return set().union(*map(tags_in, value))
    if isinstance(value, dict):
        return {name for name in value if name in values.TAGS} | set().union(*map(tags_in, value.values()))
    return set()


def library_entity(key: datastore.Key, written: SessionRecord, settings: Settings) -> datastore.Entity:
    """The session entity, built by hand in the layout the module docstring of session_core.store documents."""
    expires = written.expires(settings.life_time)
    entity = datastore.Entity(key, exclude_from_indexes=("data", "expires", "seen", "lifetime"))
    entity["data"] = unindexed({name: documented(item) for name, item in written.data.items()})
    entity["static_security_key"] = written.static_security_key
    entity["lastseen"] = stored_lastseen(expires, settings.life_time)
    entity["user"] = written.user
    entity["expires"] = datetime.fromtimestamp(expires, tz=UTC)
    entity["seen"] = written.seen
    entity["lifetime"] = expires - written.seen
    return entity


@pytest.mark.parametrize("name", EVERY_VALUE)
def test_the_wire_encodes_every_value_byte_for_byte_as_the_client_library(name: str) -> None:
    settings = Settings(project="p", database="second", namespace="ns")
    key = datastore.Key(settings.kind, "a" * 64, project="p", database="second", namespace="ns")
    written = record("a" * 64, {name: EVERY_VALUE[name]})
    expected = library_entity(key, written, settings)

    ours = session_pb(_wire.key_pb("p", "second", "ns", settings.kind, "a" * 64), written, settings)

    theirs = helpers.entity_to_protobuf(expected)._pb.SerializeToString(deterministic=True)
    assert ours.SerializeToString(deterministic=True) == theirs
    library_form = session_entity(key, written, settings)  # the same encoder, read back by the client library
    assert helpers.entity_to_protobuf(library_form)._pb.SerializeToString(deterministic=True) == theirs
    measured = values.encode_into(values.ValuePb(), written.data)
    assert measured == values.value_size(expected["data"])  # the size measured on the way: Datastore's measure
    read = helpers.entity_from_protobuf(ours)
    assert same(values.decode(read["data"]), values.decode(_wire.properties(ours)["data"]))
    assert same({name: EVERY_VALUE[name]}, values.decode(_wire.properties(ours)["data"]))


def test_the_byte_for_byte_values_cover_every_tagged_form() -> None:
    assert tags_in([documented(value) for value in EVERY_VALUE.values()]) == values.TAGS


def test_an_entity_written_either_way_reads_the_same_both_ways_and_stores_the_same_bytes(
    client: datastore.Client, settings: Settings
) -> None:
    store = SessionStore(client, settings)
    by_library, by_wire = new_key(), new_key()
    written = {name: record(hash_key(cookie), EVERY_VALUE) for name, cookie in (("lib", by_library), ("wire", by_wire))}
    commit(client, insert=[store.to_entity(written["lib"])])
    assert store.insert(written["wire"])

    through_wire = store.lookup_all([by_library, by_wire])
    through_library = {
        cookie: SessionStore.from_entity(entity)
        for cookie in (by_library, by_wire)
        if (entity := client.get(store.key(hash_key(cookie)))) is not None
    }
    for cookie, name in ((by_library, "lib"), (by_wire, "wire")):
        assert same(dict(through_library[cookie].data), dict(through_wire[cookie].data))  # NaN is NaN
        assert replace(through_wire[cookie], data={}) == replace(through_library[cookie], data={})
        assert same(dict(written[name].data), dict(through_wire[cookie].data))
        assert replace(through_wire[cookie], data={}) == replace(written[name], data={})
    stored = [client.get(store.key(hash_key(cookie))) for cookie in (by_library, by_wire)]
    bodies = [helpers.entity_to_protobuf(e)._pb for e in stored if e is not None]
    for body in bodies:
        body.ClearField("key")
    assert [len(bodies), bodies[0].SerializeToString(deterministic=True)] == [
        2,
        bodies[1].SerializeToString(deterministic=True),
    ]


class Headers(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Records the metadata of every call on a channel."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.seen.append((details.method.rsplit("/", 1)[-1], dict(details.metadata or ())))
        return continuation(details, request)


def test_the_named_database_routing_header_and_the_namespace_reach_the_server(settings: Settings) -> None:
    second = replace(settings, database=f"second-{uuid.uuid4().hex[:8]}")
    client = datastore_client(second)
    headers = Headers()
    channel = grpc.intercept_channel(grpc.insecure_channel(second.emulator_host or ""), headers)
    client._datastore_api_internal = DatastoreClient(transport=DatastoreGrpcTransport(channel=channel))
    cookie = new_key()

    assert SessionStore(client, second).insert(record(hash_key(cookie), {"n": 1}))

    expected = f"project_id={second.project}&database_id={second.database}"
    assert headers.seen == [("Commit", headers.seen[0][1])]
    assert headers.seen[0][1]["x-goog-request-params"] == expected
    assert set(SessionStore(client, second).lookup_all([cookie])) == {cookie}
    assert headers.seen[1][1]["x-goog-request-params"] == expected
    first = datastore_client(settings)
    assert SessionStore(first, settings).lookup_all([cookie]) == {}  # the default database has nothing
    other_namespace = replace(second, namespace=f"{second.namespace}-other")
    assert SessionStore(client, other_namespace).lookup_all([cookie]) == {}  # nor does another namespace


def test_with_plain_keys_off_a_lookup_carries_the_hashed_name_alone(settings: Settings) -> None:
    from session_core.errors import ConfigError

    with pytest.raises(ConfigError, match="SESSION_PLAIN_KEYS"):
        Settings.from_env({"GOOGLE_CLOUD_PROJECT": "p", "SESSION_KEY_STORAGE": "plain", "SESSION_PLAIN_KEYS": "off"})
    hashed_only = replace(settings, plain_keys=False)
    client = datastore_client(hashed_only)
    sent: list[int] = []
    wire = _wire.wire_of(client)
    original = wire.lookup
    wire.lookup = lambda request, timeout: sent.append(len(request.keys)) or original(request, timeout)
    SessionStore(client, hashed_only).lookup_all([new_key()])
    SessionStore(client, settings).lookup_all([new_key()])
    assert sent == [1, 2]
