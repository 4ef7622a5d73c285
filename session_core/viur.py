"""ViUR's spellings of session_core's names, and viur-core's in-place session.

structlog keeps ``getLogger`` beside ``get_logger``; we keep ViUR's camelCase
here, beside the snake_case names the top level exports, and they are the very
same functions::

    from session_core.viur import killSessionByUser   # is session_core.kill_sessions

A viur-core 3.9 app gets our sessions with one line in its ``main.py``, after
its ``conf`` is set and before ``viur.core.setup(...)``::

    session_core.viur.install(client=datastore.Client(), environ=environ)  # environ: the process's

:func:`install` puts :class:`Session` in place of viur-core's (in every module
that imported it), our kill-by-user and ``update_session_user`` in place of
viur-core's, and takes viur-core's cleanup off its periodic tasks (our
scheduled function does it). The app's code does not change; its sessions are
stored under hashed names after their first save (``SESSION_KEY_STORAGE=plain``
while stock viur-core instances still serve the same data).

Importing this module imports no viur-core, and loads no maintenance code:
each alias loads on first use (PEP 562), as the top level's names do; only
:func:`install` and :class:`Session`'s methods import viur-core.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from google.cloud import datastore

from session_core import _answers
from session_core.config import Settings
from session_core.cookies import clear_cookie_header, parse_cookie_values, set_cookie_header
from session_core.errors import ConfigError, MisuseError, StoreError
from session_core.rules import GUEST_USER
from session_core.session import Saved
from session_core.session import Session as _CoreSession

if TYPE_CHECKING:  # what the top level's kill_sessions and akill_sessions are
    from session_core.maintenance.kill import akillSessionByUser, killSessionByUser

# ViUR's name -> the snake_case name of session_core's top level it aliases.
_ALIASES = {
    "killSessionByUser": "kill_sessions",
    "akillSessionByUser": "akill_sessions",
}


def _viur(module: str) -> Any:
    """A viur-core module (imported here, never at import time: viur-core is the optional extra)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MisuseError("session_core.viur's Session needs viur-core 3.9: pip install 'session-core[viur]'") from exc


class _ViurRequest:
    """viur-core's current request as a :class:`~session_core.cookies.RequestContext`."""

    def __init__(self, router: Any) -> None:
        self.router = router

    def get_cookies(self, name: str) -> list[str]:
        return parse_cookie_values(self.router.request.headers.get("Cookie", ""), name)

    def get_cookie(self, name: str) -> str | None:
        values = self.get_cookies(name)
        return values[0] if values else None

    def add_header(self, name: str, value: str) -> None:
        self.router.response.headerlist.append((name, value))


