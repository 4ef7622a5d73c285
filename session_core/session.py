"""The Session: dict semantics, one change flag, lifetimes, login and logout.

This is the API of ViUR's ``core.session.Session`` (``load``, ``save``,
``markChanged``, ``reset``, the mapping methods), backed by
:class:`~session_core.store.SessionStore`. The rules it follows are the pure
functions of :mod:`session_core.rules`; the framework adapters map their own
session contract onto it (Flask's ``modified`` is ViUR's ``changed``).

A session is loaded from the request's cookie, either at once (:meth:`load`)
or on first use (:meth:`defer_load`), and written by :meth:`commit` (what the
adapters call) or :meth:`save` (ViUR's: commit and send the cookie).

Concurrency contract: two requests holding the same session write last-wins
(as ViUR and Flask-Session do). A request never re-creates a session that was
deleted while it held it: its changes are dropped and a warning is logged. The
browser's cookie is left alone (a parallel login may just have replaced it
with a new one), unless this request itself issued the session that is gone.
"""

from __future__ import annotations

import enum
import functools
import hmac
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any, ClassVar

import structlog
from google.cloud import datastore

from session_core import _observers, rules
from session_core.config import Settings
from session_core.contract import Store
from session_core.cookies import RequestContext, clear_cookie_header, set_cookie_header
from session_core.epochs import Epochs, current
from session_core.errors import MisuseError, StoreError
from session_core.rules import (
    GUEST_USER,
    absolute_end_of,
    ends_at,
    hash_key,
    is_expired,
    is_valid_key,
    needs_refresh,
    storage_name,
    valid_lifetime,
)
from session_core.store import DeleteObserver, SessionRecord, SessionStore

INSERT_ATTEMPTS = 3  # inserts of a new session before giving up on finding a free name
MAX_DUPLICATE_COOKIES = 4  # cookies of our name looked up in one request, at most
log = structlog.get_logger("session_core.session")


class Saved(enum.Enum):
    """What :meth:`Session.commit` did, which decides what the browser's cookie needs."""

    NOTHING = "nothing"  # no write was needed: the cookie stays as it is
    WRITTEN = "written"  # stored under ``cookie_key``: send that cookie
    GONE = "gone"  # the session this request issued was deleted meanwhile: changes dropped, clear its cookie
    DROPPED = "dropped"  # deleted meanwhile (killed, rotated by a parallel login): changes dropped, cookie left alone
    DELETED = "deleted"  # an emptied guest session was deleted (``drop_empty``): clear the cookie


