"""Paging and deleting: the engine shared by cleanup and kill-by-user.

A :class:`Sweep` pages through a keys-only query with its cursor and deletes
each page in commits of at most ``batch_size`` keys, with up to
``deletes_in_flight`` commits running while the next page is fetched. It holds
at most one page of keys. Transient Datastore errors are retried with backoff;
a page too large for one response is fetched again in halves.

A delete observer, when given, is told of each session after the commit that
deleted it (the batch is read first: one more lookup per batch). It is never
called in a dry run, and an observer that raises is logged and does not stop
the sweep. Lifecycle events (:mod:`~session_core.maintenance.events`), when
given, are published for each batch right after its commit, from the
commit's thread.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog
from google.api_core import exceptions as gexc
from google.cloud import datastore
from google.cloud.datastore.query import PropertyFilter

from session_core._datastore import FAIL_FAST, commit, next_cursor, settings_key, translated
from session_core.config import Settings
from session_core.errors import PayloadError, StoreError, TransientStoreError
from session_core.maintenance.events import BatchEvents
from session_core.maintenance.pacing import Pacer
from session_core.rules import shard_bounds
from session_core.store import SHARD_PROPERTY, DeleteObserver, SessionRecord, SessionStore

# A keys-only response must stay under the 4 MiB response limit; aim for half.
MAX_PAGE_BYTES = 2 * 1024 * 1024
_RETRY_DELAYS = (0.1, 0.3, 1.0, 3.0)
log = structlog.get_logger("session_core.sweep")
Progress = Callable[[int, float], None]
QueryFactory = Callable[[], datastore.Query]
Target = int | None
"""An index range of expired sessions: write shard k's ``shard_lastseen`` range, or None: the ``lastseen`` index."""


def offset_progress(progress: Progress | None, done: int) -> Progress | None:
    """Progress of a later sweep of the same run (another chain, the rest), counted on from ``done``."""
    if progress is None:
        return None
    report = progress
    return lambda count, elapsed: report(done + count, elapsed)


def notify(observer: DeleteObserver | None, records: Iterable[SessionRecord]) -> None:
    """Tell ``observer`` of each deleted session; one that raises is logged, and the rest are still told."""
    if observer is None:
        return
    for record in records:
        try:
            observer(record)
        except Exception as exc:  # an observer's bug must not stop a cleanup or keep its lease
            log.error("delete_observer_failed", session_id=record.session_id, error=type(exc).__name__)


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


def session_query(
    client: datastore.Client,
    settings: Settings,
    *,
    user: str | None = None,
    lo: str | None = None,
    hi: str | None = None,
) -> datastore.Query:
    """A keys-only query over the session kind, in the settings' namespace.

    ``user`` keeps one user's sessions (None: everyone's); ``lo`` <= key name
    < ``hi`` bounds a key range (None: unbounded).
    """
    query: datastore.Query = client.query(kind=settings.kind, namespace=settings.namespace)
    query.keys_only()
    if user is not None:
        query.add_filter(filter=PropertyFilter("user", "=", user))
    if lo is not None:
        query.add_filter(filter=PropertyFilter("__key__", ">=", settings_key(client, settings, settings.kind, lo)))
    if hi is not None:
        query.add_filter(filter=PropertyFilter("__key__", "<", settings_key(client, settings, settings.kind, hi)))
    return query


def lastseen_query(
    client: datastore.Client, settings: Settings, target: Target, lo: float | None, hi: float
) -> datastore.Query:
    """The keys-only query of the sessions with ``lo <= lastseen < hi`` (lo None: all below ``hi``) in one range.

    ``target`` None: the ``lastseen`` index; k: write shard k's range of
    ``shard_lastseen``. Two inequalities on one property either way.
    """
    query = session_query(client, settings)
    if target is None:
        if lo is not None:
            query.add_filter(filter=PropertyFilter("lastseen", ">=", lo))
        query.add_filter(filter=PropertyFilter("lastseen", "<", hi))
        return query
    low, high = shard_bounds(target, lo, hi)
    query.add_filter(filter=PropertyFilter(SHARD_PROPERTY, ">=", low))
    query.add_filter(filter=PropertyFilter(SHARD_PROPERTY, "<", high))
    return query


