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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import structlog
from google.api_core import exceptions as gexc
from google.cloud import datastore
from google.cloud.datastore.query import PropertyFilter

from session_core.config import Settings
from session_core.errors import DispatchError, StoreError, TransientStoreError
from session_core.maintenance.runs import Run, RunRecorder, clear_params
from session_core.maintenance.steps import ClearStep, Enqueue
from session_core.maintenance.sweep import Progress, Sweep, session_query
from session_core.rules import cutoff_for, iso_utc
from session_core.store import FAIL_FAST, DeleteObserver, settings_key, translated

LEASE_KIND = "session_core-lease"
LEASE_NAME = "clear_sessions"
log = structlog.get_logger("session_core.cleanup")


@dataclass(frozen=True)
class ClearResult:
    """What one invocation did (the JSON the function answers, and the command line prints).

    ``counted`` is the expired sessions this step found and ``deleted`` those
    it deleted: the same number, except in a dry run, which deletes nothing
    (``deleted`` is 0, ``counted`` what it would delete).
    """

    run_id: str
    cutoff: float
    deleted: int
    batches: int
    continued: bool
    skipped: bool
    elapsed_s: float
    dry_run: bool = False
    counted: int = 0

    def to_json(self) -> dict[str, Any]:
        """The fields, with ``cutoff_utc``: the cutoff as ISO 8601 beside its epoch value."""
        return {**asdict(self), "cutoff_utc": iso_utc(self.cutoff)}


class _Lease:
    """A small entity that lets one cleanup chain run at a time.

    Held by run id until ``until``, renewed after every page and before a step
    enqueues the next: a run that stopped renewing it for ``lease_ttl`` (it
    crashed, or its next task is stuck in retries) is taken over, and a chain
    that finds its lease taken stops.
    """

    def __init__(self, client: datastore.Client, settings: Settings) -> None:
        self.client = client
        self.key = settings_key(client, settings, LEASE_KIND, LEASE_NAME)
        self.seconds = settings.lease_ttl.total_seconds()

    def acquire(self, run_id: str, now: float, *, with_entities: Sequence[datastore.Entity] = ()) -> bool:
        """Take or renew the lease for ``run_id``; False if another live run holds it.

        ``with_entities`` are written in the same commit (a new run's record).
        A transaction that loses a race with a concurrent run (ABORTED) looks
        again; any other failure raises StoreError.
        """
        for attempt in range(3):
            try:
                with translated("lease"), self.client.transaction():
                    held = self.client.get(self.key, **FAIL_FAST)
                    if held is not None and held["run_id"] != run_id and held["until"] > now:
                        return False
                    lease = datastore.Entity(self.key)
                    lease.update(run_id=run_id, until=now + self.seconds)
                    self.client.put_multi([lease, *with_entities])
                return True
            except TransientStoreError as exc:
                if not isinstance(exc.cause, gexc.Aborted) or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def release_quietly(self, run_id: str) -> None:
        """Release if the store answers; a lease that cannot be released lapses by itself."""
        try:
            self.release(run_id)
        except StoreError as exc:
            log.warning("lease_not_released", run_id=run_id, error=type(exc.cause).__name__)

    def release(self, run_id: str) -> None:
        with translated("lease"), self.client.transaction():
            held = self.client.get(self.key, **FAIL_FAST)
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
    observer: DeleteObserver | None = None,
) -> ClearResult:
    """Start a cleanup run (what Cloud Scheduler triggers). Idempotent.

    Takes the lease (unless ``dry_run``) and records the run
    (:mod:`~session_core.maintenance.runs`) in the same commit; if another
    run holds the lease, returns a result with ``skipped=True`` and touches
    nothing. Otherwise runs the first step; see :func:`run_clear_step`.
    """
    now = time.time() if now is None else now
    step = ClearStep(run_id=uuid.uuid4().hex, cutoff=cutoff_for(now, settings), dry_run=dry_run)
    recorder = RunRecorder(client, settings)
    record = recorder.entity(Run(step.run_id, "clear", clear_params(step.cutoff, step.dry_run), now))
    if dry_run:
        with translated("run"):
            client.put(record, **FAIL_FAST)
    elif not _Lease(client, settings).acquire(step.run_id, now, with_entities=[record]):
        result = ClearResult(step.run_id, step.cutoff, 0, 0, False, True, 0.0, step.dry_run)
        log.info("clear_sessions", **result.to_json())
        return result
    return run_clear_step(
        client, settings, step, enqueue=enqueue, now=now, progress=progress, observer=observer, lease_held=True
    )


