"""Maintenance at scale: parallel cleanup chains, Datastore's ramp-up rule, and the rehash of ViUR's plain keys."""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from functions_framework import create_app
from google.cloud import datastore

from session_core import MisuseError, Session, Settings
from session_core.functions import run_step
from session_core.maintenance.cleanup import start_clear_sessions
from session_core.maintenance.leases import LEASE_KIND, lease_name
from session_core.maintenance.pacing import Pacer, budget, rate, time_for
from session_core.maintenance.rehash import start_rehash
from session_core.maintenance.runs import list_runs
from session_core.maintenance.shards import plan_slices
from session_core.maintenance.sweep import Sweep, session_query
from session_core.rules import cutoff_for, hash_key, new_key
from session_core.store import SessionRecord, SessionStore
from session_core.testing import Emulator, free_port
from tests.conftest import ROOT, Ctx, queue_env, serve_function
from tests.test_cleanup import remaining, seed

# -- the ramp-up schedule (pure) ---------------------------------------------------------


def test_the_schedule_is_500_a_second_raised_by_half_every_period() -> None:
    assert [rate(t, 500, 300) for t in (0, 299, 300, 600, 900)] == [500, 500, 750, 1125, 1687.5]
    assert budget(300, 500, 300) == 150_000 and budget(600, 500, 300) == 150_000 + 225_000
    assert budget(450, 500, 300) == 150_000 + 750 * 150


@pytest.mark.parametrize("deletes", [1, 499, 500, 150_000, 150_001, 10_000_000])
def test_time_for_is_the_inverse_of_the_budget(deletes: int) -> None:
    moment = time_for(deletes, 500, 300)
    assert budget(moment, 500, 300) == pytest.approx(deletes)
    assert budget(moment - 1e-6, 500, 300) < deletes


