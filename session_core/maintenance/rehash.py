"""Rehash: move every session still stored under ViUR's plain cookie name to its hashed name (or delete it).

A plain-key session is a live credential in any export or backup until its
next save moves it. This closes that window: a keys-only scan of the whole
kind finds the plain names (42 alphanumerics; a hashed name is 64 hex
digits), and each batch moves the same way a saving request does
(:meth:`~session_core.store.SessionStore.move`): one transaction updates the
old entity and inserts the new one, all or none, then the old name goes. So a
session deleted meanwhile is never resurrected (the update fails), and a
request saving it at the same moment is never logged out (whichever moves it
first, the other writes under the hashed name). With ``delete`` the plain-key
sessions are deleted instead (their users are logged out).

It refuses to run unless ``SESSION_KEY_STORAGE=hashed``: while old ViUR
instances still read plain names, moving the sessions would log their users
out. It is idempotent and resumable (a chain of steps, like cleanup) and
paced by the same ramp-up schedule.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import structlog
from google.api_core import exceptions as gexc
from google.cloud import datastore

from session_core import values
from session_core._datastore import FAIL_FAST, commit, rehome, translated
from session_core.config import Settings
from session_core.errors import MisuseError, StoreError
from session_core.maintenance.pacing import pacer_for
from session_core.maintenance.runs import Run, RunRecorder, rehash_params
from session_core.maintenance.steps import Enqueue, Step, Work, chain_fields, exact_fields, register, task_id, typed
from session_core.maintenance.sweep import Progress, Sweep, session_query, with_retries
from session_core.rules import hash_key, is_valid_key
from session_core.store import SessionRecord

MAX_TRANSACTION_BYTES = 4 * 1024 * 1024  # a commit request may carry 10 MiB; stay well below
MAX_MOVES_PER_TRANSACTION = 250  # two mutations each: Datastore's 500 per commit
log = structlog.get_logger("session_core.rehash")


@dataclass(frozen=True)
class RehashResult:
    """What one invocation or step did: plain-key sessions moved (or deleted, or counted in a dry run)."""

    run_id: str
    handled: int
    batches: int
    continued: bool
    elapsed_s: float
    delete: bool = False
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@register
@dataclass(frozen=True)
class RehashStep(Step):
    """One bounded step of a rehash run: move (or, with ``delete``, delete) ViUR plain-key sessions."""

    run_id: str
    delete: bool = False
    dry_run: bool = False

    op = "rehash"

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> RehashStep:
        exact_fields(payload, {"op", "run_id", "delete", "dry_run", "cursor", "page", "started", "done"})
        chain = chain_fields(payload)
        return cls(delete=typed(payload, "delete", bool), dry_run=typed(payload, "dry_run", bool), **chain)

    @classmethod
    def for_chain(cls, run_id: str, params: Mapping[str, Any], started: float, chain: int) -> RehashStep:
        return cls(run_id, delete=params["delete"], dry_run=params["dry_run"], started=started)

    @classmethod
    def describe(cls, receipt: Mapping[str, Any]) -> tuple[str, str]:
        verb = "       found" if receipt["dry_run"] else "     deleted" if receipt["delete"] else "       moved"
        return f"{verb} {receipt['counted']:>9,}", "plain-key sessions"

    def run(self, work: Work) -> RehashResult:
        """One step of the rehash (one chain; it tells no observer: it moves sessions, it deletes none)."""
        return run_rehash_step(work.client, work.settings, self, enqueue=work.enqueue)

    @property
    def task_id(self) -> str:
        return task_id(self.op, self.run_id, str(self.page))


def is_plain(key: datastore.Key) -> bool:
    """A session stored under ViUR's plain cookie name (a hashed name is 64 hex digits)."""
    return is_valid_key(key.name)


def start_rehash(
    client: datastore.Client,
    settings: Settings,
    *,
    delete: bool = False,
    dry_run: bool = False,
    enqueue: Enqueue | None = None,
    now: float | None = None,
    progress: Progress | None = None,
) -> RehashResult:
    """Start a rehash run: record it, then run its first step (see :func:`run_rehash_step`).

    MisuseError before any RPC unless ``SESSION_KEY_STORAGE=hashed``.
    """
    if settings.key_storage != "hashed":
        raise MisuseError(
            "rehash needs SESSION_KEY_STORAGE=hashed: with plain names (old ViUR instances still reading them) "
            "moving the sessions would log their users out"
        )
    now = time.time() if now is None else now
    run = Run(uuid.uuid4().hex, RehashStep.op, rehash_params(delete, dry_run), now)
    with translated("run"):
        client.put(RunRecorder(client, settings).entity(run), **FAIL_FAST)
    step = RehashStep.for_chain(run.run_id, run.params, now, 0)
    return run_rehash_step(client, settings, step, enqueue=enqueue, progress=progress)