class Session(MutableMapping[str, Any]):
    """Store sessions inside the Datastore.

    Construct one per request with the client and settings, then ``load(req)``
    at the start and ``save(req)`` at the end. ``store`` replaces the Datastore
    store (:class:`~session_core.store.SessionStore` over ``client``, the
    default) with another that keeps :class:`~session_core.contract.Store`,
    such as :class:`session_core.testing.MemoryStore`; ``client`` may then be
    None. The class attributes below are
    ViUR's; an instance takes them from its :class:`Settings`. ``cookie_name``
    and ``lifetime`` override the settings' (adapters pass their framework's:
    with ``lifetime`` every session this object loads gets that lifetime).
    Misuse (a login without a user key, a lifetime out of range) raises
    ``misuse_error``, a :class:`~session_core.errors.MisuseError`: every
    adapter answers it with 400, never 500.
    """

    kindName: str = "viur-session"  # noqa: N815 - ViUR's name
    same_site: str | None = "lax"
    use_session_cookie: bool = True
    cookie_name: str = ""
    GUEST_USER: ClassVar[str] = GUEST_USER
    # What misuse raises: a MisuseError; an adapter's session raises its framework's 400 too (Flask's does).
    misuse_error: ClassVar[type[MisuseError]] = MisuseError

    def __init__(
        self,
        client: datastore.Client | None,
        settings: Settings,
        *,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
        cookie_name: str | None = None,
        lifetime: timedelta | None = None,
    ) -> None:
        self.settings = settings
        self.store: Store = store_for(client, settings, store)
        self.clock = clock
        self.kindName = settings.kind
        self.same_site = settings.same_site
        self.use_session_cookie = settings.use_session_cookie
        self.cookie_name = cookie_name or settings.cookie_name
        self.default_lifetime = lifetime or settings.life_time
        if not valid_lifetime(self.default_lifetime.total_seconds()):
            raise self.misuse_error("a session lifetime must be positive and at most ten years")
        self._lifetime_is_fixed = lifetime is not None
        self.accessed = False
        self._obsolete: list[str] = []
        self._pending: RequestContext | None = None
        self._unavailable: StoreError | None = None  # a deferred load failed: the session is unknown
        self._issued: str | None = None  # the key this request inserted and sent (not the browser's own)
        self._counters: tuple[int, int] | None = None  # the epochs' counters this request loaded under
        self._start_fresh()

    def _start_fresh(self) -> None:
        self._data: dict[str, Any] = {}
        self._cookie_key: str | None = None  # the secret the browser holds (or will)
        self._stored_name: str | None = None  # entity name it was loaded from / written to
        self._user: str = GUEST_USER
        self._security_key: str = ""  # drawn on first use (:meth:`_own_security_key`): a load brings the stored one
        self.lastseen: float | None = None  # the real time it was last written
        self.lifetime: timedelta = self.default_lifetime
        self.absolute_end: float | None = None  # set on its first write (creation) and at every login
        self.changed = False  # the one change flag: the data (or the user) changed
        self._write_due = False  # a stored session must be rewritten though unchanged

    # -- observers (ViUR's registration) -------------------------------------

    @staticmethod
    def on_delete(func: DeleteObserver) -> DeleteObserver:
        """Decorator, for code ported from ViUR: observe sessions that cleanup or kill delete.

        It runs only in the process that deletes: the Cloud Functions and the
        command line, which pass :func:`~session_core._observers.registered_delete_observer` to the
        cleanup and kill they run. A web app registering it sees nothing; it
        learns of deletions through lifecycle events instead. Library callers
        pass an ``observer`` argument to cleanup and kill directly.
        """
        return _observers.on_delete(func)

    @staticmethod
    def remove_on_delete(func: DeleteObserver) -> None:
        """Unregister an observer added with :meth:`on_delete`."""
        _observers.remove_on_delete(func)

    # -- identity ------------------------------------------------------------

    @property
    def cookie_key(self) -> str | None:
        """The cookie value (a credential: never log it). None for a new session until it is saved."""
        self._ensure_loaded()
        return self._cookie_key

    @property
    def session_id(self) -> str | None:
        """Opaque id of the session (its hashed name); safe to show and log.

        Known once the session was loaded, or as soon as ``login``, ``logout``
        or ``reset`` picked its new key (it is written on save); None for a
        new session until it is saved.
        """
        key = self.cookie_key
        return hash_key(key) if key else None

    @property
    def user(self) -> str:
        """The logged-in user key, or ``"__guest__"``."""
        self._ensure_loaded()
        return self._user

    @property
    def static_security_key(self) -> str:
        """ViUR's per-session security key (a credential: never log it)."""
        self._ensure_loaded()
        return self._own_security_key()

    def _own_security_key(self) -> str:
        if not self._security_key:
            self._security_key = rules.new_security_key()
        return self._security_key

    @property
    def new(self) -> bool:
        """True until the session has been stored (or while it was not loaded from the store)."""
        self._ensure_loaded()
        return self._stored_name is None

    @property
    def is_empty(self) -> bool:
        """A guest session with no data: adapters never store one (their frameworks do not)."""
        self._ensure_loaded()
        return not self._data and self._user == GUEST_USER

    def validate_security_key(self, value: object) -> bool:
        """Constant-time check of the per-session static security key."""
        key = self.static_security_key
        if not isinstance(value, str) or not key:
            return False
        return hmac.compare_digest(value.encode("utf-8"), key.encode("utf-8"))

    # -- load / save ---------------------------------------------------------

    def load(self, req: RequestContext) -> bool:
        """Initialise from the request's cookie now; True if a stored session was found.

        No cookie, or one not of the exact format we issue: a fresh session,
        no RPC. A valid cookie: one lookup RPC. An unknown or expired session
        gives a fresh one that gets a new server-chosen key when saved. When
        the request carries several cookies of our name (one planted by a
        sibling subdomain, say), they are looked up together and the first
        that loads a live session wins.
        """
        self._pending = None
        self._obsolete = []
        self._issued = None
        self._counters = None
        self._start_fresh()
        cookies = request_keys(req, self.cookie_name)
        if not cookies:
            return False
        records, epochs = self.store.lookup_with_epochs(cookies)
        self._counters = current(epochs)
        now = self.clock()
        live = [cookie for cookie in cookies if cookie in records and not self._ended(records[cookie], epochs, now)]
        if not live:
            self._obsolete = [record.key_name for record in records.values()]  # removed if a new session is saved
            return False
        cookie = live[0]  # of several cookies of our name (a sibling subdomain may plant one), the live one
        record = records[cookie]
        self._cookie_key = cookie
        self._stored_name = record.key_name
        self._data = dict(record.data)
        self._user = record.user
        self.lastseen = record.seen
        self.lifetime = self.settings.life_time if record.lifetime is None else timedelta(seconds=record.lifetime)
        self.absolute_end = record.absolute_end
        if self.settings.absolute_life_time is None:
            self.absolute_end = None  # off: a stored absolute end is dropped on the next write
        elif self.absolute_end is None:
            self.absolute_end = absolute_end_of(now, self.settings)  # stored before it was on: first load + setting
        if self.absolute_end != record.absolute_end:
            self._write_due = True
        if record.epoch is not None and (record.epoch, record.guest_epoch) != self._counters:
            self._write_due = True  # a kept session saved under the counter before the kill: store the current one
        if self._lifetime_is_fixed and self.lifetime != self.default_lifetime:
            self.lifetime = self.default_lifetime  # the adapter's framework decides every session's lifetime
            self._write_due = True
        if record.static_security_key:
            self._security_key = record.static_security_key
        else:
            self._write_due = True
        if needs_refresh(record.seen, now, self.lifetime.total_seconds()):
            self._write_due = True
        return True

    def _ended(self, record: SessionRecord, epochs: Epochs, now: float) -> bool:
        """Past its idle lifetime or its absolute end, or ended by a kill of everyone (or of every guest)."""
        if self.settings.absolute_life_time is None:
            record = replace(record, absolute_end=None)  # turned off: stored absolute ends no longer count
        return is_expired(record.expires(self.settings.life_time), now) or record.ended_by(epochs)

    def defer_load(self, req: RequestContext) -> None:
        """Load from the request's cookie on first use instead of now.

        A Datastore error (StoreError, past ``SESSION_REQUEST_TIMEOUT``) then
        rises where the session is first used (in the view), where an adapter
        can answer 503; every later use raises it again, so a session that
        could not be loaded never acts as a fresh one.
        """
        self._start_fresh()
        self._obsolete = []
        self._issued = None
        self._counters = None
        self._pending = req

    def _ensure_loaded(self) -> None:
        if self._unavailable is not None:
            raise self._unavailable  # never act as a fresh session: that would log the user out
        if self._pending is not None:
            req, self._pending = self._pending, None
            try:
                self.load(req)
            except StoreError as exc:
                self._unavailable = exc
                raise

    @property
    def loaded(self) -> bool:
        """False while a deferred load has not happened (nothing has used the session)."""
        return self._pending is None

    def commit(self, *, drop_empty: bool = False) -> Saved:
        """Write the session if it must be: at most one commit RPC (a move: one transaction).

        A new session is written only if it changed: inserted under its key. A
        stored one is written when it changed, or its lifetime, or when its
        refresh is due: with an ``update``, never an upsert, so a session that
        was deleted meanwhile is not re-created: its changes are dropped and a
        warning is logged (``DROPPED``: the browser's cookie is left alone, for
        a parallel login may have replaced it; ``GONE`` when the session was
        one this object inserted, whose cookie the response carries). A ViUR
        plain-key session moves to its hashed name in one transaction. With
        ``drop_empty`` an emptied guest session is deleted instead
        (``DELETED``), as Flask, Starlette and Django drop theirs.
        """
        if self._pending is not None or self._unavailable is not None:
            return Saved.NOTHING  # never used, or never loaded: nothing to write, nothing to overwrite
        if drop_empty and self.is_empty:
            return self._drop() if self.changed else Saved.NOTHING
        now = self.clock()
        if self._stored_name is None:
            if not self.changed:
                return Saved.NOTHING
            self._insert(now)
            return Saved.WRITTEN
        if not (self.changed or self._write_due):
            return Saved.NOTHING
        assert self._cookie_key is not None
        record_at = functools.partial(self._record, now=now)
        name = rewrite_stored(self.store, record_at, self._cookie_key, self._stored_name, self.settings)
        if name is None:
            issued = self._issued == self._cookie_key
            self._gone()
            return Saved.GONE if issued else Saved.DROPPED
        self._stored_name = name
        self._written(now)
        return Saved.WRITTEN

    def save(self, req: RequestContext) -> None:
        """ViUR's save: :meth:`commit`, then send the cookie it needs (``Set-Cookie`` through ``req``).

        Does nothing when the session has not changed (and no refresh is due).
        """
        saved = self.commit()
        if saved is Saved.WRITTEN:
            assert self._cookie_key is not None
            max_age = None if self.settings.use_session_cookie else self.cookie_lifetime
            req.add_header("Set-Cookie", set_cookie_header(self.settings, self._cookie_key, max_age=max_age))
        elif saved in (Saved.GONE, Saved.DELETED):
            req.add_header("Set-Cookie", clear_cookie_header(self.settings))

    def _record(self, name: str, now: float) -> SessionRecord:
        return SessionRecord(
            key_name=name,
            data=self._data,
            user=self._user,
            static_security_key=self._own_security_key(),
            seen=now,
            lifetime=self.lifetime.total_seconds(),
            epoch=None if self._counters is None else self._counters[0],
            guest_epoch=None if self._counters is None else self._counters[1],
            absolute_end=self.absolute_end,
        )

    def _insert(self, now: float) -> None:
        if self.absolute_end is None:
            self.absolute_end = absolute_end_of(now, self.settings)  # created (or logged in) now
        record_at = functools.partial(self._record, now=now)
        placed = insert_new(self.store, record_at, self.settings, key=self._cookie_key, delete=self._obsolete)
        if placed is None:
            raise no_free_key()
        self._obsolete = []
        self._cookie_key, self._stored_name = placed
        self._issued = self._cookie_key
        self._written(now)

    def _written(self, now: float) -> None:
        self.lastseen = now
        self._write_due = False  # ``changed`` stays: it tells what happened in this request (as Flask's does)

    def _drop(self) -> Saved:
        names = [*self._obsolete, *([self._stored_name] if self._stored_name else [])]
        self.store.delete(names)
        self._obsolete = []
        self._start_fresh()
        return Saved.DELETED

    def _gone(self) -> None:
        log.warning(
            "session_gone_on_save",
            kind=self.settings.kind,
            dropped_fields=len(self._data),
            user_is_guest=self._user == GUEST_USER,
        )
        self._obsolete = []
        self._start_fresh()

    # -- lifetime ------------------------------------------------------------

    @property
    def expires(self) -> float | None:
        """When the stored session dies (epoch seconds) if no request comes first; None until saved.

        The earlier of its idle expiry and its absolute end (``SESSION_ABSOLUTE_LIFE_TIME``).
        """
        self._ensure_loaded()
        return (
            None if self.lastseen is None else ends_at(self.lastseen + self.lifetime.total_seconds(), self.absolute_end)
        )

    @property
    def cookie_lifetime(self) -> timedelta:
        """A persistent cookie's ``Max-Age``: the idle lifetime, never past the absolute end (at least 1 s)."""
        self._ensure_loaded()
        if self.absolute_end is None:
            return self.lifetime
        return max(timedelta(seconds=1), min(self.lifetime, timedelta(seconds=self.absolute_end - self.clock())))

    def set_expiry(self, lifetime: float | timedelta | None) -> None:
        """Give this session its own idle lifetime: seconds or a timedelta; None for the default.

        Any positive lifetime up to ten years (one second included, as Flask
        allows); anything else raises MisuseError. A stored session is
        rewritten on save only if the lifetime really changed; a new one is
        written only if its data changed. ``login``, ``logout`` and ``reset``
        start a new session with the default lifetime: call this after them.
        A session whose adapter fixes every lifetime (Flask's, to
        ``PERMANENT_SESSION_LIFETIME``) raises MisuseError: it cannot keep one.
        """
        if self._lifetime_is_fixed:
            raise self.misuse_error(
                "this framework gives every session one lifetime (Flask: PERMANENT_SESSION_LIFETIME, "
                "with session.permanent): set_expiry cannot change it"
            )
        if lifetime is None:
            wanted = self.default_lifetime
        elif isinstance(lifetime, timedelta):
            wanted = lifetime
        elif isinstance(lifetime, (int, float)) and not isinstance(lifetime, bool):
            wanted = timedelta(seconds=lifetime)
        else:
            raise self.misuse_error("set_expiry takes seconds, a timedelta, or None")
        if not valid_lifetime(wanted.total_seconds()):
            raise self.misuse_error("a session lifetime must be positive and at most ten years")
        self._ensure_loaded()
        if wanted != self.lifetime:
            self.lifetime = wanted
            self._write_due = True

    # -- life-cycle ----------------------------------------------------------

    def markChanged(self) -> None:  # noqa: N802 - ViUR's name
        """Force the next :meth:`save` to write."""
        self._ensure_loaded()
        self.changed = True

    def reset(self) -> None:
        """Start over: a new random key (and ``session_id``) at once, empty data; the old entity goes on save."""
        self._ensure_loaded()
        if self._stored_name is not None:
            self._obsolete.append(self._stored_name)
        absolute_end = self.absolute_end
        self._start_fresh()
        self.absolute_end = absolute_end  # a key rotation keeps it; a login sets it anew
        self._cookie_key = rules.new_key()
        self.changed = True

    def _reset_keeping(self, fields: Iterable[str], user: str) -> None:
        self._ensure_loaded()
        kept = {name: self._data[name] for name in dict.fromkeys(fields) if name in self._data}
        self.reset()
        self._data.update(kept)
        self._user = user

    def login(self, user_key: str, *, keep: Iterable[str] = ()) -> None:
        """Full reset for a login: a new key, keeping ``persistent_fields_on_login`` and ``keep``.

        ``user_key`` must be a user key that kill-by-user can name: a non-empty
        printable string of at most 1,500 bytes, not ``"__guest__"``. Anything
        else (None, 0, False, a number, ``"a\\nb"``) raises MisuseError before
        any RPC, so a missing key can never become a user that "kill" matches.
        """
        if not rules.valid_login(user_key):
            raise self.misuse_error("login needs a user key: a non-empty printable string of at most 1500 bytes")
        self._reset_keeping([*self.settings.persistent_fields_on_login, *keep], user_key)
        self.absolute_end = None  # set anew (login time + SESSION_ABSOLUTE_LIFE_TIME) when it is written

    def logout(self, *, keep: Iterable[str] = ()) -> None:
        """Full reset for a logout: a new key, keeping ``persistent_fields_on_logout`` and ``keep``."""
        self._reset_keeping([*self.settings.persistent_fields_on_logout, *keep], GUEST_USER)

    # -- mapping -------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        self._ensure_loaded()
        self.accessed = True
        return self._data

    def _changed(self, result: Any) -> Any:
        """Mark the session changed once a mutation succeeded (as Flask's CallbackDict does)."""
        self.changed = True
        return result

    def __getitem__(self, key: str) -> Any:
        return self._read()[key]

    def __setitem__(self, key: str, item: Any) -> None:
        self._read()[key] = item
        self.changed = True

    def __delitem__(self, key: str) -> None:
        del self._read()[key]
        self.changed = True

    def __contains__(self, key: object) -> bool:
        return key in self._read()

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())

    def __ior__(self, other: Mapping[str, Any]) -> Session:
        """Merge a dict into the session."""
        self.update(other)
        return self

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        self._read().update(other, **kwargs)
        self.changed = True

    def setdefault(self, key: str, default: Any = None) -> Any:
        """Marks the session changed: the returned value may be mutated in place."""
        return self._changed(self._read().setdefault(key, default))

    def pop(self, key: str, *default: Any) -> Any:
        return self._changed(self._read().pop(key, *default))

    def popitem(self) -> tuple[str, Any]:
        return self._changed(self._read().popitem())  # type: ignore[no-any-return]

    def clear(self) -> None:
        self._read().clear()
        self.changed = True

    def peek(self, key: str, default: Any = None) -> Any:
        """A value, without counting as an access (adapters use it to read their own flags)."""
        self._ensure_loaded()
        return self._data.get(key, default)

    def __repr__(self) -> str:
        if self._pending is not None:
            return "<Session not loaded yet>"
        return f"<Session user={self._user!r} fields={len(self._data)} changed={self.changed}>"


