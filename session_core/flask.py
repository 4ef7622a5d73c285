"""Flask integration: ``app.session_interface = DatastoreSessionInterface(client=..., settings=...)``.

``flask.session`` then behaves as Flask's own session does (its documented
contract and its own tests), stored server-side in Datastore:

- Flask's config drives the cookie, read on each save as Flask's interface
  does: ``SESSION_COOKIE_NAME``, ``_DOMAIN``, ``_PATH`` (falling back to
  ``APPLICATION_ROOT``), ``_HTTPONLY``, ``_SECURE``, ``_SAMESITE`` (a bad
  value raises ValueError), ``_PARTITIONED``, ``PERMANENT_SESSION_LIFETIME``
  and ``SESSION_REFRESH_EACH_REQUEST``. The settings keep the storage (kind,
  namespace, database, key storage).
- ``modified`` is the one change flag (ViUR's ``changed``): setting it forces
  a save. ``accessed`` gives ``Vary: Cookie``. An emptied guest session is
  deleted with its cookie.
- ``session.permanent`` sends ``Expires``/``Max-Age`` of
  ``PERMANENT_SESSION_LIFETIME``; a non-permanent session has a browser
  cookie. On the server every session lives ``PERMANENT_SESSION_LIFETIME``
  idle, as with Flask-Session.
- No ``SECRET_KEY`` is needed: nothing is signed, the store is server-side.
- Flask's defaults send the cookie without Secure: set ``SESSION_COOKIE_SECURE
  = True`` in production. On an app's first request a ``__Host-``/``__Secure-``
  cookie name without it is a ConfigError, and a cookie without Secure outside
  debug and testing logs one ``session_cookie_not_secure`` warning.
- Flask-Login works out of the box, through its signals: ``login_user`` rotates
  the session key (keeping Flask-Login's own keys), sets the session's user and
  records the login; ``logout_user`` makes it a guest; a remember-me cookie
  cannot log in a user killed since their last interactive login: that request
  goes on as an anonymous one (public pages answer, ``login_required`` ones
  answer as for anyone anonymous) and the cookie is deleted with the
  ``REMEMBER_COOKIE_*`` attributes it was set with.
- Misuse is a 400, never a 500: what ``flask.session`` raises is
  :class:`SessionMisuseError` (also werkzeug's ``BadRequest``), and any other
  MisuseError a view raises (a maintenance call's) is answered 400 with its
  reason through the app's own ``errorhandler(400)`` if it has one. An
  ``errorhandler(MisuseError)`` registered by the app wins.

The session loads on first use and is saved when Flask finishes the response;
changes made while a streamed body is generated are not saved. A store that
does not answer within ``SESSION_REQUEST_TIMEOUT`` gives a 503 with
``Retry-After``: raised where the view first uses the session, or written over
the response when the save fails; never a fresh session in place of the user's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import flask
import structlog
from flask.sessions import SessionInterface, SessionMixin
from google.cloud import datastore
from werkzeug.exceptions import BadRequest, ServiceUnavailable

from session_core import _answers, logins
from session_core.config import Settings
from session_core.contract import Store
from session_core.errors import ConfigError, MisuseError, StoreError
from session_core.session import Saved, Session, store_for
from session_core.store import SessionStore

if TYPE_CHECKING:
    from flask import Flask, Request, Response

# What Flask-Login keeps in the session; a login or logout rotation keeps them.
FLASK_LOGIN_KEYS = ("_user_id", "_fresh", "_id", "_remember", "_remember_seconds")
_SAME_SITE = {"Strict", "Lax", "None"}
log = structlog.get_logger("session_core.flask")


class SessionUnavailable(ServiceUnavailable):
    """503 with ``Retry-After``: the session store did not answer within ``SESSION_REQUEST_TIMEOUT``.

    A werkzeug HTTP exception, so Flask answers it (and an app's own
    ``errorhandler(503)`` can restyle it).
    """

    description = _answers.UNAVAILABLE


class SessionMisuseError(MisuseError, BadRequest):
    """A :class:`~session_core.errors.MisuseError` raised through ``flask.session``: Flask answers it 400.

    It is also werkzeug's ``BadRequest``, so it needs no error handler (Flask
    allows none to be added once it serves), and an app's own
    ``errorhandler(400)`` or ``errorhandler(MisuseError)`` can restyle it.
    """

    def __init__(self, reason: str) -> None:
        BadRequest.__init__(self, description=reason)
        MisuseError.__init__(self, reason)

    def __str__(self) -> str:
        return self.reason


class FlaskSession(Session, SessionMixin):
    """``flask.session``: a :class:`Session` that is also Flask's ``SessionMixin``.

    ``modified`` is the session's one change flag (ViUR's ``changed``);
    ``permanent`` is Flask's ``_permanent`` key; ``new`` is True until it is
    stored. If the store does not answer the load in time, the first use
    raises :class:`SessionUnavailable` (503); misuse (``login(None)``,
    ``logout_everywhere_else`` on a guest) raises :class:`SessionMisuseError` (400).
    Any other MisuseError a view raises (a maintenance call's) is a 400 too.
    """

    misuse_error = SessionMisuseError
    # Flask-Login's remember-me cookie of this request, checked when the session loads (set by open_session).
    _remember_cookie: str | None = None
    remember_allowed: str | None = None  # the user a remember-me login may log in (checked on load)
    remember_refused = False  # a killed user's remember-me cookie was refused: it is deleted on save

    def _ensure_loaded(self) -> None:
        try:
            super()._ensure_loaded()
            if self._remember_cookie is not None:
                cookie, self._remember_cookie = self._remember_cookie, None
                self._check_remembered(cookie)
        except StoreError as exc:
            self._unavailable = exc  # every later use raises again: never a fresh session, never a remembered user
            raise SessionUnavailable(retry_after=_answers.retry_after(self.settings)) from exc

    def _check_remembered(self, cookie: str) -> None:
        """Refuse a remember-me cookie of a user killed since their last interactive login, before Flask-Login reads it.

        Only when the session has no ``_user_id`` (Flask-Login reads the
        cookie only then): one lookup of the kill records. Refused: the
        request goes on as an anonymous one (``_remember = "clear"`` makes
        Flask-Login skip the cookie, as it does itself when session
        protection fails), and the cookie is deleted on save.
        """
        if self.peek("_user_id") is not None or not isinstance(self.store, SessionStore):
            return  # signed in already, or a store of the app's own (its tests): no login records there
        from flask_login.utils import decode_cookie  # the app uses Flask-Login: open_session saw its manager

        user_id = decode_cookie(cookie)
        if user_id is None:
            return  # not signed with this app's key: Flask-Login ignores it too
        if logins.remembered_login_allowed(self.store.client, self.settings, user_id):
            self.remember_allowed = user_id
            return
        self.remember_refused = True
        self["_remember"] = "clear"
        log.info("remembered_login_refused", reason="killed since the last interactive login")

    @property
    def modified(self) -> bool:
        """True once the session's data changed in this request; setting it forces a save."""
        self._ensure_loaded()
        return self.changed

    @modified.setter
    def modified(self, value: bool) -> None:
        self._ensure_loaded()
        self.changed = bool(value)

    @property
    def new(self) -> bool:
        return Session.new.fget(self)  # type: ignore[attr-defined,no-any-return]

    @new.setter
    def new(self, value: bool) -> None:
        raise AttributeError("new is known from the store; it cannot be set")


class WerkzeugContext:
    """:class:`~session_core.cookies.RequestContext` over a Werkzeug request."""

    def __init__(self, request: Request) -> None:
        self.request = request

    def get_cookie(self, name: str) -> str | None:
        return self.request.cookies.get(name)

    def get_cookies(self, name: str) -> list[str]:
        return self.request.cookies.getlist(name)

    def add_header(self, name: str, value: str) -> None:
        raise RuntimeError("the Flask integration sets its cookie through the response")


class DatastoreSessionInterface(SessionInterface):
    """Flask ``SessionInterface`` storing sessions in Datastore.

    ``client`` is the only Datastore client it uses; with ``store`` (a
    :class:`~session_core.contract.Store` such as
    :class:`session_core.testing.MemoryStore`) the sessions live there
    instead, and without a client Flask-Login's logins are not recorded (so a
    kill does not refuse a remember-me cookie). A bad or expired cookie
    gives a fresh session, never an error. RPCs: a request that sends a
    well-formed cookie costs one lookup; a save costs at most one commit.
    """

    def __init__(
        self,
        *,
        client: datastore.Client | None = None,
        settings: Settings,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.settings = settings
        self.clock = clock  # epoch seconds: expiry, refresh and the absolute lifetime (tests pass their own)
        self.store = store_for(client, settings, store)
        _connect_flask_login()

    def open_session(self, app: Flask, request: Request) -> FlaskSession:
        """The request's session, loaded on first use.

        On an app's first request, the cookie settings are checked: a
        ``__Host-`` or ``__Secure-`` name without ``SESSION_COOKIE_SECURE``
        (or a ``__Host-`` one with a domain or a path other than ``/``) is a
        ConfigError, on that request and every later one until fixed; a
        cookie without Secure outside debug and testing logs one warning.
        """
        self._check_cookie_settings(app)
        _answer_misuse_with_400(app)
        session = FlaskSession(
            self.client,
            self.settings,
            store=self.store,
            clock=self.clock,
            cookie_name=self.get_cookie_name(app),
            lifetime=app.permanent_session_lifetime,
        )
        session.defer_load(WerkzeugContext(request))
        session._remember_cookie = _remember_cookie(app, request)
        return session

    def _check_cookie_settings(self, app: Flask) -> None:
        state = app.extensions.setdefault("session_core", {})
        if state.get("cookie_checked"):
            return
        name, secure = self.get_cookie_name(app), self.get_cookie_secure(app)
        lowered = name.lower()  # browsers match the prefixes case-insensitively
        if lowered.startswith(("__host-", "__secure-")) and not secure:
            raise ConfigError("SESSION_COOKIE_SECURE", f"True for a cookie named {name} (browsers drop it)", "False")
        path, domain = self.get_cookie_path(app), self.get_cookie_domain(app)
        if lowered.startswith("__host-") and (path != "/" or domain is not None):
            raise ConfigError(
                "SESSION_COOKIE_PATH",
                f"'/' and no SESSION_COOKIE_DOMAIN for a cookie named {name} (browsers drop it otherwise)",
                f"{path} with domain {domain}",
            )
        if not secure and not (app.debug or app.testing):
            log.warning(
                "session_cookie_not_secure",
                name=name,
                fix="set SESSION_COOKIE_SECURE = True (HTTPS only): without it the cookie also travels over plain HTTP",
            )
        state["cookie_checked"] = True

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if not isinstance(session, FlaskSession):
            return
        if session.remember_refused:
            _clear_remember_cookie(app, session, response)
        name, domain, path = self.get_cookie_name(app), self.get_cookie_domain(app), self.get_cookie_path(app)
        secure, httponly = self.get_cookie_secure(app), self.get_cookie_httponly(app)
        partitioned, same_site = self.get_cookie_partitioned(app), self.get_cookie_samesite(app)
        if same_site is not None and same_site.title() not in _SAME_SITE:
            raise ValueError("SameSite must be 'Strict', 'Lax', or 'None'.")  # as Flask, before anything is stored
        if session.accessed:
            response.vary.add("Cookie")
        try:
            modified = session.modified  # loads it if the view did not: a due refresh keeps an active user alive
            permanent = bool(session.peek("_permanent", False))
            saved = session.commit(drop_empty=True)
        except (StoreError, SessionUnavailable) as exc:
            _unavailable(response, self.settings, exc)
            return
        attributes: dict[str, Any] = {
            "domain": domain,
            "path": path,
            "secure": secure,
            "partitioned": partitioned,
            "samesite": same_site,
            "httponly": httponly,
        }
        if saved in (Saved.GONE, Saved.DELETED):
            response.delete_cookie(name, **attributes)
            response.vary.add("Cookie")
            return
        if session.new or not (modified or (permanent and app.config["SESSION_REFRESH_EACH_REQUEST"])):
            return
        max_age = session.cookie_lifetime if permanent else None  # never past the absolute end
        response.set_cookie(name, session.cookie_key or "", max_age=_seconds(max_age), **attributes)
        response.vary.add("Cookie")


def _remember_cookie(app: Flask, request: Request) -> str | None:
    """Flask-Login's remember-me cookie in this request, if the app uses Flask-Login."""
    if getattr(app, "login_manager", None) is None:
        return None
    from flask_login.config import COOKIE_NAME

    return request.cookies.get(app.config.get("REMEMBER_COOKIE_NAME", COOKIE_NAME))


def _clear_remember_cookie(app: Flask, session: FlaskSession, response: Response) -> None:
    """Delete a refused remember-me cookie with every attribute Flask-Login sets it with.

    Flask-Login's own deletion names only the path and the domain; a browser
    (or curl's jar) can then keep a Secure or SameSite=None cookie. Its header
    is replaced by one that carries ``REMEMBER_COOKIE_SECURE``, ``_SAMESITE``,
    ``_HTTPONLY``, ``_PATH`` and ``_DOMAIN``. Flask-Login's leftovers of the
    refused login (``_fresh``, ``_id``) leave the session.
    """
    from flask_login import config as defaults

    for key in ("_fresh", "_id"):
        if session.peek("_user_id") is None and session.peek(key) is not None:
            session.pop(key)
    config = app.config
    name = config.get("REMEMBER_COOKIE_NAME", defaults.COOKIE_NAME)
    others = [value for value in response.headers.getlist("Set-Cookie") if not value.startswith(f"{name}=")]
    response.headers.remove("Set-Cookie")
    for value in others:
        response.headers.add("Set-Cookie", value)
    response.delete_cookie(
        name,
        path=config.get("REMEMBER_COOKIE_PATH", "/"),
        domain=config.get("REMEMBER_COOKIE_DOMAIN"),
        secure=config.get("REMEMBER_COOKIE_SECURE", defaults.COOKIE_SECURE),
        httponly=config.get("REMEMBER_COOKIE_HTTPONLY", defaults.COOKIE_HTTPONLY),
        samesite=config.get("REMEMBER_COOKIE_SAMESITE", defaults.COOKIE_SAMESITE),
    )


def _answer_misuse_with_400(app: Flask) -> None:
    """Make any MisuseError a view raises a 400, unless the app registered its own handler for it.

    Set on the app's first request (Flask refuses ``register_error_handler``
    once it serves, so this writes the handler table it reads).
    """
    app.error_handler_spec[None][None].setdefault(MisuseError, _misuse_answer)


def _misuse_answer(exc: MisuseError) -> Any:
    """A 400 with the reason, through the app's own ``errorhandler(400)`` if it has one."""
    answer = _answers.misused(exc)
    return flask.current_app.handle_http_exception(BadRequest(description=answer.detail))


def _seconds(value: timedelta | None) -> int | None:
    return None if value is None else int(value.total_seconds())


def _unavailable(response: Response, settings: Settings, exc: Exception) -> None:
    """Rewrite the response into the 503 (the save failed: the page must not claim it worked)."""
    answer = _answers.unavailable(settings, exc)
    response.status_code = answer.status
    response.set_data(answer.body)
    response.headers["Content-Type"] = _answers.CONTENT_TYPE
    for name, value in answer.headers:
        if name == "Vary":
            response.vary.add(value)  # with what the app's response varies on already
        else:
            response.headers[name] = value
    response.headers.pop("Location", None)


# -- Flask-Login, through its signals ------------------------------------------------

_connected = False


def _connect_flask_login() -> None:
    """Listen to Flask-Login's signals, once per process, if the app uses Flask-Login."""
    global _connected
    if _connected:
        return
    try:
        import flask_login
    except ImportError:
        return
    flask_login.user_logged_in.connect(_on_login, weak=False)
    flask_login.user_logged_out.connect(_on_logout, weak=False)
    flask_login.user_loaded_from_cookie.connect(_on_remembered, weak=False)
    _connected = True


def _ours(app: Flask) -> tuple[DatastoreSessionInterface, FlaskSession] | None:
    interface, session = app.session_interface, flask.session._get_current_object()  # type: ignore[attr-defined]
    if isinstance(interface, DatastoreSessionInterface) and isinstance(session, FlaskSession):
        return interface, session
    return None


def _rotate_into(session: FlaskSession, user: Any) -> str:
    user_id = str(user.get_id())
    session.login(user_id, keep=(*FLASK_LOGIN_KEYS, "_permanent"))
    return user_id


def _on_login(app: Flask, user: Any, **extra: Any) -> None:
    """``login_user``: Flask-Login wrote its keys; rotate the key (no fixation) and record the login."""
    if (ours := _ours(app)) is None:
        return
    interface, session = ours
    user_id = _rotate_into(session, user)
    if interface.client is not None:  # a store of its own, no Datastore: no login records
        logins.record_login(interface.client, interface.settings, user_id, time.time())


def _on_logout(app: Flask, user: Any, **extra: Any) -> None:
    """``logout_user``: back to a guest session under a new key, keeping ``_remember`` for Flask-Login."""
    if (ours := _ours(app)) is not None:
        ours[1].logout(keep=("_remember",))


def _on_remembered(app: Flask, user: Any, **extra: Any) -> None:
    """A login from Flask-Login's remember-me cookie: refused while a kill is newer than the last login."""
    if (ours := _ours(app)) is None:
        return
    interface, session = ours
    user_id = str(user.get_id())
    if (
        interface.client is None
        or session.remember_allowed == user_id
        or logins.remembered_login_allowed(interface.client, interface.settings, user_id)
    ):
        _rotate_into(session, user)
        return
    # Refused, though the check on load let it through (the session named a user the app's user_loader did not
    # find): Flask-Login ignores what this receiver returns, so this request can only end unauthorized.
    for key in ("_user_id", "_fresh", "_id"):
        session.pop(key, None)
    session["_remember"] = "clear"
    session.remember_refused = True
    log.info("remembered_login_refused", reason="killed since the last interactive login")
    flask.abort(app.login_manager.unauthorized())  # type: ignore[attr-defined]
