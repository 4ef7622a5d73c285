"""Run records: every task step must be the very step our own code enqueued for its run's chain.

Whatever starts a run (the scheduler's clear, a Pub/Sub kill, the command
line) writes a run entity in the same commit as its first work: kind
``session_core-run``, named by the run id, with the run's kind, its
parameters (JSON: user, except_session and shard ranges for a kill; cutoff
and dry_run for a clear), its start time and status, and the counts its steps
add.

It also holds, per chain, what that chain's next step is (``chain_steps``:
the next page, cursor and ``done``, from which the whole step follows), and
the digests of the last :data:`RECENT` steps the chain counted. A new run
expects each chain's first step (page 0, no cursor). The transaction that
counts a step (:meth:`RunRecorder.record_step`) moves its chain on to the
next step and commits *before* that step is enqueued; the step to enqueue
is the one the run now expects, so a crash between the commit and the
enqueue is repaired by the redelivery of the step just counted (it is a
duplicate, and its duplicate re-enqueues the expected step; Cloud Tasks
drops the task if it exists, by its name).

``session_task`` admits a step (:func:`check_step`) only if its run exists,
it carries its run's parameters, and it is exactly the step its chain
expects; one of the chain's recently counted steps is a duplicate delivery
(acknowledged without work); anything else (a forged cursor, page or
``done``, a replay of an older step) is refused before any work, so a token
that could be replayed can neither carry a forged "kill everyone" or cutoff,
nor cut a chain short. The steps of a finished run that carry its parameters
are acknowledged without work. Runs recorded before ``chain_steps`` existed
expect nothing: their remaining steps are refused.

Run entities double as receipts (``session-core runs``) and carry an
``expires`` seven days after their start, for a Datastore TTL policy on kind
``session_core-run``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import datastore
from google.cloud.datastore.query import PropertyFilter

from session_core._datastore import FAIL_FAST, settings_key, translated
from session_core._schema import Record, Stored, unindexed
from session_core.config import Settings
from session_core.errors import ForbiddenError, TransientStoreError
from session_core.maintenance.steps import Enqueue, Step, step_type
from session_core.rules import iso_utc

KIND = "session_core-run"
KEEP = timedelta(days=7)
RECENT = 8  # a chain remembers the digests of the last eight steps it counted: their redeliveries are duplicates
RunKind = str  # a registered step type's ``op`` (see :func:`~session_core.maintenance.steps.register`)
RECORD = Record(
    KIND,
    "the run id",
    "a cleanup, kill, rehash or reshard run: its receipt, and the step each of its chains expects next",
    (
        Stored("kind", "string", True, "what the run does: `clear`, `kill`, `rehash` or `reshard`"),
        Stored(
            "params",
            "string (JSON)",
            False,
            "its parameters (kill: user, except_session, shards; clear: cutoff, dry_run, slices)",
        ),
        Stored("started", "float (epoch seconds)", True, "when it started (`session-core runs` lists newest first)"),
        Stored("status", "string", True, "`running` or `done`"),
        Stored("deleted", "integer", True, "sessions its steps deleted (or counted, in a dry run)"),
        Stored("steps", "integer", True, "steps counted"),
        Stored("chains_done", "integer", True, "chains finished"),
        Stored("chains", "integer", True, "chains it runs"),
        Stored("expires", "timestamp", False, f"{KEEP.days} days after its start, for a TTL policy"),
        Stored(
            "chain_steps",
            "string (JSON)",
            False,
            f"per chain: its next step's page, cursor and `done`, and the digests of its last {RECENT} steps",
        ),
    ),
)
"""The run entities (:meth:`RunRecorder.entity` writes them)."""
_UNINDEXED = unindexed(RECORD.properties)


def step_digest(step: Step) -> str:
    """A digest of every field of ``step`` (its exact wire form): two steps share one only if they are equal."""
    canonical = json.dumps(step.to_json(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class ChainState:
    """What a run expects of one chain: its next step's page, cursor and ``done``; or that it finished.

    ``recent`` holds the digests of the steps the chain counted last (oldest
    first, at most :data:`RECENT`).
    """

    page: int = 0
    cursor: str | None = None
    done: int = 0
    finished: bool = False
    recent: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "page": self.page,
            "cursor": self.cursor,
            "done": self.done,
            "finished": self.finished,
            "recent": list(self.recent),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChainState:
        return cls(
            int(data["page"]),
            data["cursor"],
            int(data["done"]),
            bool(data["finished"]),
            tuple(str(d) for d in data["recent"]),
        )


@dataclass(frozen=True)
class Admission:
    """What ``session_task`` does with a step: run it, or acknowledge it without work (enqueueing ``resend``)."""

    run: Run
    skipped: str | None = None  # why it is acknowledged without work; None: run it
    resend: Step | None = None


@dataclass(frozen=True)
class Run:
    """A run as its starter recorded it, with what its steps have done since."""

    run_id: str
    kind: RunKind
    params: dict[str, Any]
    started: float
    status: str = "running"
    deleted: int = 0
    steps: int = 0
    chains_done: int = 0
    chains: int = 1
    expected: Mapping[int, ChainState] = field(default_factory=dict)
    """Per chain, what it expects next; empty in a new ``Run``: each chain's first step (:attr:`expecting`)."""

    @property
    def expecting(self) -> Mapping[int, ChainState]:
        """What each chain expects: as recorded, or for a run not yet recorded, each chain's first step."""
        return self.expected or {chain: ChainState() for chain in range(self.chains)}

    def step_for(self, chain: int, state: ChainState) -> Step:
        """The step of ``chain`` that ``state`` describes: every other field follows from the run (and its kind)."""
        first = step_type(self.kind).for_chain(self.run_id, self.params, self.started, chain)
        return first.at(state.cursor, state.page, state.done)

    def to_json(self) -> dict[str, Any]:
        """The receipt: a dry run's count is ``counted`` (its ``deleted`` is 0); a cutoff also as ISO 8601."""
        dry_run = bool(self.params.get("dry_run"))
        return {
            "run_id": self.run_id,
            "kind": self.kind,
            "started": datetime.fromtimestamp(self.started, tz=UTC).isoformat(),
            "status": self.status,
            "deleted": 0 if dry_run else self.deleted,
            "counted": self.deleted,
            "steps": self.steps,
            "chains": f"{self.chains_done}/{self.chains}",
            **self.params,
            **({"cutoff_utc": iso_utc(self.params["cutoff"])} if "cutoff" in self.params else {}),
        }