def test_a_pacer_shares_the_schedule_between_chains_and_never_runs_ahead() -> None:
    clock = [1000.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    pacer = Pacer(500, 300, run_started=1000.0, chains=4, clock=lambda: clock[0], sleep=sleep)
    for _ in range(20):
        pacer.take(500)  # one commit
        assert pacer.done * 4 <= budget(clock[0] - 1000.0, 500, 300) + 1e-6
    assert clock[0] - 1000.0 == pytest.approx(time_for(20 * 500 * 4, 500, 300))


def test_a_run_said_to_start_in_the_future_is_paced_from_now_not_held_until_then() -> None:
    clock = [1000.0]
    slept: list[float] = []
    pacer = Pacer(500, 300, run_started=1000.0 + 30 * 86400, clock=lambda: clock[0], sleep=slept.append)
    pacer.take(500)  # a simulated `now` a month ahead (tests, a ViUR agreement check): one second, as from now
    assert slept == [pytest.approx(1.0)]


def test_a_chain_that_starts_late_catches_up_at_its_share_of_the_rate_not_in_a_burst() -> None:
    clock = [1600.0]  # 600 s into the run: the schedule's running total alone would allow 375,000 at once

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    pacer = Pacer(500, 300, run_started=1000.0, chains=2, clock=lambda: clock[0], sleep=sleep)
    commits = []
    for _ in range(10):
        pacer.take(500)
        commits.append(clock[0])
    share = rate(600, 500, 300) / 2
    assert all(later - earlier == pytest.approx(500 / share) for earlier, later in itertools.pairwise(commits))


def test_a_pacer_allows_no_more_in_a_window_than_its_share_of_the_schedule() -> None:
    pacer = Pacer(500, 300, run_started=1000.0, chains=4, clock=lambda: 1000.0)
    assert pacer.allowance(300) == 150_000 // 4  # the whole first period, shared by four chains
    assert pacer.allowance(10) == 10 * 500 // 4
    pacer.took(1250)
    assert pacer.allowance(10) == 0  # that commit used this chain's next ten seconds


# -- parallel cleanup ---------------------------------------------------------------------


def seed_spread(client: datastore.Client, settings: Settings, count: int, newest: float, span: float) -> set[str]:
    """``count`` sessions whose ``lastseen`` spreads evenly over ``span`` seconds before ``newest``."""
    store = SessionStore(client, settings)
    names: set[str] = set()
    for start in range(0, count, 500):
        entities = []
        for index in range(start, min(start + 500, count)):
            name = hash_key(new_key())
            names.add(name)
            entities.append(
                store.to_entity(SessionRecord(name, {"n": 1}, "__guest__", "k" * 13, newest - span * index / count))
            )
        client.put_multi(entities)
    return names


def test_slices_of_the_expired_sessions_are_balanced_within_one_and_a_half_times_the_mean(
    client: datastore.Client, settings: Settings
) -> None:
    now = time.time()
    expired = now - 30 * 86400
    seed_spread(client, settings, 3_000, expired, 14 * 86400)  # spread over two weeks
    seed_spread(client, settings, 3_000, expired - 20 * 86400, 3600)  # and a burst within one hour, long ago
    seed(client, settings, 200, now)
    cutoff = cutoff_for(now, settings)
    slices = plan_slices(client, settings, cutoff, 4)
    assert len(slices) == 4 and slices[0][0] is None and slices[-1][1] is None
    sizes = []
    for lo, hi in slices:
        sizes.append(_count_slice(client, settings, lo, hi if hi is not None else cutoff))
    assert sum(sizes) == 6_000
    assert max(sizes) <= 1.5 * statistics.mean(sizes)


def _count_slice(client: datastore.Client, settings: Settings, lo: float | None, hi: float) -> int:
    from google.cloud.datastore.query import PropertyFilter

    query = client.query(kind=settings.kind, namespace=settings.namespace)
    query.keys_only()
    if lo is not None:
        query.add_filter(filter=PropertyFilter("lastseen", ">=", lo))
    query.add_filter(filter=PropertyFilter("lastseen", "<", hi))
    count = 0
    cursor = None
    while True:
        page = query.fetch(limit=5000, start_cursor=cursor)
        found = len(list(page))
        count += found
        cursor = page.next_page_token
        if found < 5000 or cursor is None:
            return count


@pytest.mark.slow
def test_four_chains_through_cloud_tasks_end_exactly_with_every_chain_in_the_logs(
    client: datastore.Client, settings: Settings, tasks_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    expired = seed_spread(client, settings, 40_000, now - 2 * 86400, 7 * 86400)
    live = seed(client, settings, 2_000, now - 60)
    port = free_port()
    env = queue_env(settings, tasks_emulator, port, SESSION_CLEAR_SHARDS="4", SESSION_TIME_BUDGET="0")
    with serve_function("session_task", port, env) as task_server:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        sys.modules.pop("main", None)
        response = create_app("clear_sessions", str(ROOT / "main.py")).test_client().post("/")
        assert response.status_code == 200
        body = response.get_json()
        assert body["shards"] == 4 and body["continued"] is True
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and len(remaining(client, settings)) > len(live):
            time.sleep(1)
        time.sleep(1)  # the last step records its count
        log = task_server.log_path.read_text()
    assert remaining(client, settings) == live
    steps = [json.loads(line) for line in log.splitlines() if '"event": "clear_sessions"' in line]
    per_chain = Counter()
    for step in steps:
        per_chain[step["shard"]] += step["deleted"]
    assert set(per_chain) == {0, 1, 2, 3} and sum(per_chain.values()) == len(expired)
    assert max(per_chain.values()) <= 1.5 * statistics.mean(per_chain.values())
    [run] = [run for run in list_runs(client, settings) if run.run_id == body["run_id"]]
    assert run.status == "done" and run.deleted == len(expired) and run.chains == 4
    leases = [client.get(client.key(LEASE_KIND, lease_name(shard), namespace=settings.namespace)) for shard in range(4)]
    assert leases[1:] == [None, None, None]  # released
    assert leases[0] is not None and leases[0]["until"] == 0 and leases[0]["chains"] == 4  # free, remembering 4


def test_a_last_step_delivered_twice_finishes_its_chain_once(client: datastore.Client, settings: Settings) -> None:
    sliced = replace(settings, clear_shards=2, time_budget=timedelta(0), page_size=100)
    now = time.time()
    seed_spread(client, settings, 400, now - 2 * 86400, 86400)
    queued: list[Any] = []
    run_id = start_clear_sessions(client, sliced, enqueue=queued.append).run_id
    chain0 = [step for step in queued if step.shard == 0]
    while chain0:  # chain 0 to its end, each step delivered twice (a retry after a killed handler)
        step = chain0.pop()
        for _ in range(2):
            run_step(client, sliced, step, enqueue=chain0.append, chains=2)
        chain0[:] = list({following.task_id: following for following in chain0}.values())
    [run] = [run for run in list_runs(client, settings) if run.run_id == run_id]
    assert run.status == "running" and run.chains_done == 1  # chain 1 has not run: the run is not done
    [chain1] = [step for step in queued if step.shard == 1]
    assert not run_step(client, sliced, chain1, enqueue=None, chains=2).skipped
    [run] = [run for run in list_runs(client, settings) if run.run_id == run_id]
    assert run.status == "done" and run.chains_done == 2


def test_a_second_run_does_not_start_while_any_chain_of_the_first_is_alive(
    client: datastore.Client, settings: Settings
) -> None:
    sliced = replace(settings, clear_shards=3, time_budget=timedelta(0), page_size=100)
    now = time.time()
    seed_spread(client, settings, 900, now - 2 * 86400, 86400)
    queued: list[Any] = []
    first = start_clear_sessions(client, sliced, enqueue=queued.append)
    assert first.shards == 3 and len(queued) == 3
    second = start_clear_sessions(client, sliced)
    assert second.skipped and second.deleted == 0
    single = start_clear_sessions(client, replace(sliced, clear_shards=1))  # fewer chains still see all three
    assert single.skipped
    [chain0] = [step for step in queued if step.shard == 0]
    run_step(client, sliced, chain0, enqueue=None, chains=3)  # chain 0 runs to its end (no queue)
    assert start_clear_sessions(client, replace(sliced, clear_shards=1)).skipped  # chains 1 and 2 still live


def test_a_paced_step_asks_for_no_more_than_its_budget_allows_and_continues_in_a_task(
    client: datastore.Client, settings: Settings
) -> None:
    paced = replace(settings, rampup=True, rampup_start=500, time_budget=timedelta(seconds=1), batch_size=100)
    now = time.time()
    seed_spread(client, settings, 3_000, now - 2 * 86400, 86400)
    queued: list[Any] = []
    result = start_clear_sessions(client, paced, enqueue=queued.append, now=now)
    assert result.continued and len(queued) == 1
    assert 0 < result.deleted <= 500 + paced.batch_size  # 500 a second for its one-second budget, one commit more


def test_a_paced_wait_longer_than_the_lease_renews_the_lease_while_it_waits(
    client: datastore.Client, settings: Settings
) -> None:
    slow = replace(settings, lease_ttl=timedelta(seconds=3), batch_size=4)
    seed(client, settings, 4, time.time() - 2 * 86400)
    beats: list[float] = []

    def heartbeat() -> bool:
        beats.append(time.monotonic())
        return True

    pacer = Pacer(1, 300, run_started=time.time())  # one delete a second: the first commit of 4 waits 4 s
    started = time.monotonic()
    outcome = Sweep(client, slow, lambda: session_query(client, slow), pacer=pacer).run(None, heartbeat=heartbeat)
    assert outcome.deleted == 4
    waits = [beat - started for beat in beats]
    assert len(waits) >= 3 and all(later - earlier <= 1.5 for earlier, later in itertools.pairwise([0.0, *waits[:3]]))


# -- ramp-up -------------------------------------------------------------------------------


class CommitClock:
    """Records when each delete commit was sent and how many keys it carried (the client's own RPC)."""

    def __init__(self, client: datastore.Client) -> None:
        self.commits: list[tuple[float, int]] = []
        api = client._datastore_api
        original = api.commit

        def commit(*args: Any, **kwargs: Any) -> Any:
            request = kwargs.get("request") or args[0]
            deletes = sum(1 for mutation in request["mutations"] if "delete" in mutation)
            if deletes:
                self.commits.append((time.time(), deletes))
            return original(*args, **kwargs)

        api.commit = commit


@pytest.mark.parametrize("chains", [1, 2])
def test_deletes_in_any_window_never_exceed_the_compressed_schedule_by_more_than_one_commit(
    client: datastore.Client, settings: Settings, chains: int
) -> None:
    paced = replace(settings, rampup=True, rampup_start=500, rampup_period=timedelta(seconds=2), clear_shards=chains)
    now = time.time()
    seed_spread(client, settings, 4_000, now - 2 * 86400, 86400)
    clock = CommitClock(client)
    started = time.time()
    result = start_clear_sessions(client, paced, now=started)
    assert result.deleted == 4_000 and not result.skipped
    sent = sorted(clock.commits)
    for first in range(len(sent)):  # every window from one commit to a later one, the run's start included
        opened = started if first == 0 else sent[first - 1][0]
        for last in range(first, len(sent)):
            closed, deletes = sent[last][0], sum(count for _, count in sent[first : last + 1])
            allowed = budget(closed - started, 500, 2) - budget(opened - started, 500, 2)
            assert deletes <= allowed + settings.batch_size, (opened - started, closed - started, deletes, allowed)
    assert sent[-1][0] - started >= time_for(4_000, 500, 2) / chains - 0.05  # it was held back


# -- rehash ---------------------------------------------------------------------------------


def test_rehash_refuses_to_run_with_plain_key_storage(client: datastore.Client, settings: Settings) -> None:
    with pytest.raises(MisuseError, match="SESSION_KEY_STORAGE=hashed"):
        start_rehash(client, replace(settings, key_storage="plain"))


def test_rehash_under_concurrent_saves_logs_nobody_out_fails_nothing_and_resurrects_nothing(
    client: datastore.Client, settings: Settings
) -> None:
    plain_store = SessionStore(client, replace(settings, key_storage="plain"))
    cookies = [new_key() for _ in range(600)]
    for start in range(0, 600, 300):
        entities = [
            plain_store.to_entity(SessionRecord(cookie, {"n": 0}, "alice", "k" * 13, time.time()))
            for cookie in cookies[start : start + 300]
        ]
        client.put_multi(entities)
    killed = set(cookies[:60])  # deleted while the rehash runs: must never come back
    outcomes: Counter[str] = Counter()
    stop = threading.Event()

    def browse(mine: list[str]) -> None:
        while not stop.is_set():
            for cookie in mine:
                session = Session(client, settings)
                try:
                    if not session.load(Ctx({settings.cookie_name: cookie})):
                        outcomes["logged out"] += 1
                        continue
                    session["n"] = session["n"] + 1
                    ctx = Ctx()
                    session.save(ctx)
                    cleared = any("Max-Age=0" in h for h in ctx.set_cookies)
                    outcomes["cleared" if cleared else "dropped" if session.new else "saved"] += 1
                except Exception as exc:
                    outcomes[type(exc).__name__] += 1

    browsers = [threading.Thread(target=browse, args=(cookies[60 + 60 * i : 120 + 60 * i],)) for i in range(4)]
    for browser in browsers:
        browser.start()
    for cookie in killed:
        client.delete(plain_store.key(cookie))
    result = start_rehash(client, settings)
    stop.set()
    for browser in browsers:
        browser.join()
    assert outcomes["saved"] > 0 and set(outcomes) == {"saved"}  # 0 logouts, 0 cleared cookies, 0 errors
    names = remaining(client, settings)
    assert not any(len(name) == 42 for name in names)  # no plain name is left
    assert names == {hash_key(cookie) for cookie in cookies if cookie not in killed}  # and nothing killed came back
    assert result.handled <= 540
    again = start_rehash(client, settings)
    assert again.handled == 0  # idempotent
