"""What every adapter answers for a store that does not answer (503) and for misuse (400): one place.

Flask, WSGI, ASGI and Django each render an :class:`Answer` in their own
terms (a werkzeug response or ``HTTPException``, ``start_response``, ASGI
messages, ``HttpResponse``), so the text, the status and the headers are the
same in every adapter. Each answer is logged here, once, as one line:
``session_unavailable`` with the operation that failed, or ``session_misuse``
with the reason (never a cookie or a session value). This module imports no
web framework.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

import structlog

from session_core.config import Settings
from session_core.errors import MisuseError, StoreError

UNAVAILABLE = "The session store did not answer in time. Please retry shortly."
CONTENT_TYPE = "text/plain; charset=utf-8"
log = structlog.get_logger("session_core.adapters")


@dataclass(frozen=True)
class Answer:
    """A whole plain-text response of ours: status, text and the headers besides its content type and length.

    ``detail`` is what a framework's own error page shows (werkzeug's
    ``description``): the reason of a misuse, the unavailable text.
    """

    status: int
    text: str
    detail: str
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def status_line(self) -> str:
        """``"503 Service Unavailable"``: WSGI's status."""
        return f"{self.status} {HTTPStatus(self.status).phrase}"

    @property
    def body(self) -> bytes:
        return self.text.encode("utf-8")

    def all_headers(self) -> list[tuple[str, str]]:
        """Every header of the whole response, content type and length first (WSGI's and ASGI's list)."""
        return [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(self.body))), *self.headers]


def retry_after(settings: Settings) -> int:
    """Seconds a client should wait before retrying: the request deadline, at least 1."""
    return max(1, int(settings.request_timeout.total_seconds()))


def unavailable(settings: Settings, failure: BaseException) -> Answer:
    """503 with ``Retry-After`` (the request deadline) and ``Vary: Cookie``; logs ``session_unavailable``.

    ``failure`` is the StoreError, or an exception raised from one (Flask's
    ``SessionUnavailable``): the log line names the operation that failed.
    The browser's cookie is not touched: no ``Set-Cookie``.
    """
    log.warning("session_unavailable", operation=_operation(failure))
    headers = (("Retry-After", str(retry_after(settings))), ("Vary", "Cookie"))
    return Answer(503, UNAVAILABLE, UNAVAILABLE, headers)


def misused(exc: MisuseError) -> Answer:
    """400 with the reason (``Bad request: <reason>``); logs ``session_misuse``."""
    log.warning("session_misuse", error=exc.reason)
    return Answer(400, f"Bad request: {exc.reason}", exc.reason)


def _operation(failure: BaseException) -> str:
    """The operation of the StoreError behind ``failure`` (itself, or what it was raised from)."""
    seen: BaseException | None = failure
    while seen is not None:
        if isinstance(seen, StoreError):
            return seen.operation
        seen = seen.__cause__
    return "unknown"
