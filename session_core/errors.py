"""One error root for the library; every error carries its data.

Google API exceptions never leave :mod:`session_core.store`: they are
translated there into these types.
"""

from __future__ import annotations


class SessionCoreError(Exception):
    """Root of every error this library raises on purpose."""


class ConfigError(SessionCoreError, ValueError):
    """A setting is missing or malformed. Raised at start-up, naming the variable."""

    def __init__(self, variable: str, expected: str, got: str | None = None) -> None:
        self.variable = variable
        self.expected = expected
        self.got = got
        shown = "it is not set" if got is None else f"got {got!r}"
        super().__init__(f"{variable}: expected {expected}; {shown}")


class StoreError(SessionCoreError):
    """Datastore refused or failed an operation that is not retried here."""

    def __init__(self, operation: str, cause: BaseException) -> None:
        self.operation = operation
        self.cause = cause
        super().__init__(f"datastore {operation} failed: {type(cause).__name__}: {cause}")


class TransientStoreError(StoreError):
    """A Datastore failure that is safe to retry (aborted, unavailable, deadline)."""


class SessionDataError(SessionCoreError, TypeError):
    """A session value cannot be stored in Datastore; ``path`` names it."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")
