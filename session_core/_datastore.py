"""Datastore plumbing that the session store and maintenance share (private: no app imports it).

- :func:`translated`: Google API errors become :class:`~session_core.errors.StoreError`
  (or :class:`~session_core.errors.TransientStoreError`) at this boundary;
- :func:`within`: a request-path RPC, retried while its deadline allows;
- :data:`FAIL_FAST`: the retry and timeout arguments of a maintenance RPC (its caller retries);
- :func:`commit` and :func:`rehome`: the insert/update/upsert/delete mutations the python
  client's ``put`` cannot send, and the all-or-none move built on them;
- :func:`settings_key`: a key in the settings' namespace.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import datastore
from google.cloud.datastore.helpers import entity_to_protobuf
from google.cloud.datastore_v1.types import Mutation

from session_core.config import Settings
from session_core.errors import StoreError, TransientStoreError

# The client library's own policy would retry a read for up to 60 s on UNAVAILABLE. Maintenance
# RPCs fail fast and are retried by the sweep's ``with_retries`` (bounded); request-path RPCs
# retry within the request's deadline (:func:`within`).
NO_RETRY = Retry(predicate=lambda exc: False)
FAIL_FAST: dict[str, Any] = {"retry": NO_RETRY, "timeout": 60.0}
TRANSIENT = (gexc.Aborted, gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.InternalServerError)
_BACKOFF = (0.05, 0.1, 0.2, 0.4, 0.8)
T = TypeVar("T")


def within(
    seconds: float,
    operation: str,
    call: Callable[[dict[str, Any]], T],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``call(rpc)`` (``rpc``: retry and timeout arguments) within ``seconds``, retries included.

    A transient failure is retried with a short backoff while time is left;
    each attempt gets only the time that is left. Past the deadline the last
    failure is raised as TransientStoreError: a request answers 503, it never
    hangs on the client library's 60 s of retries.
    """
    deadline = clock() + seconds
    for attempt in itertools.count():
        try:  # translated as :func:`translated` does, without a context manager on the success path
            return call({"retry": NO_RETRY, "timeout": max(deadline - clock(), 0.01)})
        except TRANSIENT as exc:
            delay = _BACKOFF[min(attempt, len(_BACKOFF) - 1)]
            if clock() + delay >= deadline:
                raise TransientStoreError(operation, exc) from exc
        except gexc.GoogleAPICallError as exc:
            raise StoreError(operation, exc) from exc
        sleep(delay)
    raise AssertionError("unreachable")


@contextmanager
def translated(operation: str) -> Iterator[None]:
    """Turn Google API errors into StoreError / TransientStoreError."""
    try:
        yield
    except TRANSIENT as exc:
        raise TransientStoreError(operation, exc) from exc
    except gexc.GoogleAPICallError as exc:
        raise StoreError(operation, exc) from exc


def rehome(
    client: datastore.Client, olds: Sequence[datastore.Entity], news: Sequence[datastore.Entity], rpc: dict[str, Any]
) -> None:
    """Update ``olds`` and insert ``news`` all or none: one transaction that reads nothing, so takes no locks.

    NotFound if an old one is gone, AlreadyExists if a new one exists (raw
    Google exceptions: the caller translates them).
    """
    transaction = client.transaction()
    transaction.begin(**rpc)
    try:
        commit(client, update=olds, insert=news, transaction=transaction)
        transaction.commit(**rpc)
    except BaseException:
        if transaction.id is not None:
            transaction.rollback(**rpc)
        raise


def commit(
    client: datastore.Client,
    *,
    insert: Sequence[datastore.Entity] = (),
    update: Sequence[datastore.Entity] = (),
    upsert: Sequence[datastore.Entity] = (),
    delete: Sequence[datastore.Key] = (),
    transaction: datastore.Transaction | None = None,
    rpc: dict[str, Any] | None = None,
) -> None:
    """Send insert/update/upsert/delete mutations in one commit RPC.

    The python client's ``put`` always upserts; this builds the mutations the
    Datastore API also offers. ``insert`` fails with AlreadyExists when the
    entity exists, ``update`` with NotFound when it does not, and the whole
    commit is atomic. With ``transaction`` the mutations join it and the
    caller commits it. ``rpc`` holds retry/timeout arguments (see FAIL_FAST).
    """
    batch = transaction if transaction is not None else client.batch()
    if transaction is None:
        batch.begin()
    ops: list[tuple[Literal["insert", "update", "upsert"], datastore.Entity]] = [
        *(("insert", e) for e in insert),
        *(("update", e) for e in update),
        *(("upsert", e) for e in upsert),
    ]
    for op, entity in ops:
        batch.mutations.append(Mutation(**{op: entity_to_protobuf(entity)}))
    for key in delete:
        batch.mutations.append(Mutation(delete=key.to_protobuf()))
    if transaction is None:
        batch.commit(**(rpc or {}))


def settings_key(client: datastore.Client, settings: Settings, kind: str, name: str) -> datastore.Key:
    """A key in the settings' namespace, or the client's own when the settings name none."""
    key: datastore.Key
    if settings.namespace is not None:
        key = client.key(kind, name, namespace=settings.namespace)
    else:
        key = client.key(kind, name)
    return key


def next_cursor(iterator: Any) -> str | None:
    """Where a fetched query page ends, as the URL-safe string a task payload carries (None: the end)."""
    token = iterator.next_page_token
    return token.decode() if isinstance(token, bytes) else token