def delete_batch(
    client: datastore.Client,
    keys: Sequence[datastore.Key],
    *,
    dry_run: bool = False,
    read: bool = False,
) -> tuple[int, list[SessionRecord]]:
    """Delete up to 500 session keys in one commit (retried if transient). Idempotent.

    With ``read`` the sessions are looked up first (one lookup RPC) and
    returned, for an observer to be told once the commit succeeded. A dry run
    neither reads nor deletes. Returns (keys counted, records read).
    """
    if dry_run:
        return len(keys), []
    records: list[SessionRecord] = []
    if read:

        def lookup() -> list[datastore.Entity]:
            with translated("lookup"):
                found: list[datastore.Entity] = client.get_multi(list(keys), **FAIL_FAST)
                return found

        records = [SessionStore.from_entity(entity) for entity in with_retries(lookup)]

    def delete() -> None:
        with translated("delete"):
            commit(client, delete=keys, rpc=FAIL_FAST)

    with_retries(delete)
    return len(keys), records


def fetch_page(make_query: QueryFactory, limit: int, cursor: str | None) -> tuple[list[datastore.Key], str | None]:
    """One page of a keys-only query from ``cursor`` (urlsafe base64): (keys, next cursor). One RPC.

    A cursor Datastore cannot parse is a PayloadError (a 400 at the task
    door: retrying it would fail the same way), not a StoreError.
    """
    iterator = make_query().fetch(limit=limit, start_cursor=cursor, **FAIL_FAST)
    try:
        with translated("query"):
            keys = [entity.key for entity in iterator]
    except StoreError as exc:
        if cursor is not None and isinstance(exc.cause, gexc.InvalidArgument) and "pars" in str(exc.cause):
            raise PayloadError("cursor is not a query cursor") from exc
        raise
    return keys, next_cursor(iterator)


def key_names(make_query: QueryFactory, limit: int) -> Iterator[str]:
    """Every key name a keys-only query yields, page by page (memory: one page)."""
    cursor: str | None = None
    while True:
        keys, cursor = with_retries(partial(fetch_page, make_query, limit, cursor))
        yield from (str(key.name) for key in keys)
        if len(keys) < limit or cursor is None:
            return


def session_names(client: datastore.Client, settings: Settings) -> Iterator[str]:
    """Every session key name in the namespace, page by page."""
    return key_names(partial(session_query, client, settings), page_limit(settings))


@dataclass(frozen=True)
class SweepOutcome:
    """What a sweep did; ``cursor`` is where to resume, None when it reached the end."""

    deleted: int
    batches: int
    pages: int
    cursor: str | None
    lost: bool = False  # the heartbeat said stop
    paused: bool = False  # the pace allowed the next deletes only past the step's deadline: go on from ``cursor``

    @property
    def more(self) -> bool:
        """Whether the chain goes on from ``cursor`` (None after a pause: from the start)."""
        return not self.lost and (self.cursor is not None or self.paused)


@dataclass
class _Beat:
    """When a paced sweep must next renew its lease (monotonic seconds), and how often."""

    every: float
    due: float

    def __post_init__(self) -> None:
        self.due += self.every


Act = Callable[[Sequence[datastore.Key]], tuple[int, list[SessionRecord]]]
"""What a sweep does to one batch of keys: (how many it handled, the records an observer is told of)."""


