"""Maintenance: what keeps the store healthy. Web apps never import this package.

- :mod:`.sweep`: the one pager and deleter that cleanup and kill share;
- :mod:`.cleanup`: expired sessions, with a lease (what Cloud Scheduler starts);
- :mod:`.kill`: kill-by-user (its Pub/Sub message, its key-range shards, its steps), a user's devices,
  logout everywhere else;
- :mod:`.shards`: ``lastseen`` slices for a parallel cleanup's chains;
- :mod:`.steps`: the step registry and the task payloads, parsed strictly;
- :mod:`.dispatch`: Cloud Tasks; :mod:`.auth`: who may call ``session_task``.
"""

from session_core.errors import FUNCTION_ERRORS
from session_core.errors import AuthError as AuthError
from session_core.errors import BadInputError as BadInputError
from session_core.errors import BodyTooLargeError as BodyTooLargeError
from session_core.errors import DependencyUnavailableError as DependencyUnavailableError
from session_core.errors import DispatchError as DispatchError
from session_core.errors import ForbiddenError as ForbiddenError
from session_core.errors import PayloadError as PayloadError
from session_core.errors import PoisonMessageError as PoisonMessageError
from session_core.errors import TransientStoreError as TransientStoreError
from session_core.errors import UnauthenticatedError as UnauthenticatedError
from session_core.store import DeleteObserver as DeleteObserver

# What the Cloud Functions' own code (main.py, a deployment's observers) catches and annotates.
# The errors are defined in session_core.errors, beside the root they share with the app's errors
# (SessionDataError and MisuseError are BadInputErrors; the store raises TransientStoreError), and
# listed there once (FUNCTION_ERRORS): the imports above re-export each by name (`X as X`) for mypy.
__all__ = ["DeleteObserver", *(error.__name__ for error in FUNCTION_ERRORS)]
