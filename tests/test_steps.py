"""A task step runs only if it is the very step its run enqueued: forged and replayed steps, through the door.

Each attack carries a valid task token (captured once) and is posted to
``session_task`` served by functions-framework; storage is the Firestore
emulator. The real steps come from the library, with a queue that keeps them.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from google.cloud import datastore

from session_core import Settings, kill_sessions
from session_core.errors import PayloadError
from session_core.functions import run_step
from session_core.maintenance.cleanup import start_clear_sessions
from session_core.maintenance.pacing import Pacer
from session_core.maintenance.runs import list_runs
from session_core.maintenance.steps import Step
from session_core.maintenance.sweep import Sweep, fetch_page, session_query
from tests.conftest import FunctionClient, SigningKey, oidc_task_door, token
from tests.test_cleanup import remaining, seed
from tests.test_revocation import seed_users
from tests.test_scale import seed_spread


@pytest.fixture
def door(function: FunctionClient, signing_key: SigningKey) -> Any:
    """``post(step)``: the step's JSON posted to session_task (no queue: a step runs its chain to the end)."""
    client = oidc_task_door(function, signing_key)
    header = {"Authorization": f"Bearer {token(signing_key.signer)}"}  # one valid token, captured once
    return lambda step: client.post("/", json=step if isinstance(step, dict) else step.to_json(), headers=header)


def another_cursor(client: datastore.Client, settings: Settings) -> str:
    """A genuine Datastore cursor, of another query: what a forger with read access could paste."""
    _, cursor = fetch_page(lambda: session_query(client, settings), 3, None)
    assert cursor is not None
    return cursor


def forgeries(real: Step, previous: Step, other_cursor: str) -> dict[str, dict[str, Any]]:
    """The real next step with one field changed, and an old step replayed with the real step's cursor."""
    wire = real.to_json()
    return {
        "forged cursor": {**wire, "cursor": other_cursor},
        "forged page": {**wire, "page": real.page + 1},
        "forged done": {**wire, "done": 10**12},
        "replayed old step": {**previous.to_json(), "cursor": real.cursor},
        "the chain's first step again, at a later page": {**previous.to_json(), "page": real.page},
    }


def test_forged_and_replayed_kill_steps_are_refused_and_the_kill_still_ends_every_session(
    door: Any, client: datastore.Client, settings: Settings
) -> None:
    users = seed_users(client, settings, {"victim": 12, "bystander": 5})
    small = replace(settings, batch_size=5, page_size=5, time_budget=timedelta(0))
    queued: list[Step] = []
    first = kill_sessions("victim", client=client, settings=small, enqueue=queued.append)
    assert first.deleted == 5 and len(queued) == 1
    [real] = queued
    previous = replace(real, cursor=None, page=0, done=0)  # the step kill_sessions ran and counted
    left = remaining(client, settings)
    for name, forged in forgeries(real, previous, another_cursor(client, settings)).items():
        response = door(forged)
        assert response.status_code == 403, name
        assert remaining(client, settings) == left, name  # nothing deleted
    [run] = [run for run in list_runs(client, settings) if run.run_id == first.run_id]
    assert (run.status, run.steps, run.deleted) == ("running", 1, 5)  # nothing changed
    duplicate = door(previous)  # the real previous step, delivered again
    assert duplicate.status_code == 200 and duplicate.get_json()["skipped"] is True
    assert remaining(client, settings) == left
    assert door(real).status_code == 200
    assert remaining(client, settings) == users["bystander"]  # all 12 of the victim's sessions are gone
    [run] = [run for run in list_runs(client, settings) if run.run_id == first.run_id]
    assert (run.status, run.deleted) == ("done", 12)


