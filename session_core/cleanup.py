"""Expired-session cleanup: keys-only pages, pipelined batch deletes, a lease.

Expired means ``lastseen < now - (life time + grace)``. Readers already treat
a session as dead once ``lastseen < now - life time``; the grace window
protects a request that loaded a session just before it expired and saves it
a little later, and clock skew between app and worker up to the grace.

A run is a chain of steps. Each step pages through the expired keys with the
query cursor (keys only, ``page_size`` keys a page) and deletes them in
commits of at most ``batch_size`` keys, ``deletes_in_flight`` commits at a
time, while the next page is being fetched. When the time budget runs out
with work left, the next step is handed to ``enqueue`` (a Cloud Task) or, with
no queue, runs on in the same process. Re-running any step is safe: deleting
an absent key is a no-op, and the cutoff travels with the chain.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import structlog
from google.api_core import exceptions as gexc
from google.cloud import datastore
from google.cloud.datastore.query import PropertyFilter

from session_core.config import Settings
from session_core.errors import StoreError, TransientStoreError
from session_core.session import Session
from session_core.store import SessionRecord, SessionStore, commit, translated
from session_core.tasks import ClearStep, Enqueue

LEASE_KIND = "session_core-lease"
LEASE_NAME = "clear_sessions"
# A keys-only response must stay under the 4 MiB response limit; aim for half.
MAX_PAGE_BYTES = 2 * 1024 * 1024
_RETRY_DELAYS = (0.1, 0.3, 1.0, 3.0)
log = structlog.get_logger("session_core.cleanup")
Progress = Callable[[int, float], None]


@dataclass(frozen=True)
class ClearResult:
    """What one invocation did (the JSON the function answers)."""

    run_id: str
    cutoff: float
    deleted: int
    batches: int
    continued: bool
    skipped: bool
    elapsed_s: float
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def cutoff_for(now: float, settings: Settings) -> float:
    """Sessions last seen before this epoch time are expired and past the grace."""
    return now - (settings.life_time + settings.clear_grace).total_seconds()


def page_limit(settings: Settings, key_bytes: int = 64) -> int:
    """Keys per query page: the configured size, bounded so a response stays small.

    ``key_bytes`` is the longest key name expected (64 for hashed, 42 for ViUR).
    """
    overhead = 64 + len(settings.project) + len(settings.kind) + len(settings.namespace or "")
    return max(1, min(settings.page_size, MAX_PAGE_BYTES // (overhead + key_bytes)))


def batches(keys: Iterable[datastore.Key], size: int) -> list[list[datastore.Key]]:
    """Split keys into commits of at most ``size``, dropping duplicates."""
    unique = list({key.flat_path: key for key in keys}.values())
    return [unique[i : i + size] for i in range(0, len(unique), size)]


def with_retries(operation: Callable[[], Any], *, sleep: Callable[[float], None] = time.sleep) -> Any:
    """Run ``operation``, retrying TransientStoreError with backoff (4 retries)."""
    for delay in _RETRY_DELAYS:
        try:
            return operation()
        except TransientStoreError as exc:
            log.warning("datastore_retry", operation=exc.operation, error=type(exc.cause).__name__, delay_s=delay)
            sleep(delay)
    return operation()


class _Lease:
    """A small entity that lets one cleanup chain run at a time.

    Held by run id until ``until``; an expired lease (a crashed run) is taken over.
    """

    def __init__(self, client: datastore.Client, settings: Settings) -> None:
        self.client = client
        self.key = self._key(settings)
        self.seconds = 2 * settings.time_budget.total_seconds() + 120

    def _key(self, settings: Settings) -> datastore.Key:
        key: datastore.Key
        if settings.namespace is None:
            key = self.client.key(LEASE_KIND, LEASE_NAME)
        else:
            key = self.client.key(LEASE_KIND, LEASE_NAME, namespace=settings.namespace)
        return key

    def acquire(self, run_id: str, now: float) -> bool:
        """Take or renew the lease for ``run_id``; False if another live run holds it.

        A transaction that loses a race with a concurrent run (ABORTED) looks
        again; any other failure raises StoreError.
        """
        for attempt in range(3):
            try:
                with translated("lease"), self.client.transaction():
                    held = self.client.get(self.key)
                    if held is not None and held["run_id"] != run_id and held["until"] > now:
                        return False
                    lease = datastore.Entity(self.key)
                    lease.update(run_id=run_id, until=now + self.seconds)
                    self.client.put(lease)
                return True
            except TransientStoreError as exc:
                if not isinstance(exc.cause, gexc.Aborted) or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def release(self, run_id: str) -> None:
        with translated("lease"), self.client.transaction():
            held = self.client.get(self.key)
            if held is not None and held["run_id"] == run_id:
                self.client.delete(self.key)


def start_clear_sessions(
    client: datastore.Client,
    settings: Settings,
    *,
    enqueue: Enqueue | None = None,
    dry_run: bool = False,
    now: float | None = None,
    progress: Progress | None = None,
) -> ClearResult:
    """Start a cleanup run (what Cloud Scheduler triggers). Idempotent.

    Takes the lease (unless ``dry_run``); if another run holds it, returns a
    result with ``skipped=True`` and touches nothing. Otherwise runs the first
    step; see :func:`run_clear_step`.
    """
    now = time.time() if now is None else now
    step = ClearStep(run_id=uuid.uuid4().hex, cutoff=cutoff_for(now, settings), dry_run=dry_run)
    return run_clear_step(client, settings, step, enqueue=enqueue, now=now, progress=progress)


def run_clear_step(
    client: datastore.Client,
    settings: Settings,
    step: ClearStep,
    *,
    enqueue: Enqueue | None = None,
    now: float | None = None,
    progress: Progress | None = None,
) -> ClearResult:
    """Run one step of a cleanup chain within the time budget. Idempotent.

    Deletes expired sessions page by page from ``step.cursor``. If the budget
    runs out with work left, the next step goes to ``enqueue`` (and the result
    says ``continued``); with no ``enqueue`` the run simply goes on. Transient
    Datastore errors are retried; others raise StoreError after the deletes
    already committed (a retry of the step resumes safely).
    Logs exactly one ``clear_sessions`` summary line.
    """
    started = time.monotonic()
    now = time.time() if now is None else now
    lease = _Lease(client, settings)
    if not step.dry_run and not lease.acquire(step.run_id, now):
        result = ClearResult(step.run_id, step.cutoff, 0, 0, False, True, 0.0, step.dry_run)
        log.info("clear_sessions", **result.to_json())
        return result
    worker = _Clearer(client, settings, step, progress)
    next_step = worker.run(started, enqueue is not None)
    if next_step is not None and enqueue is not None:
        if step.dry_run or lease.acquire(step.run_id, now + time.monotonic() - started):  # renew for the next step
            enqueue(next_step)
        else:
            next_step = None  # a newer run took the lease over: it carries on
    elif not step.dry_run:
        lease.release(step.run_id)
    result = ClearResult(
        run_id=step.run_id,
        cutoff=step.cutoff,
        deleted=worker.deleted,
        batches=worker.batches,
        continued=next_step is not None,
        skipped=False,
        elapsed_s=round(time.monotonic() - started, 3),
        dry_run=step.dry_run,
    )
    log.info("clear_sessions", page=step.page, **result.to_json())
    return result


class _Clearer:
    """The paging and deleting of one step; holds at most one page of keys."""

    def __init__(self, client: datastore.Client, settings: Settings, step: ClearStep, progress: Progress | None):
        self.client = client
        self.settings = settings
        self.step = step
        self.progress = progress
        self.limit = page_limit(settings)
        self.deleted = 0
        self.batches = 0

    def _query(self) -> datastore.Query:
        query: datastore.Query = self.client.query(kind=self.settings.kind, namespace=self.settings.namespace)
        query.add_filter(filter=PropertyFilter("lastseen", "<", self.step.cutoff))
        query.keys_only()
        return query

    def _page(self, cursor: str | None) -> tuple[list[datastore.Key], str | None, bool]:
        """One page of expired keys from ``cursor``: (keys, next cursor, last page?)."""

        def fetch() -> tuple[list[datastore.Key], str | None]:
            iterator = self._query().fetch(limit=self.limit, start_cursor=cursor)  # urlsafe base64
            with translated("query"):
                keys = [entity.key for entity in iterator]
            token = iterator.next_page_token
            return keys, token.decode() if isinstance(token, bytes) else token

        while True:
            try:
                keys, next_cursor = with_retries(fetch)
            except StoreError as exc:
                if isinstance(exc.cause, gexc.ResourceExhausted) and self.limit > 1:
                    self.limit //= 2  # the response was too large: smaller pages
                    continue
                raise
            # The legacy emulator reports more results after every limit: a short or
            # empty page is the end, whatever the cursor says.
            return keys, next_cursor, len(keys) < self.limit or next_cursor is None

    def _delete(self, keys: Sequence[datastore.Key]) -> tuple[int, list[SessionRecord]]:
        """Delete one batch (one commit, retried if transient); return (count, records)."""
        records: list[SessionRecord] = []
        if Session.delete_observers():

            def lookup() -> list[datastore.Entity]:
                with translated("lookup"):
                    found: list[datastore.Entity] = self.client.get_multi(list(keys))
                    return found

            records = [SessionStore.from_entity(entity) for entity in with_retries(lookup)]
        if not self.step.dry_run:

            def delete() -> None:
                with translated("delete"):
                    commit(self.client, delete=keys)

            with_retries(delete)
        return len(keys), records

    def _collect(self, future: Future[tuple[int, list[SessionRecord]]]) -> None:
        count, records = future.result()
        self.deleted += count
        self.batches += 1
        for record in records:
            for observer in Session.delete_observers():
                observer(record)

    def run(self, started: float, can_continue: bool) -> ClearStep | None:
        """Page and delete until done or out of budget; return the next step, if any."""
        budget = self.settings.time_budget.total_seconds()
        in_flight = self.settings.deletes_in_flight
        cursor, page = self.step.cursor, self.step.page
        pending: deque[Future[tuple[int, list[SessionRecord]]]] = deque()
        last_report = time.monotonic()
        with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="clear") as pool:
            try:
                while True:
                    keys, cursor, last = self._page(cursor)  # overlaps with the deletes in flight
                    page += 1
                    for batch in batches(keys, self.settings.batch_size):
                        while len(pending) >= in_flight:
                            self._collect(pending.popleft())
                        pending.append(pool.submit(self._delete, batch))
                    if self.progress is not None and time.monotonic() - last_report >= 1.0:
                        self.progress(self.deleted, time.monotonic() - started)
                        last_report = time.monotonic()
                    if last or cursor is None:
                        break
                    if can_continue and time.monotonic() - started >= budget:
                        while pending:
                            self._collect(pending.popleft())
                        return ClearStep(self.step.run_id, self.step.cutoff, cursor, page, self.step.dry_run)
            finally:
                while pending:
                    self._collect(pending.popleft())
        if self.progress is not None:
            self.progress(self.deleted, time.monotonic() - started)
        return None
