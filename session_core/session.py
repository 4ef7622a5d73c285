"""The Session: dict semantics, change tracking, expiry and refresh rules.

This is the API of ViUR's ``core.session.Session`` (``load``, ``save``,
``markChanged``, ``reset``, the mapping methods), backed by
:class:`~session_core.store.SessionStore`. The rules it follows are the pure
functions of :mod:`session_core.rules`.

Concurrency contract: two requests holding the same session write last-wins
(as ViUR and Flask-Session do). A request never re-creates a session that was
deleted while it held it: its changes are dropped, its cookie is cleared and a
warning is logged.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from datetime import timedelta
from typing import Any, ClassVar

import structlog
from google.cloud import datastore

from session_core import rules
from session_core.config import Settings
from session_core.cookies import RequestContext, clear_cookie_header, set_cookie_header
from session_core.errors import MisuseError, StoreError
from session_core.rules import (
    GUEST_USER,
    hash_key,
    is_expired,
    is_valid_key,
    needs_refresh,
    storage_name,
    valid_lifetime,
)
from session_core.store import DeleteObserver, SessionRecord, SessionStore

_INSERT_ATTEMPTS = 3
_REGISTERED: list[DeleteObserver] = []  # only Session.on_delete writes here (ViUR's API)
log = structlog.get_logger("session_core.session")


class Session(MutableMapping[str, Any]):
    """Store sessions inside the Datastore.

    Construct one per request with the client and settings, then ``load(req)``
    at the start and ``save(req)`` at the end. The class attributes below are
    ViUR's; an instance takes them from its :class:`Settings`.
    """

    kindName: str = "viur-session"  # noqa: N815 - ViUR's name
    same_site: str | None = "lax"
    use_session_cookie: bool = True
    cookie_name: str = ""
    GUEST_USER: ClassVar[str] = GUEST_USER

    def __init__(
        self,
        client: datastore.Client,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = SessionStore(client, settings)
        self.clock = clock
        self.kindName = settings.kind
        self.same_site = settings.same_site
        self.use_session_cookie = settings.use_session_cookie
        self.cookie_name = settings.cookie_name
        self._obsolete: list[str] = []
        self._start_fresh()

    def _start_fresh(self) -> None:
        self._data: dict[str, Any] = {}
        self._cookie_key: str | None = None  # the secret the browser holds
        self._stored_name: str | None = None  # entity name it was loaded from
        self.user: str = GUEST_USER
        self.static_security_key: str = rules.new_security_key()
        self.lastseen: float | None = None  # the real time it was last written
        self.lifetime: timedelta = self.settings.life_time
        self.changed = False

    # -- observers (ViUR's registration) -------------------------------------

    @staticmethod
    def on_delete(func: DeleteObserver) -> DeleteObserver:
        """Decorator, for code ported from ViUR: observe sessions that cleanup or kill delete.

        It runs only in the process that deletes: the Cloud Functions and the
        command line, which pass :func:`registered_delete_observer` to the
        cleanup and kill they run. A web app registering it sees nothing; it
        learns of deletions through lifecycle events instead. Library callers
        pass an ``observer`` argument to cleanup and kill directly.
        """
        _REGISTERED.append(func)
        return func

    @staticmethod
    def remove_on_delete(func: DeleteObserver) -> None:
        """Unregister an observer added with :meth:`on_delete`."""
        _REGISTERED.remove(func)

    # -- identity ------------------------------------------------------------

    @property
    def cookie_key(self) -> str | None:
        """The cookie value (a credential: never log it). None until first saved."""
        return self._cookie_key

    @property
    def session_id(self) -> str | None:
        """Opaque id of the stored session (its hashed name); safe to show and log."""
        return hash_key(self._cookie_key) if self._cookie_key else None

    def validate_security_key(self, value: object) -> bool:
        """Constant-time check of the per-session static security key."""
        if not isinstance(value, str) or not self.static_security_key:
            return False
        return hmac.compare_digest(value.encode("utf-8"), self.static_security_key.encode("utf-8"))

    # -- load / save ---------------------------------------------------------

    def load(self, req: RequestContext) -> bool:
        """Initialise from the request's cookie; True if a stored session was found.

        No cookie, or one not of the exact format we issue: a fresh session,
        no RPC. A valid cookie: one lookup RPC. An unknown or expired session
        gives a fresh one that gets a new server-chosen key when saved.
        """
        self._obsolete = []
        self._start_fresh()
        cookie = req.get_cookie(self.cookie_name)
        if cookie is None or not is_valid_key(cookie):
            return False
        record = self.store.lookup(cookie)
        if record is None:
            return False
        now = self.clock()
        if is_expired(record.expires(self.settings.life_time), now):
            self._obsolete = [record.key_name]  # removed if a new session is saved
            return False
        self._cookie_key = cookie
        self._stored_name = record.key_name
        self._data = dict(record.data)
        self.user = record.user
        self.lastseen = record.seen
        if record.lifetime is not None:
            self.lifetime = timedelta(seconds=record.lifetime)
        if record.static_security_key:
            self.static_security_key = record.static_security_key
        else:
            self.changed = True
        if needs_refresh(record.seen, now, self.lifetime.total_seconds()):
            self.changed = True
        return True

    def save(self, req: RequestContext) -> None:
        """Write the session if it changed: exactly one commit RPC, else none.

        A new session is inserted under a fresh key; a loaded one is updated in
        place and never upserted. If the stored session was deleted meanwhile,
        the changes are dropped, the cookie is cleared and a warning logged.
        A ViUR plain-key session is moved to its hashed name in one
        transaction (once, on its first save with ``hashed`` storage).
        """
        if not self.changed:
            return
        now = self.clock()
        if self._stored_name is None or self._cookie_key is None:
            self._insert(req, now)
            return
        target = self._stored_name
        if self.settings.key_storage == "hashed" and self._stored_name == self._cookie_key:
            target = hash_key(self._cookie_key)
        record = self._record(target, now)
        if target == self._stored_name:
            written = self.store.update(record)
        else:
            written = self.store.move(record, self._stored_name)
        if not written:
            self._gone(req)
            return
        self._stored_name = target
        self._written(req, self._cookie_key, now)

    def _record(self, name: str, now: float) -> SessionRecord:
        return SessionRecord(
            key_name=name,
            data=self._data,
            user=self.user,
            static_security_key=self.static_security_key,
            seen=now,
            lifetime=self.lifetime.total_seconds(),
        )

    def _insert(self, req: RequestContext, now: float) -> None:
        for _ in range(_INSERT_ATTEMPTS):
            key = rules.new_key()
            name = storage_name(key, self.settings)
            if self.store.insert(self._record(name, now), delete=self._obsolete):
                self._obsolete = []
                self._cookie_key, self._stored_name = key, name
                self._written(req, key, now)
                return
        raise StoreError("insert", RuntimeError("no free session key after several attempts"))

    def _written(self, req: RequestContext, key: str, now: float) -> None:
        self.lastseen = now
        self.changed = False
        max_age = None if self.settings.use_session_cookie else self.lifetime
        req.add_header("Set-Cookie", set_cookie_header(self.settings, key, max_age=max_age))

    def _gone(self, req: RequestContext) -> None:
        log.warning(
            "session_gone_on_save",
            kind=self.settings.kind,
            dropped_fields=len(self._data),
            user_is_guest=self.user == GUEST_USER,
        )
        self._obsolete = []
        self._start_fresh()
        req.add_header("Set-Cookie", clear_cookie_header(self.settings))

    # -- lifetime ------------------------------------------------------------

    @property
    def expires(self) -> float | None:
        """When the stored session dies (epoch seconds) if no request comes first; None until saved."""
        return None if self.lastseen is None else self.lastseen + self.lifetime.total_seconds()

    def set_expiry(self, lifetime: float | timedelta | None) -> None:
        """Give this session its own idle lifetime: seconds or a timedelta; None for SESSION_LIFE_TIME.

        Any positive lifetime up to ten years (one second included, as Flask
        allows); anything else raises MisuseError. The session is written on
        save only if the lifetime really changed. ``login``, ``logout`` and
        ``reset`` start a new session with the default lifetime: call this
        after them.
        """
        if lifetime is None:
            wanted = self.settings.life_time
        elif isinstance(lifetime, timedelta):
            wanted = lifetime
        elif isinstance(lifetime, (int, float)) and not isinstance(lifetime, bool):
            wanted = timedelta(seconds=lifetime)
        else:
            raise MisuseError("set_expiry takes seconds, a timedelta, or None")
        if not valid_lifetime(wanted.total_seconds()):
            raise MisuseError("a session lifetime must be positive and at most ten years")
        if wanted != self.lifetime:
            self.lifetime = wanted
            self.changed = True

    # -- life-cycle ----------------------------------------------------------

    def markChanged(self) -> None:  # noqa: N802 - ViUR's name
        """Force the next :meth:`save` to write."""
        self.changed = True

    def reset(self) -> None:
        """Start over: new random key, empty data; the old entity is deleted on save."""
        if self._stored_name is not None:
            self._obsolete.append(self._stored_name)
        self._start_fresh()
        self.changed = True

    def _reset_keeping(self, fields: Iterable[str], user: str) -> None:
        kept = {name: self._data[name] for name in fields if name in self._data}
        self.reset()
        self._data.update(kept)
        self.user = user

    def login(self, user_key: str) -> None:
        """Full reset for a login, keeping only ``persistent_fields_on_login``.

        ``user_key`` must be a user key that kill-by-user can name: a non-empty
        printable string of at most 1,500 bytes, not ``"__guest__"``. Anything
        else (None, 0, False, a number, ``"a\\nb"``) raises MisuseError before
        any RPC, so a missing key can never become a user that "kill" matches.
        """
        if not rules.valid_login(user_key):
            raise MisuseError("login needs a user key: a non-empty printable string of at most 1500 bytes")
        self._reset_keeping(self.settings.persistent_fields_on_login, user_key)

    def logout(self) -> None:
        """Full reset for a logout, keeping only ``persistent_fields_on_logout``."""
        self._reset_keeping(self.settings.persistent_fields_on_logout, GUEST_USER)

    # -- mapping -------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, item: Any) -> None:
        self._data[key] = item
        self.changed = True

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self.changed = True

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __ior__(self, other: Mapping[str, Any]) -> Session:
        """Merge a dict into the session."""
        self._data.update(other)
        self.changed = True
        return self

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        self._data.update(other, **kwargs)
        self.changed = True

    def setdefault(self, key: str, default: Any = None) -> Any:
        """Marks the session changed: the returned value may be mutated in place."""
        self.changed = True
        return self._data.setdefault(key, default)

    def pop(self, key: str, *default: Any) -> Any:
        self.changed = True
        return self._data.pop(key, *default)

    def popitem(self) -> tuple[str, Any]:
        self.changed = True
        return self._data.popitem()

    def clear(self) -> None:
        self._data.clear()
        self.changed = True

    def __repr__(self) -> str:
        return f"<Session user={self.user!r} fields={len(self._data)} changed={self.changed}>"


def registered_delete_observer() -> DeleteObserver | None:
    """One observer calling, in order, every function registered with :meth:`Session.on_delete`.

    None when nothing is registered, so cleanup reads no entity it need not.
    """
    if not _REGISTERED:
        return None
    observers = tuple(_REGISTERED)

    def notify(record: SessionRecord) -> None:
        failure: Exception | None = None
        for observer in observers:
            try:
                observer(record)
            except Exception as exc:  # the others still hear of it; the caller logs the first failure
                failure = failure or exc
        if failure is not None:
            raise failure

    return notify
