"""ASGI middleware: Datastore sessions for Starlette, FastAPI and any ASGI app.

``SessionMiddleware(app, client=..., settings=...)`` puts an
:class:`ASGISession` in ``scope["session"]``, so Starlette's and FastAPI's
``request.session`` is ours. It keeps the contract of Starlette's own
``SessionMiddleware``:

- ``request.session`` is a real ``dict`` (``json.dumps`` and
  ``JSONResponse({"session": request.session})`` work) that tracks changes;
  Starlette 1.x's ``mark_accessed()`` is implemented, and ``modified`` and
  ``mark_modified()`` are ViUR's ``changed`` (one change flag). It is also a
  :class:`~session_core.session.Session`: ``login()``, ``logout()``,
  ``set_expiry()``, ``user``, ``session_id`` and the rest.
- The session is saved when the response starts (``http.response.start``):
  ``Set-Cookie`` is added when the browser's cookie must change, and
  ``Vary: Cookie`` whenever the session was used. ``clear()`` on a guest
  session deletes it and clears the cookie, as Starlette does. A bad or
  unknown cookie gives a fresh session, never an error; of several cookies
  of our name (a sibling subdomain may plant one), the first that loads a
  live session wins. A session deleted while the request held it (killed, or
  rotated by a parallel login) is not re-created and its cookie is left
  alone: a parallel login's new cookie survives.
- The cookie's name, Path, Domain, Secure, SameSite and browser-session or
  ``Max-Age`` come from the :class:`~session_core.config.Settings`.
- WebSocket connections get the session loaded and read-only (no response
  carries a cookie: changing it raises MisuseError). Lifespan and other
  scopes pass through.

No Datastore RPC runs on the event loop's thread: google-cloud-datastore is
synchronous, so the load (one lookup, only when the request carries a
well-formed cookie) and the save (at most one commit) run in worker threads
of this middleware's own pool of ``threads`` (anyio), apart from anyio's
default pool that the app's sync endpoints use, so a slow Datastore cannot
starve the app. A request waits at most ``SESSION_REQUEST_TIMEOUT`` for a
thread and gives Datastore that long per load and per save; past either it is
answered 503 with ``Retry-After`` (the app is not called when the load fails,
and its answer is replaced when the save fails). Changes made after the
response started (while a body streams, or in background tasks) are not saved.
A :class:`~session_core.errors.MisuseError` that the app raises before its
response starts (``logout_everywhere_else`` on a guest session,
``login(None)``) is answered 400 with its reason, never 500, and the session
is not saved.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from datetime import timedelta
from typing import Any, Protocol, TypeVar, runtime_checkable

import anyio
import anyio.to_thread
from google.cloud import datastore

from session_core import _answers
from session_core.config import Settings
from session_core.contract import Store
from session_core.cookies import clear_cookie_header, parse_cookie_values, set_cookie_header
from session_core.errors import MisuseError, StoreError
from session_core.session import Saved, Session, request_keys, store_for

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
T = TypeVar("T")

SCOPE_KEY = "session"
TRY_AGAIN_LATER = 1013  # WebSocket close code: the server cannot serve this connection now


class _OwnItems(MutableMapping[str, Any]):
    """An :class:`ASGISession`'s own dict storage, reached past its tracking methods.

    The core :class:`Session` keeps its values in ``_data``; here ``_data`` is
    this view, so the values live in the ``dict`` itself (what ``json.dumps``
    reads) and every Session method keeps working unchanged.
    """

    __slots__ = ("_owner",)

    def __init__(self, owner: ASGISession) -> None:
        self._owner = owner

    def _writable(self) -> dict[str, Any]:
        self._owner._check_writable()
        return self._owner

    def __getitem__(self, key: str) -> Any:
        return dict.__getitem__(self._owner, key)

    def __setitem__(self, key: str, value: Any) -> None:
        dict.__setitem__(self._writable(), key, value)

    def __delitem__(self, key: str) -> None:
        dict.__delitem__(self._writable(), key)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self._owner, key)

    def __iter__(self) -> Iterator[str]:
        return dict.__iter__(self._owner)

    def __len__(self) -> int:
        return dict.__len__(self._owner)

    def clear(self) -> None:
        dict.clear(self._writable())


class ASGISession(Session, dict[str, Any]):  # type: ignore[misc] # Session's mapping methods replace dict's
    """``request.session``: a :class:`Session` that is also a ``dict``, as Starlette documents it.

    The values are the dict's own items, so ``json.dumps(session)``,
    ``dict(session)`` and ``{**session}`` see them. Every mutation marks the
    session changed (``modified``, ViUR's ``changed``). It is loaded before the
    app runs and saved by the middleware; none of its methods makes an RPC.
    """

    _read_only = False

    @property  # type: ignore[override] # the core's plain dict becomes a view of this dict's own items
    def _data(self) -> MutableMapping[str, Any]:
        return _OwnItems(self)

    @_data.setter
    def _data(self, values: Mapping[str, Any]) -> None:
        self._check_writable()
        dict.clear(self)
        dict.update(self, values)

    def _check_writable(self) -> None:
        if self._read_only:
            raise MisuseError("a WebSocket's session is read-only: no response carries its cookie")

    def _freeze(self) -> None:
        """Refuse every change from now on (a WebSocket connection's session)."""
        self._read_only = True

    def _may_write(self) -> bool:
        """False when :meth:`commit` certainly makes no RPC: nothing changed and no rewrite of a stored one is due."""
        return self.changed or (self._stored_name is not None and self._write_due)

    # -- Starlette's names -------------------------------------------------------------

    def mark_accessed(self) -> None:
        """Starlette 1.x calls this on every ``request.session``: the response gets ``Vary: Cookie``."""
        self.accessed = True

    def mark_modified(self) -> None:
        """Force a save (Starlette's name for ViUR's ``markChanged``)."""
        self.markChanged()
        self.accessed = True

    @property
    def modified(self) -> bool:
        """True once the session changed in this request; setting it forces (or cancels) a save."""
        return self.changed

    @modified.setter
    def modified(self, value: bool) -> None:
        if value:
            self._check_writable()
        self.changed = bool(value)

    # -- changes a read-only session refuses before anything happens -------------------

    def markChanged(self) -> None:  # noqa: N802 - ViUR's name
        self._check_writable()
        super().markChanged()

    def reset(self) -> None:  # login and logout come through here
        self._check_writable()
        super().reset()

    def set_expiry(self, lifetime: float | timedelta | None) -> None:
        self._check_writable()
        super().set_expiry(lifetime)

    def pop(self, key: str, *default: Any) -> Any:
        """Popping a key that is not there changes nothing, so nothing is written (as with Starlette's)."""
        if default and key not in self:
            return default[0]
        return super().pop(key, *default)


@runtime_checkable
class HasScope(Protocol):
    """A Starlette ``Request`` or ``WebSocket``: anything that carries its ASGI scope."""

    @property
    def scope(self) -> Mapping[str, Any]: ...


def session_of(connection: HasScope | Mapping[str, Any]) -> ASGISession:
    """The request's :class:`ASGISession`, typed (``request.session`` is typed as a plain dict).

    Takes a Starlette/FastAPI ``Request`` or ``WebSocket``, or a scope. Counts
    as an access, as ``request.session`` does. MisuseError if the middleware
    is not installed.
    """
    scope = connection.scope if isinstance(connection, HasScope) else connection
    session = scope.get(SCOPE_KEY)
    if not isinstance(session, ASGISession):
        raise MisuseError("no session_core session in this scope: add session_core.asgi.SessionMiddleware")
    session.mark_accessed()
    return session


class ASGIContext:
    """:class:`~session_core.cookies.RequestContext` over an ASGI scope."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    def _cookie_header(self) -> str:
        """Every ``Cookie`` header of the request as one (HTTP/2 may split them)."""
        found = [value.decode("latin-1") for key, value in self.scope.get("headers", ()) if key.lower() == b"cookie"]
        return "; ".join(found)

    def get_cookie(self, name: str) -> str | None:
        """The first value of cookie ``name``; None without one."""
        values = self.get_cookies(name)
        return values[0] if values else None

    def get_cookies(self, name: str) -> list[str]:
        """Every value of cookie ``name``, in the order sent: the session tries each (as WSGI's and Flask's do)."""
        return parse_cookie_values(self._cookie_header(), name)

    def add_header(self, name: str, value: str) -> None:
        raise RuntimeError("the ASGI middleware sets its cookie itself, when the response starts")


class SessionMiddleware:
    """Wrap an ASGI app so that every HTTP request and WebSocket has a Datastore session.

    ``client`` is the only Datastore client it uses (or ``store``, a
    :class:`~session_core.contract.Store` such as
    :class:`session_core.testing.MemoryStore`, holds the sessions instead);
    ``threads`` bounds the worker threads its RPCs run in. RPCs per request: none without a
    well-formed cookie, else one lookup; at most one commit when it saves.
    ``clock`` gives the time in epoch seconds (expiry and refresh), as for
    :class:`Session`: tests pass one in rather than wait.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        client: datastore.Client | None = None,
        settings: Settings,
        store: Store | None = None,
        threads: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if threads < 1:
            raise MisuseError("threads must be at least 1")
        self.app = app
        self.client = client
        self.settings = settings
        self.store = store_for(client, settings, store)
        self.clock = clock
        self._waiting = anyio.CapacityLimiter(threads)  # a request waits here, within the deadline, for a thread
        self._threads = anyio.CapacityLimiter(threads)  # the thread it then runs in (never contended)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        context = ASGIContext(scope)
        session = ASGISession(self.client, self.settings, store=self.store, clock=self.clock)
        try:
            await self._load(session, context)
        except StoreError as exc:
            answer = _answers.unavailable(self.settings, exc)
            if scope["type"] == "http":
                await self._answer(send, answer)
            else:
                await self._refuse_websocket(scope, receive, send, answer)
            return
        scope[SCOPE_KEY] = session
        if scope["type"] == "websocket":
            session._freeze()
            await self.app(scope, receive, send)
            return
        replaced = started = False

        async def send_saving(message: Message) -> None:
            nonlocal replaced, started
            if replaced:
                return  # the app's answer was replaced by a 503: the rest of it is dropped
            if message["type"] == "http.response.start":
                started = True
                try:
                    headers = await self._save(session, context)
                except StoreError as exc:
                    replaced = True
                    await self._answer(send, _answers.unavailable(self.settings, exc))
                    return
                own = list(message.get("headers", ()))
                if any(name.lower() == b"vary" and b"cookie" in value.lower() for name, value in own):
                    headers = [header for header in headers if header[0] != b"vary"]  # the app said it already
                message = {**message, "headers": [*own, *headers]}
            await send(message)

        try:
            await self.app(scope, receive, send_saving)
        except MisuseError as exc:
            if started:
                raise  # the response is on its way: it cannot become a 400
            await self._answer(send, _answers.misused(exc))

    async def _load(self, session: ASGISession, context: ASGIContext) -> None:
        if request_keys(context, session.cookie_name):
            await self._off_loop(lambda: session.load(context))
        else:
            session.load(context)  # no cookie of our format: a fresh session, no RPC

    async def _save(self, session: ASGISession, context: ASGIContext) -> list[tuple[bytes, bytes]]:
        """Commit (in a thread, unless nothing can be written) and return the headers the response needs."""
        if session._may_write():
            saved = await self._off_loop(lambda: session.commit(drop_empty=True))
        else:
            saved = Saved.NOTHING  # nothing to write: no thread needed, none waited for
        headers: list[tuple[bytes, bytes]] = []
        if saved is Saved.WRITTEN:
            assert session.cookie_key is not None
            max_age = None if self.settings.use_session_cookie else session.cookie_lifetime
            headers.append(
                (b"set-cookie", set_cookie_header(self.settings, session.cookie_key, max_age=max_age).encode())
            )
        elif saved is Saved.GONE or (saved is Saved.DELETED and context.get_cookies(session.cookie_name)):
            headers.append((b"set-cookie", clear_cookie_header(self.settings).encode()))
        if headers or session.accessed:  # a shared cache must not serve one user's page to another
            headers.append((b"vary", b"Cookie"))
        return headers

    async def _off_loop(self, call: Callable[[], T]) -> T:
        """Run ``call`` (Datastore RPCs) in one of this middleware's threads; StoreError if none frees in time."""
        with anyio.move_on_after(self.settings.request_timeout.total_seconds()) as waited:
            await self._waiting.acquire()
        if waited.cancelled_caught:
            raise StoreError("wait for a thread", TimeoutError("every session thread stayed busy"))
        try:
            return await anyio.to_thread.run_sync(call, limiter=self._threads)
        finally:
            self._waiting.release()

    @staticmethod
    async def _answer(send: Send, answer: _answers.Answer) -> None:
        """Send a whole plain-text response of our own (a 503 or a 400)."""
        await send({"type": "http.response.start", "status": answer.status, "headers": _encoded(answer)})
        await send({"type": "http.response.body", "body": answer.body})

    async def _refuse_websocket(self, scope: Scope, receive: Receive, send: Send, answer: _answers.Answer) -> None:
        """Refuse the handshake: with the 503 where the server can send one, else by closing (1013)."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return  # the client went away already
        if "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": answer.status, "headers": _encoded(answer)})
            await send({"type": "websocket.http.response.body", "body": answer.body})
        else:
            await send({"type": "websocket.close", "code": TRY_AGAIN_LATER, "reason": "session store unavailable"})


def _encoded(answer: _answers.Answer) -> list[tuple[bytes, bytes]]:
    """An answer's headers as ASGI sends them (lower-case names, bytes)."""
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in answer.all_headers()]
