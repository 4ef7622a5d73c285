"""Expired-session cleanup: keys-only pages, pipelined batch deletes, one chain per ``lastseen`` slice.

Expired means ``lastseen < now - (life time + grace)``: each session the
grace after its own expiry (see :mod:`session_core.rules`). Readers treat a
session as dead once its expiry has passed; the grace protects a request
that loaded a session just before it expired and saves it a little later,
and clock skew between app and worker up to the grace.

A run is one chain of steps, or, with ``SESSION_CLEAR_SHARDS`` = N, N chains,
each over one slice ``lo <= lastseen < hi`` of the expired sessions (two
inequalities on one property: the built-in index serves them). The slices
come from a sample of the expired sessions' ``lastseen``
(:func:`~session_core.maintenance.shards.plan_slices`). Each step pages
through its slice's expired keys with the query cursor and deletes them in
commits of at most ``batch_size`` keys, ``deletes_in_flight`` at a time,
while the next page is fetched, paced by the run's ramp-up schedule
(:mod:`~session_core.maintenance.pacing`). When the time budget runs out with
work left, the next step goes to ``enqueue`` (a Cloud Task) or, with no
queue, runs on in the same process. Re-running any step is safe: deleting an
absent key is a no-op, and the cutoff travels with the chain.

With ``SESSION_WRITE_SHARDS`` = N > 1 the expired sessions sit in N index
ranges of ``shard_lastseen`` (:mod:`session_core.store`), so the one query
runs once per write shard: N chains, each split into the ``SESSION_CLEAR_SHARDS``
slices (N x slices chains; the slice bounds, from one sample, are the same in
every shard, whose sessions are alike). The slice of shard k is two
inequalities on ``shard_lastseen`` (:func:`~session_core.rules.shard_bounds`):
the built-in index serves them. Until a reshard to N has finished
(:mod:`~session_core.maintenance.reshard`) a run also queries the layout
recorded before it (:func:`~session_core.maintenance.reshard.cleanup_targets`).

Each chain holds a lease of its own (:mod:`~session_core.maintenance.leases`),
renewed as it works, so chains never contend on one entity; a run starts only
when no chain of another run holds one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import structlog
from google.cloud import datastore

from session_core._datastore import FAIL_FAST, translated
from session_core.config import MAX_CLEAR_CHAINS, Settings
from session_core.errors import DispatchError, PayloadError, StoreError
from session_core.maintenance.events import EventPublisher, batch_events
from session_core.maintenance.leases import Lease, take_leases
from session_core.maintenance.pacing import pacer_for
from session_core.maintenance.reshard import cleanup_targets, recorded_layout
from session_core.maintenance.runs import Run, RunRecorder, clear_params
from session_core.maintenance.shards import plan_slices
from session_core.maintenance.steps import (
    Enqueue,
    Step,
    Work,
    chain_fields,
    epoch_of,
    exact_fields,
    register,
    shard_field,
    typed,
)
from session_core.maintenance.sweep import Progress, Sweep, lastseen_query, offset_progress
from session_core.rules import cutoff_for, iso_utc
from session_core.store import DeleteObserver

log = structlog.get_logger("session_core.cleanup")


@dataclass(frozen=True)
class ClearResult:
    """What one invocation or step did (the JSON the function answers, and the command line prints).

    ``counted`` is the expired sessions this step found and ``deleted`` those
    it deleted: the same number, except in a dry run, which deletes nothing
    (``deleted`` is 0, ``counted`` what it would delete). ``shard`` is the
    step's chain (None: the run's only chain, or a start that handed its
    chains to the queue); ``shards`` how many chains the run has.
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
    shard: int | None = None
    shards: int = 1

    def to_json(self) -> dict[str, Any]:
        """The fields, with ``cutoff_utc``: the cutoff as ISO 8601 beside its epoch value."""
        return {**asdict(self), "cutoff_utc": iso_utc(self.cutoff)}


