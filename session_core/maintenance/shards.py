"""Slices: split the expired sessions' ``lastseen`` into balanced ranges for a parallel cleanup's chains.

A parallel cleanup splits the expired sessions' ``lastseen``
(:func:`plan_slices`); a kill of guests or of everyone splits the key space
itself (:func:`session_core.maintenance.kill.plan_shards`, beside the kill it
serves). The split points are pure; only the sampler reads the store.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

from google.cloud import datastore

from session_core._datastore import FAIL_FAST, next_cursor, translated
from session_core.config import Settings
from session_core.maintenance.sweep import Target, lastseen_query, page_limit, session_query, with_retries
from session_core.rules import decode_lastseen
from session_core.store import SHARD_PROPERTY

SAMPLES_PER_SLICE = 64
SliceRange = tuple[float | None, float | None]


def slice_ranges(points: Sequence[float]) -> list[SliceRange]:
    """Half-open ``lastseen`` ranges [lo, hi) covering everything, from split points (None: unbounded)."""
    bounds: list[float | None] = [None, *points, None]
    return list(itertools.pairwise(bounds))


def sample_lastseen(
    client: datastore.Client, settings: Settings, cutoff: float, count: int, targets: Sequence[Target] = (None,)
) -> list[float]:
    """About ``count`` ``lastseen`` values drawn evenly from the sessions before ``cutoff``, sorted.

    Production Datastore: one scatter query for ``4 * count`` keys (keys only)
    and one lookup of those entities; the expired ones among them are the
    sample. Where that yields fewer than ``count / 2`` (the Firestore emulator
    answers a scatter query with nothing, or few sessions are expired), one
    projection query on ``lastseen`` pages through the expired sessions into
    a reservoir sample: one small result per expired session (with write
    shards, one such query per range in ``targets``, on ``shard_lastseen``).
    """

    def scattered() -> list[float]:
        query = session_query(client, settings)
        query.order = ["__scatter__"]
        with translated("query"):
            keys = [entity.key for entity in query.fetch(limit=4 * count, **FAIL_FAST)]
        values: list[float] = []
        for start in range(0, len(keys), 1000):
            with translated("lookup"):
                found = client.get_multi(keys[start : start + 1000], **FAIL_FAST)
            values += [float(e["lastseen"]) for e in found if isinstance(e.get("lastseen"), (int, float))]
        return [value for value in values if value < cutoff]

    sample: list[float] = with_retries(scattered)
    if len(sample) >= max(count // 2, 1):
        return sorted(sample)
    reservoir: list[float] = []
    rng = random.Random()
    seen = 0
    limit = page_limit(settings)
    for target in targets:
        cursor: str | None = None
        while True:

            def page(cursor: str | None = cursor, target: Target = target) -> tuple[list[float], str | None]:
                query = lastseen_query(client, settings, target, None, cutoff)
                query.projection = ["lastseen" if target is None else SHARD_PROPERTY]
                iterator = query.fetch(limit=limit, start_cursor=cursor, **FAIL_FAST)
                with translated("query"):
                    values = [_lastseen_of(entity, target) for entity in iterator]
                return values, next_cursor(iterator)

            values, cursor = with_retries(page)
            for value in values:
                seen += 1
                if len(reservoir) < count:
                    reservoir.append(value)
                elif (slot := rng.randrange(seen)) < count:
                    reservoir[slot] = value
            if len(values) < limit or cursor is None:
                break
    return sorted(reservoir)


def _lastseen_of(entity: datastore.Entity, target: Target) -> float:
    """The ``lastseen`` a projection on the range's property holds (``shard_lastseen``: decoded)."""
    if target is None:
        return float(entity["lastseen"])
    return decode_lastseen(str(entity[SHARD_PROPERTY]).partition(":")[2])


def plan_slices(
    client: datastore.Client, settings: Settings, cutoff: float, slices: int, targets: Sequence[Target] = (None,)
) -> list[SliceRange]:
    """``lastseen`` ranges for ``slices`` parallel cleanup chains, balanced on the expired sessions present.

    Fewer when the sample has fewer distinct values: the sessions that share
    one ``lastseen`` value (imported data, a burst written with one clock
    reading) always fall into one slice, so 4 asked can become 3, or 1 when
    they all share it. ``start_clear_sessions`` logs ``clear_slices_collapsed``
    then; every expired session is still deleted, once. One chain: no bounds.
    ``targets``: the index ranges the expired sessions are in (write shards;
    the same bounds then slice each of them).
    """
    if slices <= 1:
        return [(None, None)]
    sample = sample_lastseen(client, settings, cutoff, slices * SAMPLES_PER_SLICE, targets)
    if not sample:
        return [(None, None)]
    points = sorted({sample[len(sample) * i // slices] for i in range(1, slices)} - {sample[0]})
    return slice_ranges(points)
