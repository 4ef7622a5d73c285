"""Delete observers: who is told of the sessions that cleanup and kill delete (private).

ViUR ported code registers with :meth:`session_core.Session.on_delete`, which
lands here: a process-global list that only the deleting processes read (the
Cloud Functions and the command line pass :func:`registered_delete_observer`
to the cleanup and kill they run). Library callers pass an ``observer``
argument instead; the deleter tells it
(:func:`session_core.maintenance.sweep.notify`).
"""

from __future__ import annotations

from session_core.store import DeleteObserver, SessionRecord

_REGISTERED: list[DeleteObserver] = []  # only on_delete and remove_on_delete write here


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