class Session(_CoreSession):
    """viur-core's ``Session``, as its request handling calls it, with session_core's semantics.

    viur-core builds one per request (no arguments), calls :meth:`load` before
    routing and :meth:`save` in a ``finally`` after rendering; both read
    ``current.request``. Behind ViUR's API: hashed keys at rest (plain-named
    sessions load and move to their hash on their first save), update-only
    saves (a session killed or cleared while a request holds it is not written
    back), per-session lifetimes, and the request deadline.

    ViUR's meanings are kept: :attr:`loaded` is true once a stored session was
    loaded or :meth:`reset` ran (``securitykey.create`` resets only when not
    loaded); :meth:`clear` deletes the stored session at once and unsets the
    cookie (viur-core's logout); a deferred task's request (``is_deferred``)
    writes no session; no session is written over plain HTTP off the dev
    server; the user key is the current user's of the app's user module, as
    viur-core's own ``save`` takes it. A store that does not answer makes
    :meth:`load` raise viur-core's ``ServiceUnavailable`` and :meth:`save` set
    the response to 503, both with ``Retry-After``: never a 500, never a
    silent logout.

    Usable once :func:`install` ran (it sets the client and the settings).
    """

    kindName: str = "viur-session"  # noqa: N815 - ViUR's name
    same_site: str | None = "lax"
    use_session_cookie: bool = False  # viur-core's default: a cookie with Max-Age
    cookie_name: str = ""
    GUEST_USER: ClassVar[str] = GUEST_USER
    _client: ClassVar[datastore.Client | None] = None
    _settings: ClassVar[Settings | None] = None

    def __init__(self) -> None:
        if self._settings is None:
            raise MisuseError("call session_core.viur.install(client=..., settings=...) before serving requests")
        self._viur_loaded = False
        super().__init__(self._client, self._settings)

    @property
    def loaded(self) -> bool:
        """ViUR's: a stored session was loaded, or :meth:`reset` ran in this request."""
        return self._viur_loaded

    def load(self) -> bool:  # type: ignore[override]  # viur-core's: no argument, reads current.request
        """Load the session of the current request's cookie; True if a stored one was found.

        A store that does not answer raises viur-core's ``ServiceUnavailable``
        (503, with ``Retry-After``), never a fresh session in the user's place.
        """
        router = _viur("viur.core.current").request.get()
        try:
            found = super().load(_ViurRequest(router))
        except StoreError as exc:
            self._unavailable = exc  # save() writes nothing, and nothing acts as a fresh session
            raise _service_unavailable(router, self.settings, exc) from exc
        self._viur_loaded = found
        return found

    def save(self) -> None:  # type: ignore[override]  # viur-core's: no argument, writes current.request
        """Write the session if it must be, and send its cookie; never raises for the store.

        A store that does not answer sets the response to 503 with
        ``Retry-After`` (viur-core calls this in a ``finally``, where an
        exception would be a 500); data that cannot be stored sets it to 400.
        """
        router = _viur("viur.core.current").request.get()
        if self._unavailable is not None or self._pending is not None or router.is_deferred:
            return  # never loaded; or a deferred task's request, which has no session of its own
        conf = _viur("viur.core.config").conf
        if not (router.isSSLConnection or conf.instance.is_dev_server):
            return  # viur-core issues no session over plain HTTP
        self._take_user()
        try:
            saved = self.commit()
        except StoreError as exc:
            _render(router, _answers.unavailable(self.settings, exc))
            return
        except MisuseError as exc:
            _render(router, _answers.misused(exc))
            return
        cookie_settings = _dev_cookie(self.settings) if conf.instance.is_dev_server else self.settings
        if saved is Saved.WRITTEN:
            assert self._cookie_key is not None
            max_age = None if self.use_session_cookie else self.lifetime
            header = set_cookie_header(cookie_settings, self._cookie_key, max_age=max_age)
            router.response.headerlist.append(("Set-Cookie", header))
        elif saved in (Saved.GONE, Saved.DELETED):
            router.response.headerlist.append(("Set-Cookie", clear_cookie_header(cookie_settings)))

    def _take_user(self) -> None:
        """The user key, from where viur-core's ``save`` takes it: the app's user module's current user."""
        try:
            user = str(_viur("viur.core.config").conf.main_app.vi.user.getCurrentUser()["key"])
        except Exception:  # viur-core's own rule: no user module or no user is a guest
            user = GUEST_USER
        if user != self._user:
            self._user = user
            self.changed = True

    def reset(self) -> None:
        """ViUR's: a new session (a new key at once, empty data); the old one is deleted on save."""
        super().reset()
        self._viur_loaded = True

    def clear(self) -> None:
        """ViUR's: delete the stored session now, unset the cookie, start over not loaded (viur-core's logout)."""
        self._ensure_loaded()
        names = [*self._obsolete, *([self._stored_name] if self._stored_name else [])]
        router = _viur("viur.core.current").request.get()
        if names:
            try:
                self.store.delete(names)
            except StoreError as exc:
                raise _service_unavailable(router, self.settings, exc) from exc
        self._obsolete = []
        self._issued = None
        self._start_fresh()
        self._viur_loaded = False
        if router is not None:
            router.response.unset_cookie(self.cookie_name, strict=False)

    @classmethod
    def build_flags(cls) -> str:
        """viur-core's cookie attributes (``user._get_cookie_for_app`` builds its own cookie with them)."""
        conf = _viur("viur.core.config").conf
        dev = conf.instance.is_dev_server
        flags = (
            "Path=/",
            "HttpOnly",
            f"SameSite={cls.same_site}" if cls.same_site and not dev else None,
            "Secure" if not dev else None,
            None if cls.use_session_cookie else f"Max-Age={int(conf.user.session_life_time.total_seconds())}",
        )
        return ";".join(flag for flag in flags if flag)


def _dev_cookie(settings: Settings) -> Settings:
    """viur-core's dev-server cookie: neither ``Secure`` nor ``SameSite``."""
    return dataclasses.replace(settings, cookie_secure=False, same_site=None)


def _render(router: Any, answer: _answers.Answer) -> None:
    """Make viur-core's response ours: status, text and headers (no ``Set-Cookie`` of this request's)."""
    response = router.response
    response.headerlist[:] = [(k, v) for k, v in response.headerlist if k.lower() != "set-cookie"]
    response.status = answer.status_line
    response.content_type = "text/plain"
    response.charset = "utf-8"
    response.body = answer.body
    for name, value in answer.headers:
        response.headers[name] = value


def _service_unavailable(router: Any, settings: Settings, failure: StoreError) -> Exception:
    """viur-core's 503 for a store that did not answer, with our ``Retry-After`` and ``Vary`` on the response."""
    answer = _answers.unavailable(settings, failure)
    if router is not None:
        for name, value in answer.headers:
            router.response.headers[name] = value
    error: Exception = _viur("viur.core.errors").ServiceUnavailable(answer.detail)
    return error


# -- install ----------------------------------------------------------------------------

_ORIGINAL: dict[str, Any] = {}  # viur-core's own Session, killSessionByUser and update_session_user


