"""Write shards (``SESSION_WRITE_SHARDS``): session writes spread over N index ranges, cleaned per range, and a
raise of N under live traffic that logs nobody out (against the emulator: no emulator simulates a hotspot)."""

from __future__ import annotations

import json
import random
import statistics
from collections import Counter
from dataclasses import replace
from datetime import timedelta

import pytest
from google.cloud import datastore
from google.cloud.datastore.query import PropertyFilter

from bench.capacity import active_sessions, cleanup_cost
from session_core import SessionRecord, Settings
from session_core.errors import ConfigError
from session_core.maintenance.cleanup import ClearStep, start_clear_sessions
from session_core.maintenance.reshard import (
    ReshardStep,
    cleanup_targets,
    recorded_layout,
    run_reshard_step,
    start_reshard,
)
from session_core.maintenance.steps import Step, parse_step
from session_core.rules import (
    GUEST_USER,
    decode_lastseen,
    encode_lastseen,
    hash_key,
    is_expired,
    new_key,
    shard_bounds,
    write_shard,
)
from session_core.store import SHARD_PROPERTY, SessionStore, in_layout
from tests.test_cleanup import remaining

NOW = 2_000_000_000.0


def record(name: str, seen: float, *, user: str = GUEST_USER, data: dict[str, int] | None = None) -> SessionRecord:
    return SessionRecord(name, data or {"n": 1}, user, "k" * 13, seen, lifetime=3600.0)


def seed(store: SessionStore, count: int, seen: float, *, plain: bool = False) -> dict[str, SessionRecord]:
    """``count`` sessions last written at ``seen``, by cookie value."""
    cookies = [new_key() for _ in range(count)]
    records = {cookie: record(cookie if plain else hash_key(cookie), seen) for cookie in cookies}
    entities = [store.to_entity(written) for written in records.values()]
    for start in range(0, len(entities), 500):
        store.client.put_multi(entities[start : start + 500])
    return records


def shard_counts(client: datastore.Client, settings: Settings, shards: int) -> Counter[int]:
    """How many stored sessions each write shard's index range holds (keys-only range queries)."""
    counts: Counter[int] = Counter()
    for shard in range(shards):
        low, high = shard_bounds(shard, None, NOW + 10**9)
        query = client.query(kind=settings.kind, namespace=settings.namespace)
        query.keys_only()
        query.add_filter(filter=PropertyFilter(SHARD_PROPERTY, ">=", low))
        query.add_filter(filter=PropertyFilter(SHARD_PROPERTY, "<", high))
        counts[shard] = len(list(query.fetch()))
    return counts


# -- the rule ----------------------------------------------------------------------------------


def test_10000_session_keys_fall_into_8_write_shards_within_1_5x_of_the_mean() -> None:
    counts = Counter(write_shard(hash_key(new_key()), 8) for _ in range(10_000))
    mean = statistics.mean(counts[shard] for shard in range(8))
    assert (
        sorted(counts) == list(range(8)) and max(counts.values()) <= 1.5 * mean and min(counts.values()) >= mean / 1.5
    )


def test_a_plain_viur_name_and_its_hash_are_in_the_same_write_shard() -> None:
    cookie = new_key()
    assert write_shard(cookie, 64) == write_shard(hash_key(cookie), 64)


def test_the_encoded_lastseen_sorts_as_the_number_does() -> None:
    rng = random.Random(26)
    values = [*(rng.uniform(-1e9, 9e9) for _ in range(5000)), 0.0, 1.5, NOW]
    values.sort()
    encoded = [encode_lastseen(value) for value in values]
    assert encoded == sorted(encoded) and len({len(text) for text in encoded}) == 1
    assert all(abs(decode_lastseen(text) - value) <= 1e-6 for text, value in zip(encoded, values, strict=True))


def test_cleanup_queries_both_layouts_until_a_reshard_to_n_has_finished() -> None:
    assert cleanup_targets(1, 1) == [None]
    assert cleanup_targets(8, 8) == list(range(8))
    assert cleanup_targets(8, 1) == [*range(8), None]
    assert cleanup_targets(1, 8) == [None, *range(8)]
    assert cleanup_targets(4, 8) == list(range(8))


def test_write_shards_times_clear_shards_is_at_most_256_chains() -> None:
    assert Settings(write_shards=64, clear_shards=4).clear_shards == 4
    with pytest.raises(ConfigError, match="clear_shards"):
        Settings(write_shards=64, clear_shards=5)
    with pytest.raises(ConfigError, match="SESSION_WRITE_SHARDS"):
        Settings.from_env({"GOOGLE_CLOUD_PROJECT": "p", "SESSION_WRITE_SHARDS": "0"})


def test_a_clear_step_carries_its_write_shard_and_one_of_an_earlier_version_parses() -> None:
    step = ClearStep("a" * 32, NOW, shard=3, lo=1.0, hi=2.0, write_shard=1)
    assert parse_step(json.dumps(step.to_json()).encode()) == step
    earlier = {key: value for key, value in step.to_json().items() if key != "write_shard"}
    assert parse_step(json.dumps(earlier).encode()) == replace(step, write_shard=None)


# -- the layout, on the emulator ---------------------------------------------------------------------