@register
@dataclass(frozen=True)
class ClearStep(Step):
    """One bounded step of an expired-session cleanup run: one chain, the slice ``lo <= lastseen < hi``.

    ``shard`` None is the run's only chain (no bounds); otherwise ``lo`` and
    ``hi`` (None: unbounded) bound the slice, below the cutoff either way.
    ``write_shard`` k queries write shard k's ``shard_lastseen`` range; None
    the ``lastseen`` index (one write shard, ViUR's layout).
    ``started`` is the run's start (epoch seconds) and ``done`` what the
    chain deleted before this step: together they pace it (ramp-up).
    """

    run_id: str
    cutoff: float
    dry_run: bool = False
    shard: int | None = None
    lo: float | None = None
    hi: float | None = None
    write_shard: int | None = None

    op = "clear"

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> ClearStep:
        expected = {"op", "run_id", "cutoff", "cursor", "page", "dry_run", "shard", "lo", "hi", "started", "done"}
        exact_fields(payload, expected | ({"write_shard"} & set(payload)))  # absent: a step of an earlier version
        cutoff = epoch_of(payload, "cutoff")
        assert cutoff is not None
        shard = shard_field(payload)
        lo, hi = epoch_of(payload, "lo", optional=True), epoch_of(payload, "hi", optional=True)
        if shard is None and (lo, hi) != (None, None):
            raise PayloadError("bounds without a shard")
        write_shard = typed(payload, "write_shard", int, optional=True) if "write_shard" in payload else None
        if write_shard is not None and not 0 <= write_shard < 256:
            raise PayloadError("write_shard out of range")
        chain = chain_fields(payload)
        dry_run = typed(payload, "dry_run", bool)
        return cls(cutoff=cutoff, dry_run=dry_run, shard=shard, lo=lo, hi=hi, write_shard=write_shard, **chain)

    @classmethod
    def for_chain(cls, run_id: str, params: Mapping[str, Any], started: float, chain: int) -> ClearStep:
        slices = params["slices"] or [[None, None]]
        targets = params.get("write_shards") or [None]
        lo, hi = slices[chain % len(slices)]
        shard = None if len(slices) * len(targets) == 1 else chain
        cutoff, dry_run, target = params["cutoff"], params["dry_run"], targets[chain // len(slices)]
        return cls(run_id, cutoff, dry_run=dry_run, shard=shard, lo=lo, hi=hi, started=started, write_shard=target)

    @classmethod
    def describe(cls, receipt: Mapping[str, Any]) -> tuple[str, str]:
        dry_run = receipt["dry_run"]
        count = f"would delete {receipt['counted']:>9,}" if dry_run else f"     deleted {receipt['deleted']:>9,}"
        return count, f"cutoff {receipt['cutoff_utc']}"

    def run(self, work: Work) -> ClearResult:
        return run_clear_step(
            work.client, work.settings, self, enqueue=work.enqueue, observer=work.observer, chains=work.chains
        )


def start_clear_sessions(
    client: datastore.Client,
    settings: Settings,
    *,
    enqueue: Enqueue | None = None,
    dry_run: bool = False,
    now: float | None = None,
    progress: Progress | None = None,
    observer: DeleteObserver | None = None,
    events: EventPublisher | None = None,
) -> ClearResult:
    """Start a cleanup run (what Cloud Scheduler triggers). Idempotent.

    Queries the write shards' ranges (:func:`~session_core.maintenance.reshard.cleanup_targets`:
    one lookup) and plans ``SESSION_CLEAR_SHARDS`` slices within each (one: no
    sample), at most 256 chains in all, then takes every
    chain's lease and records the run (:mod:`~session_core.maintenance.runs`)
    in one commit (a dry run takes no lease); if a chain of another run is
    alive, returns a result with ``skipped=True`` and touches nothing. With
    one chain, runs its first step here (see :func:`run_clear_step`). With
    several, hands each chain's first step to ``enqueue``, or without a queue
    runs the chains here, one after another. With lifecycle events on (a
    publisher passed, or ``SESSION_EVENTS_TOPIC``) each deleted batch is
    published as ``expired``.
    """
    now = time.time() if now is None else now
    run_id, cutoff = uuid.uuid4().hex, cutoff_for(now, settings)
    targets = cleanup_targets(settings.write_shards, recorded_layout(client, settings))
    asked = max(1, min(settings.clear_shards, MAX_CLEAR_CHAINS // len(targets)))
    slices = plan_slices(client, settings, cutoff, asked, targets)
    if len(slices) < asked:  # sessions sharing one lastseen value are never split
        log.warning("clear_slices_collapsed", asked=asked, slices=len(slices))
    sliced, chains = len(slices) > 1, len(slices) * len(targets)
    params = clear_params(cutoff, dry_run, slices if sliced else None, None if targets == [None] else targets)
    run = Run(run_id, ClearStep.op, params, now, chains=chains)
    record = RunRecorder(client, settings).entity(run)
    if dry_run:
        with translated("run"):
            client.put(record, **FAIL_FAST)
    elif not take_leases(client, settings, run_id, now, chains, record):
        result = ClearResult(run_id, cutoff, 0, 0, False, True, 0.0, dry_run, shards=chains)
        log.info("clear_sessions", **result.to_json())
        return result
    if not dry_run:
        _prune_receipts(client, settings, now)
    steps = [ClearStep.for_chain(run_id, run.params, now, chain) for chain in range(chains)]
    if chains == 1:
        return run_clear_step(
            client,
            settings,
            steps[0],
            enqueue=enqueue,
            now=now,
            progress=progress,
            observer=observer,
            lease_held=True,
            events=events,
        )
    started, deleted, counted, batches = time.monotonic(), 0, 0, 0
    for step in steps:
        if enqueue is not None:
            enqueue(step)
            continue
        done = run_clear_step(
            client,
            settings,
            step,
            now=now,
            progress=offset_progress(progress, counted),
            observer=observer,
            chains=len(steps),
            events=events,
        )
        deleted, counted, batches = deleted + done.deleted, counted + done.counted, batches + done.batches
    elapsed = round(time.monotonic() - started, 3)
    result = ClearResult(
        run_id, cutoff, deleted, batches, enqueue is not None, False, elapsed, dry_run, counted, None, len(steps)
    )
    log.info("clear_sessions", **result.to_json())
    return result


def _prune_receipts(client: datastore.Client, settings: Settings, now: float) -> None:
    """Delete run receipts past their seven days (no TTL policy needed); a failure only waits for the next run."""
    try:
        pruned = RunRecorder(client, settings).prune(now)
    except StoreError as exc:
        log.warning("runs_not_pruned", error=type(exc.cause).__name__)
        return
    if pruned:
        log.info("runs_pruned", count=pruned)


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
    chains: int = 1,
    events: EventPublisher | None = None,
) -> ClearResult:
    """Run one step of a cleanup chain within the time budget. Idempotent.

    Deletes the expired sessions of the step's slice page by page from
    ``step.cursor``, never one before its own expiry plus the grace: the
    cutoff is the step's or the one the clock gives now, whichever is
    earlier. The deletes follow the run's ramp-up schedule, this chain taking
    ``1 / chains`` of it (``SESSION_RAMPUP``). If the budget runs out with work
    left, the next step goes to ``enqueue`` (and the result says
    ``continued``); with no ``enqueue`` the chain simply goes on. Transient
    Datastore errors are retried; others raise StoreError after the deletes
    already committed (a retry of the step resumes safely), and the chain's
    lease is released so that the retry need not wait for it. ``observer``
    is told of each deleted session (never in a dry run); one that raises is
    logged and changes nothing else. ``lease_held``: the caller has just
    taken the lease for this run. Logs exactly one ``clear_sessions`` line.

    The step is counted, and its chain's next step recorded as the one the
    run expects, in one commit before that next step is enqueued
    (:meth:`~session_core.maintenance.runs.RunRecorder.record_step`): a
    failure to enqueue is retried by the step's redelivery, which the run
    knows as a duplicate and which enqueues that same next step. The pace
    never waits past the step's budget, whatever ``done`` it carries.
    """
    started = time.monotonic()
    now = time.time() if now is None else now
    lease = Lease(client, settings, step.shard)
    if not step.dry_run and not lease_held and not lease.acquire(step.run_id, now, chains=chains):
        result = ClearResult(
            step.run_id, step.cutoff, 0, 0, False, True, 0.0, step.dry_run, shard=step.shard, shards=chains
        )
        log.info("clear_sessions", **result.to_json())
        return result
    cutoff = min(step.cutoff, cutoff_for(now, settings))  # whatever the step says
    upper = cutoff if step.hi is None else min(step.hi, cutoff)

    def query() -> datastore.Query:
        return lastseen_query(client, settings, step.write_shard, step.lo, upper)

    def heartbeat() -> bool:
        return lease.acquire(step.run_id, now + time.monotonic() - started, chains=chains)

    budget = settings.time_budget.total_seconds() if enqueue is not None else None
    pacer = pacer_for(settings, step, chains=chains, within=budget, now=now)
    sweep = Sweep(
        client,
        settings,
        query,
        dry_run=step.dry_run,
        progress=progress,
        observer=observer,
        pacer=pacer,
        events=batch_events(settings, events, "expired", step.run_id),
    )
    deadline = None if budget is None else started + budget
    following = None
    try:
        outcome = sweep.run(step.cursor, deadline=deadline, heartbeat=None if step.dry_run else heartbeat)
        more = outcome.more and enqueue is not None
        if more and not step.dry_run and not heartbeat():
            more = False  # a newer run took the lease over: it carries on
        elif not more and not step.dry_run and not outcome.lost:
            lease.release(step.run_id)
        recorder = RunRecorder(client, settings)
        following = recorder.advance(
            step, outcome.deleted, pages=outcome.pages, cursor=outcome.cursor, more=more, enqueue=enqueue
        )
    except (StoreError, DispatchError):
        if not step.dry_run:
            lease.release_quietly(step.run_id)  # so that a retry need not wait for it to lapse
        raise
    result = ClearResult(
        run_id=step.run_id,
        cutoff=step.cutoff,
        deleted=0 if step.dry_run else outcome.deleted,
        batches=outcome.batches,
        continued=following is not None,
        skipped=False,
        elapsed_s=round(time.monotonic() - started, 3),
        dry_run=step.dry_run,
        counted=outcome.deleted,
        shard=step.shard,
        shards=chains,
    )
    paced = round(pacer.waited, 3) if pacer is not None else 0.0
    log.info("clear_sessions", page=step.page, lease_lost=outcome.lost, paced_s=paced, **result.to_json())
    return result