def run_rehash_step(
    client: datastore.Client,
    settings: Settings,
    step: RehashStep,
    *,
    enqueue: Enqueue | None = None,
    progress: Progress | None = None,
) -> RehashResult:
    """One bounded step of a rehash run: scan on from ``step.cursor``, move each plain-key session. Idempotent.

    Paced like cleanup (``SESSION_RAMPUP``), never waiting past the budget.
    With work left past the time budget, the next step goes to ``enqueue``,
    once the run's record expects it (see
    :meth:`~session_core.maintenance.runs.RunRecorder.record_step`); with no
    queue the run goes on here. Logs one ``rehash_sessions`` line.
    """
    started = time.monotonic()
    budget = settings.time_budget.total_seconds() if enqueue is not None else None
    pacer = pacer_for(settings, step, within=budget)
    mover = None if step.delete else _Mover(client, settings)
    sweep = Sweep(
        client,
        settings,
        lambda: session_query(client, settings),
        dry_run=step.dry_run,
        keep=lambda key: not is_plain(key),
        progress=progress,
        pacer=pacer,
        act=None if mover is None else mover.move,
    )
    deadline = None if budget is None else started + budget
    outcome = sweep.run(step.cursor, deadline=deadline)
    recorder = RunRecorder(client, settings)
    more = outcome.more and enqueue is not None
    following = recorder.advance(
        step, outcome.deleted, pages=outcome.pages, cursor=outcome.cursor, more=more, enqueue=enqueue
    )
    result = RehashResult(
        run_id=step.run_id,
        handled=outcome.deleted,
        batches=outcome.batches,
        continued=following is not None,
        elapsed_s=round(time.monotonic() - started, 3),
        delete=step.delete,
        dry_run=step.dry_run,
    )
    log.info("rehash_sessions", page=step.page, **result.to_json())
    return result


class _Mover:
    """Moves one batch of plain-key sessions to their hashed names (the sweep's action)."""

    def __init__(self, client: datastore.Client, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    def move(self, keys: Sequence[datastore.Key]) -> tuple[int, list[SessionRecord]]:
        """Move what still exists of ``keys``; the count is how many are now under their hashed names."""

        def lookup() -> list[datastore.Entity]:
            with translated("lookup"):
                found: list[datastore.Entity] = self.client.get_multi(list(keys), **FAIL_FAST)
                return found

        moved = 0
        for group in _groups(with_retries(lookup)):
            moved += self._move_group(group)
        return moved, []

    def _move_group(self, olds: list[datastore.Entity]) -> int:
        pairs = [(old, _hashed_copy(old)) for old in olds]
        try:
            with_retries(lambda: self._transaction([old for old, _ in pairs], [new for _, new in pairs]))
        except StoreError as exc:
            if not isinstance(exc.cause, (gexc.NotFound, gexc.AlreadyExists, gexc.Aborted)):
                raise
            return sum(self._move_one(old, new) for old, new in pairs)  # someone else was faster for some
        self._delete([old.key for old, _ in pairs])
        return len(pairs)

    def _move_one(self, old: datastore.Entity, new: datastore.Entity) -> int:
        try:
            with_retries(lambda: self._transaction([old], [new]))
        except StoreError as exc:
            if isinstance(exc.cause, gexc.NotFound):
                return 0  # deleted meanwhile (killed, cleared, or moved and gone): nothing to resurrect
            if not isinstance(exc.cause, gexc.AlreadyExists):
                raise
            # a request moved it first; it deletes the plain name itself, and so do we
        self._delete([old.key])
        return 1

    def _transaction(self, olds: list[datastore.Entity], news: list[datastore.Entity]) -> None:
        with translated("rehash"):
            rehome(self.client, olds, news, FAIL_FAST)

    def _delete(self, keys: list[datastore.Key]) -> None:
        def delete() -> None:
            with translated("delete"):
                commit(self.client, delete=keys, rpc=FAIL_FAST)

        with_retries(delete)


def _hashed_copy(old: datastore.Entity) -> datastore.Entity:
    """The same session, property for property, under the hashed name of its plain one."""
    source = old.key
    key = datastore.Key(
        source.kind, hash_key(source.name), project=source.project, namespace=source.namespace, database=source.database
    )
    new = datastore.Entity(key, exclude_from_indexes=tuple(old.exclude_from_indexes))
    new.update(old)
    return new


def _groups(entities: list[datastore.Entity]) -> list[list[datastore.Entity]]:
    """Batches of sessions small enough for one transaction (mutation count and request size)."""
    groups: list[list[datastore.Entity]] = []
    current: list[datastore.Entity] = []
    size = 0
    for entity in entities:
        weight = 2 * values.entity_size(entity)
        if current and (len(current) >= MAX_MOVES_PER_TRANSACTION or size + weight > MAX_TRANSACTION_BYTES):
            groups.append(current)
            current, size = [], 0
        current.append(entity)
        size += weight
    if current:
        groups.append(current)
    return groups
