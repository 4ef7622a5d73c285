"""session_core: server-side web sessions in Google Cloud Datastore.

A drop-in for ViUR's ``core.session`` (same entity schema, same Session API),
with Flask, WSGI and ASGI adapters (``session_core.flask``,
``session_core.wsgi``, ``session_core.asgi``) and the maintenance that keeps
the store healthy.

Importing this package loads the session layer only. The maintenance names
(cleanup, kill-by-user, a user's devices) load on first use (PEP 562), so a
web app that never calls them never loads them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from session_core.config import Settings
from session_core.errors import (
    AuthError,
    BadInputError,
    BodyTooLargeError,
    ConfigError,
    DependencyUnavailableError,
    DispatchError,
    ForbiddenError,
    MisuseError,
    PayloadError,
    PoisonMessageError,
    SessionCoreError,
    SessionDataError,
    StoreError,
    TransientStoreError,
    UnauthenticatedError,
)
from session_core.rules import GUEST_USER
from session_core.session import Session
from session_core.store import DeleteObserver, SessionRecord, SessionStore

if TYPE_CHECKING:
    from session_core.maintenance.cleanup import ClearResult, start_clear_sessions
    from session_core.maintenance.kill import (
        KillResult,
        SessionInfo,
        aend_user_session,
        akillSessionByUser,
        alist_user_sessions,
        alogout_everywhere_else,
        end_user_session,
        killSessionByUser,
        list_user_sessions,
        logout_everywhere_else,
    )

__version__ = "0.12.0"

_LAZY = {
    "ClearResult": "session_core.maintenance.cleanup",
    "start_clear_sessions": "session_core.maintenance.cleanup",
    "KillResult": "session_core.maintenance.kill",
    "SessionInfo": "session_core.maintenance.kill",
    "aend_user_session": "session_core.maintenance.kill",
    "akillSessionByUser": "session_core.maintenance.kill",
    "alist_user_sessions": "session_core.maintenance.kill",
    "alogout_everywhere_else": "session_core.maintenance.kill",
    "end_user_session": "session_core.maintenance.kill",
    "killSessionByUser": "session_core.maintenance.kill",
    "list_user_sessions": "session_core.maintenance.kill",
    "logout_everywhere_else": "session_core.maintenance.kill",
}


def __getattr__(name: str) -> Any:
    """Load a maintenance name on first use."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'session_core' has no attribute {name!r}")


__all__ = [
    "GUEST_USER",
    "AuthError",
    "BadInputError",
    "BodyTooLargeError",
    "ClearResult",
    "ConfigError",
    "DeleteObserver",
    "DependencyUnavailableError",
    "DispatchError",
    "ForbiddenError",
    "KillResult",
    "MisuseError",
    "PayloadError",
    "PoisonMessageError",
    "Session",
    "SessionCoreError",
    "SessionDataError",
    "SessionInfo",
    "SessionRecord",
    "SessionStore",
    "Settings",
    "StoreError",
    "TransientStoreError",
    "UnauthenticatedError",
    "aend_user_session",
    "akillSessionByUser",
    "alist_user_sessions",
    "alogout_everywhere_else",
    "end_user_session",
    "killSessionByUser",
    "list_user_sessions",
    "logout_everywhere_else",
    "start_clear_sessions",
]
