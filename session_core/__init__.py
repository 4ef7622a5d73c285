"""session_core: server-side web sessions in Google Cloud Datastore.

A drop-in for ViUR's ``core.session`` (same entity schema, same Session API),
with Flask and WSGI adapters and the maintenance functions that keep the
store healthy.
"""

from session_core.cleanup import ClearResult, start_clear_sessions
from session_core.config import Settings
from session_core.errors import (
    ConfigError,
    SessionCoreError,
    SessionDataError,
    StoreError,
    TransientStoreError,
)
from session_core.revocation import (
    KillResult,
    SessionInfo,
    end_user_session,
    killSessionByUser,
    list_user_sessions,
)
from session_core.session import Session
from session_core.store import GUEST_USER, SessionRecord, SessionStore

__all__ = [
    "GUEST_USER",
    "ClearResult",
    "ConfigError",
    "KillResult",
    "Session",
    "SessionCoreError",
    "SessionDataError",
    "SessionInfo",
    "SessionRecord",
    "SessionStore",
    "Settings",
    "StoreError",
    "TransientStoreError",
    "end_user_session",
    "killSessionByUser",
    "list_user_sessions",
    "start_clear_sessions",
]
