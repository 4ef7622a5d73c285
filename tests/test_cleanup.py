"""Expired-session cleanup against the real emulator: exactly the expired sessions go."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from google.cloud import datastore

from session_core import Session, SessionRecord, Settings
from session_core._datastore import settings_key
from session_core._observers import registered_delete_observer
from session_core.errors import StoreError
from session_core.maintenance import TransientStoreError
from session_core.maintenance.cleanup import ClearStep, run_clear_step, start_clear_sessions
from session_core.maintenance.leases import LEASE_KIND, LEASE_NAME, Lease
from session_core.maintenance.runs import Run, RunRecorder, clear_params, list_runs
from session_core.maintenance.sweep import batches, page_limit, session_names, with_retries
from session_core.rules import cutoff_for, hash_key, new_key
from session_core.store import SessionStore
from tests.conftest import RpcCounter

NOW = 2_000_000_000.0


def seed(client: datastore.Client, settings: Settings, count: int, lastseen: float, *, plain: bool = False) -> set[str]:
    """Write ``count`` sessions last seen at ``lastseen``; return their key names."""
    store = SessionStore(client, settings)
    names = {new_key() if plain else hash_key(new_key()) for _ in range(count)}
    entities = [store.to_entity(SessionRecord(name, {"n": 1}, "__guest__", "k" * 13, lastseen)) for name in names]
    for start in range(0, len(entities), 500):
        client.put_multi(entities[start : start + 500])
    return names


def seed_viur(client: datastore.Client, settings: Settings, count: int, lastseen: float) -> set[str]:
    """Sessions exactly as ViUR writes them (plain name, no ``expires``)."""
    names = {new_key() for _ in range(count)}
    entities = []
    for name in names:
        entity = datastore.Entity(client.key(settings.kind, name, namespace=settings.namespace), ["data"])
        entity.update(data=datastore.Entity(), static_security_key="k" * 13, lastseen=lastseen, user="__guest__")
        entities.append(entity)
    client.put_multi(entities)
    return names


def remaining(client: datastore.Client, settings: Settings) -> set[str]:
    """Every session key name in the namespace (paged: the emulator refuses huge responses)."""
    return set(session_names(client, settings))


@pytest.fixture
def mixed(client: datastore.Client, settings: Settings) -> dict[str, set[str]]:
    """Live, grace-window and expired sessions in both key layouts, ours and ViUR's."""
    life = settings.life_time.total_seconds()
    grace = settings.clear_grace.total_seconds()
    return {
        "live": seed(client, settings, 30, NOW - 10) | seed_viur(client, settings, 10, NOW - 10),
        "expired_in_grace": seed(client, settings, 20, NOW - life - grace / 2)
        | seed_viur(client, settings, 5, NOW - life - 1),
        "expired": seed(client, settings, 700, NOW - life - grace - 1)
        | seed(client, settings, 300, NOW - 30 * 86400, plain=True)
        | seed_viur(client, settings, 200, NOW - life - grace - 60),
    }


def test_clear_deletes_exactly_the_expired_sessions(
    client: datastore.Client, settings: Settings, mixed: dict[str, set[str]]
) -> None:
    result = start_clear_sessions(client, settings, now=NOW)
    assert remaining(client, settings) == mixed["live"] | mixed["expired_in_grace"]
    assert result.deleted == 1200
    assert (result.skipped, result.continued, result.dry_run) == (False, False, False)
    assert result.cutoff == cutoff_for(NOW, settings)


def test_clear_with_small_pages_and_batches_pages_with_the_cursor(
    client: datastore.Client, settings: Settings, mixed: dict[str, set[str]], rpcs: RpcCounter
) -> None:
    settings = replace(settings, page_size=170, batch_size=40)
    result = start_clear_sessions(client, settings, now=NOW)
    queries = rpcs.calls["run_query"]
    assert remaining(client, settings) == mixed["live"] | mixed["expired_in_grace"]
    assert result.deleted == 1200
    assert result.batches == 7 * 5 + 1  # 7 pages of 170 in commits of 40,40,40,40,10; then 10
    assert queries == 8 + 1  # 7 full pages and one short one; one for the run receipts past seven days


