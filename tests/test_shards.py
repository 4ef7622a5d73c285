"""Shard planning on 100k real sessions: balanced whatever the key format."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from google.cloud import datastore

from session_core import SessionRecord, Settings
from session_core.maintenance.kill import plan_shards, shard_of
from session_core.rules import hash_key, new_key
from session_core.store import SessionStore
from session_core.testing import Emulator
from tests.conftest import wipe

SESSIONS = 100_000


def seed_names(client: datastore.Client, settings: Settings, names: list[str]) -> None:
    store = SessionStore(client, settings)

    def put(chunk: list[str]) -> None:
        client.put_multi([store.to_entity(SessionRecord(n, {}, "__guest__", "k" * 13, 1.0)) for n in chunk])

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, [names[i : i + 500] for i in range(0, len(names), 500)]))


@pytest.fixture
def emptied_after(datastore_emulator: Emulator) -> Iterator[None]:
    """100,000 sessions would slow every later query of the emulator: it is emptied after each test."""
    yield
    wipe(datastore_emulator)


@pytest.mark.slow
@pytest.mark.parametrize("key_format", ["hashed", "viur"])
@pytest.mark.usefixtures("emptied_after")
def test_shards_are_balanced_on_100k_sessions(client: datastore.Client, settings: Settings, key_format: str) -> None:
    names = [hash_key(new_key()) if key_format == "hashed" else new_key() for _ in range(SESSIONS)]
    settings = replace(settings, namespace=f"{settings.namespace}-{key_format}")
    seed_names(client, settings, names)
    ranges = plan_shards(client, settings, 16)
    assert len(ranges) == 16 and ranges[0][0] is None and ranges[-1][1] is None
    points = [hi for _, hi in ranges[:-1] if hi is not None]
    counts = Counter(shard_of(name, points) for name in names)
    mean = statistics.mean(counts[i] for i in range(16))
    largest = max(counts.values())
    print(f"{key_format}: shard sizes {sorted(counts.values())}, largest/mean = {largest / mean:.3f}")
    assert largest <= 1.5 * mean
    assert sum(counts.values()) == SESSIONS
