"""session_core: server-side web sessions in Google Cloud Datastore.

A drop-in for ViUR's ``core.session`` (same entity schema, same Session API),
with Flask, WSGI and ASGI adapters (``session_core.flask``,
``session_core.wsgi``, ``session_core.asgi``) and the maintenance that keeps
the store healthy.

The top level is what an app uses: the session and its settings, the store
seam, signing users out (kill, list, end, logout everywhere else, each with
an awaitable twin) and the errors an app catches. ViUR's spellings
(``killSessionByUser``) live in :mod:`session_core.viur`; the errors only the
Cloud Functions raise, in :mod:`session_core.maintenance`.

Importing this package loads the session layer only. The maintenance names
(kill-by-user, a user's devices) load on first use (PEP 562), so a web app
that never calls them never loads them. The names this package exported
before 0.13.0 still resolve until 0.14.0, with a :class:`DeprecationWarning`
naming their new place.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

from session_core.config import Settings
from session_core.contract import Store
from session_core.errors import (
    FUNCTION_ERRORS,
    ConfigError,
    MisuseError,
    SessionCoreError,
    SessionDataError,
    StoreError,
)
from session_core.rules import GUEST_USER
from session_core.session import Session
from session_core.store import SessionRecord, SessionStore

if TYPE_CHECKING:
    # kill.py names them kill_sessions / akill_sessions from issue 22 point 1 on.
    from session_core.maintenance.kill import (
        KillResult,
        SessionInfo,
        aend_user_session,
        akill_sessions,
        alist_user_sessions,
        alogout_everywhere_else,
        end_user_session,
        kill_sessions,
        list_user_sessions,
        logout_everywhere_else,
    )

__version__ = "0.13.0"

_KILL = "session_core.maintenance.kill"
# name -> (module, attribute): loaded on first use. (kill.py's ViUR-named definitions until issue 22 point 1.)
_LAZY = {
    "KillResult": (_KILL, "KillResult"),
    "SessionInfo": (_KILL, "SessionInfo"),
    "kill_sessions": (_KILL, "kill_sessions"),
    "akill_sessions": (_KILL, "akill_sessions"),
    "list_user_sessions": (_KILL, "list_user_sessions"),
    "alist_user_sessions": (_KILL, "alist_user_sessions"),
    "end_user_session": (_KILL, "end_user_session"),
    "aend_user_session": (_KILL, "aend_user_session"),
    "logout_everywhere_else": (_KILL, "logout_everywhere_else"),
    "alogout_everywhere_else": (_KILL, "alogout_everywhere_else"),
}
# Names exported before 0.13.0 -> where they are now (module, attribute); they go in 0.14.0.
_DEPRECATED = {
    "killSessionByUser": ("session_core", "kill_sessions"),
    "akillSessionByUser": ("session_core", "akill_sessions"),
    "start_clear_sessions": ("session_core.maintenance.cleanup", "start_clear_sessions"),
    "ClearResult": ("session_core.maintenance.cleanup", "ClearResult"),
    **{name: ("session_core.maintenance", name) for name in ("DeleteObserver", *(e.__name__ for e in FUNCTION_ERRORS))},
}


def __getattr__(name: str) -> Any:
    """Load a maintenance name on first use; resolve a name of before 0.13.0 with a DeprecationWarning."""
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    if name in _DEPRECATED:
        module, attribute = _DEPRECATED[name]
        viur = " (ViUR's spelling stays in session_core.viur)" if module == "session_core" else ""
        warnings.warn(
            f"session_core.{name} is deprecated and goes in 0.14.0: use {module}.{attribute}{viur}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'session_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "GUEST_USER",
    "ConfigError",
    "KillResult",
    "MisuseError",
    "Session",
    "SessionCoreError",
    "SessionDataError",
    "SessionInfo",
    "SessionRecord",
    "SessionStore",
    "Settings",
    "Store",
    "StoreError",
    "aend_user_session",
    "akill_sessions",
    "alist_user_sessions",
    "alogout_everywhere_else",
    "end_user_session",
    "kill_sessions",
    "list_user_sessions",
    "logout_everywhere_else",
]