class Sweep:
    """Delete every key a query yields, page by page, from a cursor.

    ``keep`` names keys to leave alone (they are neither deleted nor counted).
    With ``dry_run`` it counts instead of deleting. ``observer`` is told of
    each deleted session after its commit; without one, no session entity is
    read (keys only). ``events`` publishes each committed batch (read first
    if the events need the users). ``pacer`` holds the deletes to a run's
    ramp-up schedule. ``act`` replaces the delete (the rehash moves sessions
    instead, and publishes nothing).
    """

    def __init__(
        self,
        client: datastore.Client,
        settings: Settings,
        make_query: QueryFactory,
        *,
        dry_run: bool = False,
        keep: Callable[[datastore.Key], bool] | None = None,
        progress: Progress | None = None,
        page_size: int | None = None,
        observer: DeleteObserver | None = None,
        pacer: Pacer | None = None,
        act: Act | None = None,
        events: BatchEvents | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.make_query = make_query
        self.dry_run = dry_run
        self.keep = keep
        self.progress = progress
        self.limit = page_size or page_limit(settings)
        self.observer = None if dry_run else observer
        self.pacer = None if dry_run else pacer
        self.act = act
        self.events = None if dry_run or act is not None else events
        self.deleted = 0
        self.batches = 0

    def _page(self, cursor: str | None, deadline: float | None) -> tuple[list[datastore.Key], str | None, bool]:
        """One page of keys from ``cursor``: (keys, next cursor, last page?).

        A paced sweep with a deadline asks for no more keys than its pace
        allows before the deadline (at least one batch), so a step ends
        within its budget however slow its share of the schedule is.
        """
        while True:
            limit = self.limit
            if self.pacer is not None and deadline is not None:
                allowed = self.pacer.allowance(deadline - time.monotonic())
                limit = max(min(self.limit, allowed), min(self.limit, self.settings.batch_size))
            try:
                keys, next_cursor = with_retries(partial(fetch_page, self.make_query, limit, cursor))
            except StoreError as exc:
                if isinstance(exc.cause, gexc.ResourceExhausted) and limit > 1:
                    self.limit = limit // 2  # the response was too large: smaller pages
                    continue
                raise
            # The legacy emulator reports more results after every limit: a short or
            # empty page is the end, whatever the cursor says.
            return keys, next_cursor, len(keys) < limit or next_cursor is None

    def _pace(self, count: int, heartbeat: Callable[[], bool] | None, beat: _Beat) -> str | None:
        """Wait until the pace allows ``count`` deletes, renewing the lease as often as ``beat`` says.

        "lost" if the heartbeat said stop, "paused" (at once) if the pace
        allows them only past the pacer's deadline; the deletes are not
        counted then. None once they are.
        """
        assert self.pacer is not None
        while (delay := self.pacer.delay(count)) > 0:
            if not self.pacer.fits(delay):
                return "paused"
            wait = delay if heartbeat is None else min(delay, max(beat.due - time.monotonic(), 0.0))
            self.pacer.waited += wait
            self.pacer.sleep(wait)
            if heartbeat is not None and time.monotonic() >= beat.due:
                if not heartbeat():
                    return "lost"
                beat.due = time.monotonic() + beat.every
        self.pacer.took(count)
        return None

    def _delete(self, keys: Sequence[datastore.Key]) -> tuple[int, list[SessionRecord]]:
        if self.act is not None and not self.dry_run:
            return self.act(keys)
        read = self.observer is not None or (self.events is not None and self.events.needs_records)
        count, records = delete_batch(self.client, keys, dry_run=self.dry_run, read=read)
        if self.events is not None:
            self.events.deleted(keys, records)  # after the commit; never raises
        return count, records

    def _collect(self, future: Future[tuple[int, list[SessionRecord]]]) -> None:
        count, records = future.result()
        self.deleted += count
        self.batches += 1
        notify(self.observer, records)

    def run(
        self,
        cursor: str | None,
        *,
        deadline: float | None = None,
        max_pages: int | None = None,
        heartbeat: Callable[[], bool] | None = None,
    ) -> SweepOutcome:
        """Sweep from ``cursor`` until the end, the monotonic ``deadline``, or ``max_pages``.

        ``heartbeat`` is called after each page, and while a paced sweep waits
        at least every ``lease_ttl / 3``; when it answers False the sweep
        stops where it is (``lost`` in the outcome). A paced sweep whose pace
        would wait past its pacer's deadline stops at once (``paused``), with
        the cursor of the page it was deleting (None: the first page), so
        that the next step reads that page again (deleting an absent key is
        a no-op).

        All deletes are committed before it returns; on an error, those already
        committed stay committed and a re-run from the same cursor is safe.
        """
        started = time.monotonic()
        in_flight = self.settings.deletes_in_flight
        pending: deque[Future[tuple[int, list[SessionRecord]]]] = deque()
        pages = 0
        lost = paused = False
        last_report = started
        beat = _Beat(self.settings.lease_ttl.total_seconds() / 3, started)
        with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="sweep") as pool:
            try:
                while True:
                    page_start = cursor
                    keys, cursor, last = self._page(cursor, deadline)  # overlaps with the deletes in flight
                    pages += 1
                    if self.keep is not None:
                        keys = [key for key in keys if not self.keep(key)]
                    chunks = deque(batches(keys, self.settings.batch_size))
                    del keys  # only the commits in flight hold keys while the next page loads
                    while chunks and not lost:
                        while len(pending) >= in_flight:
                            self._collect(pending.popleft())
                        stop = None if self.pacer is None else self._pace(len(chunks[0]), heartbeat, beat)
                        if stop is not None:
                            lost, paused = stop == "lost", stop == "paused"
                            break
                        pending.append(pool.submit(self._delete, chunks.popleft()))
                    if paused:
                        cursor = page_start
                        break
                    if lost:
                        break
                    if self.progress is not None and time.monotonic() - last_report >= 1.0:
                        self.progress(self.deleted, time.monotonic() - started)
                        last_report = time.monotonic()
                    if last:
                        cursor = None
                        break
                    if heartbeat is not None and not heartbeat():
                        lost = True
                        break
                    beat.due = time.monotonic() + beat.every
                    if (deadline is not None and time.monotonic() >= deadline) or (
                        max_pages is not None and pages >= max_pages
                    ):
                        break
            finally:
                while pending:
                    self._collect(pending.popleft())
        if self.progress is not None:
            self.progress(self.deleted, time.monotonic() - started)
        return SweepOutcome(self.deleted, self.batches, pages, cursor, lost, paused)
