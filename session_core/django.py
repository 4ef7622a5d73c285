"""Django session engine: ``SESSION_ENGINE = "session_core.django"``.

:class:`SessionStore` is a ``django.contrib.sessions.backends.base.SessionBase``
over the same Datastore entities as every other adapter, so the cleanup and
kill-by-user functions clean and kill Django sessions too. ``request.session``
keeps Django's documented contract (load, exists, create, save, delete,
cycle_key, flush, the expiry methods and their async ``a*`` twins,
clear_expired), with these choices of ours:

- Keys are ours: 42 ``[A-Za-z0-9]`` characters from :mod:`secrets`, stored
  under their SHA-256 (``SESSION_KEY_STORAGE``). A cookie of any other shape
  (Django's own 32-character keys included) is no session: no RPC.
- ``save(must_create=True)`` is a Datastore insert (``CreateError`` if the name
  is taken); every other save is an update (``UpdateError`` if the session
  is gone), never an upsert, so a killed or cleared session is never
  resurrected: Django's middleware answers that request ``SessionInterrupted``.
- Values are stored natively (:mod:`session_core.values`), not through
  ``SESSION_SERIALIZER``; what Datastore cannot hold raises SessionDataError
  at save, before any RPC.
- Each save stores the session's own lifetime: ``get_expiry_age()`` at that
  moment (``SESSION_COOKIE_AGE``, or what ``set_expiry`` gave), as Django's
  database backend stores ``expire_date``. An expired session loads empty.
- ``django.contrib.auth``'s ``_auth_user_id`` is written to the indexed
  ``user``, so ``kill_sessions(str(user.pk), ...)`` ends that user's
  sessions everywhere.
- ``clear_expired()`` (``manage.py clearsessions``) runs our cleanup.

Configuration lives in Django's settings, which is where a Django project
reads its environment (this module never does): ``SESSION_CORE_SETTINGS`` (a
:class:`Settings`, built there with ``Settings.from_env`` or
``Settings.from_file``, or a function of no arguments that returns one, such
as a ``lambda`` that calls ``Settings.from_env`` with ``os.environ``: it is
called once, on the first use of a session, so ``manage.py migrate`` or
``collectstatic`` need no Datastore settings) and, optionally, ``SESSION_CORE_CLIENT`` (a Datastore
client; by default one is built from the settings, once per process).
A project's tests may set ``SESSION_CORE_STORE`` instead: a store such as
:class:`session_core.testing.MemoryStore`, or a zero-argument callable that
returns one; the engine then keeps its sessions there, under the store's
settings.

With ``"session_core.django.SessionCoreConfig"`` in ``INSTALLED_APPS``,
``manage.py check --deploy`` checks the engine: ``session_core.E001`` no
usable ``SESSION_CORE_SETTINGS``; ``E002`` its function raised ConfigError;
``W001`` ``SESSION_COOKIE_SECURE`` is False (Django's default: set it True so
the cookie never travels over plain HTTP); and, when
``SESSION_CORE_FUNCTIONS_SETTINGS`` names the settings file the functions are
deployed with (``deploy.sh --settings FILE``), ``E003`` that file is not
readable settings and ``E004`` its ``SESSION_LIFE_TIME`` differs from the
app's (the cleanup would then delete sessions that are still alive).

A store that does not answer within ``SESSION_REQUEST_TIMEOUT`` raises
StoreError where the session is first used, and again at every later use in
that request: never an empty session in place of a logged-in user's.
:class:`SessionMiddleware` (Django's, plus that) answers it with 503 and
``Retry-After``, and a MisuseError (a view's misuse of the library, a session
value that no user key can name) with 400. With Django's own middleware, the
engine's own misuse is still a 400 (:class:`SessionMisuseError` is Django's
``SuspiciousOperation``), but a store that does not answer is a 500, and so
is a maintenance call's misuse.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import structlog
from asgiref.sync import sync_to_async
from django.apps import AppConfig
from django.conf import settings as django_settings
from django.contrib.sessions.backends.base import CreateError, SessionBase, UpdateError
from django.contrib.sessions.exceptions import SessionInterrupted
from django.contrib.sessions.middleware import SessionMiddleware as DjangoSessionMiddleware
from django.core import checks
from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from google.cloud import datastore

from session_core import _answers, rules
from session_core.clients import datastore_client
from session_core.config import Settings
from session_core.contract import Store
from session_core.epochs import current
from session_core.errors import ConfigError, MisuseError, StoreError
from session_core.rules import (
    GUEST_USER,
    MAX_LIFETIME,
    absolute_end_of,
    hash_key,
    is_expired,
    is_valid_key,
    storage_name,
)
from session_core.session import INSERT_ATTEMPTS, insert_new, no_free_key, rewrite_stored
from session_core.store import SessionRecord
from session_core.store import SessionStore as RecordStore

SETTINGS_NAME = "SESSION_CORE_SETTINGS"
FUNCTIONS_SETTINGS_NAME = "SESSION_CORE_FUNCTIONS_SETTINGS"  # optional: the functions' settings file, for checks
CLIENT_NAME = "SESSION_CORE_CLIENT"
STORE_NAME = "SESSION_CORE_STORE"
USER_KEY = "_auth_user_id"  # django.contrib.auth.SESSION_KEY (not imported: that loads the auth app)
log = structlog.get_logger("session_core.django")


def configured() -> tuple[Settings, datastore.Client]:
    """The settings and client the engine uses now (read from Django's settings on each call).

    Raises ImproperlyConfigured when ``SESSION_CORE_SETTINGS`` is neither a
    :class:`Settings` nor a function returning one, and the function's
    ConfigError (naming the variable) when it raises one. Without
    ``SESSION_CORE_CLIENT`` the client is built once per process for each
    distinct settings.
    """
    settings = _settings()
    client = getattr(django_settings, CLIENT_NAME, None)
    if client is None:
        client = _client_for(settings)
    elif not isinstance(client, datastore.Client):
        raise ImproperlyConfigured(f"{CLIENT_NAME} must be a google.cloud.datastore.Client or unset")
    return settings, client


def _settings() -> Settings:
    value = getattr(django_settings, SETTINGS_NAME, None)
    if callable(value):
        value = _called(value)
    if not isinstance(value, Settings):
        raise ImproperlyConfigured(
            f"{SETTINGS_NAME} must be a session_core.Settings, or a function of no arguments that returns one "
            f"(such as a lambda calling Settings.from_env with the environment), "
            f"when SESSION_ENGINE is 'session_core.django'; "
            f"got {type(value).__name__}"
        )
    return value


@functools.lru_cache(maxsize=8)
def _called(factory: Callable[[], object]) -> object:
    """What ``SESSION_CORE_SETTINGS()`` returns: called once per process (a failure is not kept: it is raised again)."""
    try:
        return factory()
    except ConfigError as exc:
        exc.add_note(f"raised by {SETTINGS_NAME}(), called on the first use of a session")
        raise


def configured_store() -> tuple[Settings, Store]:
    """The settings and store the engine uses now: ``SESSION_CORE_STORE``, else Datastore's.

    ``SESSION_CORE_STORE`` is a store (a :class:`~session_core.contract.Store`,
    such as :class:`session_core.testing.MemoryStore` in a project's tests)
    or a zero-argument callable that returns one; unset, the sessions live in
    Datastore through ``SESSION_CORE_CLIENT`` (see :func:`configured`).
    """
    chosen = getattr(django_settings, STORE_NAME, None)
    if chosen is None:
        settings, client = configured()
        return settings, RecordStore(client, settings)
    if callable(chosen) and not isinstance(chosen, Store):
        chosen = chosen()
    if not isinstance(chosen, Store):
        raise ImproperlyConfigured(
            f"{STORE_NAME} must be a session store (session_core.contract.Store), "
            f"a callable that returns one, or unset; got {type(chosen).__name__}"
        )
    return chosen.settings, chosen


@functools.lru_cache(maxsize=8)
def _client_for(settings: Settings) -> datastore.Client:
    return datastore_client(settings)


class SessionStore(SessionBase):  # type: ignore[misc]  # Django ships no annotations: SessionBase is Any here
    """``request.session``: Django's ``SessionBase`` over our Datastore entities.

    RPCs: constructing one costs none; the first use of a session whose
    cookie has our format, one lookup (none for any other cookie); ``save``,
    ``create``, ``delete`` and ``flush`` one commit each; ``cycle_key`` of a
    stored session a transaction (begin and commit) that updates the old
    entity and inserts the new, then a commit that deletes the old; a first
    save of a ViUR plain-named session under hashed storage, a transaction
    that moves it and a commit that deletes the old name
    (:meth:`session_core.store.SessionStore.move`). ``exists`` is one lookup.
    Concurrency: two requests holding the same session write last-wins, as
    with Django's database backend; a request never re-creates a session
    deleted while it held it (``UpdateError`` on save, ``SessionInterrupted``
    from ``cycle_key``).
    """

    _session_key: str | None  # Django's property: only keys that pass _validate_session_key are kept

    def __init__(self, session_key: str | None = None) -> None:
        self.settings, self.store = configured_store()
        self._stored_name: str | None = None  # the entity name it was loaded from or written to
        self._security_key: str | None = None  # ViUR's static security key, kept across saves
        self._unavailable: StoreError | None = None  # a load failed: this request never sees a fresh session
        self._clock: Callable[[], float] = getattr(django_settings, "SESSION_CORE_CLOCK", time.time)
        self._counters: tuple[int, int] | None = None  # the epochs' counters this request loaded under
        self._absolute_end: float | None = None  # SESSION_ABSOLUTE_LIFE_TIME: set at creation and at each login
        self._loaded_user = GUEST_USER
        super().__init__(session_key)

    # -- keys -----------------------------------------------------------------------

    @property
    def session_id(self) -> str | None:
        """Opaque id of the session (the SHA-256 of its key), safe to show and log; None without a key.

        What ``kill_sessions(..., except_session=...)`` and
        ``end_user_session`` take: "sign out everywhere else".
        """
        key = self.session_key
        return hash_key(key) if key else None

    def _validate_session_key(self, key: object) -> bool:
        """Only our exact key format is a session key; anything else becomes None (no RPC)."""
        return is_valid_key(key)

    def _get_new_session_key(self) -> str:
        """A fresh key (no RPC: ``create`` inserts it, and a taken name is a CreateError)."""
        return rules.new_key()

    async def _aget_new_session_key(self) -> str:
        return rules.new_key()

    # -- the backend contract ------------------------------------------------------

    def exists(self, session_key: str | None) -> bool:
        """True when an entity is stored under this key (expired or not, as Django's database backend)."""
        return is_valid_key(session_key) and bool(self.store.lookup_all([str(session_key)]))

    def load(self) -> dict[str, Any]:
        """The stored data: one lookup. Unknown or expired: ``{}`` and the key is dropped (never reused).

        StoreError (past ``SESSION_REQUEST_TIMEOUT``) propagates, and is
        raised again by every later load of this object.
        """
        if self._unavailable is not None:
            raise self._unavailable
        key = self.session_key
        if key is None:
            return {}
        try:
            records, epochs = self.store.lookup_with_epochs([key])
        except StoreError as exc:
            self._unavailable = exc
            raise
        record, now = records.get(key), self._clock()
        self._counters = current(epochs)
        if self.settings.absolute_life_time is None and record is not None:
            record = replace(record, absolute_end=None)  # turned off: stored absolute ends no longer count
        if record is None or is_expired(record.expires(self.settings.life_time), now) or record.ended_by(epochs):
            self._session_key = None
            self._stored_name = None
            return {}
        self._stored_name = record.key_name
        self._security_key = record.static_security_key or None
        self._loaded_user = record.user
        self._absolute_end = record.absolute_end
        if self._absolute_end is None:
            self._absolute_end = absolute_end_of(now, self.settings)  # stored before it was on: first load + it
        return dict(record.data)

    def get_expiry_age(self, **kwargs: Any) -> int:
        """Django's expiry age, never past the absolute end (``SESSION_ABSOLUTE_LIFE_TIME``)."""
        age = int(super().get_expiry_age(**kwargs))
        end = self._absolute_end
        if end is None:
            return age
        modification = kwargs.get("modification")
        now = modification.timestamp() if modification is not None else self._clock()
        return max(0, min(age, int(end - now)))

    def get_expiry_date(self, **kwargs: Any) -> Any:
        """Django's expiry date, never past the absolute end (``SESSION_ABSOLUTE_LIFE_TIME``)."""
        date = super().get_expiry_date(**kwargs)
        end = self._absolute_end
        if end is None or date.timestamp() <= end:
            return date
        return datetime.fromtimestamp(end, tz=UTC)

    def create(self) -> None:
        """Store a new session under a new key now (its current data, or none): one insert."""
        self._create(obsolete=())

    def save(self, must_create: bool = False) -> None:
        """Insert (``must_create``: CreateError if the name is taken) or update (UpdateError if gone).

        A session without a key is created. SessionDataError or MisuseError
        (a lifetime over ten years, an ``_auth_user_id`` that is no user key)
        are raised before any RPC.
        """
        if self.session_key is None:
            self.create()
            return
        data = self._get_session(no_load=must_create)
        if must_create:
            if not self._insert(data, key=self.session_key, obsolete=(), attempts=1):
                raise CreateError  # Django's contract: the caller picks another key
        else:
            self._update(data)

    def delete(self, session_key: str | None = None) -> None:
        """Delete the session under this key (default: the current one): one commit; absent is fine."""
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        if not is_valid_key(session_key):
            return  # nothing of ours is stored under it
        self.store.delete(_names(session_key))
        if session_key == self.session_key:
            self._stored_name = None

    def cycle_key(self) -> None:
        """A new key for the same data, never a resurrection (``django.contrib.auth.login`` calls it).

        A stored session moves: one transaction updates the old entity (as it
        was) and inserts the new one, all or none, then a commit deletes the
        old name (the move :class:`~session_core.session.Session` makes). If
        the old entity is gone (killed, cleared, logged out meanwhile), nothing
        is written, the session becomes empty and ``SessionInterrupted`` is
        raised (Django answers it 400). A session never stored (or never
        loaded: ``clear()`` empties it without loading it) is created under
        a new key in one insert, which also deletes the old names.
        """
        data = self._session
        old, stored = self.session_key, self._stored_name
        if old is not None and stored is not None:
            self._move(data, stored)
        else:
            self._create(obsolete=_names(old) if old is not None else ())
        self._session_cache = data

    async def acycle_key(self) -> None:
        await sync_to_async(self.cycle_key)()

    @classmethod
    def clear_expired(cls) -> None:
        """Delete expired sessions (``manage.py clearsessions``): our cleanup, run to the end in this process.

        Deletes every session ``SESSION_CLEAR_GRACE`` past its own expiry,
        under the same lease as the scheduled function (if that is running,
        this does nothing). Idempotent. With ``SESSION_CORE_STORE`` (a store of
        the project's own) those sessions are deleted from it here, without a lease.
        """
        from session_core.maintenance.cleanup import start_clear_sessions  # loaded only here: not by web requests

        settings, store = configured_store()
        if isinstance(store, RecordStore):
            start_clear_sessions(store.client, settings)
            return
        now, grace = time.time(), settings.clear_grace.total_seconds()  # a store of the project's own: here and now
        store.delete(
            [r.key_name for r in store.sessions_of(None) if is_expired(r.expires(settings.life_time) + grace, now)]
        )

    # -- writing ---------------------------------------------------------------------

    def _create(self, *, obsolete: Iterable[str]) -> None:
        self._security_key = None  # a new key (a login's cycle_key too) gets a new security key, as in ViUR
        if not self._insert(self._get_session(no_load=True), key=None, obsolete=obsolete, attempts=INSERT_ATTEMPTS):
            raise no_free_key()
        self.modified = True

    def _move(self, data: dict[str, Any], stored: str) -> None:
        """Re-home the session stored as ``stored`` under a new key (the store's move); SessionInterrupted if gone."""
        old = self._record(stored, data)  # the old name keeps its own security key until it is deleted
        self._security_key = None  # the new key gets a new security key, as in ViUR
        self._session_key = self._get_new_session_key()
        name = storage_name(self._session_key, self.settings)
        if not self.store.move(self._record(name, data), stored, old=old):
            self._interrupted(dropped_fields=len(data))
        self._stored_name = name
        self.modified = True

    def _interrupted(self, *, dropped_fields: int) -> None:
        """The session was deleted meanwhile: forget it (the middleware then clears the cookie) and say so."""
        self._session_key = None
        self._stored_name = None
        self._security_key = None
        self._session_cache = {}
        self.modified = False
        log.warning("session_gone_on_cycle_key", kind=self.settings.kind, dropped_fields=dropped_fields)
        raise SessionInterrupted(
            "The request's session was deleted before the request completed (a logout or a kill in a "
            "concurrent request): it was not re-created."
        )

    def _insert(self, data: dict[str, Any], *, key: str | None, obsolete: Iterable[str], attempts: int) -> bool:
        """Insert under ``key`` (None: a new one), as :class:`Session` does; False if every name tried was taken."""
        placed = insert_new(
            self.store,
            functools.partial(self._record, data=data),
            self.settings,
            key=key,
            delete=list(obsolete),
            attempts=attempts,
            fresh=self._get_new_session_key,
        )
        if placed is None:
            return False
        self._session_key, self._stored_name = placed
        return True

    def _update(self, data: dict[str, Any]) -> None:
        """Write the stored session again, as :class:`Session` does (a ViUR plain name moves); UpdateError if gone."""
        key = self.session_key
        assert key is not None
        name = rewrite_stored(
            self.store, functools.partial(self._record, data=data), key, self._stored_name, self.settings
        )
        if name is None:
            self._stored_name = None
            log.warning("session_gone_on_save", kind=self.settings.kind, dropped_fields=len(data))
            raise UpdateError
        self._stored_name = name

    def _record(self, name: str, data: dict[str, Any]) -> SessionRecord:
        """What is stored: the data, the user from ``_auth_user_id``, and the lifetime Django gives it now."""
        now = datetime.fromtimestamp(self._clock(), tz=UTC)
        # The idle lifetime, as Django gives it: never shortened by the absolute end.
        lifetime = SessionBase.get_expiry_age(self, modification=now, expiry=data.get("_session_expiry"))
        if lifetime > MAX_LIFETIME.total_seconds():
            raise SessionMisuseError("a session lifetime must be at most ten years")
        if self._security_key is None:
            self._security_key = rules.new_security_key()
        user = _user_of(data)
        if self._absolute_end is None or (user != GUEST_USER and user != self._loaded_user):
            self._absolute_end = absolute_end_of(now.timestamp(), self.settings)  # created, or a login
        self._loaded_user = user
        return SessionRecord(
            key_name=name,
            data=data,
            user=user,
            static_security_key=self._security_key,
            seen=now.timestamp(),
            lifetime=float(lifetime),
            epoch=None if self._counters is None else self._counters[0],
            guest_epoch=None if self._counters is None else self._counters[1],
            absolute_end=self._absolute_end,
        )


class SessionMisuseError(MisuseError, SuspiciousOperation):  # type: ignore[misc]  # Django ships no annotations
    """The engine's MisuseError; also Django's ``SuspiciousOperation``, so any middleware answers it 400."""


def _names(session_key: str) -> list[str]:
    """Both names a session of this key may be stored under (hashed, and ViUR's plain)."""
    return [hash_key(session_key), session_key]


def _user_of(data: dict[str, Any]) -> str:
    """The indexed ``user``: django.contrib.auth's user id as a string, or the guest marker."""
    user_id = data.get(USER_KEY)
    if user_id is None:
        return GUEST_USER
    user = str(user_id)
    if not rules.valid_login(user):
        raise SessionMisuseError(f"{USER_KEY} must be a user key kill-by-user can name (a printable string)")
    return user


class SessionMiddleware(DjangoSessionMiddleware):  # type: ignore[misc]  # Django ships no annotations
    """Django's ``SessionMiddleware``, answering 503 with ``Retry-After`` when the store does not answer.

    Put it in ``MIDDLEWARE`` in place of
    ``django.contrib.sessions.middleware.SessionMiddleware`` (it is a
    subclass, so Django's checks accept it). A StoreError raised by the view
    (the session's first use, ``request.user`` included) or by the save
    becomes that 503; the session is neither saved nor replaced, and the
    browser keeps its cookie. A MisuseError raised by the view or the save
    becomes a 400 with its reason, never a 500.
    """

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, StoreError):
            return _unavailable(request, exception)
        if isinstance(exception, MisuseError):
            return _rendered(_answers.misused(exception))
        return None

    def process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        try:
            result: HttpResponseBase = super().process_response(request, response)
        except StoreError as exc:
            return _unavailable(request, exc)
        except MisuseError as exc:
            return _rendered(_answers.misused(exc))
        return result


def _unavailable(request: HttpRequest, exc: StoreError) -> HttpResponse:
    """The 503, its ``Retry-After`` from the settings of the request's session (``SESSION_CORE_STORE``'s too)."""
    session = getattr(request, "session", None)
    settings = session.settings if isinstance(session, SessionStore) else configured_store()[0]
    return _rendered(_answers.unavailable(settings, exc))


def _rendered(answer: _answers.Answer) -> HttpResponse:
    """One of our answers as Django's ``HttpResponse``."""
    response = HttpResponse(answer.body, status=answer.status, content_type=_answers.CONTENT_TYPE)
    for name, value in answer.headers:
        response[name] = value
    return response


# -- manage.py check --deploy ---------------------------------------------------------------


class SessionCoreConfig(AppConfig):  # type: ignore[misc]  # Django ships no annotations
    """``INSTALLED_APPS += ["session_core.django.SessionCoreConfig"]``: the engine's checks for ``check --deploy``.

    No models, no migrations: it only registers the checks.
    """

    name = "session_core"
    label = "session_core"
    verbose_name = "session_core (Datastore sessions)"

    def ready(self) -> None:
        checks.register(check_deploy, checks.Tags.security, deploy=True)


def check_deploy(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The engine's deployment checks (only while ``SESSION_ENGINE`` is this engine); no RPC."""
    if getattr(django_settings, "SESSION_ENGINE", None) != __name__:
        return []
    try:
        settings = _settings()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="session_core.E001")]
    except ConfigError as exc:
        hint = "The function builds the settings on the first use of a session: every request would fail."
        return [checks.Error(f"{SETTINGS_NAME}() raised: {exc}", hint=hint, id="session_core.E002")]
    found: list[checks.CheckMessage] = []
    if not django_settings.SESSION_COOKIE_SECURE:
        found.append(
            checks.Warning(
                "SESSION_COOKIE_SECURE is False: the session cookie also travels over plain HTTP.",
                hint="Set SESSION_COOKIE_SECURE = True in settings.py (Django's default is False).",
                id="session_core.W001",
            )
        )
    path = getattr(django_settings, FUNCTIONS_SETTINGS_NAME, None)
    if path is not None:
        found.extend(_compare_with_functions(settings, path))
    return found


def _compare_with_functions(settings: Settings, path: Any) -> list[checks.CheckMessage]:
    try:
        functions = Settings.from_file(path, {"GOOGLE_CLOUD_PROJECT": settings.project})
    except (ConfigError, TypeError) as exc:
        return [checks.Error(f"{FUNCTIONS_SETTINGS_NAME}: {exc}", id="session_core.E003")]
    if functions.life_time == settings.life_time:
        return []
    here, there = int(settings.life_time.total_seconds()), int(functions.life_time.total_seconds())
    return [
        checks.Error(
            f"SESSION_LIFE_TIME is {here} s in {SETTINGS_NAME} but {there} s in the functions' settings ({path}).",
            hint="The cleanup function reads sessions' idle time with its own SESSION_LIFE_TIME: give the app and "
            "the functions one value (one settings file for both).",
            id="session_core.E004",
        )
    ]


__all__ = ["SessionCoreConfig", "SessionMiddleware", "SessionMisuseError", "SessionStore", "check_deploy", "configured"]