def test_dry_run_counts_and_deletes_nothing(
    client: datastore.Client, settings: Settings, mixed: dict[str, set[str]]
) -> None:
    before = remaining(client, settings)
    result = start_clear_sessions(client, settings, now=NOW, dry_run=True)
    assert (result.counted, result.deleted, result.dry_run) == (1200, 0, True)
    assert remaining(client, settings) == before


def drain(client: datastore.Client, settings: Settings, queued: list[ClearStep], *, twice: bool = False) -> list[int]:
    """Run queued steps as Cloud Tasks would (optionally delivering each twice); return deleted per run."""
    deleted = []
    while queued:
        step = queued.pop(0)
        deleted.append(run_clear_step(client, settings, step, enqueue=queued.append, now=NOW).deleted)
        if twice:
            deleted.append(run_clear_step(client, settings, step, enqueue=lambda _: None, now=NOW).deleted)
    return deleted


def test_budget_exhaustion_continues_through_enqueue_to_the_same_end_state(
    client: datastore.Client, settings: Settings, mixed: dict[str, set[str]]
) -> None:
    settings = replace(settings, page_size=100, time_budget=timedelta(seconds=0))
    queued: list[ClearStep] = []
    first = start_clear_sessions(client, settings, now=NOW, enqueue=queued.append)
    assert first.continued and first.deleted == 100 and len(queued) == 1
    assert queued[0].page == 1 and queued[0].cursor and queued[0].cutoff == first.cutoff
    deleted = drain(client, settings, queued)
    assert remaining(client, settings) == mixed["live"] | mixed["expired_in_grace"]
    assert first.deleted + sum(deleted) == 1200  # nothing counted twice


def test_every_step_delivered_twice_ends_in_the_same_state(
    client: datastore.Client, settings: Settings, mixed: dict[str, set[str]]
) -> None:
    settings = replace(settings, page_size=100, time_budget=timedelta(seconds=0))
    queued: list[ClearStep] = []
    first = start_clear_sessions(client, settings, now=NOW, enqueue=queued.append)
    deleted = drain(client, settings, queued, twice=True)
    assert remaining(client, settings) == mixed["live"] | mixed["expired_in_grace"]
    assert first.deleted + sum(deleted) == 1200  # each session counted by the one run that deleted it


def test_task_names_are_deterministic_per_run_and_page() -> None:
    step = ClearStep(run_id="a" * 32, cutoff=1.0, cursor="abc", page=3)
    assert step.task_id == ClearStep(run_id="a" * 32, cutoff=1.0, cursor="other", page=3).task_id
    assert step.task_id != ClearStep(run_id="a" * 32, cutoff=1.0, page=4).task_id
    assert step.task_id != ClearStep(run_id="b" * 32, cutoff=1.0, page=3).task_id


def test_without_a_queue_the_run_goes_on_inline(
    client: datastore.Client, settings: Settings, mixed: dict[str, set[str]]
) -> None:
    settings = replace(settings, page_size=100, time_budget=timedelta(seconds=0))
    result = start_clear_sessions(client, settings, now=NOW)
    assert not result.continued and result.deleted == 1200
    assert remaining(client, settings) == mixed["live"] | mixed["expired_in_grace"]


def test_a_second_run_is_skipped_while_a_chain_holds_the_lease(
    client: datastore.Client, settings: Settings, mixed: dict[str, set[str]]
) -> None:
    settings = replace(settings, page_size=100, time_budget=timedelta(seconds=0))
    queued: list[ClearStep] = []
    first = start_clear_sessions(client, settings, now=NOW, enqueue=queued.append)
    assert first.continued
    second = start_clear_sessions(client, settings, now=NOW + 1, enqueue=queued.append)
    assert second.skipped and second.deleted == 0 and len(queued) == 1
    while queued:
        run_clear_step(client, settings, queued.pop(), enqueue=queued.append, now=NOW)
    third = start_clear_sessions(client, settings, now=NOW + 2)
    assert not third.skipped  # the finished chain released its lease


