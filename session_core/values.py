"""Session values <-> Datastore values: what round-trips, and what fails before any RPC.

Stored natively, in ViUR's layout (viur-core reads and writes these unchanged):
``None``, ``bool``, ``int`` (64-bit), ``float`` (NaN and infinities included),
``str``, ``bytes``, ``datetime``, a datastore ``Key`` or ``GeoPoint``, lists
of those and of dicts, and dicts with string keys (embedded entities whose
properties are all unindexed).

Tagged, for what Datastore cannot hold natively: an embedded entity with
exactly one property, named by the tag.

=================  ==================================================
``{"~tuple": [...]}``  a tuple, at any depth
``{"~list": [...]}``   a list inside a list (an array cannot hold an array)
``{"~markup": "..."}`` a ``markupsafe.Markup``
``{"~uuid": "..."}``   a ``uuid.UUID``
``{"~dict": {...}}``   a dict of yours whose only key is one of these tag names,
                       escaped so that it is never misread as a tag
=================  ==================================================

Datetimes: an aware one comes back as the same instant in UTC (Datastore
stores instants); a naive one is taken as UTC and comes back aware, as
Flask's own session serializer and the Datastore client do.

Everything else raises :class:`~session_core.errors.SessionDataError` naming
the path, before any RPC: other types (sets, objects, subclasses whose type
would be lost), dict keys that are not strings or that Datastore refuses
(empty, ``__reserved__``, over 1,500 bytes), ints beyond 64 bits, strings
with lone surrogates, nesting deeper than Datastore's 20 levels (tags count),
a value that contains itself, and an entity over Datastore's 1 MiB.
"""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from google.cloud import datastore
from google.cloud.datastore import helpers
from google.cloud.datastore.helpers import GeoPoint
from google.cloud.datastore_v1.types import entity as _entity

from session_core import _wire
from session_core.errors import SessionDataError

TUPLE, LIST, MARKUP, UUID, DICT = "~tuple", "~list", "~markup", "~uuid", "~dict"
TAGS = frozenset({TUPLE, LIST, MARKUP, UUID, DICT})
_TAG_SIZES = {tag: len(tag) + 1 for tag in TAGS}  # a tag's storage size as a property name
MAX_DEPTH = 20  # entity and array values, the stored ``data`` entity being the first
MAX_ENTITY_BYTES = 1_048_572  # Datastore's limit, in its storage-size measure
MAX_NAME_BYTES = 1500
_RESERVED = re.compile(r"__.*__", re.S)
_INT64 = (-(2**63), 2**63 - 1)
ValuePb: Any = _entity.Value.pb()  # the protobuf class under the proto-plus wrapper


def encode(data: Mapping[str, Any]) -> datastore.Entity:
    """The embedded entity stored as a session's ``data`` (every property unindexed), as the client library reads it.

    Raises SessionDataError, naming the path of the first value that cannot
    round-trip, before any RPC. It is :func:`encode_into`'s protobuf, read
    back by the client library: one encoder for both paths.
    """
    message = ValuePb()
    encode_into(message, data)
    entity: datastore.Entity = helpers.entity_from_protobuf(message.entity_value)
    return entity


def encode_into(message: Any, data: Mapping[str, Any]) -> int:
    """Fill a ``Value`` protobuf with a session's ``data`` (an unindexed embedded entity); its storage size.

    Byte for byte what the client library's ``entity_to_protobuf`` writes for
    :func:`encode`'s entity. Raises SessionDataError, naming the path of the
    first value that cannot round-trip, before any RPC.
    """
    message.exclude_from_indexes = True
    return _Encoder().entity(message.entity_value, data, "session", 1)


def decode(value: object) -> dict[str, Any]:
    """A session's data from its stored ``data`` property (anything but an entity: empty)."""
    if not isinstance(value, dict):
        return {}
    return {name: _decode(item) for name, item in value.items()}


def decode_pb(message: Any) -> dict[str, Any]:
    """A session's data from its stored ``data`` ``Value`` protobuf, as :func:`decode` reads the client's."""
    if message.WhichOneof("value_type") != "entity_value":
        return {}
    return {name: _from_pb(item) for name, item in message.entity_value.properties.items()}


def entity_size(entity: datastore.Entity) -> int:
    """Datastore's storage size of an entity (its documented measure: key, names, values, 32 bytes)."""
    return (_key_size(entity.key) if entity.key is not None else 0) + _properties_size(entity) + 32


def check_size(entity: datastore.Entity | int) -> None:
    """Raise SessionDataError if Datastore would refuse the entity (or an entity of this storage size) for its size."""
    size = entity if isinstance(entity, int) else entity_size(entity)
    if size > MAX_ENTITY_BYTES:
        raise SessionDataError(
            "session", f"stores as {size:,} bytes; Datastore's limit for an entity is {MAX_ENTITY_BYTES:,}"
        )


def value_size(value: Any) -> int:
    """Datastore's storage size of a client-library value (a property's, its name aside)."""
    return _value_size(value)


