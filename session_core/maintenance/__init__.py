"""Maintenance: what keeps the store healthy. Web apps never import this package.

- :mod:`.sweep`: the one pager and deleter that cleanup and kill share;
- :mod:`.cleanup`: expired sessions, with a lease (what Cloud Scheduler starts);
- :mod:`.kill`: kill-by-user (its Pub/Sub message, its key-range shards, its steps), a user's devices,
  logout everywhere else;
- :mod:`.shards`: ``lastseen`` slices for a parallel cleanup's chains;
- :mod:`.steps`: the step registry and the task payloads, parsed strictly;
- :mod:`.dispatch`: Cloud Tasks; :mod:`.auth`: who may call ``session_task``.
"""

from session_core.errors import (
    AuthError,
    BadInputError,
    BodyTooLargeError,
    DependencyUnavailableError,
    DispatchError,
    ForbiddenError,
    PayloadError,
    PoisonMessageError,
    TransientStoreError,
    UnauthenticatedError,
)
from session_core.store import DeleteObserver

# What the Cloud Functions' own code (main.py, a deployment's observers) catches and annotates.
# The errors are defined in session_core.errors, beside the root they share with the app's errors
# (SessionDataError and MisuseError are BadInputErrors; the store raises TransientStoreError).
__all__ = [
    "AuthError",
    "BadInputError",
    "BodyTooLargeError",
    "DeleteObserver",
    "DependencyUnavailableError",
    "DispatchError",
    "ForbiddenError",
    "PayloadError",
    "PoisonMessageError",
    "TransientStoreError",
    "UnauthenticatedError",
]