def clear_params(
    cutoff: float,
    dry_run: bool,
    slices: Sequence[tuple[float | None, float | None]] | None = None,
    write_shards: Sequence[int | None] | None = None,
) -> dict[str, Any]:
    """A cleanup's parameters; ``write_shards``: the index ranges it queries (None: the one ``lastseen`` index)."""
    params = {"cutoff": cutoff, "dry_run": dry_run, "slices": None if slices is None else [list(s) for s in slices]}
    return params if write_shards is None else {**params, "write_shards": list(write_shards)}


def rehash_params(delete: bool, dry_run: bool) -> dict[str, Any]:
    return {"delete": delete, "dry_run": dry_run}


@dataclass
class RunRecorder:
    """Writes run entities with the client it is given."""

    client: datastore.Client
    settings: Settings

    def key(self, run_id: str) -> datastore.Key:
        return settings_key(self.client, self.settings, KIND, run_id)

    def entity(self, run: Run) -> datastore.Entity:
        """The entity that records ``run``; commit it with the run's first work."""
        entity = datastore.Entity(self.key(run.run_id), exclude_from_indexes=_UNINDEXED)
        entity.update(
            kind=run.kind,
            params=json.dumps(run.params, sort_keys=True),
            started=float(run.started),
            status=run.status,
            deleted=run.deleted,
            steps=run.steps,
            chains_done=run.chains_done,
            chains=run.chains,
            expires=datetime.fromtimestamp(run.started, tz=UTC) + KEEP,
            chain_steps=_chain_steps(run.expecting),
        )
        return entity

    @staticmethod
    def from_entity(entity: datastore.Entity) -> Run:
        return Run(
            run_id=str(entity.key.name),
            kind=entity["kind"],
            params=json.loads(entity["params"]),
            started=float(entity["started"]),
            status=str(entity["status"]),
            deleted=int(entity["deleted"]),
            steps=int(entity["steps"]),
            chains_done=int(entity.get("chains_done", 0)),
            chains=int(entity.get("chains", 1)),
            expected={
                int(n): ChainState.from_json(s) for n, s in json.loads(entity.get("chain_steps") or "{}").items()
            },
        )

    def get(self, run_id: str) -> Run | None:
        with translated("run"):
            entity = self.client.get(self.key(run_id), **FAIL_FAST)
        return None if entity is None else self.from_entity(entity)

    def record_step(self, step: Step, deleted: int, *, pages: int, cursor: str | None, more: bool) -> Step | None:
        """Count ``step`` and move its chain on: the step to enqueue next, or None. One transaction, retried on races.

        ``deleted`` is what the step did, ``pages`` how many pages it read,
        ``more`` whether its chain goes on, from ``cursor`` (None: from the
        start, as after a step paced past its deadline before its first
        page). The
        chain's next step (``page + pages``, ``cursor``, ``done + deleted``)
        is committed as the one the run expects *before* the caller enqueues
        what this returns: so whatever the queue delivers next is a step the
        run already expects.

        A step the chain has counted already (a redelivery, or a second run
        of the same step) is not counted again: this returns the chain's
        expected step when the duplicate is the step counted last and the
        chain goes on (so a crash between this commit and the enqueue is
        repaired by the redelivery; Cloud Tasks drops a task enqueued twice,
        by its name), and None otherwise. A step the run does not expect
        raises ForbiddenError and changes nothing. A run that was never
        recorded (or whose receipt is past its TTL) records nothing.

        Chains finish once, by number, so the run is done only when every one
        of its chains is.
        """
        chain = step.chain
        for attempt in range(5):
            try:
                with translated("run"), self.client.transaction():
                    entity = self.client.get(self.key(step.run_id), **FAIL_FAST)
                    if entity is None:
                        return _following(step, deleted, pages, cursor) if more else None
                    run = self.from_entity(entity)
                    state = run.expected.get(chain)
                    digest = step_digest(step)
                    if state is not None and digest in state.recent:
                        return None if state.finished or digest != state.recent[-1] else run.step_for(chain, state)
                    if state is None or state.finished or run.step_for(chain, state) != step:
                        raise ForbiddenError("the step is not the one its run expects next")
                    recent = (*state.recent, digest)[-RECENT:]
                    page = step.page + max(pages, 1)
                    after = ChainState(page, cursor if more else None, step.done + deleted, not more, recent)
                    entity["chain_steps"] = _chain_steps({**run.expected, chain: after})
                    entity["deleted"] = int(entity["deleted"]) + deleted
                    entity["steps"] = int(entity["steps"]) + 1
                    if not more:
                        finished = {int(n) for n in entity.get("finished_chains") or []} | {chain}
                        entity["finished_chains"] = sorted(finished)
                        entity["chains_done"] = len(finished)
                        if len(finished) >= int(entity.get("chains", 1)):
                            entity["status"] = "done"
                    entity.exclude_from_indexes.update({"finished_chains", "chain_steps"})
                    self.client.put(entity)
                return run.step_for(chain, after) if more else None
            except TransientStoreError as exc:
                if not isinstance(exc.cause, gexc.Aborted) or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def advance(
        self, step: Step, deleted: int, *, pages: int, cursor: str | None, more: bool, enqueue: Enqueue | None
    ) -> Step | None:
        """:meth:`record_step`, then hand the step it returns to ``enqueue``: only once the run expects it."""
        following = self.record_step(step, deleted, pages=pages, cursor=cursor, more=more)
        if following is not None and enqueue is not None:
            enqueue(following)
        return following

    def prune(self, now: float, limit: int = 500) -> int:
        """Delete up to ``limit`` receipts started more than seven days before ``now``; how many went.

        What a TTL policy on ``expires`` does, for projects without one: one
        keys-only query on the built-in ``started`` index, and one commit if
        any are found. The scheduled cleanup calls it once a run.
        """
        query = self.client.query(kind=KIND, namespace=self.settings.namespace)
        query.keys_only()
        query.add_filter(filter=PropertyFilter("started", "<", now - KEEP.total_seconds()))
        with translated("query"):
            keys = [entity.key for entity in query.fetch(limit=limit, **FAIL_FAST)]
        if keys:
            with translated("commit"):
                self.client.delete_multi(keys, **FAIL_FAST)
        return len(keys)

    def recent(self, limit: int = 20) -> list[Run]:
        """The most recently started runs, newest first (one query on the built-in ``started`` index)."""
        query = self.client.query(kind=KIND, namespace=self.settings.namespace)
        query.order = ["-started"]
        with translated("query"):
            return [self.from_entity(entity) for entity in query.fetch(limit=limit, **FAIL_FAST)]


