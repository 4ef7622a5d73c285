"""WSGI middleware: sessions for any WSGI framework.

``SessionMiddleware(app, client=..., settings=...)`` loads the session before
calling ``app`` and puts it in ``environ["session_core.session"]``. It saves
the session when ``app`` calls ``start_response`` (that is when the
``Set-Cookie`` header can still be added), so changes made while the body is
being generated are not saved. ``Vary: Cookie`` goes on every response whose
session was used. A store that does not answer within
``SESSION_REQUEST_TIMEOUT`` gives a 503 with ``Retry-After`` (the app is not
called when the load fails, and its answer is replaced when the save fails).
A :class:`~session_core.errors.MisuseError` the app raises before its response
starts (``logout_everywhere_else`` on a guest session, ``login(None)``) is
answered 400 with its reason, and the session is not saved.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from google.cloud import datastore

from session_core import _answers
from session_core.config import Settings
from session_core.contract import Store
from session_core.cookies import parse_cookie_header, parse_cookie_values
from session_core.errors import MisuseError, StoreError
from session_core.session import Session, store_for

ENVIRON_KEY = "session_core.session"
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class WSGIContext:
    """:class:`~session_core.cookies.RequestContext` over a WSGI environ."""

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.headers: list[tuple[str, str]] = []

    def get_cookie(self, name: str) -> str | None:
        return parse_cookie_header(self.environ.get("HTTP_COOKIE", ""), name)

    def get_cookies(self, name: str) -> list[str]:
        return parse_cookie_values(self.environ.get("HTTP_COOKIE", ""), name)

    def add_header(self, name: str, value: str) -> None:
        self.headers.append((name, value))


class SessionMiddleware:
    """Wrap a WSGI app so every request has a :class:`Session`.

    Its sessions live in ``client``'s Datastore, or in ``store`` (a
    :class:`~session_core.contract.Store`, such as
    :class:`session_core.testing.MemoryStore` in an app's tests).
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        client: datastore.Client | None = None,
        settings: Settings,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.client = client
        self.settings = settings
        self.store = store_for(client, settings, store)
        self.clock = clock  # epoch seconds: expiry, refresh and the absolute lifetime (tests pass their own)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        context = WSGIContext(environ)
        session = Session(self.client, self.settings, store=self.store, clock=self.clock)
        try:
            session.load(context)
        except StoreError as exc:
            return self._unavailable(start_response, exc)
        environ[ENVIRON_KEY] = session
        failed: list[bytes] = []  # the 503's body, once a save failed
        started: list[bool] = []

        def start(status: str, headers: list[tuple[str, str]], exc_info: _ExcInfo | None = None) -> Any:
            started.append(True)
            if exc_info is None:
                try:
                    session.save(context)
                except StoreError as exc:
                    failed.extend(self._unavailable(start_response, exc))
                    return lambda data: None  # the app's own body is dropped below
                headers = [*headers, *context.headers]
                if context.headers or session.accessed:  # a shared cache must not serve one user's page to another
                    headers.append(("Vary", "Cookie"))
            return start_response(status, headers, exc_info)

        try:
            body = self.app(environ, start)
        except MisuseError as exc:
            return self._misused(start_response, exc, replacing=bool(started))
        if failed:
            if hasattr(body, "close"):
                body.close()
            return failed
        return body

    def _misused(self, start_response: StartResponse, exc: MisuseError, *, replacing: bool) -> list[bytes]:
        """400 with the reason. ``replacing`` a response the app started: the server re-raises if it was sent."""
        answer = _answers.misused(exc)
        if replacing:
            start_response(answer.status_line, answer.all_headers(), sys.exc_info())
        else:
            start_response(answer.status_line, answer.all_headers())
        return [answer.body]

    def _unavailable(self, start_response: StartResponse, exc: StoreError) -> list[bytes]:
        """503 with ``Retry-After``: the store did not answer within the request deadline."""
        answer = _answers.unavailable(self.settings, exc)
        start_response(answer.status_line, answer.all_headers())
        return [answer.body]
