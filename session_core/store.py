"""Datastore mapping: session entities <-> :class:`SessionRecord`.

The schema is ViUR's: kind ``viur-session``; ``data`` (embedded entity, not
indexed; see :mod:`session_core.values`), ``static_security_key`` (string),
``lastseen`` (float epoch seconds, indexed), ``user`` (string, indexed). We
add, unindexed: ``expires`` (timestamp: the session's own expiry, for a TTL
policy), ``seen`` (float: the real time of the last write) and ``lifetime``
(float seconds: the session's own idle lifetime). ``lastseen`` is
``expires`` minus the global life time (see :mod:`session_core.rules`).

Write shards (``SESSION_WRITE_SHARDS`` = N): with N = 1 (the default) the
layout above, byte for byte, which viur-core's own cleanup query reads. With
N > 1 ``lastseen`` is stored unindexed, and ``shard_lastseen`` (indexed
string ``"<shard>:<lastseen>"``, :func:`~session_core.rules.shard_lastseen`)
carries it instead, its shard derived from the session id: every write "now"
lands at the end of one of N index ranges instead of one.

Key names: with ``hashed`` storage an entity is named by the SHA-256 hex of
the cookie value, so an export does not hand out live sessions; with
``plain`` storage by the cookie value itself, as ViUR does. Reads try both
names in one lookup, so either layout loads (``SESSION_PLAIN_KEYS=off``, once
every plain name is rehashed: the hashed name alone).

The request path (:meth:`SessionStore.lookup_all`, ``insert``, ``update``,
``move``, ``delete``) sends raw protobuf messages on the client's own channel
(:mod:`session_core._wire`): the same RPCs, without the client library's
proto-plus marshalling. Queries and maintenance use the client library.

Writes never upsert: a loaded session is written back with an ``update``
mutation, which fails when the entity is gone, and a new one with ``insert``.
That is what stops a request from resurrecting a session that was killed or
cleared while it held it. Every Google API exception is translated here
(with the plumbing of :mod:`session_core._datastore`, which maintenance shares).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import datastore
from google.cloud.datastore import helpers
from google.cloud.datastore.query import PropertyFilter

from session_core import _wire, values
from session_core._datastore import next_cursor, settings_key, translated, within
from session_core._schema import Stored, unindexed
from session_core.config import Settings
from session_core.epochs import EVERYONE as EPOCH_EVERYONE
from session_core.epochs import KIND as EPOCH_KIND
from session_core.epochs import NAMES as EPOCH_NAMES
from session_core.epochs import RECORD as EPOCH_RECORD
from session_core.epochs import Epoch, Epochs, ended
from session_core.errors import StoreError
from session_core.rules import (
    GUEST_USER,
    ends_at,
    expires_at,
    hash_key,
    session_id_of,
    shard_lastseen,
    stored_lastseen,
    write_shard,
)


@dataclass(frozen=True)
class SessionRecord:
    """One stored session, as the store reads and writes it.

    ``seen`` is the real time of the request that last wrote it; ``lifetime``
    its own idle lifetime in seconds, None for "the global life time" (how a
    ViUR-layout entity is read).
    """

    key_name: str
    data: Mapping[str, Any]
    user: str
    static_security_key: str
    seen: float
    lifetime: float | None = None
    epoch: int | None = None  # the counter of everyone's epoch it was loaded under (None: not known)
    guest_epoch: int | None = None  # the counter of the guests' epoch it was loaded under
    absolute_end: float | None = None  # when it ends whatever its use (SESSION_ABSOLUTE_LIFE_TIME); None: never

    @property
    def session_id(self) -> str:
        """Opaque, non-secret id: the hashed name (hashes a plain ViUR name)."""
        return session_id_of(self.key_name)

    def idle_expires(self, global_life_time: timedelta) -> float:
        """When it dies if no request comes first, as epoch seconds (its absolute end aside)."""
        lifetime = global_life_time.total_seconds() if self.lifetime is None else self.lifetime
        return expires_at(self.seen, lifetime)

    def expires(self, global_life_time: timedelta) -> float:
        """When it dies, as epoch seconds: the earlier of its idle expiry and its absolute end."""
        return ends_at(self.idle_expires(global_life_time), self.absolute_end)

    def ended_by(self, epochs: Epochs) -> bool:
        """Whether a kill of everyone (or, for a guest, of every guest) raised after it was written ended it."""
        return ended(
            epochs,
            user=self.user,
            everyone=self.epoch,
            guests=self.guest_epoch,
            seen=self.seen,
            session_id=self.session_id,
        )


T = TypeVar("T")
SHARD_PROPERTY = "shard_lastseen"
"""The indexed ``"<shard>:<lastseen>"`` of a session written with N > 1 write shards (absent with N = 1)."""
SESSION_PROPERTIES: tuple[Stored, ...] = (
    Stored("data", "embedded entity", False, "the session's values (see Values in `data`)"),
    Stored("static_security_key", "string", True, "ViUR's per-session security key"),
    Stored("user", "string", True, "the user key, or `__guest__`"),
    Stored(
        "lastseen",
        "float (epoch seconds)",
        True,
        "`expires` minus `SESSION_LIFE_TIME`: what ViUR's readers and the cleanup's one query compare",
        sharded=False,
    ),
    Stored(
        SHARD_PROPERTY,
        "string",
        True,
        '`"<shard>:<lastseen>"`: the write shard and `lastseen` in microseconds, fixed width, in string order',
        present="with N > 1 write shards",
    ),
    Stored("expires", "timestamp", False, "when the session dies: its idle expiry or absolute end (for a TTL policy)"),
    Stored("seen", "float (epoch seconds)", False, "the real time of the request that last wrote it"),
    Stored("lifetime", "float (seconds)", False, "the session's own idle lifetime"),
    Stored("epoch", "integer", False, "the counter of everyone's epoch it was loaded under", present="when set"),
    Stored("guest_epoch", "integer", False, "the counter of the guests' epoch it was loaded under", present="when set"),
    Stored(
        "absolute_end",
        "float (epoch seconds)",
        False,
        "when it ends whatever its use (`SESSION_ABSOLUTE_LIFE_TIME`)",
        present="when set",
    ),
)
"""Every property :func:`session_pb` writes (tests compare it with what the store writes on the emulator)."""
_EPOCH_UNINDEXED = unindexed(EPOCH_RECORD.properties)
_NUMBER_TYPES = (float, int)  # exactly: what a stored number reads as (a bool is not one)
_OPTIONAL = tuple(p.name for p in SESSION_PROPERTIES if p.present == "when set")  # stored (unindexed) only when set
# What :func:`record_of` reads besides ``data``.
_READ_FIRST = ("lastseen", "seen", "lifetime", "user", "static_security_key", *_OPTIONAL)
_NUMBERS = ("lastseen", "expires", "seen", "lifetime")  # 8 bytes each: floats (ints) and a timestamp
# Datastore's storage size of an entity, beyond its key, its strings and its data: names, numbers, 32 bytes.
_FIXED_SIZE = 32 + sum(len(name) + 1 for name in ("data", "static_security_key", "user", *_NUMBERS)) + 8 * len(_NUMBERS)
_PAGE = 100  # sessions per query page of :meth:`SessionStore.sessions_of`
DeleteObserver = Callable[[SessionRecord], None]
"""Told of each session that cleanup or kill deleted, after the commit that deleted it."""


def _number(value: object) -> float | None:
    return float(value) if type(value) in _NUMBER_TYPES else None  # type: ignore[arg-type]  # bool is not a number here


def session_entity(key: datastore.Key, record: SessionRecord, settings: Settings) -> datastore.Entity:
    """The entity stored for a record under ``key``; SessionDataError (before any RPC) if Datastore would refuse it.

    It is :func:`session_pb`'s protobuf as the client library reads it: one encoder for both paths.
    """
    entity: datastore.Entity = helpers.entity_from_protobuf(session_pb(key.to_protobuf()._pb, record, settings))
    return entity


def session_pb(key: Any, record: SessionRecord, settings: Settings) -> Any:
    """The Entity protobuf stored for a record under ``key`` (a Key protobuf); SessionDataError before any RPC.

    Values go straight to ``Value`` protobufs (:func:`session_core.values.encode_into`),
    their storage size measured on the way, for Datastore's 1 MiB limit. ``lastseen``
    encodes the earlier of the idle expiry and the absolute end; ``lifetime`` is the
    idle lifetime, never shortened by the absolute end. With N > 1 write shards,
    ``lastseen`` is unindexed and the indexed ``shard_lastseen`` carries it.
    """
    expires, idle = record.expires(settings.life_time), record.idle_expires(settings.life_time)
    message = _wire.EntityPb()
    message.key.CopyFrom(key)
    properties = message.properties
    size = values.key_pb_size(key) + _FIXED_SIZE
    for name, text in (("static_security_key", record.static_security_key), ("user", record.user)):  # indexed
        properties[name].string_value = text
        size += len(text.encode("utf-8")) + 1
    lastseen = stored_lastseen(expires, settings.life_time)
    _wire.fill_value(properties["lastseen"], lastseen)  # indexed with one write shard
    if settings.write_shards > 1:
        properties["lastseen"].exclude_from_indexes = True
        sharded = shard_lastseen(write_shard(record.key_name, settings.write_shards), lastseen)
        properties[SHARD_PROPERTY].string_value = sharded
        size += len(SHARD_PROPERTY) + 1 + len(sharded) + 1
    for name, number in (("seen", float(record.seen)), ("lifetime", idle - record.seen)):
        out = properties[name]
        out.exclude_from_indexes = True
        _wire.fill_value(out, number)
    for name in _OPTIONAL:
        value = getattr(record, name)
        if value is not None:
            out = properties[name]
            out.exclude_from_indexes = True
            _wire.fill_value(out, value)
            size += len(name) + 1 + 8
    out = properties["expires"]
    out.exclude_from_indexes = True
    _wire.instant_into(out, expires)
    size += values.encode_into(properties["data"], record.data)  # last: upb fills a map faster in this order
    values.check_size(size)
    return message


def in_layout(entity: datastore.Entity, shards: int) -> bool:
    """Whether a stored session entity has the index layout of ``shards`` write shards (see :func:`relayout`)."""
    lastseen = _number(entity.get("lastseen"))
    if shards == 1 or lastseen is None:
        return SHARD_PROPERTY not in entity and "lastseen" not in entity.exclude_from_indexes
    expected = shard_lastseen(write_shard(str(entity.key.name), shards), lastseen)
    return entity.get(SHARD_PROPERTY) == expected and "lastseen" in entity.exclude_from_indexes


def relayout(entity: datastore.Entity, shards: int) -> datastore.Entity:
    """The same session, property for property, in the index layout of ``shards`` write shards.

    Only ``shard_lastseen`` and whether ``lastseen`` is indexed change; an
    entity without a numeric ``lastseen`` (not ours, not ViUR's) keeps the
    one-range layout, as the cleanup's ``lastseen`` query would find it.
    """
    lastseen = _number(entity.get("lastseen"))
    sharded = shards > 1 and lastseen is not None
    excluded = set(entity.exclude_from_indexes) - {"lastseen", SHARD_PROPERTY}
    new = datastore.Entity(
        entity.key, exclude_from_indexes=tuple(sorted(excluded | ({"lastseen"} if sharded else set())))
    )
    new.update({name: value for name, value in entity.items() if name != SHARD_PROPERTY})
    if sharded:
        assert lastseen is not None
        new[SHARD_PROPERTY] = shard_lastseen(write_shard(str(entity.key.name), shards), lastseen)
    return new


def session_record(name: str, entity: Mapping[str, Any], data: Mapping[str, Any] | None = None) -> SessionRecord:
    """The record stored under ``name`` with these properties (client-library values), ours or ViUR's.

    Missing fields get safe defaults (see :meth:`SessionStore.from_entity`). ``data``: the
    session's data, when the caller decoded it already (:func:`record_of`).
    """
    lastseen = _number(entity.get("lastseen")) or 0.0
    seen, lifetime = _number(entity.get("seen")), _number(entity.get("lifetime"))
    if seen is None or lifetime is None:
        seen, expires = lastseen, entity.get("expires")
        lifetime = expires.timestamp() - lastseen if isinstance(expires, datetime) else None
    return SessionRecord(
        key_name=name,
        data=values.decode(entity.get("data")) if data is None else data,
        user=str(entity.get("user") or GUEST_USER),
        static_security_key=str(entity.get("static_security_key") or ""),
        seen=seen,
        lifetime=lifetime,
        epoch=_counter(entity.get("epoch")),
        guest_epoch=_counter(entity.get("guest_epoch")),
        absolute_end=_number(entity.get("absolute_end")),
    )


def _counter(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def record_of(name: str, message: Any) -> SessionRecord:
    """:func:`session_record` of an Entity protobuf: its data decoded straight from the ``Value`` protobuf."""
    properties = message.properties
    fields = {field: _wire.value_of(properties[field]) for field in _READ_FIRST if field in properties}
    if (_number(fields.get("seen")) is None or _number(fields.get("lifetime")) is None) and "expires" in properties:
        fields["expires"] = _wire.value_of(properties["expires"])  # read only by an older layout
    return session_record(name, fields, values.decode_pb(properties["data"]) if "data" in properties else {})


class SessionStore:
    """Reads and writes session entities with the client it is given.

    It keeps the store contract (:class:`session_core.contract.Store`). RPC
    costs: :meth:`lookup` one lookup; :meth:`insert`, :meth:`update` and
    :meth:`delete` one commit each; :meth:`move` one transaction (begin and
    commit) and the delete's commit; :meth:`sessions_of` one query per 100
    sessions. The first five send raw protobuf messages on the client's own
    channel (:mod:`session_core._wire`); :meth:`sessions_of` uses the client
    library.
    """

    def __init__(self, client: datastore.Client, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    def key(self, name: str) -> datastore.Key:
        return settings_key(self.client, self.settings, self.settings.kind, name)

    def to_entity(self, record: SessionRecord) -> datastore.Entity:
        """The entity for a record; SessionDataError (before any RPC) if Datastore would refuse it."""
        return session_entity(self.key(record.key_name), record, self.settings)

    @staticmethod
    def from_entity(entity: datastore.Entity) -> SessionRecord:
        """Read our entities and ViUR's alike; missing fields get safe defaults.

        ViUR's layout (no ``seen``) is read as seen at ``lastseen`` with the
        global life time; one written by session_core 0.1/0.2 (``expires`` but
        no ``seen``) keeps the life time it was written with.
        """
        return session_record(str(entity.key.name), entity)

    def _key_pb(self, name: str, *, kind: str | None = None) -> Any:
        client, namespace = self.client, self.settings.namespace
        kind = kind or self.settings.kind
        return _wire.key_pb(client.project, client.database, namespace or client.namespace, kind, name)

    def _entity_pb(self, record: SessionRecord) -> Any:
        """The Entity protobuf for a record; SessionDataError (before any RPC) if Datastore would refuse it."""
        return session_pb(self._key_pb(record.key_name), record, self.settings)

    def _within(self, operation: str, call: Callable[[_wire.Wire, float], T]) -> T:
        wire = _wire.wire_of(self.client)
        return within(self.settings.request_timeout.total_seconds(), operation, lambda rpc: call(wire, rpc["timeout"]))

    def lookup(self, cookie_key: str) -> SessionRecord | None:
        """Find a session by cookie value under its hashed or plain name: one RPC (within the deadline)."""
        return self.lookup_all([cookie_key]).get(cookie_key)

    def lookup_all(self, cookie_keys: Sequence[str]) -> dict[str, SessionRecord]:
        """The stored sessions of several cookie values, each under its hashed or plain name: one RPC.

        With ``plain_keys`` off, under the hashed name alone: one key a cookie.
        """
        return self._lookup(cookie_keys, with_epochs=False)[0]

    def lookup_with_epochs(self, cookie_keys: Sequence[str]) -> tuple[dict[str, SessionRecord], Epochs]:
        """:meth:`lookup_all` and the two epochs (:mod:`session_core.epochs`) in the same one lookup RPC."""
        return self._lookup(cookie_keys, with_epochs=True)

    def _lookup(self, cookie_keys: Sequence[str], *, with_epochs: bool) -> tuple[dict[str, SessionRecord], Epochs]:
        plain, kind = self.settings.plain_keys, self.settings.kind
        names = {cookie: (hash_key(cookie), cookie) if plain else (hash_key(cookie),) for cookie in cookie_keys}
        keys = [self._key_pb(name) for pair in names.values() for name in pair]
        if with_epochs:
            keys += [self._key_pb(name, kind=EPOCH_KIND) for name in EPOCH_NAMES]
        found = self._within("lookup", lambda wire, timeout: _wire.lookup(wire, keys, timeout))
        by_key = {(message.key.path[-1].kind, message.key.path[-1].name): message for message in found}
        records: dict[str, SessionRecord] = {}
        for cookie, pair in names.items():
            name = next((name for name in pair if (kind, name) in by_key), None)
            if name is not None:
                records[cookie] = record_of(name, by_key[kind, name])
        epochs = {
            name: Epoch.from_properties(_wire.properties(by_key[EPOCH_KIND, name]))
            for name in EPOCH_NAMES
            if (EPOCH_KIND, name) in by_key
        }
        return records, Epochs.found(epochs)

    def epoch_key(self, name: str) -> datastore.Key:
        return settings_key(self.client, self.settings, EPOCH_KIND, name)

    def epochs(self) -> Epochs:
        """Both epochs: one lookup RPC (within the request deadline)."""
        keys = [self.epoch_key(name) for name in EPOCH_NAMES]
        found = within(
            self.settings.request_timeout.total_seconds(), "lookup", lambda rpc: self.client.get_multi(keys, **rpc)
        )
        return Epochs.found({str(entity.key.name): Epoch.from_properties(entity) for entity in found})

    def raise_epoch(self, name: str, *, at: float, run_id: str, except_session: str | None = None) -> Epoch:
        """Raise epoch ``name`` for run ``run_id``, and rewrite ``except_session`` to its new counter: one transaction.

        The transaction looks up the epoch and the kept session (by its hashed
        name), then commits both. A run that raised it already (a redelivered
        message) finds its id in the epoch and raises nothing. Retried within
        ``SESSION_REQUEST_TIMEOUT`` when it contends with another raise.
        """
        keys = [self.epoch_key(name), *([self.key(except_session)] if except_session else [])]

        def attempt(rpc: dict[str, Any]) -> Epoch:
            with self.client.transaction() as transaction:
                found = {entity.key.kind: entity for entity in self.client.get_multi(keys, transaction=transaction)}
                epoch = Epoch.from_properties(found.get(EPOCH_KIND, {}))
                if run_id in epoch.runs:
                    return epoch
                epoch = epoch.raised(at, except_session, run_id)
                entity = datastore.Entity(keys[0], exclude_from_indexes=_EPOCH_UNINDEXED)
                entity.update(epoch.to_properties())
                transaction.put(entity)
                kept = found.get(self.settings.kind)
                if kept is not None:
                    record = self.from_entity(kept)
                    if name == EPOCH_EVERYONE:
                        record = replace(record, epoch=epoch.counter)
                    else:
                        record = replace(record, guest_epoch=epoch.counter)
                    transaction.put(self.to_entity(record))
            return epoch

        return within(self.settings.request_timeout.total_seconds(), "epoch", attempt)

    def insert(self, record: SessionRecord, *, delete: Sequence[str] = ()) -> bool:
        """Create a session (and drop ``delete``) in one commit; False if the name is taken."""
        entity = self._entity_pb(record)
        gone = [self._key_pb(name) for name in delete]
        try:
            self._within("insert", lambda wire, timeout: _wire.commit(wire, timeout, insert=[entity], delete=gone))
        except StoreError as exc:
            if isinstance(exc.cause, gexc.AlreadyExists):
                return False
            raise
        return True

    def update(self, record: SessionRecord) -> bool:
        """Overwrite an existing session in one commit; False if it is gone."""
        entity = self._entity_pb(record)
        try:
            self._within("update", lambda wire, timeout: _wire.commit(wire, timeout, update=[entity]))
        except StoreError as exc:
            if isinstance(exc.cause, gexc.NotFound):
                return False
            raise
        return True

    def move(self, record: SessionRecord, old_name: str, *, old: SessionRecord | None = None) -> bool:
        """Re-home a session from ``old_name`` to ``record.key_name`` (a ViUR plain name to its hash).

        First one transaction that updates the old entity and inserts the new
        one, all or none (a non-transactional commit may apply only some of
        its mutations): it fails if the old one is gone (killed, or moved by a
        concurrent request) or the new one exists (moved already). Then the
        old name is deleted. When that first commit fails, the change is
        written under the new name with the update rule, so a concurrent move
        is not a logout and a killed session is not resurrected: False only
        when neither name exists. The transaction reads nothing, so
        concurrent requests do not wait on each other's locks. Three RPCs
        (begin, commit, and the delete's commit).
        """
        new = self._entity_pb(record)
        before = self._entity_pb(replace(old or record, key_name=old_name))
        try:
            self._within("move", lambda wire, timeout: _wire.rehome(wire, [before], [new], timeout))
        except StoreError as exc:
            if not isinstance(exc.cause, (gexc.NotFound, gexc.AlreadyExists)):
                raise
            return self.update(record)  # moved already (or killed: then False)
        self.delete([old_name])
        return True

    def delete(self, names: Sequence[str]) -> None:
        """Delete sessions by entity name in one commit (absent names are fine), within the deadline."""
        if names:
            keys = [self._key_pb(name) for name in names]
            self._within("delete", lambda wire, timeout: _wire.commit(wire, timeout, delete=keys))

    def sessions_of(self, user: str | None) -> list[SessionRecord]:
        """Every stored session of ``user`` ("__guest__": every guest; None: everyone), expired ones too.

        Full entities, one query RPC per page of 100.
        """
        records: list[SessionRecord] = []
        cursor = None
        while True:
            query = self.client.query(kind=self.settings.kind, namespace=self.settings.namespace)
            if user is not None:
                query.add_filter(filter=PropertyFilter("user", "=", user))
            iterator = query.fetch(limit=_PAGE, start_cursor=cursor)
            with translated("query"):
                entities = list(iterator)
            records += [self.from_entity(entity) for entity in entities]
            cursor = next_cursor(iterator)
            if len(entities) < _PAGE or cursor is None:
                return records