def run_clear_step(
    client: datastore.Client,
    settings: Settings,
    step: ClearStep,
    *,
    enqueue: Enqueue | None = None,
    now: float | None = None,
    progress: Progress | None = None,
    observer: DeleteObserver | None = None,
    lease_held: bool = False,
) -> ClearResult:
    """Run one step of a cleanup chain within the time budget. Idempotent.

    Deletes expired sessions page by page from ``step.cursor``, never one
    before its own expiry plus the grace: the cutoff is the step's or the one
    the clock gives now, whichever is earlier. If the budget
    runs out with work left, the next step goes to ``enqueue`` (and the result
    says ``continued``); with no ``enqueue`` the run simply goes on. Transient
    Datastore errors are retried; others raise StoreError after the deletes
    already committed (a retry of the step resumes safely), and the lease is
    released so that the retry need not wait for it. ``observer`` is told of
    each deleted session (never in a dry run); one that raises is logged and
    changes nothing else. ``lease_held``: the caller has just taken the
    lease for this run. Logs exactly one ``clear_sessions`` summary line.
    """
    started = time.monotonic()
    now = time.time() if now is None else now
    lease = _Lease(client, settings)
    if not step.dry_run and not lease_held and not lease.acquire(step.run_id, now):
        result = ClearResult(step.run_id, step.cutoff, 0, 0, False, True, 0.0, step.dry_run)
        log.info("clear_sessions", **result.to_json())
        return result

    cutoff = min(step.cutoff, cutoff_for(now, settings))  # whatever the step says

    def query() -> datastore.Query:
        q = session_query(client, settings)
        q.add_filter(filter=PropertyFilter("lastseen", "<", cutoff))
        return q

    def heartbeat() -> bool:
        return lease.acquire(step.run_id, now + time.monotonic() - started)

    sweep = Sweep(client, settings, query, dry_run=step.dry_run, progress=progress, observer=observer)
    deadline = started + settings.time_budget.total_seconds() if enqueue is not None else None
    next_step = None
    try:
        outcome = sweep.run(step.cursor, deadline=deadline, heartbeat=None if step.dry_run else heartbeat)
        if outcome.cursor is not None and not outcome.lost:
            next_step = ClearStep(step.run_id, step.cutoff, outcome.cursor, step.page + outcome.pages, step.dry_run)
        if next_step is not None and enqueue is not None:
            if step.dry_run or heartbeat():
                enqueue(next_step)
            else:
                next_step = None  # a newer run took the lease over: it carries on
        elif not step.dry_run and not outcome.lost:
            lease.release(step.run_id)
    except (StoreError, DispatchError):
        if not step.dry_run:
            lease.release_quietly(step.run_id)  # so that a retry need not wait for it to lapse
        raise
    RunRecorder(client, settings).record_step(step.run_id, outcome.deleted, chain_finished=next_step is None)
    result = ClearResult(
        run_id=step.run_id,
        cutoff=step.cutoff,
        deleted=0 if step.dry_run else outcome.deleted,
        batches=outcome.batches,
        continued=next_step is not None,
        skipped=False,
        elapsed_s=round(time.monotonic() - started, 3),
        dry_run=step.dry_run,
        counted=outcome.deleted,
    )
    log.info("clear_sessions", page=step.page, lease_lost=outcome.lost, **result.to_json())
    return result
