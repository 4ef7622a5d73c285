"""The request path's Datastore RPCs as raw protobuf messages, on the client library's own channel.

google-cloud-datastore spends most of a request's CPU in proto-plus
marshalling (``entity_to_protobuf``, ``proto.message.__getattr__``). This
module sends the very same requests (Lookup, Commit, BeginTransaction,
Rollback) built as the underlying protobuf messages, over what the client
already set up: the GAPIC transport's authenticated gRPC channel (in emulator
mode its insecure channel to ``DATASTORE_EMULATOR_HOST``), or the client's
HTTP session when it speaks HTTP. The project and the named database travel
in the request and in the routing header (``x-goog-request-params``), as the
GAPIC layer sends them; the client-info header too.

Entities convert straight between client-library values (what
:mod:`session_core.values` produces and reads, so its rules stay the only
rules) and ``Value`` protobufs, byte for byte as the client library's own
``entity_to_protobuf`` would (``tests/test_wire.py`` proves it for every
tagged form). Errors leave as google.api_core exceptions
(:func:`google.api_core.exceptions.from_grpc_error`), for
:func:`session_core._datastore.translated`.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from google.api_core import exceptions as gexc
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.api_core.gapic_v1 import routing_header
from google.cloud import datastore
from google.cloud.datastore import _http
from google.cloud.datastore.helpers import GeoPoint, key_from_protobuf
from google.cloud.datastore_v1.types import datastore as _api
from google.cloud.datastore_v1.types import entity as _entity


def _rpc(method: str) -> tuple[Any, Any]:
    """The protobuf classes (under the proto-plus wrappers) of one Datastore RPC's request and response."""
    return getattr(_api, f"{method}Request").pb(), getattr(_api, f"{method}Response").pb()


LookupRequest, LookupResponse = _rpc("Lookup")
CommitRequest, CommitResponse = _rpc("Commit")
BeginTransactionRequest, BeginTransactionResponse = _rpc("BeginTransaction")
RollbackRequest, RollbackResponse = _rpc("Rollback")
EntityPb: Any = _entity.Entity.pb()
KeyPb: Any = _entity.Key.pb()
TRANSACTIONAL = CommitRequest.Mode.Value("TRANSACTIONAL")
NON_TRANSACTIONAL = CommitRequest.Mode.Value("NON_TRANSACTIONAL")
_SERVICE = "/google.datastore.v1.Datastore/"
_METHODS = {
    "lookup": ("Lookup", LookupResponse),
    "commit": ("Commit", CommitResponse),
    "begin_transaction": ("BeginTransaction", BeginTransactionResponse),
    "rollback": ("Rollback", RollbackResponse),
}
Call = Callable[[Any, float], Any]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NATIVE = frozenset({"string_value", "double_value", "integer_value", "boolean_value", "blob_value"})
"""The ``Value`` fields that hold a client-library value as they are."""


class Wire:
    """The four request-path RPCs of one client, each ``(request protobuf, timeout) -> response protobuf``.

    Build it with :func:`wire_of`. Each method is one RPC, never retried here
    (:func:`session_core._datastore.within` retries); a failure raises the
    google.api_core exception for its status.
    """

    lookup: Call
    commit: Call
    begin_transaction: Call
    rollback: Call

    def __init__(self, client: datastore.Client, api: object) -> None:
        self.project: str = client.project
        self.database: str = client.database or ""
        params = {"project_id": self.project, **({"database_id": self.database} if self.database else {})}
        if isinstance(api, _http.HTTPDatastoreAPI):
            for name, (method, response) in _METHODS.items():
                setattr(self, name, _over_http(client, method[0].lower() + method[1:], response))
            return
        transport: Any = getattr(api, "transport")  # noqa: B009 - a GAPIC DatastoreClient
        channel: grpc.Channel = transport.grpc_channel
        metadata = (routing_header.to_grpc_metadata(params), client._client_info.to_grpc_metadata())  # type: ignore[no-untyped-call]
        for name, (method, response) in _METHODS.items():
            stub = channel.unary_unary(
                _SERVICE + method, request_serializer=_serialize, response_deserializer=response.FromString
            )
            setattr(self, name, _over_grpc(stub, metadata))


_WIRES: weakref.WeakKeyDictionary[object, Wire] = weakref.WeakKeyDictionary()