def test_a_stale_lease_is_taken_over(client: datastore.Client, settings: Settings, mixed: dict[str, set[str]]) -> None:
    lease = Lease(client, settings)
    assert lease.acquire("a" * 32, NOW - lease.seconds - 1)  # a run that crashed long ago
    result = start_clear_sessions(client, settings, now=NOW)
    assert not result.skipped and result.deleted == 1200


def test_a_chain_whose_lease_was_taken_over_stops(client: datastore.Client, settings: Settings) -> None:
    lease = Lease(client, settings)
    assert lease.acquire("b" * 32, NOW)
    orphan = ClearStep(run_id="c" * 32, cutoff=cutoff_for(NOW, settings))
    result = run_clear_step(client, settings, orphan, now=NOW)
    assert result.skipped and result.deleted == 0


def test_the_observer_sees_each_deleted_session(
    client: datastore.Client, settings: Settings, mixed: dict[str, set[str]]
) -> None:
    seen: list[SessionRecord] = []
    start_clear_sessions(client, settings, now=NOW, observer=seen.append)
    assert {record.key_name for record in seen} == mixed["expired"]
    assert all(record.data == {} or record.data == {"n": 1} for record in seen)


def test_a_dry_run_calls_no_observer_and_reads_no_session(
    client: datastore.Client, settings: Settings, mixed: dict[str, set[str]], rpcs: RpcCounter
) -> None:
    seen: list[SessionRecord] = []
    result = start_clear_sessions(client, settings, now=NOW, dry_run=True, observer=seen.append)
    assert (result.counted, result.deleted) == (len(mixed["expired"]), 0) and seen == []
    # the recorded write-shard layout, and the run's record: written, then counted
    assert rpcs.calls["lookup"] == 2 and rpcs.calls["commit"] == 2
    assert remaining(client, settings) == set().union(*mixed.values())


