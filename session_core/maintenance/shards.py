"""Shards: split the sessions present into balanced ranges for parallel chains.

Kill-all and kill-guests split the key space (:func:`plan_shards`); a
parallel cleanup splits the expired sessions' ``lastseen`` (:func:`plan_slices`).
The split points are pure; only the samplers read the store.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence

from google.cloud import datastore
from google.cloud.datastore.query import PropertyFilter

from session_core._datastore import FAIL_FAST, next_cursor, translated
from session_core.config import Settings
from session_core.maintenance.sweep import page_limit, session_names, session_query, with_retries

SAMPLES_PER_SHARD = 256
KeyRange = tuple[str | None, str | None]


def split_points(sorted_names: Sequence[str], shards: int) -> list[str]:
    """Boundaries that cut a sorted sample into ``shards`` equal parts (fewer if the sample is small)."""
    if shards <= 1 or not sorted_names:
        return []
    points = [sorted_names[len(sorted_names) * i // shards] for i in range(1, shards)]
    return sorted(set(points))


def shard_ranges(points: Sequence[str]) -> list[KeyRange]:
    """Half-open key-name ranges [lo, hi) covering every key, from split points."""
    bounds: list[str | None] = [None, *points, None]
    return list(itertools.pairwise(bounds))


def shard_of(name: str, points: Sequence[str]) -> int:
    """Which range of :func:`shard_ranges` a key name falls into."""
    return bisect.bisect_right(points, name)


def sample_key_names(client: datastore.Client, settings: Settings, count: int) -> list[str]:
    """About ``count`` key names drawn evenly from the sessions present, sorted.

    Production Datastore answers a ``__scatter__``-ordered query with a
    random sample (as Apache Beam splits queries): one query RPC. The
    Firestore emulator returns nothing for it; then one keys-only scan of
    every session fills a reservoir sample.
    """

    def scatter() -> list[str]:
        query = session_query(client, settings)
        query.order = ["__scatter__"]
        with translated("query"):
            return [entity.key.name for entity in query.fetch(limit=count, **FAIL_FAST)]

    names: list[str] = with_retries(scatter)
    if len(names) >= min(count, 2):
        return sorted(names)
    reservoir: list[str] = []
    rng = random.Random()
    for seen, name in enumerate(session_names(client, settings), start=1):
        if len(reservoir) < count:
            reservoir.append(name)
        else:
            slot = rng.randrange(seen)
            if slot < count:
                reservoir[slot] = name
    return sorted(reservoir)


def plan_shards(client: datastore.Client, settings: Settings, shards: int) -> list[KeyRange]:
    """Key ranges for ``shards`` parallel chains, balanced on the keys present."""
    sample = sample_key_names(client, settings, shards * SAMPLES_PER_SHARD)
    return shard_ranges(split_points(sample, shards))


# -- lastseen slices, for a parallel cleanup -----------------------------------------

SAMPLES_PER_SLICE = 64
SliceRange = tuple[float | None, float | None]


def slice_ranges(points: Sequence[float]) -> list[SliceRange]:
    """Half-open ``lastseen`` ranges [lo, hi) covering everything, from split points (None: unbounded)."""
    bounds: list[float | None] = [None, *points, None]
    return list(itertools.pairwise(bounds))


def sample_lastseen(client: datastore.Client, settings: Settings, cutoff: float, count: int) -> list[float]:
    """About ``count`` ``lastseen`` values drawn evenly from the sessions before ``cutoff``, sorted.

    Production Datastore: one scatter query for ``4 * count`` keys (keys only)
    and one lookup of those entities; the expired ones among them are the
    sample. Where that yields fewer than ``count / 2`` (the Firestore emulator
    answers a scatter query with nothing, or few sessions are expired), one
    projection query on ``lastseen`` pages through the expired sessions into
    a reservoir sample: one small result per expired session.
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
    cursor: str | None = None
    seen = 0
    limit = page_limit(settings)
    while True:

        def page(cursor: str | None = cursor) -> tuple[list[float], str | None]:
            query = client.query(kind=settings.kind, namespace=settings.namespace, projection=["lastseen"])
            query.add_filter(filter=PropertyFilter("lastseen", "<", cutoff))
            iterator = query.fetch(limit=limit, start_cursor=cursor, **FAIL_FAST)
            with translated("query"):
                values = [float(entity["lastseen"]) for entity in iterator]
            return values, next_cursor(iterator)

        values, cursor = with_retries(page)
        for value in values:
            seen += 1
            if len(reservoir) < count:
                reservoir.append(value)
            elif (slot := rng.randrange(seen)) < count:
                reservoir[slot] = value
        if len(values) < limit or cursor is None:
            return sorted(reservoir)


def plan_slices(client: datastore.Client, settings: Settings, cutoff: float, slices: int) -> list[SliceRange]:
    """``lastseen`` ranges for ``slices`` parallel cleanup chains, balanced on the expired sessions present.

    Fewer when the sample has fewer distinct values: the sessions that share
    one ``lastseen`` value (imported data, a burst written with one clock
    reading) always fall into one slice, so 4 asked can become 3, or 1 when
    they all share it. ``start_clear_sessions`` logs ``clear_slices_collapsed``
    then; every expired session is still deleted, once. One chain: no bounds.
    """
    if slices <= 1:
        return [(None, None)]
    sample = sample_lastseen(client, settings, cutoff, slices * SAMPLES_PER_SLICE)
    if not sample:
        return [(None, None)]
    points = sorted({sample[len(sample) * i // slices] for i in range(1, slices)} - {sample[0]})
    return slice_ranges(points)
