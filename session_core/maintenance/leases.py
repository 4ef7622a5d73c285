"""Leases: one chain of one cleanup run works at a time, and a run starts only when no chain of another is alive.

Each chain holds a lease of its own (kind ``session_core-lease``, named
:func:`lease_name`), renewed as it works, so chains never contend on one
entity. A lease is held by run id until ``until``: a chain that stopped
renewing it for ``SESSION_LEASE_TTL`` (it crashed, or its next task is stuck
in retries) is taken over, and a chain that finds its lease taken stops. The
first lease remembers how many chains its run has, so a run with fewer
chains still sees every lease of a run with more. Every lease change is one
transaction, looked at again when it loses a race (ABORTED).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from google.api_core import exceptions as gexc
from google.cloud import datastore

from session_core._datastore import FAIL_FAST, settings_key, translated
from session_core._schema import Record, Stored, unindexed
from session_core.config import Settings
from session_core.errors import StoreError, TransientStoreError

LEASE_KIND = "session_core-lease"
LEASE_NAME = "clear_sessions"  # the first chain's lease (the only one, with one chain)
RECORD = Record(
    LEASE_KIND,
    f"`{LEASE_NAME}` (the first chain), `{LEASE_NAME}:<chain>` (the others)",
    "one chain of one cleanup run works at a time; taken over once it lapses",
    (
        Stored("run_id", "string", True, "the run that holds it"),
        Stored("until", "float (epoch seconds)", True, "when it lapses unless renewed: `SESSION_LEASE_TTL` after"),
        Stored("chains", "integer", True, "how many chains its run has (the first lease keeps it, lapsed)"),
    ),
)
"""The lease entities (:meth:`Lease.entity` writes them)."""
_UNINDEXED = unindexed(RECORD.properties)
log = structlog.get_logger("session_core.cleanup")


def lease_name(shard: int | None) -> str:
    """The lease of a chain: the first chain keeps the name a one-chain run has always used."""
    return LEASE_NAME if not shard else f"{LEASE_NAME}:{shard}"


class Lease:
    """A small entity that lets one chain (one slice) of one cleanup run work at a time.

    Held by run id until ``until``, renewed as the chain works and before a
    step enqueues the next: a chain that stopped renewing it for
    ``lease_ttl`` (it crashed, or its next task is stuck in retries) is taken
    over, and a chain that finds its lease taken stops.
    """

    def __init__(self, client: datastore.Client, settings: Settings, shard: int | None = None) -> None:
        self.client = client
        self.shard = shard
        self.key = settings_key(client, settings, LEASE_KIND, lease_name(shard))
        self.seconds = settings.lease_ttl.total_seconds()

    def acquire(self, run_id: str, now: float, *, chains: int = 1) -> bool:
        """Take or renew the lease for ``run_id`` (a run of ``chains`` chains); False if another live run holds it.

        A transaction that loses a race with a concurrent run (ABORTED) looks
        again; any other failure raises StoreError.
        """
        return _transact(self.client, lambda: self._acquire(run_id, now, chains))

    def _acquire(self, run_id: str, now: float, chains: int) -> bool:
        held = self.client.get(self.key, **FAIL_FAST)
        if held is not None and held["run_id"] != run_id and held["until"] > now:
            return False
        self.client.put(self.entity(run_id, now, chains))
        return True

    def entity(self, run_id: str, now: float, chains: int) -> datastore.Entity:
        """The lease as ``run_id`` holds it from ``now``: it lapses after ``SESSION_LEASE_TTL``."""
        lease = datastore.Entity(self.key, exclude_from_indexes=_UNINDEXED)
        lease.update(run_id=run_id, until=now + self.seconds, chains=chains)
        return lease

    def release_quietly(self, run_id: str) -> None:
        """Release if the store answers; a lease that cannot be released lapses by itself."""
        try:
            self.release(run_id)
        except StoreError as exc:
            log.warning("lease_not_released", run_id=run_id, error=type(exc.cause).__name__)

    def release(self, run_id: str) -> None:
        """Free the lease if ``run_id`` holds it. The first lease of a run of several chains stays, lapsed:
        it remembers how many chains to look at while the others may still run."""
        with translated("lease"), self.client.transaction():
            held = self.client.get(self.key, **FAIL_FAST)
            if held is not None and held["run_id"] == run_id:
                if not self.shard and int(held.get("chains", 1)) > 1:
                    held["until"] = 0.0
                    self.client.put(held)
                else:
                    self.client.delete(self.key)


def _transact(client: datastore.Client, work: Callable[[], bool]) -> bool:
    """Run ``work`` in a transaction, again when it loses a race (ABORTED), at most three times."""
    for attempt in range(3):
        try:
            with translated("lease"), client.transaction():
                done: bool = work()
                return done
        except TransientStoreError as exc:
            if not isinstance(exc.cause, gexc.Aborted) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def take_leases(
    client: datastore.Client, settings: Settings, run_id: str, now: float, chains: int, record: datastore.Entity
) -> bool:
    """Take every chain's lease for a new run and record the run, in one commit; False if a chain is alive.

    The first lease remembers how many chains its run has, so a run with
    fewer chains still sees every lease of a run with more.
    """
    first = Lease(client, settings)

    def work() -> bool:
        head = client.get(first.key, **FAIL_FAST)
        known = max(chains, int(head.get("chains", 1)) if head is not None else 1)
        leases = [Lease(client, settings, shard) for shard in range(known)]
        others = client.get_multi([lease.key for lease in leases[1:]], **FAIL_FAST) if known > 1 else []
        held = ([head] if head is not None else []) + others
        if any(lease["run_id"] != run_id and lease["until"] > now for lease in held):
            return False
        client.put_multi([*(lease.entity(run_id, now, chains) for lease in leases[:chains]), record])
        return True

    return _transact(client, work)