def wire_of(client: datastore.Client) -> Wire:
    """The client's wire, built once per API object (a client's API object is built lazily, and may be replaced)."""
    api = client._datastore_api
    wire = _WIRES.get(api)
    if wire is None:
        wire = _WIRES[api] = Wire(client, api)
    return wire


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def _over_grpc(stub: grpc.UnaryUnaryMultiCallable, metadata: tuple[tuple[str, str], ...]) -> Call:
    def call(request: Any, timeout: float) -> Any:
        try:
            return stub(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise gexc.from_grpc_error(exc) from exc  # type: ignore[no-untyped-call]

    return call


def _over_http(client: datastore.Client, method: str, response: Any) -> Call:
    def call(request: Any, timeout: float) -> Any:
        content = _http._request(
            client._http,
            request.project_id,
            method,
            request.SerializeToString(),
            client._base_url,
            client._client_info,
            request.database_id,
            timeout=timeout,
        )
        return response.FromString(content)

    return call


# -- the request-path operations ---------------------------------------------------------


def lookup(wire: Wire, keys: Sequence[Any], timeout: float) -> list[Any]:
    """The entities found under ``keys`` (Key protobufs), strongly consistent: one RPC (more only if deferred)."""
    found: list[Any] = []
    pending = list(keys)
    while pending:
        request = LookupRequest(project_id=wire.project, database_id=wire.database, keys=pending)
        response = wire.lookup(request, timeout)
        found += [result.entity for result in response.found]
        pending = list(response.deferred)
    return found


def commit(
    wire: Wire,
    timeout: float,
    *,
    insert: Iterable[Any] = (),
    update: Iterable[Any] = (),
    delete: Iterable[Any] = (),
    transaction: bytes = b"",
) -> None:
    """Insert, update (Entity protobufs) and delete (Key protobufs) in one Commit, all or none.

    AlreadyExists if an inserted entity exists, NotFound if an updated one does not.
    """
    request = CommitRequest(project_id=wire.project, database_id=wire.database, mode=NON_TRANSACTIONAL)
    if transaction:  # one of a oneof: set only when there is one
        request.mode, request.transaction = TRANSACTIONAL, transaction
    mutations = request.mutations
    for op, entities in (("insert", insert), ("update", update)):
        for entity in entities:
            getattr(mutations.add(), op).CopyFrom(entity)
    for key in delete:
        mutations.add().delete.CopyFrom(key)
    wire.commit(request, timeout)


def rehome(wire: Wire, olds: Sequence[Any], news: Sequence[Any], timeout: float) -> None:
    """Update ``olds`` and insert ``news`` all or none: a transaction that reads nothing (begin and commit)."""
    begun = wire.begin_transaction(BeginTransactionRequest(project_id=wire.project, database_id=wire.database), timeout)
    try:
        commit(wire, timeout, update=olds, insert=news, transaction=begun.transaction)
    except BaseException:
        rollback = RollbackRequest(project_id=wire.project, database_id=wire.database, transaction=begun.transaction)
        with contextlib.suppress(gexc.GoogleAPICallError):  # the commit's error is the one to raise
            wire.rollback(rollback, timeout)
        raise


# -- keys, entities and values -------------------------------------------------------------


def key_pb(project: str, database: str | None, namespace: str | None, kind: str, name: str) -> Any:
    """A Key protobuf, as ``datastore.Key(...).to_protobuf()`` builds it."""
    key = KeyPb()
    partition = key.partition_id
    partition.project_id = project
    if database:
        partition.database_id = database
    if namespace:
        partition.namespace_id = namespace
    element = key.path.add()
    element.kind = kind
    element.name = name
    return key


def entity_pb(entity: Mapping[str, Any], key: Any = None) -> Any:
    """The Entity protobuf of a client-library entity, as ``entity_to_protobuf`` builds it (meanings aside).

    ``key``: the entity's Key protobuf, when the caller built it already.
    """
    message = EntityPb()
    _fill_entity(message, entity, key)
    return message


def _fill_entity(message: Any, entity: Mapping[str, Any], key: Any = None) -> None:
    if key is not None:
        message.key.CopyFrom(key)
    elif isinstance(entity, datastore.Entity) and entity.key is not None:
        message.key.CopyFrom(entity.key.to_protobuf()._pb)
    excluded = entity.exclude_from_indexes if isinstance(entity, datastore.Entity) else ()
    properties = message.properties
    for name, value in entity.items():
        value_message = properties[name]
        fill_value(value_message, value)
        if name in excluded:
            if type(value) is list:
                for item in value_message.array_value.values:
                    item.exclude_from_indexes = True
            else:
                value_message.exclude_from_indexes = True


def fill_value(message: Any, value: Any) -> None:
    """Set a ``Value`` protobuf to a client-library value, as ``entity_to_protobuf`` sets it (indexing aside)."""
    kind = type(value)
    if kind is str:
        message.string_value = value
    elif kind is bool:
        message.boolean_value = value
    elif kind is int:
        message.integer_value = value
    elif kind is float:
        message.double_value = value
    elif value is None:
        message.null_value = 0
    elif isinstance(value, datetime):
        timestamp_into(message, value)
    elif isinstance(value, datastore.Key):
        message.key_value.CopyFrom(value.to_protobuf()._pb)
    elif isinstance(value, dict):
        message.entity_value.SetInParent()  # present even when empty
        _fill_entity(message.entity_value, value)
    elif kind is list:
        array = message.array_value
        if not value:
            array.SetInParent()
        for item in value:
            fill_value(array.values.add(), item)
    elif kind is bytes:
        message.blob_value = value
    elif isinstance(value, GeoPoint):
        message.geo_point_value.latitude = value.latitude
        message.geo_point_value.longitude = value.longitude
    else:  # what the client library would refuse too (values.encode refuses it first)
        raise ValueError("Unknown protobuf attr type", kind)


def timestamp_into(message: Any, value: datetime) -> None:
    """Set a ``Value`` protobuf to a datetime's instant (a naive one taken as UTC), as ``entity_to_protobuf`` does."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    since = value - _EPOCH  # exact: whole days, seconds and microseconds (floor division, as the library's divmod)
    timestamp = message.timestamp_value
    timestamp.seconds = since.days * 86400 + since.seconds
    timestamp.nanos = since.microseconds * 1000


def instant_into(message: Any, seconds: float) -> None:
    """Set a ``Value`` protobuf to the instant ``seconds`` after the epoch (from 1970), as
    ``timestamp_into(message, datetime.fromtimestamp(seconds, UTC))`` would: microseconds, rounded half to even."""
    if seconds < 0:  # before 1970: the exact way
        timestamp_into(message, datetime.fromtimestamp(seconds, tz=UTC))
        return
    fraction, whole = math.modf(seconds)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    timestamp = message.timestamp_value
    timestamp.seconds = int(whole)
    timestamp.nanos = micros * 1000


def properties(message: Any) -> dict[str, Any]:
    """An Entity protobuf's properties as client-library values (embedded entities as dicts, keyed ones as Entity)."""
    return {name: value_of(value) for name, value in message.properties.items()}


def value_of(message: Any) -> Any:
    """A ``Value`` protobuf as a client-library value (an unkeyed entity as a dict)."""
    which = message.WhichOneof("value_type")
    if which in NATIVE:
        return getattr(message, which)
    if which == "entity_value":
        inner = message.entity_value
        if not inner.HasField("key"):
            return properties(inner)
        entity = datastore.Entity(
            key=key_from_protobuf(inner.key),
            exclude_from_indexes=[n for n, v in inner.properties.items() if _excluded(v)],
        )
        entity.update(properties(inner))
        return entity
    if which == "array_value":
        return [value_of(item) for item in message.array_value.values]
    if which == "timestamp_value":
        return DatetimeWithNanoseconds.from_timestamp_pb(message.timestamp_value)  # type: ignore[no-untyped-call]
    if which == "key_value":
        return key_from_protobuf(message.key_value)
    if which == "geo_point_value":
        return GeoPoint(message.geo_point_value.latitude, message.geo_point_value.longitude)
    if which is None or which == "null_value":
        return None
    return getattr(message, which)  # a field added to Value later: as the protobuf holds it


def _excluded(message: Any) -> bool:
    values = message.array_value.values
    return bool(values[0].exclude_from_indexes) if values else bool(message.exclude_from_indexes)
