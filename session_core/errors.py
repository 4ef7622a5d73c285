"""One error root for the library; every error carries its data.

The tree, which entry points map to answers with one table (``main.py``)::

    SessionCoreError
    ├── ConfigError            a setting is missing or malformed (start-up)
    ├── BadInputError          the caller's input can never succeed (400, or ack)
    │   ├── SessionDataError   a session value Datastore cannot hold
    │   ├── PoisonMessageError a kill-user message that is not one
    │   ├── PayloadError       a task payload that is not one of ours
    │   ├── BodyTooLargeError  a request body over the cap (413)
    │   └── MisuseError        an API call that makes no sense (login without a user)
    ├── AuthError              the caller may not do this (no HTTP status here)
    │   ├── UnauthenticatedError   no valid credential
    │   └── ForbiddenError         a valid credential of someone else
    ├── StoreError             Datastore refused or failed (503: retry)
    │   └── TransientStoreError    ... and retrying may help
    ├── DispatchError          Cloud Tasks refused or failed (503: retry)
    └── DependencyUnavailableError  another service we need did not answer (503: retry)

Google API exceptions never leave :mod:`session_core.store` and the Cloud
Tasks dispatcher: they are translated there into these types.
"""

from __future__ import annotations


class SessionCoreError(Exception):
    """Root of every error this library raises on purpose."""


class ConfigError(SessionCoreError, ValueError):
    """A setting is missing or malformed.

    ``setting`` is the environment variable when the settings came from
    :meth:`Settings.from_env`, and the field name when they were built in code.
    """

    def __init__(self, setting: str, expected: str, got: str | None = None) -> None:
        self.setting = setting
        self.expected = expected
        self.got = got
        shown = "it is not set" if got is None else f"got {got!r}"
        super().__init__(f"{setting}: expected {expected}; {shown}")

    @property
    def variable(self) -> str:
        """The setting's name (kept for callers of earlier versions)."""
        return self.setting


class BadInputError(SessionCoreError, ValueError):
    """Input that can never succeed, whoever retries it: answered with 400, never retried here."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class SessionDataError(BadInputError, TypeError):
    """A session value cannot be stored in Datastore; ``path`` names it. Raised before any RPC."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(reason)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class PoisonMessageError(BadInputError):
    """A kill-user message that can never be processed; ``reason`` says why."""

    def __str__(self) -> str:
        return f"poison kill message: {self.reason}"


class PayloadError(BadInputError):
    """A task payload that is not exactly what we enqueue; ``reason`` says what is wrong."""

    def __str__(self) -> str:
        return f"bad task payload: {self.reason}"


class BodyTooLargeError(BadInputError):
    """A request body over the cap: refused (413) without reading the rest."""


class MisuseError(BadInputError):
    """An API call that cannot make sense, such as a login without a user key."""


class AuthError(SessionCoreError):
    """The caller may not do this; ``reason`` says why. Entry points choose the status."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class UnauthenticatedError(AuthError):
    """No valid credential (missing, malformed, expired, forged, wrong audience)."""


class ForbiddenError(AuthError):
    """A valid credential of an identity that is not allowed."""


class StoreError(SessionCoreError):
    """Datastore refused or failed an operation that is not retried here."""

    def __init__(self, operation: str, cause: BaseException) -> None:
        self.operation = operation
        self.cause = cause
        super().__init__(f"datastore {operation} failed: {type(cause).__name__}: {cause}")


class TransientStoreError(StoreError):
    """A Datastore failure that is safe to retry (aborted, unavailable, deadline)."""


class DispatchError(SessionCoreError):
    """Cloud Tasks refused or failed to take a step; the step that was running may be retried."""

    def __init__(self, operation: str, cause: BaseException) -> None:
        self.operation = operation
        self.cause = cause
        super().__init__(f"cloud tasks {operation} failed: {type(cause).__name__}: {cause}")


class DependencyUnavailableError(SessionCoreError):
    """A service we need (Google's token certificates) did not answer: retry, do not refuse."""

    def __init__(self, operation: str, cause: BaseException) -> None:
        self.operation = operation
        self.cause = cause
        super().__init__(f"{operation} unavailable: {type(cause).__name__}: {cause}")


FUNCTION_ERRORS: tuple[type[SessionCoreError], ...] = (
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
"""The errors only the Cloud Functions' path raises: :mod:`session_core.maintenance` exports them (the
top level exports the ones an app catches, and resolved these until 0.14.0 with a warning)."""
