"""Run records: every task step must belong to a run our own code started, with the same parameters.

Whatever starts a run (the scheduler's clear, a Pub/Sub kill, the command
line) writes a run entity in the same commit as its first work: kind
``session_core-run``, named by the run id, with the run's kind, its
parameters (JSON: user, except_session and shard ranges for a kill; cutoff
and dry_run for a clear), its start time and status, and the counts its steps
add. ``session_task`` runs a step only if its run exists and the step's
parameters are the run's (:func:`check_step`), so a token that could be
replayed cannot carry a forged "kill everyone" or a forged cutoff; the steps
of a finished run are acknowledged without work.

Run entities double as receipts (``session-core runs``) and carry an
``expires`` seven days after their start, for a Datastore TTL policy on kind
``session_core-run``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from google.api_core import exceptions as gexc
from google.cloud import datastore
from google.cloud.datastore.query import PropertyFilter

from session_core.config import Settings
from session_core.errors import ForbiddenError, TransientStoreError
from session_core.maintenance.steps import ClearStep, RehashStep, Step
from session_core.rules import iso_utc
from session_core.store import FAIL_FAST, settings_key, translated

KIND = "session_core-run"
KEEP = timedelta(days=7)
RunKind = Literal["clear", "kill", "rehash"]


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
    cutoff: float, dry_run: bool, slices: Sequence[tuple[float | None, float | None]] | None = None
) -> dict[str, Any]:
    return {"cutoff": cutoff, "dry_run": dry_run, "slices": None if slices is None else [list(s) for s in slices]}


def rehash_params(delete: bool, dry_run: bool) -> dict[str, Any]:
    return {"delete": delete, "dry_run": dry_run}


def kill_params(
    user: str | None, except_session: str | None, shards: Sequence[tuple[str | None, str | None]] | None
) -> dict[str, Any]:
    ranges = None if shards is None else [list(bounds) for bounds in shards]
    return {"user": user, "except_session": except_session, "shards": ranges}


@dataclass
class RunRecorder:
    """Writes run entities with the client it is given."""

    client: datastore.Client
    settings: Settings

    def key(self, run_id: str) -> datastore.Key:
        return settings_key(self.client, self.settings, KIND, run_id)

    def entity(self, run: Run) -> datastore.Entity:
        """The entity that records ``run``; commit it with the run's first work."""
        entity = datastore.Entity(self.key(run.run_id), exclude_from_indexes=("params", "expires", "finished_chains"))
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
        )

    def get(self, run_id: str) -> Run | None:
        with translated("run"):
            entity = self.client.get(self.key(run_id), **FAIL_FAST)
        return None if entity is None else self.from_entity(entity)

    def record_step(self, run_id: str, deleted: int, *, chain_finished: bool, chain: int | None = None) -> None:
        """Add a step's count to its run; a finished chain may finish the run. One transaction, retried on races.

        Chains are counted by number (``chain``: the step's shard; None is a
        one-chain run's), so a last step delivered twice, or a chain forked by
        a retried step, finishes its chain once: the run is done only when
        every one of its chains is.
        """
        for attempt in range(5):
            try:
                with translated("run"), self.client.transaction():
                    entity = self.client.get(self.key(run_id), **FAIL_FAST)
                    if entity is None:
                        return  # an inline run that was never recorded, or a receipt past its TTL
                    entity["deleted"] = int(entity["deleted"]) + deleted
                    entity["steps"] = int(entity["steps"]) + 1
                    if chain_finished:
                        finished = {int(n) for n in entity.get("finished_chains") or []} | {chain or 0}
                        entity["finished_chains"] = sorted(finished)
                        entity.exclude_from_indexes.add("finished_chains")
                        entity["chains_done"] = len(finished)
                        if len(finished) >= int(entity.get("chains", 1)):
                            entity["status"] = "done"
                    self.client.put(entity)
                return
            except TransientStoreError as exc:
                if not isinstance(exc.cause, gexc.Aborted) or attempt == 4:
                    raise

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


def check_step(recorder: RunRecorder, step: Step) -> Run:
    """The step's run, if the step is one our own code made for it; ForbiddenError otherwise. One lookup.

    Every step must carry its run's start time (it paces the run). A clear
    step must carry its run's cutoff and dry-run flag, and either no slice
    (a one-chain run) or one of the run's slices with exactly its bounds; a
    kill step its run's user and kept session, and either no shard (a
    one-user run) or one of the run's shards with exactly its key range; a
    rehash step its run's delete and dry-run flags.
    """
    run = recorder.get(step.run_id)
    if run is None:
        raise ForbiddenError("the step's run was never started here")
    if step.started != run.started or run.kind != step.op:
        raise ForbiddenError("the step's parameters are not its run's")
    if isinstance(step, RehashStep):
        if run.params != rehash_params(step.delete, step.dry_run):
            raise ForbiddenError("the step's parameters are not its run's")
        return run
    if isinstance(step, ClearStep):
        ours = (run.params["cutoff"], run.params["dry_run"]) == (step.cutoff, step.dry_run)
        ranges = run.params["slices"]
    else:
        ours = (run.params["user"], run.params["except_session"]) == (step.user, step.except_session)
        ranges = run.params["shards"]
    if not ours:
        raise ForbiddenError("the step's parameters are not its run's")
    if step.shard is None:
        if ranges is not None:
            raise ForbiddenError("the step's parameters are not its run's")
    elif ranges is None or not 0 <= step.shard < len(ranges) or ranges[step.shard] != [step.lo, step.hi]:
        raise ForbiddenError("the step's shard is not one of its run's")
    return run


def list_runs(client: datastore.Client, settings: Settings, limit: int = 20) -> list[Run]:
    """The most recent runs, newest first."""
    return RunRecorder(client, settings).recent(limit)