def insert_new(
    store: Store,
    record_at: Callable[[str], SessionRecord],
    settings: Settings,
    *,
    key: str | None = None,
    delete: Sequence[str] = (),
    attempts: int = INSERT_ATTEMPTS,
    fresh: Callable[[], str] | None = None,
) -> tuple[str, str] | None:
    """Store a new session: the cookie key and the entity name it went in under, or None if every name was taken.

    One insert (``record_at(name)``, deleting ``delete`` with it, all or
    none) under the :func:`~session_core.rules.storage_name` of ``key``, or
    of a ``fresh()`` key (default :func:`~session_core.rules.new_key`). A
    taken name (about 2^-250 likely for a fresh key) is tried again under
    another fresh key, ``attempts`` inserts in all. Never an upsert: a taken
    name is never overwritten.
    """
    for _ in range(attempts):
        key = key or (fresh or rules.new_key)()
        name = storage_name(key, settings)
        if store.insert(record_at(name), delete=list(delete)):
            return key, name
        key = None  # taken: another one
    return None


def no_free_key() -> StoreError:
    """What an insert that found every name it tried taken raises (:func:`insert_new` returned None)."""
    return StoreError("insert", RuntimeError("no free session key after several attempts"))


def rewrite_stored(
    store: Store,
    record_at: Callable[[str], SessionRecord],
    cookie_key: str,
    stored_name: str | None,
    settings: Settings,
) -> str | None:
    """Write a stored session again, never re-creating it: the name it is stored under now, or None if it is gone.

    Writes ``record_at(name)`` under :func:`~session_core.rules.save_target`:
    an update in place (one commit), or a move from ``stored_name`` (a ViUR
    plain-named session under hashed storage: one transaction). Where it is
    stored is not known (``stored_name`` None: never loaded): an update of its
    storage name, and if nothing is there, a move from its plain name.
    """
    target = rules.save_target(cookie_key, stored_name, settings)
    record = record_at(target)
    if stored_name is not None and stored_name != target:
        written = store.move(record, stored_name)
    else:
        written = store.update(record)
        if not written and stored_name is None and target != cookie_key:
            written = store.move(record, cookie_key)  # it may be ViUR plain-named
    return target if written else None


def store_for(client: datastore.Client | None, settings: Settings, store: Store | None) -> Store:
    """``store``, or else the Datastore store over ``client``; MisuseError when neither is given."""
    if store is not None:
        return store
    if client is None:
        raise MisuseError("sessions need a Datastore client (client=...) or a store (store=...)")
    return SessionStore(client, settings)


def request_keys(req: RequestContext, name: str) -> list[str]:
    """The session keys a request offers: its cookies of ``name`` of our exact format, no repeats, in the order sent.

    Every value counts where the context can tell several (``get_cookies``):
    a sibling subdomain may plant a cookie of our name before the real one. At
    most :data:`MAX_DUPLICATE_COOKIES`. Empty means a fresh session, no RPC.
    """
    every = getattr(req, "get_cookies", None)
    if every is not None:
        values = list(every(name))
    else:
        one = req.get_cookie(name)
        values = [] if one is None else [one]
    return [value for value in dict.fromkeys(values) if is_valid_key(value)][:MAX_DUPLICATE_COOKIES]
