"""Key-range shards: split the sessions present into balanced ranges for parallel chains.

The split points are pure (:func:`split_points`, :func:`shard_ranges`,
:func:`shard_of`); only :func:`sample_key_names` reads the store.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence

from google.cloud import datastore

from session_core.config import Settings
from session_core.maintenance.sweep import session_names, session_query, with_retries
from session_core.store import FAIL_FAST, translated

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
