"""WSGI middleware: sessions for any WSGI framework.

``SessionMiddleware(app, client=..., settings=...)`` loads the session before
calling ``app`` and puts it in ``environ["session_core.session"]``. It saves
the session when ``app`` calls ``start_response`` (that is when the
``Set-Cookie`` header can still be added), so changes made while the body is
being generated are not saved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from google.cloud import datastore

from session_core.config import Settings
from session_core.cookies import parse_cookie_header
from session_core.session import Session

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

    def add_header(self, name: str, value: str) -> None:
        self.headers.append((name, value))


class SessionMiddleware:
    """Wrap a WSGI app so every request has a :class:`Session`."""

    def __init__(self, app: WSGIApp, *, client: datastore.Client, settings: Settings) -> None:
        self.app = app
        self.client = client
        self.settings = settings

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        context = WSGIContext(environ)
        session = Session(self.client, self.settings)
        session.load(context)
        environ[ENVIRON_KEY] = session

        def start(status: str, headers: list[tuple[str, str]], exc_info: _ExcInfo | None = None) -> Any:
            if exc_info is None:
                session.save(context)
                headers = [*headers, *context.headers]
                if context.headers or session.accessed:  # a shared cache must not serve one user's page to another
                    headers.append(("Vary", "Cookie"))
            return start_response(status, headers, exc_info)

        return self.app(environ, start)
