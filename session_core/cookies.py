"""Cookie rules (pure) and the request-context protocol the Session talks to.

The session key is the cookie value. We only ever accept the exact format we
issue: 42 characters of ``[A-Za-z0-9]`` drawn with :mod:`secrets` (ViUR issues
the same shape, so its cookies stay valid). 42 characters of a 62-letter
alphabet carry 250 bits of entropy.
"""

from __future__ import annotations

import re
import secrets
import string
from typing import Protocol

from session_core.config import Settings

KEY_LENGTH = 42
_ALPHABET = string.ascii_letters + string.digits
_KEY = re.compile(rf"[A-Za-z0-9]{{{KEY_LENGTH}}}")


class RequestContext(Protocol):
    """What :meth:`Session.load` and :meth:`Session.save` need from a request.

    ``load`` reads one incoming cookie; ``save`` appends one outgoing header.
    Adapters exist for Flask/Werkzeug (:mod:`session_core.flask`) and plain
    WSGI (:mod:`session_core.wsgi`); ViUR's request handler is easy to wrap.
    """

    def get_cookie(self, name: str) -> str | None:
        """The value of the named request cookie, or None."""

    def add_header(self, name: str, value: str) -> None:
        """Append a response header (``Set-Cookie`` may be sent more than once)."""


def new_key() -> str:
    """A fresh session key: 42 characters from :mod:`secrets`, about 250 bits."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(KEY_LENGTH))


def new_security_key() -> str:
    """A fresh static security key (13 characters, as ViUR issues)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(13))


def is_valid_key(value: str | None) -> bool:
    """True only for a value of exactly the shape :func:`new_key` issues."""
    return value is not None and _KEY.fullmatch(value) is not None


def _attributes(settings: Settings) -> str:
    parts = ["Path=/", "HttpOnly"]
    if settings.cookie_secure:
        parts.append("Secure")
    if settings.same_site is not None:
        parts.append(f"SameSite={settings.same_site.capitalize()}")
    return "; ".join(parts)


def set_cookie_header(settings: Settings, key: str) -> str:
    """The ``Set-Cookie`` value that hands ``key`` to the browser.

    ``key`` must be a key from :func:`new_key`; anything else is refused so
    no attacker-chosen byte can reach a header.
    """
    if not is_valid_key(key):
        raise ValueError("refusing to put a malformed session key into a cookie")
    header = f"{settings.cookie_name}={key}; {_attributes(settings)}"
    if not settings.use_session_cookie:
        header += f"; Max-Age={int(settings.life_time.total_seconds())}"
    return header


def clear_cookie_header(settings: Settings) -> str:
    """The ``Set-Cookie`` value that makes the browser forget its session cookie."""
    return f"{settings.cookie_name}=; {_attributes(settings)}; Max-Age=0"


def parse_cookie_header(header: str, name: str) -> str | None:
    """The first value of cookie ``name`` in a raw ``Cookie`` header, or None.

    Lenient on purpose (browsers send odd neighbours); the value is checked by
    :func:`is_valid_key` before it is used for anything.
    """
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key.strip() == name:
            return value.strip().strip('"')
    return None