def test_with_8_write_shards_lastseen_is_unindexed_and_the_shard_value_is_indexed(
    client: datastore.Client, settings: Settings
) -> None:
    sharded = replace(settings, write_shards=8)
    cookie = new_key()
    assert SessionStore(client, sharded).insert(record(hash_key(cookie), NOW))
    entity = client.get(SessionStore(client, sharded).key(hash_key(cookie)))
    assert entity is not None and in_layout(entity, 8) and "lastseen" in entity.exclude_from_indexes
    assert entity[SHARD_PROPERTY].startswith(f"{write_shard(hash_key(cookie), 8):04d}:")
    assert SessionStore(client, sharded).lookup(cookie) == record(hash_key(cookie), NOW)
    by_lastseen = client.query(kind=settings.kind, namespace=settings.namespace)
    by_lastseen.add_filter(filter=PropertyFilter("lastseen", "<", NOW + 1))
    assert list(by_lastseen.fetch()) == []  # what viur-core's own cleanup asks finds nothing with N > 1


def test_10000_session_writes_index_values_fall_into_8_ranges_within_1_5x_of_the_mean(
    client: datastore.Client, settings: Settings
) -> None:
    sharded = replace(settings, write_shards=8)
    seed(SessionStore(client, sharded), 10_000, NOW)
    counts = shard_counts(client, sharded, 8)
    mean = statistics.mean(counts.values())
    assert sum(counts.values()) == 10_000 and max(counts.values()) <= 1.5 * mean


@pytest.mark.parametrize("clear_shards", [1, 2])
def test_with_8_write_shards_cleanup_deletes_exactly_the_expired_sessions_of_every_shard(
    client: datastore.Client, settings: Settings, clear_shards: int
) -> None:
    sharded = replace(settings, write_shards=8, clear_shards=clear_shards)
    store = SessionStore(client, sharded)
    life = settings.life_time.total_seconds()
    grace = settings.clear_grace.total_seconds()
    live = seed(store, 200, NOW - 10) | seed(store, 40, NOW - life - grace / 2)
    expired = seed(store, 400, NOW - life - grace - 1) | seed(store, 200, NOW - 30 * 86400, plain=True)
    assert set(shard_counts(client, sharded, 8)) == set(range(8))  # every shard holds sessions
    assert start_reshard(client, sharded, now=NOW).rewritten == 0  # all written with 8: recorded, nothing to do
    result = start_clear_sessions(client, sharded, now=NOW)
    assert result.shards == 8 * clear_shards and result.deleted == len(expired)
    assert remaining(client, sharded) == {written.key_name for written in live.values()}


# -- raising N from 1 to 8 under live traffic ------------------------------------------------------------


def test_raising_write_shards_from_1_to_8_under_live_traffic_logs_nobody_out_and_leaves_nothing_behind(
    client: datastore.Client, settings: Settings
) -> None:
    life = settings.life_time.total_seconds()
    one = replace(settings, page_size=50, batch_size=25, time_budget=timedelta(0))
    old_store = SessionStore(client, one)
    users = seed(old_store, 300, NOW - 60) | seed(old_store, 50, NOW - 60, plain=True)
    doomed = seed(old_store, 100, NOW - life - 3600)  # expired under the old layout
    eight = replace(one, write_shards=8)
    store = SessionStore(client, eight)
    cookies = sorted(users)
    rng = random.Random(8)
    now = NOW

    def traffic() -> None:
        """A burst of requests on the new setting: changes, refreshes and new logins."""
        nonlocal now
        now += 1
        for cookie in rng.sample(cookies, 20):
            found = store.lookup(cookie)
            assert found is not None and not is_expired(found.expires(eight.life_time), now), "logged out"
            users[cookie] = replace(found, data={"n": rng.randrange(1000)}, seen=now)
            assert store.update(users[cookie])
        cookie = new_key()
        users[cookie] = record(hash_key(cookie), now)
        assert store.insert(users[cookie])
        cookies.append(cookie)

    queued: list[Step] = []
    traffic()
    first = start_reshard(client, eight, enqueue=queued.append, now=now)
    assert first.continued and recorded_layout(client, eight) == 1
    cleared = start_clear_sessions(client, eight, now=now)  # mid-migration: both layouts
    assert cleared.shards == 9 and cleared.deleted == len(doomed)
    bursts: list[int] = []
    while queued:
        traffic()
        step = queued.pop(0)
        assert isinstance(step, ReshardStep)
        run_reshard_step(client, eight, step, enqueue=queued.append)
        bursts.append(1)
    assert len(bursts) > 3 and recorded_layout(client, eight) == 8
    for cookie, written in users.items():  # nobody was logged out, nothing a request wrote was lost
        assert store.lookup(cookie) == written
    for entity in client.get_multi([store.key(written.key_name) for written in users.values()]):
        assert in_layout(entity, 8)
    later = now + life + settings.clear_grace.total_seconds() + 10
    final = start_clear_sessions(client, eight, now=later)
    assert final.shards == 8 and final.deleted == len(users)
    assert remaining(client, eight) == set()  # nothing left behind in the old layout


# -- the capacity model (bench.capacity) -------------------------------------------------------------


def test_the_model_carries_5_million_active_sessions_with_64_write_shards_at_64_cleanup_chains() -> None:
    assert [active_sessions(shards) for shards in (1, 4, 16, 64)] == [150_000, 600_000, 2_400_000, 9_600_000]
    assert active_sessions(64) >= 5_000_000 > active_sessions(16)
    assert cleanup_cost(64) == (64, 64, 64) and cleanup_cost(1) == (1, 1, 0) and cleanup_cost(16, 4)[1] == 64