def check_step(recorder: RunRecorder, step: Step) -> Admission:
    """Whether ``session_task`` runs ``step``; ForbiddenError for a step our own code did not enqueue. One lookup.

    The step must carry its run's parameters: its start time (it paces the
    run); for a clear its cutoff and dry-run flag, and either no slice (a
    one-chain run) or one of the run's slices with exactly its bounds; for a
    kill its user and kept session, and either no shard (a one-user run) or
    one of the run's shards with exactly its key range; for a rehash its
    delete and dry-run flags. Then:

    - a step of a finished run is acknowledged without work;
    - the step its chain expects next (page, cursor and ``done`` included)
      runs;
    - one of the last steps its chain counted is a duplicate delivery,
      acknowledged without work; if it is the very last, the chain's next
      step comes back as ``resend``, to be enqueued again (a no-op unless a
      crash came between the count's commit and the enqueue);
    - anything else (a forged cursor, page or ``done``, an older step
      replayed, a step of a finished chain) is refused: ForbiddenError, and
      nothing is deleted or changed.
    """
    run = recorder.get(step.run_id)
    if run is None:
        raise ForbiddenError("the step's run was never started here")
    _check_params(run, step)
    if run.status == "done":
        return Admission(run, "its run has finished")
    chain = step.chain
    state = run.expected.get(chain)
    if state is None:
        raise ForbiddenError("the step's run expects no step of its chain (recorded by an earlier version)")
    if not state.finished and run.step_for(chain, state) == step:
        return Admission(run)
    digest = step_digest(step)
    if digest in state.recent:
        resend = None if state.finished or digest != state.recent[-1] else run.step_for(chain, state)
        return Admission(run, "a duplicate delivery", resend)
    raise ForbiddenError("the step is not the one its run expects next")


def _check_params(run: Run, step: Step) -> None:
    """ForbiddenError unless ``step`` is on one of its run's chains, of its kind, with its start and parameters.

    The run's own step type builds the step the run would enqueue there (steps of
    two types are never equal), so a new step type is checked with no code here.
    """
    if not 0 <= step.chain < run.chains:
        raise ForbiddenError("the step's shard is not one of its run's")
    if run.step_for(step.chain, ChainState(step.page, step.cursor, step.done)) != step:
        raise ForbiddenError("the step's parameters are not its run's")


def _following(step: Step, deleted: int, pages: int, cursor: str | None) -> Step:
    return step.at(cursor, step.page + max(pages, 1), step.done + deleted)


def _chain_steps(states: Mapping[int, ChainState]) -> str:
    return json.dumps({str(chain): state.to_json() for chain, state in sorted(states.items())}, sort_keys=True)


def list_runs(client: datastore.Client, settings: Settings, limit: int = 20) -> list[Run]:
    """The most recent runs, newest first."""
    return RunRecorder(client, settings).recent(limit)