def test_forged_and_replayed_cleanup_steps_are_refused_and_every_chain_still_finishes(
    door: Any, client: datastore.Client, settings: Settings
) -> None:
    now = time.time()
    expired, live = seed_spread(client, settings, 60, now - 10 * 86400, 86400), seed(client, settings, 7, now - 60)
    sliced = replace(settings, clear_shards=2, page_size=10, batch_size=10, time_budget=timedelta(0), rampup=False)
    queued: list[Step] = []
    started = start_clear_sessions(client, sliced, enqueue=queued.append, now=now)
    assert started.shards == 2 and len(queued) == 2
    firsts = list(queued)
    queued.clear()
    for step in firsts:  # each chain's first step, as Cloud Tasks would run it: its next step is queued
        run_step(client, sliced, step, enqueue=queued.append, chains=2)
    assert len(queued) == 2
    left = remaining(client, settings)
    assert len(left) == 67 - 20
    other = another_cursor(client, settings)
    for real, previous in zip(queued, firsts, strict=True):
        for name, forged in forgeries(real, previous, other).items():
            assert door(forged).status_code == 403, name
            assert remaining(client, settings) == left, name
        duplicate = door(previous)
        assert duplicate.status_code == 200 and duplicate.get_json()["skipped"] is True
        assert remaining(client, settings) == left
    for real in queued:
        assert door(real).status_code == 200
    assert remaining(client, settings) == live and not expired & remaining(client, settings)
    [run] = [run for run in list_runs(client, settings) if run.run_id == started.run_id]
    assert (run.status, run.chains_done, run.deleted) == ("done", 2, 60)


def test_a_cursor_that_is_base64_but_no_datastore_cursor_is_a_400(
    door: Any, client: datastore.Client, settings: Settings
) -> None:
    seed_users(client, settings, {"victim": 12})
    small = replace(settings, batch_size=5, page_size=5, time_budget=timedelta(0))
    queued: list[Step] = []
    kill_sessions("victim", client=client, settings=small, enqueue=queued.append)
    for cursor in ("AAAA", "ZmZmZmZm"):  # valid base64, not a protocol buffer
        response = door({**queued[0].to_json(), "cursor": cursor})
        assert response.status_code == 400, cursor
        assert "cursor" in response.get_json()["error"]
    assert len(remaining(client, settings)) == 7


def test_a_cursor_datastore_cannot_parse_is_a_payload_error_not_a_store_error(
    client: datastore.Client, settings: Settings
) -> None:
    seed(client, settings, 3, 1000.0)
    with pytest.raises(PayloadError, match="cursor"):
        fetch_page(lambda: session_query(client, settings), 2, "CgVoZWxsbw==")  # a protocol buffer, not a cursor


class FakeClock:
    """Epoch seconds that advance only when the code under test sleeps."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds


def test_a_pacer_never_sleeps_past_its_deadline_whatever_done_it_is_given() -> None:
    clock = FakeClock(2_000_000_000.0)
    pacer = Pacer(500, 300, clock.now, done=10**12, clock=clock, sleep=clock.sleep, within=60)
    assert pacer.take(100) is False and clock.slept == 0.0 and pacer.done == 10**12
    sane = Pacer(500, 300, clock.now, done=400, clock=clock, sleep=clock.sleep, within=60)
    assert sane.take(500) is True and 0 < clock.slept <= 60  # a wait within the deadline is still waited


def test_a_paced_sweep_with_an_absurd_done_returns_at_once_and_goes_on_from_where_it_was(
    client: datastore.Client, settings: Settings
) -> None:
    names = seed(client, settings, 20, 1000.0)
    clock = FakeClock(2_000_000_000.0)
    pacer = Pacer(500, 300, clock.now, done=10**12, clock=clock, sleep=clock.sleep, within=60)
    sweep = Sweep(client, settings, lambda: session_query(client, settings), pacer=pacer)
    outcome = sweep.run(None, deadline=time.monotonic() + 60)
    assert clock.slept <= 60 and outcome.deleted == 0 and outcome.paused
    assert outcome.more and outcome.cursor is None  # the next step starts from the start again
    assert remaining(client, settings) == names


def test_cleanup_slices_that_collapse_on_one_lastseen_value_are_reported_and_still_delete_each_session_once(
    client: datastore.Client, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    expired, live = seed(client, settings, 200, now - 10 * 86400), seed(client, settings, 5, now - 60)
    result = start_clear_sessions(client, replace(settings, clear_shards=4), now=now)
    assert result.shards == 1 and result.deleted == 200  # one value cannot be split: one chain, every session once
    assert remaining(client, settings) == live and not expired & remaining(client, settings)
    assert '"event": "clear_slices_collapsed"' in capsys.readouterr().err