def viur_settings(environ: Mapping[str, str], conf: Any, viur_session: type[Any]) -> Settings:
    """Settings from ``environ``, with viur-core's cookie name, kind, lifetime and cookie kind beneath it."""
    same_site = viur_session.same_site
    defaults = {
        "GOOGLE_CLOUD_PROJECT": str(conf.instance.project_id),
        "SESSION_COOKIE_NAME": viur_session.cookie_name,
        "SESSION_KIND": viur_session.kindName,
        "SESSION_LIFE_TIME": str(int(conf.user.session_life_time.total_seconds())),
        "SESSION_USE_SESSION_COOKIE": "true" if viur_session.use_session_cookie else "false",
    }
    if same_site:
        defaults["SESSION_SAME_SITE"] = str(same_site).lower()
    return Settings.from_env({**defaults, **environ})


def _check_agreement(settings: Settings, conf: Any, viur_session: type[Any]) -> None:
    """ConfigError naming the first of our settings that disagrees with viur-core's."""
    theirs = {
        "cookie_name": (viur_session.cookie_name, "SESSION_COOKIE_NAME", "viur-core's Session.cookie_name"),
        "kind": (viur_session.kindName, "SESSION_KIND", "viur-core's Session.kindName"),
        "life_time": (conf.user.session_life_time, "SESSION_LIFE_TIME", "viur-core's conf.user.session_life_time"),
        "use_session_cookie": (
            bool(viur_session.use_session_cookie),
            "SESSION_USE_SESSION_COOKIE",
            "viur-core's Session.use_session_cookie",
        ),
    }
    for field, (value, variable, where) in theirs.items():
        ours = getattr(settings, field)
        if ours != value:
            raise ConfigError(variable, f"{value!r}, as {where} says (the app and the functions must agree)", str(ours))


def install(
    *, client: datastore.Client, settings: Settings | None = None, environ: Mapping[str, str] | None = None
) -> type[Session]:
    """Serve a viur-core 3.9 app's sessions with session_core: call once in ``main.py``, after ``conf`` is set.

    Puts :class:`Session` in place of ``viur.core.session.Session`` and of
    every module that imported it by name, our kill-by-user and
    ``update_session_user`` (viur-core's one-argument signatures) in place of
    viur-core's, and removes viur-core's ``start_clear_sessions`` from its
    periodic tasks (the scheduled cleanup function does it). ``settings``
    None: :meth:`Settings.from_env` of ``environ`` (pass ``os.environ``; this
    library reads no environment itself) over viur-core's project, cookie
    name, kind, lifetime and ``use_session_cookie``. Settings that disagree
    with those raise ConfigError naming the variable. Idempotent: a second
    call changes only the client and settings. Returns the Session class.
    """
    conf = _viur("viur.core.config").conf
    viur_session = _viur("viur.core.session")
    tasks = _viur("viur.core.tasks")
    if not _ORIGINAL:
        _ORIGINAL.update(
            Session=viur_session.Session,
            killSessionByUser=viur_session.killSessionByUser,
            update_session_user=viur_session.update_session_user,
        )
    original = _ORIGINAL["Session"]
    chosen = settings if settings is not None else viur_settings(environ or {}, conf, original)
    _check_agreement(chosen, conf, original)
    Session._client, Session._settings = client, chosen
    Session.kindName, Session.cookie_name = chosen.kind, chosen.cookie_name
    Session.same_site, Session.use_session_cookie = original.same_site, chosen.use_session_cookie
    replacements = {
        "Session": Session,
        "killSessionByUser": _kill_session_by_user,
        "update_session_user": _update_session_user,
    }
    for module in list(sys.modules.values()):
        for name, ours in replacements.items():
            if module is not None and vars(module).get(name) is _ORIGINAL[name]:  # no module __getattr__
                setattr(module, name, ours)
    tasks.removePeriodicTask(viur_session.start_clear_sessions)
    return Session


def _installed() -> tuple[datastore.Client | None, Settings]:
    if Session._settings is None:
        raise MisuseError("call session_core.viur.install(client=..., settings=...) first")
    return Session._client, Session._settings


def _kill_session_by_user(user: object = None) -> None:
    """viur-core's ``killSessionByUser(user)``: every session of ``user`` (a key or its string), None everyone."""
    from session_core.maintenance.kill import kill_sessions

    client, settings = _installed()
    kill_sessions(None if user is None else str(user), client=client, settings=settings)


def _update_session_user(user_key: object) -> None:
    """viur-core's ``update_session_user(user_key)``: the user entity cached in each of the user's sessions.

    Each session is updated in place (never re-created: one deleted meanwhile
    stays deleted), keeping its expiry.
    """
    from session_core.store import SessionStore

    client, settings = _installed()
    entity = _viur("viur.core.db").get(user_key)
    if not entity or client is None:
        return
    store = SessionStore(client, settings)
    for record in store.sessions_of(str(user_key)):
        store.update(dataclasses.replace(record, data={**record.data, "user": entity}))


def __getattr__(name: str) -> Any:
    """Load an alias on first use: the top level's snake_case function itself, not a wrapper."""
    if name in _ALIASES:
        import session_core

        value = getattr(session_core, _ALIASES[name])
        globals()[name] = value
        return value
    raise AttributeError(f"module 'session_core.viur' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_ALIASES})


__all__ = ["Session", "akillSessionByUser", "install", "killSessionByUser", "viur_settings"]