def key_pb_size(key: Any) -> int:
    """Datastore's storage size of a ``Key`` protobuf (as :func:`entity_size` counts a key)."""
    namespace = key.partition_id.namespace_id
    size = 16 + (len(namespace.encode("utf-8")) + 1 if namespace else 0)
    for element in key.path:
        name = element.name
        size += len(element.kind.encode("utf-8")) + 1 + (len(name.encode("utf-8")) + 1 if name else 8)
    return size


# -- encoding: straight to ``Value`` protobufs, the storage size measured on the way -----


class _Encoder:
    """One encoding pass; remembers the containers on the current path to refuse cycles.

    Each method fills a protobuf message the caller added and returns the
    storage size of what it wrote. Every value sits in an entity whose
    properties are all unindexed, so every value but an array is marked
    unindexed (an array's items are), as ``entity_to_protobuf`` marks them.
    """

    def __init__(self) -> None:
        self.open: set[int] = set()

    def value(self, out: Any, value: Any, path: str, level: int) -> int:
        kind = type(value)
        if kind is str:
            size = _checked_text_size(value, path)
            out.exclude_from_indexes = True
            out.string_value = value
            return size
        if kind is int:
            if not _INT64[0] <= value <= _INT64[1]:
                raise SessionDataError(path, "int out of Datastore's 64-bit range")
            out.exclude_from_indexes = True
            out.integer_value = value
            return 8
        if kind is list:
            return self.sequence(out, value, path, level)
        out.exclude_from_indexes = True
        if kind is bool:
            out.boolean_value = value
            return 1
        if kind is float:
            out.double_value = value
            return 8
        if value is None:
            out.null_value = 0
            return 1
        if kind is dict or isinstance(value, datastore.Entity):
            return self.mapping(out, value, path, level)
        if isinstance(value, datetime):
            _check_instant(value, path)  # naive: taken as UTC, returned aware
            _wire.timestamp_into(out, value)
            return 8
        if kind is bytes:
            out.blob_value = value
            return len(value)
        if kind is tuple:
            return self.sequence(self.tagged(out, TUPLE, path, level), value, path, level + 1) + _TAG_SIZES[TUPLE]
        if kind is uuid.UUID:
            return self.value(self.tagged(out, UUID, path, level), str(value), path, level + 1) + _TAG_SIZES[UUID]
        if _is_markup(value):
            _check_text(value, path)
            return self.value(self.tagged(out, MARKUP, path, level), str(value), path, level + 1) + _TAG_SIZES[MARKUP]
        if isinstance(value, datastore.Key):
            out.key_value.CopyFrom(value.to_protobuf()._pb)
            return _key_size(value)
        if isinstance(value, GeoPoint):
            out.geo_point_value.latitude = value.latitude
            out.geo_point_value.longitude = value.longitude
            return 16
        raise SessionDataError(path, f"{kind.__name__} cannot be stored in a session (see session_core.values)")

    def mapping(self, out: Any, value: Mapping[Any, Any], path: str, level: int) -> int:
        keyed = isinstance(value, datastore.Entity) and value.key is not None
        if not keyed and len(value) == 1 and next(iter(value)) in TAGS:  # escaped: never misread as a tag
            inner = self.tagged(out, DICT, path, level)
            inner.exclude_from_indexes = True
            return self.entity(inner.entity_value, value, path, level + 1) + _TAG_SIZES[DICT]
        return self.entity(out.entity_value, value, path, level)

    def entity(self, out: Any, value: Mapping[Any, Any], path: str, level: int) -> int:
        """Fill an Entity protobuf ``out``: its key (a keyed Entity's) and its properties."""
        with self._container(value, path, level):
            out.SetInParent()  # present even when empty
            size = 0
            if isinstance(value, datastore.Entity) and value.key is not None:
                out.key.CopyFrom(value.key.to_protobuf()._pb)
                size += _key_size(value.key)
            properties = out.properties
            for name, item in value.items():
                where = f"{path}[{name!r}]"
                if type(name) is not str:
                    raise SessionDataError(where, "dictionary keys must be strings")
                size += _checked_name_size(name, where) + self.value(properties[name], item, where, level + 1)
        return size

    def sequence(self, out: Any, value: Iterable[Any], path: str, level: int) -> int:
        with self._container(value, path, level):
            array = out.array_value
            array.SetInParent()  # present even when empty
            items = array.values
            size = 0
            for index, item in enumerate(value):
                where = f"{path}[{index}]"
                if type(item) is list:  # an array cannot hold an array
                    inner = self.tagged(items.add(), LIST, where, level + 1)
                    size += self.sequence(inner, item, where, level + 2) + _TAG_SIZES[LIST]
                else:
                    size += self.value(items.add(), item, where, level + 1)
        return size

    def tagged(self, out: Any, tag: str, path: str, level: int) -> Any:
        """Make ``out`` ``{tag: inner}``, an unindexed entity at ``level``; the ``Value`` of ``inner``, to fill."""
        _check_depth(path, level)
        out.exclude_from_indexes = True
        return out.entity_value.properties[tag]

    def _container(self, value: object, path: str, level: int) -> _Open:
        _check_depth(path, level)
        if id(value) in self.open:
            raise SessionDataError(path, "the value contains itself")
        return _Open(self.open, id(value))


