"""Reshard: rewrite every session into the index layout of ``SESSION_WRITE_SHARDS``, without logging anyone out.

A session takes the layout of the current ``SESSION_WRITE_SHARDS`` = N on its
next save (:func:`~session_core.store.session_entity`). Sessions that are not
saved meanwhile keep the layout they were written with, which the cleanup's
N queries would not find. This one-off run finds them: a keys-only scan of
the whole kind (like the rehash), and for each batch one read-write
transaction that reads the sessions and rewrites those not yet in the layout
(:func:`~session_core.store.relayout`: only ``shard_lastseen`` and whether
``lastseen`` is indexed change). A request saving a session at the same
moment makes the transaction retry on what the request wrote, so nothing it
wrote is lost; a session deleted meanwhile is not resurrected.

When the scan has finished it records the layout (:func:`record_layout`).
Until then the cleanup queries both layouts: N's and the one recorded before
(:func:`cleanup_targets`; none recorded: ViUR's one ``lastseen`` range).
Deploy the new N to every instance first, then run this; change N again only
once it has finished. Idempotent and resumable (a chain of steps, like
cleanup), and paced by the same ramp-up schedule.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import structlog
from google.cloud import datastore

from session_core import values
from session_core._datastore import FAIL_FAST, settings_key, translated
from session_core._schema import Record, Stored, unindexed
from session_core.config import Settings
from session_core.errors import PayloadError
from session_core.maintenance.pacing import pacer_for
from session_core.maintenance.runs import Run, RunRecorder
from session_core.maintenance.steps import Enqueue, Step, Work, chain_fields, exact_fields, register, task_id, typed
from session_core.maintenance.sweep import Progress, Sweep, Target, session_query, with_retries
from session_core.store import SessionRecord, in_layout, relayout

MAX_TRANSACTION_BYTES = 4 * 1024 * 1024  # a commit may carry 10 MiB; stay well below
LAYOUT_KIND = "session_core-layout"
LAYOUT_NAME = "write_shards"
MAX_SHARDS = 256
RECORD = Record(
    LAYOUT_KIND,
    f"`{LAYOUT_NAME}`",
    "the write-shard layout the last finished reshard moved every session to (none: ViUR's one `lastseen` range)",
    (
        Stored("shards", "integer", True, f"the write shards, 1 to {MAX_SHARDS}"),
        Stored("at", "float (epoch seconds)", False, "when the reshard finished"),
    ),
)
"""The layout record (:func:`record_layout` writes it)."""
_UNINDEXED = unindexed(RECORD.properties)
log = structlog.get_logger("session_core.reshard")


def layout_targets(shards: int) -> list[Target]:
    """The index ranges of the layout of ``shards`` write shards: None (the ``lastseen`` index) for one."""
    return [None] if shards == 1 else list(range(shards))


def cleanup_targets(shards: int, recorded: int) -> list[Target]:
    """What a cleanup queries: the ranges of ``shards``, and until a reshard to it has finished, of ``recorded``."""
    targets = layout_targets(shards)
    if recorded != shards:
        targets += [target for target in layout_targets(recorded) if target not in targets]
    return targets


def recorded_layout(client: datastore.Client, settings: Settings) -> int:
    """The write shards the last finished reshard moved every session to; 1 (ViUR's layout) if none ever did."""

    def lookup() -> Any:
        with translated("lookup"):
            return client.get(settings_key(client, settings, LAYOUT_KIND, LAYOUT_NAME), **FAIL_FAST)

    entity = with_retries(lookup)
    shards = None if entity is None else entity.get("shards")
    return shards if isinstance(shards, int) and not isinstance(shards, bool) and 1 <= shards <= MAX_SHARDS else 1


def record_layout(client: datastore.Client, settings: Settings, shards: int, now: float) -> None:
    """Record that every session is in the layout of ``shards`` write shards (one write)."""
    entity = datastore.Entity(settings_key(client, settings, LAYOUT_KIND, LAYOUT_NAME), exclude_from_indexes=_UNINDEXED)
    entity.update(shards=shards, at=now)

    def put() -> None:
        with translated("layout"):
            client.put(entity, **FAIL_FAST)

    with_retries(put)


def reshard_params(shards: int) -> dict[str, Any]:
    return {"shards": shards}


@dataclass(frozen=True)
class ReshardResult:
    """What one invocation or step did: sessions rewritten into the layout, and whether the scan finished."""

    run_id: str
    shards: int
    rewritten: int
    batches: int
    continued: bool
    finished: bool
    elapsed_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@register
@dataclass(frozen=True)
class ReshardStep(Step):
    """One bounded step of a reshard run: rewrite the sessions not yet in the layout of ``shards`` write shards."""

    run_id: str
    shards: int = 1

    op = "reshard"

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> ReshardStep:
        exact_fields(payload, {"op", "run_id", "shards", "cursor", "page", "started", "done"})
        shards = typed(payload, "shards", int)
        if not 1 <= shards <= MAX_SHARDS:
            raise PayloadError("shards out of range")
        return cls(shards=shards, **chain_fields(payload))

    @classmethod
    def for_chain(cls, run_id: str, params: Mapping[str, Any], started: float, chain: int) -> ReshardStep:
        return cls(run_id, shards=params["shards"], started=started)

    @classmethod
    def describe(cls, receipt: Mapping[str, Any]) -> tuple[str, str]:
        return f"   rewritten {receipt['counted']:>9,}", f"sessions into {receipt['shards']} write shards"

    def run(self, work: Work) -> ReshardResult:
        return run_reshard_step(work.client, work.settings, self, enqueue=work.enqueue)

    @property
    def task_id(self) -> str:
        return task_id(self.op, self.run_id, str(self.page))


def start_reshard(
    client: datastore.Client,
    settings: Settings,
    *,
    enqueue: Enqueue | None = None,
    now: float | None = None,
    progress: Progress | None = None,
) -> ReshardResult:
    """Start a reshard run to ``SESSION_WRITE_SHARDS``: record it, then run its first step (see below)."""
    now = time.time() if now is None else now
    run = Run(uuid.uuid4().hex, ReshardStep.op, reshard_params(settings.write_shards), now)
    with translated("run"):
        client.put(RunRecorder(client, settings).entity(run), **FAIL_FAST)
    step = ReshardStep.for_chain(run.run_id, run.params, now, 0)
    return run_reshard_step(client, settings, step, enqueue=enqueue, progress=progress, now=now)


def run_reshard_step(
    client: datastore.Client,
    settings: Settings,
    step: ReshardStep,
    *,
    enqueue: Enqueue | None = None,
    progress: Progress | None = None,
    now: float | None = None,
) -> ReshardResult:
    """One bounded step of a reshard run: scan on from ``step.cursor``, rewrite what is not in the layout. Idempotent.

    Paced like cleanup (``SESSION_RAMPUP``), never waiting past the budget;
    with work left past the time budget the next step goes to ``enqueue``
    (with no queue the run goes on here). The step that ends the scan records
    the layout, so that the cleanup stops querying the one before. Logs one
    ``reshard_sessions`` line.
    """
    started = time.monotonic()
    budget = settings.time_budget.total_seconds() if enqueue is not None else None
    pacer = pacer_for(settings, step, within=budget)
    rewriter = _Rewriter(client, step.shards)
    sweep = Sweep(
        client,
        settings,
        lambda: session_query(client, settings),
        progress=progress,
        pacer=pacer,
        act=rewriter.rewrite,
    )
    deadline = None if budget is None else started + budget
    outcome = sweep.run(step.cursor, deadline=deadline)
    finished = not outcome.more
    if finished:
        record_layout(client, settings, step.shards, time.time() if now is None else now)
    more = outcome.more and enqueue is not None
    following = RunRecorder(client, settings).advance(
        step, outcome.deleted, pages=outcome.pages, cursor=outcome.cursor, more=more, enqueue=enqueue
    )
    result = ReshardResult(
        run_id=step.run_id,
        shards=step.shards,
        rewritten=outcome.deleted,
        batches=outcome.batches,
        continued=following is not None,
        finished=finished,
        elapsed_s=round(time.monotonic() - started, 3),
    )
    log.info("reshard_sessions", page=step.page, **result.to_json())
    return result


class _Rewriter:
    """Rewrites one batch of sessions into the layout (the sweep's action): one read-write transaction."""

    def __init__(self, client: datastore.Client, shards: int) -> None:
        self.client = client
        self.shards = shards

    def rewrite(self, keys: Sequence[datastore.Key]) -> tuple[int, list[SessionRecord]]:
        """Rewrite what still exists of ``keys`` and is not in the layout; the count is how many were rewritten.

        A batch too large for one commit is split in halves, each its own transaction.
        """

        def transaction() -> int | None:
            with translated("reshard"), self.client.transaction() as batch:
                found = self.client.get_multi(list(keys), transaction=batch)
                stale = [relayout(entity, self.shards) for entity in found if not in_layout(entity, self.shards)]
                if len(keys) > 1 and sum(values.entity_size(entity) for entity in stale) > MAX_TRANSACTION_BYTES:
                    batch.rollback()
                    return None
                for entity in stale:
                    batch.put(entity)
            return len(stale)

        count: int | None = with_retries(transaction)
        if count is None:
            half = len(keys) // 2
            return self.rewrite(keys[:half])[0] + self.rewrite(keys[half:])[0], []
        return count, []
