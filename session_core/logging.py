"""structlog set-up, done once by entry points; library modules only call get_logger().

In the cloud (not a terminal) lines are JSON with Cloud Logging's ``severity``
field; on a terminal they are coloured console lines. Every configuration
runs :class:`Redact` first, so session contents, cookie values and keys never
reach a log line even if a caller passes them by mistake.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
import structlog.tracebacks

# Field names whose values are credentials or session contents.
SECRET_FIELDS = frozenset(
    {
        "cookie",
        "cookie_key",
        "cookie_value",
        "session_key",
        "key_name",
        "data",
        "session_data",
        "static_security_key",
        "security_key",
        "token",
        "authorization",
    }
)
REDACTED = "[redacted]"


# Anything that can hold a session cookie (42 alphanumerics) or a hashed session
# key (64 hex digits), wherever it appears (Datastore error messages name keys):
# every run of 42 or more letters and digits, whole, so a key glued to letters
# (``sid<key>``) or to an escape (``%3D<key>``, a URL-encoded ``=<key>``) goes too.
SECRET_VALUES = re.compile(r"[A-Za-z0-9]{42,}")


class Redact:
    """structlog processor: no credential or session content reaches a log line.

    Replaces the values of :data:`SECRET_FIELDS`, at any depth, and every
    substring of any other string (at any depth: a rendered exception is a
    list of dicts) that looks like a cookie or a hashed session key. Runs
    first and again after exceptions are rendered.
    """

    def __init__(self, fields: frozenset[str] = SECRET_FIELDS) -> None:
        self.fields = fields

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for field, value in event_dict.items():
            event_dict[field] = REDACTED if field in self.fields else self._scrub(value)
        return event_dict

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return SECRET_VALUES.sub(REDACTED, value)
        if isinstance(value, dict):
            return {k: REDACTED if k in self.fields else self._scrub(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._scrub(item) for item in value]
        return value


def _cloud_severity(logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event_dict["severity"] = str(event_dict.pop("level", name)).upper()
    return event_dict


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time (test capture included)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(*, json: bool | None = None, level: int = logging.INFO) -> None:
    """Configure structlog for an entry point (JSON unless stderr is a terminal)."""
    if json is None:
        json = not sys.stderr.isatty()
    shared: list[Any] = [
        Redact(),
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks never carry local variables: a frame of Session.load holds the cookie.
    tracebacks = structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
    )
    renderer: list[Any] = (
        [_cloud_severity, tracebacks, Redact(), structlog.processors.JSONRenderer()]
        if json
        else [structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)]
    )
    structlog.configure(
        processors=shared + renderer,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