class _Open:
    """Marks a container as being encoded, for the duration of a ``with``."""

    def __init__(self, open_ids: set[int], ident: int) -> None:
        self.open_ids, self.ident = open_ids, ident

    def __enter__(self) -> None:
        self.open_ids.add(self.ident)

    def __exit__(self, *exc: object) -> None:
        self.open_ids.discard(self.ident)


def _check_depth(path: str, level: int) -> None:
    if level > MAX_DEPTH:
        raise SessionDataError(path, f"nested deeper than Datastore's {MAX_DEPTH} levels (tagged values count)")


def _check_instant(value: datetime, path: str) -> None:
    """Datastore holds instants from year 1 to 9999 in UTC; an offset may push one outside."""
    if value.tzinfo is not None:
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise SessionDataError(path, "datetime is outside years 1 to 9999 once in UTC") from None


def _check_text(value: str, path: str) -> None:
    _checked_text_size(value, path)


def _checked_text_size(value: str, path: str) -> int:
    """The storage size of a string; SessionDataError if it is not valid Unicode."""
    try:
        return len(value.encode("utf-8")) + 1
    except UnicodeEncodeError:
        raise SessionDataError(path, "string is not valid Unicode (a lone surrogate)") from None


def _checked_name_size(name: str, path: str) -> int:
    """The storage size of a property name; SessionDataError if Datastore refuses it."""
    size = _checked_text_size(name, path)
    if size == 1:
        raise SessionDataError(path, "Datastore refuses an empty name")
    if name[:2] == "__" and _RESERVED.fullmatch(name):
        raise SessionDataError(path, "Datastore reserves names of the form __name__")
    if size > MAX_NAME_BYTES + 1:
        raise SessionDataError(path, f"Datastore refuses names over {MAX_NAME_BYTES} bytes")
    return size


def _is_markup(value: object) -> bool:
    markupsafe = sys.modules.get("markupsafe")
    return markupsafe is not None and type(value) is markupsafe.Markup


# -- decoding ----------------------------------------------------------------------


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and (value.key if isinstance(value, datastore.Entity) else None) is None:
        [(name, inner)] = value.items()
        if name in TAGS:
            return _untag(name, inner)
    if isinstance(value, datastore.Entity) and value.key is not None:
        keyed = datastore.Entity(key=value.key, exclude_from_indexes=tuple(value.exclude_from_indexes))
        keyed.update({name: _decode(item) for name, item in value.items()})
        return keyed
    return {name: _decode(item) for name, item in value.items()}


def _from_pb(message: Any) -> Any:
    """:func:`_decode` of a ``Value`` protobuf: natives and unkeyed entities here, the rest in the client's form."""
    which = message.WhichOneof("value_type")
    if which in _wire.NATIVE:
        return getattr(message, which)
    if which == "array_value":
        return [_from_pb(item) for item in message.array_value.values]
    if which == "entity_value" and not message.entity_value.HasField("key"):
        properties = message.entity_value.properties
        if len(properties) != 1 or next(iter(properties)) not in TAGS:
            return {name: _from_pb(item) for name, item in properties.items()}
    return _decode(_wire.value_of(message))  # a tag, a keyed entity, a timestamp, a key, a point, null


def _untag(tag: str, inner: Any) -> Any:
    if tag == TUPLE and isinstance(inner, list):
        return tuple(_decode(item) for item in inner)
    if tag == LIST and isinstance(inner, list):
        return [_decode(item) for item in inner]
    if tag == UUID and isinstance(inner, str):
        return uuid.UUID(inner)
    if tag == MARKUP and isinstance(inner, str):
        try:
            from markupsafe import Markup
        except ImportError:  # a process without markupsafe (Flask) reads it as the plain string
            return inner
        return Markup(inner)  # noqa: S704 - it was Markup when the app stored it; the store is server-side
    if tag == DICT and isinstance(inner, dict):
        return {name: _decode(item) for name, item in inner.items()}
    return {tag: _decode(inner)}  # not one of ours after all


# -- storage size (https://cloud.google.com/datastore/docs/concepts/storage-size) -----


def _text_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass")) + 1


def _key_size(key: datastore.Key) -> int:
    size = 16 + (_text_size(key.namespace) if key.namespace else 0)
    for element in key.path:
        size += _text_size(element["kind"])
        size += _text_size(element["name"]) if "name" in element else 8
    return size


def _properties_size(entity: Mapping[str, Any]) -> int:
    return sum(_text_size(name) + _value_size(value) for name, value in entity.items())


def _value_size(value: Any) -> int:
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, (int, float, datetime)):
        return 8
    if isinstance(value, str):
        return _text_size(value)
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, list):
        return sum(_value_size(item) for item in value)
    if isinstance(value, datastore.Entity):
        return (_key_size(value.key) if value.key is not None else 0) + _properties_size(value)
    if isinstance(value, datastore.Key):
        return _key_size(value)
    if isinstance(value, GeoPoint):
        return 16
    raise TypeError(f"no storage size for {type(value).__name__}")
