"""Delete observers: who is told of the sessions that cleanup and kill delete (private).

ViUR ported code registers with :meth:`session_core.Session.on_delete`, which
lands here: a process-global list that only the deleting processes read (the
Cloud Functions and the command line pass :func:`registered_delete_observer`
to the cleanup and kill they run). Library callers pass an ``observer``
argument instead; :func:`notify` is how every deleter tells one.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog

from session_core.store import DeleteObserver, SessionRecord

_REGISTERED: list[DeleteObserver] = []  # only on_delete and remove_on_delete write here
log = structlog.get_logger("session_core.observers")


def on_delete(func: DeleteObserver) -> DeleteObserver:
    """Register ``func`` for this process (what ``Session.on_delete`` does); returns it, as a decorator."""
    _REGISTERED.append(func)
    return func


def remove_on_delete(func: DeleteObserver) -> None:
    """Unregister an observer added with :func:`on_delete`."""
    _REGISTERED.remove(func)


def registered_delete_observer() -> DeleteObserver | None:
    """One observer calling, in order, every function registered with :meth:`Session.on_delete`.

    None when nothing is registered, so cleanup reads no entity it need not.
    """
    if not _REGISTERED:
        return None
    observers = tuple(_REGISTERED)

    def notify_all(record: SessionRecord) -> None:
        failure: Exception | None = None
        for observer in observers:
            try:
                observer(record)
            except Exception as exc:  # the others still hear of it; the caller logs the first failure
                failure = failure or exc
        if failure is not None:
            raise failure

    return notify_all


def notify(observer: DeleteObserver | None, records: Iterable[SessionRecord]) -> None:
    """Tell ``observer`` of each deleted session; one that raises is logged, and the rest are still told."""
    if observer is None:
        return
    for record in records:
        try:
            observer(record)
        except Exception as exc:  # an observer's bug must not stop a cleanup or keep its lease
            log.error("delete_observer_failed", session_id=record.session_id, error=type(exc).__name__)