def test_a_raising_observer_is_logged_and_the_run_completes_and_releases_its_lease(
    client: datastore.Client,
    settings: Settings,
    mixed: dict[str, set[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    told: list[str] = []

    def broken(record: SessionRecord) -> None:
        told.append(record.key_name)
        raise RuntimeError("observer bug")

    result = start_clear_sessions(client, settings, now=NOW, observer=broken)
    assert result.deleted == len(mixed["expired"]) and not result.skipped
    assert set(told) == mixed["expired"]  # every session was still told of
    assert remaining(client, settings) == mixed["live"] | mixed["expired_in_grace"]
    failures = [line for line in capsys.readouterr().err.splitlines() if "delete_observer_failed" in line]
    assert len(failures) == len(mixed["expired"]) and all('"error": "RuntimeError"' in line for line in failures)
    assert client.get(settings_key(client, settings, LEASE_KIND, LEASE_NAME)) is None  # released
    assert not start_clear_sessions(client, settings, now=NOW + 1).skipped  # the next run is not blocked


def test_session_on_delete_is_viurs_registration_for_the_process_that_deletes(
    client: datastore.Client, settings: Settings, mixed: dict[str, set[str]]
) -> None:
    seen: list[SessionRecord] = []
    Session.on_delete(seen.append)
    try:
        observer = registered_delete_observer()
        assert observer is not None
        start_clear_sessions(client, settings, now=NOW, observer=observer)
    finally:
        Session.remove_on_delete(seen.append)
    assert {record.key_name for record in seen} == mixed["expired"]
    assert registered_delete_observer() is None


def test_without_observers_the_worker_reads_keys_only(
    client: datastore.Client, settings: Settings, mixed: dict[str, set[str]], rpcs: RpcCounter
) -> None:
    start_clear_sessions(client, settings, now=NOW)
    # the write-shard layout, the lease taken and released, the run's count: no session is read
    assert rpcs.calls["lookup"] == 4


def test_transient_errors_are_retried_with_backoff() -> None:
    failures = iter([TransientStoreError("delete", RuntimeError("aborted"))] * 3)
    slept: list[float] = []

    def flaky() -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "done"

    assert with_retries(flaky, sleep=slept.append) == "done"
    assert slept == [0.1, 0.3, 1.0]


def test_persistent_errors_surface_as_store_errors() -> None:
    def broken() -> None:
        raise TransientStoreError("delete", RuntimeError("unavailable"))

    with pytest.raises(StoreError):
        with_retries(broken, sleep=lambda _: None)


def test_page_limit_keeps_a_keys_only_response_far_below_4_mib(offline_settings: Settings) -> None:
    assert page_limit(offline_settings) == 10000
    assert page_limit(replace(offline_settings, page_size=20000), key_bytes=1500) * 1600 < 4 * 1024 * 1024


def test_batches_drop_duplicates_and_never_exceed_the_size(offline_client: datastore.Client) -> None:
    keys = [offline_client.key("k", i % 700) for i in range(1500)]
    chunks = batches(keys, 500)
    assert [len(c) for c in chunks] == [500, 200]


def test_live_sessions_survive_a_session_refreshed_at_the_boundary(
    client: datastore.Client, settings: Settings
) -> None:
    cutoff = cutoff_for(NOW, settings)
    at_cutoff = seed(client, settings, 5, cutoff)
    before = seed(client, settings, 5, cutoff - 0.001)
    start_clear_sessions(client, settings, now=NOW)
    assert remaining(client, settings) == at_cutoff
    assert not before & remaining(client, settings)


@pytest.fixture(scope="module")
def legacy_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from devstack.emulators import legacy_datastore

    with legacy_datastore(tmp_path_factory.mktemp("legacy"), project="session-core-test") as emulator:
        yield emulator


def test_paging_is_correct_on_the_legacy_datastore_emulator(
    client: datastore.Client, settings: Settings, legacy_emulator: Any
) -> None:
    from session_core.clients import datastore_client

    settings = replace(settings, emulator_host=legacy_emulator.host, page_size=100)
    legacy = datastore_client(settings)
    expired = seed(legacy, settings, 250, NOW - 86400)
    live = seed(legacy, settings, 20, NOW)
    result = start_clear_sessions(legacy, settings, now=NOW)
    assert result.deleted == 250
    assert remaining(legacy, settings) == live and not expired & remaining(legacy, settings)
    assert remaining(client, settings) == set()  # it really was the other emulator


def test_two_runs_started_at_the_same_moment_one_runs_one_is_skipped(
    client: datastore.Client, settings: Settings, mixed: dict[str, set[str]]
) -> None:
    import threading

    settings = replace(settings, page_size=100, time_budget=timedelta(seconds=0))
    queued: list[ClearStep] = []
    barrier = threading.Barrier(2)
    results = []

    def scheduler_fires() -> None:
        barrier.wait()
        results.append(start_clear_sessions(client, settings, now=NOW, enqueue=queued.append))

    threads = [threading.Thread(target=scheduler_fires) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(result.skipped for result in results) == [False, True]
    assert len(queued) == 1
    ran = next(result for result in results if not result.skipped)
    assert ran.deleted + sum(drain(client, settings, queued)) == 1200
    assert remaining(client, settings) == mixed["live"] | mixed["expired_in_grace"]


def test_each_cleanup_deletes_the_run_receipts_older_than_seven_days(
    client: datastore.Client, settings: Settings
) -> None:
    recorder = RunRecorder(client, settings)
    now = time.time()
    old, recent = (
        Run(name * 32, "clear", clear_params(now, False), now - days * 86400) for name, days in (("a", 8), ("b", 6))
    )
    client.put_multi([recorder.entity(old), recorder.entity(recent)])
    start_clear_sessions(client, settings, now=now)
    kept = {run.run_id for run in list_runs(client, settings)}
    assert old.run_id not in kept and recent.run_id in kept  # no TTL policy needed for the receipts
