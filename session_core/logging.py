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


# Anything shaped like a session cookie (42 alphanumerics) or a hashed session
# key (64 hex digits), wherever it appears: Datastore error messages name keys.
SECRET_VALUES = re.compile(r"(?<![A-Za-z0-9])(?:[A-Za-z0-9]{42}|[0-9a-f]{64})(?![A-Za-z0-9])")


class Redact:
    """structlog processor: no credential or session content reaches a log line.

    Replaces the values of :data:`SECRET_FIELDS`, and every substring of any
    other string value that looks like a cookie or a hashed session key.
    """

    def __init__(self, fields: frozenset[str] = SECRET_FIELDS) -> None:
        self.fields = fields

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for field, value in event_dict.items():
            if field in self.fields:
                event_dict[field] = REDACTED
            elif isinstance(value, str):
                event_dict[field] = SECRET_VALUES.sub(REDACTED, value)
        return event_dict


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
    renderer: list[Any] = (
        [_cloud_severity, structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
        if json
        else [structlog.dev.ConsoleRenderer()]
    )
    structlog.configure(
        processors=shared + renderer,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
