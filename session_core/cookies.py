"""Cookies: the ``Set-Cookie`` and ``Cookie`` headers (pure), and the request-context protocol.

The cookie value is the session key, in the exact format of
:func:`session_core.rules.new_key`; anything else never reaches a header.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Protocol

from session_core.config import Settings
from session_core.rules import is_valid_key


class RequestContext(Protocol):
    """What :meth:`Session.load` and :meth:`Session.save` need from a request.

    ``load`` reads one incoming cookie; ``save`` appends one outgoing header.
    Adapters exist for Flask/Werkzeug (:mod:`session_core.flask`), plain
    WSGI (:mod:`session_core.wsgi`) and ASGI (:mod:`session_core.asgi`);
    ViUR's request handler is easy to wrap.
    """

    def get_cookie(self, name: str) -> str | None:
        """The value of the named request cookie, or None.

        A context may also offer ``get_cookies(name) -> list[str]`` (every
        value sent under the name); the session then tries each of them.
        """

    def add_header(self, name: str, value: str) -> None:
        """Append a response header (``Set-Cookie`` may be sent more than once)."""


def _attributes(settings: Settings) -> str:
    """The attributes every session cookie carries, from the settings (validated there: no ``;`` can get in)."""
    parts = [f"Path={settings.cookie_path}", "HttpOnly"]
    if settings.cookie_domain is not None:
        parts.append(f"Domain={settings.cookie_domain}")
    if settings.cookie_secure:
        parts.append("Secure")
    if settings.same_site is not None:
        parts.append(f"SameSite={settings.same_site.capitalize()}")
    return "; ".join(parts)


def set_cookie_header(settings: Settings, key: str, *, max_age: timedelta | None = None) -> str:
    """The ``Set-Cookie`` value that hands ``key`` to the browser.

    ``max_age`` None: a browser-session cookie (no ``Max-Age``). ``key``
    must be a key from :func:`session_core.rules.new_key`; anything else is
    refused so no attacker-chosen byte can reach a header.
    """
    if not is_valid_key(key):
        raise ValueError("refusing to put a malformed session key into a cookie")
    header = f"{settings.cookie_name}={key}; {_attributes(settings)}"
    if max_age is not None:
        header += f"; Max-Age={max(1, math.ceil(max_age.total_seconds()))}"
    return header


def clear_cookie_header(settings: Settings) -> str:
    """The ``Set-Cookie`` value that makes the browser forget its session cookie (same Path and Domain)."""
    return f"{settings.cookie_name}=; {_attributes(settings)}; Max-Age=0"


def parse_cookie_header(header: str, name: str) -> str | None:
    """The first value of cookie ``name`` in a raw ``Cookie`` header, or None.

    Lenient on purpose (browsers send odd neighbours); the value is checked by
    :func:`is_valid_key` before it is used for anything.
    """
    values = parse_cookie_values(header, name)
    return values[0] if values else None


def parse_cookie_values(header: str, name: str) -> list[str]:
    """Every value of cookie ``name`` in a raw ``Cookie`` header, in the order sent.

    Browsers send one cookie per (name, domain, path): a sibling subdomain can
    add a second cookie of our name. The session tries them all.
    """
    values = []
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key.strip() == name:
            values.append(value.strip().strip('"'))
    return values
