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
from google.cloud.datastore.helpers import GeoPoint

from session_core.errors import SessionDataError

TUPLE, LIST, MARKUP, UUID, DICT = "~tuple", "~list", "~markup", "~uuid", "~dict"
TAGS = frozenset({TUPLE, LIST, MARKUP, UUID, DICT})
MAX_DEPTH = 20  # entity and array values, the stored ``data`` entity being the first
MAX_ENTITY_BYTES = 1_048_572  # Datastore's limit, in its storage-size measure
MAX_NAME_BYTES = 1500
_RESERVED = re.compile(r"__.*__", re.S)
_INT64 = (-(2**63), 2**63 - 1)


def encode(data: Mapping[str, Any]) -> datastore.Entity:
    """The embedded entity stored as a session's ``data`` (every property unindexed).

    Raises SessionDataError, naming the path of the first value that cannot
    round-trip, before any RPC.
    """
    entity: datastore.Entity = _Encoder().entity(data, "session", 1)
    return entity


def decode(value: object) -> dict[str, Any]:
    """A session's data from its stored ``data`` property (anything but an entity: empty)."""
    if not isinstance(value, dict):
        return {}
    return {name: _decode(item) for name, item in value.items()}


def entity_size(entity: datastore.Entity) -> int:
    """Datastore's storage size of an entity (its documented measure: key, names, values, 32 bytes)."""
    return (_key_size(entity.key) if entity.key is not None else 0) + _properties_size(entity) + 32


def check_size(entity: datastore.Entity) -> None:
    """Raise SessionDataError if Datastore would refuse the entity for its size."""
    size = entity_size(entity)
    if size > MAX_ENTITY_BYTES:
        raise SessionDataError(
            "session", f"stores as {size:,} bytes; Datastore's limit for an entity is {MAX_ENTITY_BYTES:,}"
        )


# -- encoding ----------------------------------------------------------------------


class _Encoder:
    """One encoding pass; remembers the containers on the current path to refuse cycles."""

    def __init__(self) -> None:
        self.open: set[int] = set()

    def value(self, value: Any, path: str, level: int) -> Any:
        kind = type(value)
        if value is None or kind in (bool, float, bytes) or isinstance(value, (datastore.Key, GeoPoint)):
            return value
        if kind is int:
            if not _INT64[0] <= value <= _INT64[1]:
                raise SessionDataError(path, "int out of Datastore's 64-bit range")
            return value
        if kind is str:
            _check_text(value, path)
            return value
        if isinstance(value, datetime):
            _check_instant(value, path)
            return value  # naive: taken as UTC by the client, returned aware
        if kind is dict or isinstance(value, datastore.Entity):
            return self.mapping(value, path, level)
        if kind is list:
            return self.sequence(value, path, level)
        if kind is tuple:
            return self.tagged(TUPLE, self.sequence(value, path, level + 1), path, level)
        if kind is uuid.UUID:
            return self.tagged(UUID, str(value), path, level)
        if _is_markup(value):
            _check_text(value, path)
            return self.tagged(MARKUP, str(value), path, level)
        raise SessionDataError(path, f"{kind.__name__} cannot be stored in a session (see session_core.values)")

    def mapping(self, value: Mapping[Any, Any], path: str, level: int) -> datastore.Entity:
        keyed = isinstance(value, datastore.Entity) and value.key is not None
        if not keyed and len(value) == 1 and next(iter(value)) in TAGS:  # escaped: never misread as a tag
            return self.tagged(DICT, self.entity(value, path, level + 1), path, level)
        return self.entity(value, path, level)

    def entity(self, value: Mapping[Any, Any], path: str, level: int) -> datastore.Entity:
        with self._container(value, path, level):
            key = value.key if isinstance(value, datastore.Entity) else None
            entity = datastore.Entity(key=key, exclude_from_indexes=tuple(n for n in value if type(n) is str))
            for name, item in value.items():
                where = f"{path}[{name!r}]"
                if type(name) is not str:
                    raise SessionDataError(where, "dictionary keys must be strings")
                _check_name(name, where)
                entity[name] = self.value(item, where, level + 1)
        return entity

    def sequence(self, value: Iterable[Any], path: str, level: int) -> list[Any]:
        with self._container(value, path, level):
            items = []
            for index, item in enumerate(value):
                where = f"{path}[{index}]"
                if type(item) is list:  # an array cannot hold an array
                    items.append(self.tagged(LIST, self.sequence(item, where, level + 2), where, level + 1))
                else:
                    items.append(self.value(item, where, level + 1))
        return items

    def tagged(self, tag: str, inner: Any, path: str, level: int) -> datastore.Entity:
        """``{tag: inner}``: an entity at ``level`` (a container ``inner`` was built one level down)."""
        _check_depth(path, level)
        wrapper = datastore.Entity(exclude_from_indexes=(tag,))
        wrapper[tag] = inner
        return wrapper

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
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SessionDataError(path, "string is not valid Unicode (a lone surrogate)") from None


def _check_name(name: str, path: str) -> None:
    _check_text(name, path)
    if not name:
        raise SessionDataError(path, "Datastore refuses an empty name")
    if _RESERVED.fullmatch(name):
        raise SessionDataError(path, "Datastore reserves names of the form __name__")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise SessionDataError(path, f"Datastore refuses names over {MAX_NAME_BYTES} bytes")


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
