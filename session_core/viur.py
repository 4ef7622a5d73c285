"""ViUR's spellings of session_core's names, for code ported from ``viur.core.session``.

structlog keeps ``getLogger`` beside ``get_logger``; we keep ViUR's camelCase
here, beside the snake_case names the top level exports, and they are the very
same functions::

    from session_core.viur import killSessionByUser   # is session_core.kill_sessions

This module imports no viur-core, and loading it loads no maintenance code:
each alias loads on first use (PEP 562), as the top level's names do. It is
also where a ViUR app's in-place session will live.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the top level's kill_sessions and akill_sessions are
    from session_core.maintenance.kill import akillSessionByUser, killSessionByUser

# ViUR's name -> the snake_case name of session_core's top level it aliases.
_ALIASES = {
    "killSessionByUser": "kill_sessions",
    "akillSessionByUser": "akill_sessions",
}


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


__all__ = ["akillSessionByUser", "killSessionByUser"]
