"""Session values <-> Datastore values.

:func:`encode` turns a session's data into the embedded entity stored in
``data``; :func:`decode` turns it back. A value Datastore cannot hold raises
:class:`~session_core.errors.SessionDataError` naming its path, before any RPC.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from google.cloud import datastore
from google.cloud.datastore.helpers import GeoPoint

from session_core.errors import SessionDataError

_SCALARS = (type(None), bool, int, float, str, bytes, datetime, datastore.Key, GeoPoint)


def encode(data: Mapping[str, Any]) -> datastore.Entity:
    """The embedded entity for a session's data; every property is unindexed."""
    encoded: datastore.Entity = _embed(data, "session")
    return encoded


def decode(value: object) -> dict[str, Any]:
    """A session's data from its stored ``data`` property (anything else: empty)."""
    return _plain(value) if isinstance(value, dict) else {}


def _embed(value: Any, path: str) -> Any:
    if isinstance(value, Mapping):
        entity = datastore.Entity(exclude_from_indexes=tuple(value))
        for name, item in value.items():
            if not isinstance(name, str):
                raise SessionDataError(f"{path}[{name!r}]", "dictionary keys must be strings")
            entity[name] = _embed(item, f"{path}[{name!r}]")
        return entity
    if isinstance(value, (list, tuple)):
        return [_embed(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if not isinstance(value, _SCALARS):
        raise SessionDataError(path, f"{type(value).__name__} cannot be stored in Datastore")
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {name: _plain(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
