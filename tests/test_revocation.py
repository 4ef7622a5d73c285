"""Kill-by-user against the real emulator: exactly the targeted sessions go."""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from google.auth.transport import requests as auth_requests
from google.cloud import datastore

import session_core
from session_core import GUEST_USER, Session, SessionRecord, Settings, functions, kill_sessions
from session_core.errors import MisuseError, PoisonMessageError
from session_core.functions import Runtime, run_step
from session_core.maintenance import sweep as sweep_module
from session_core.maintenance.auth import CertificateCache
from session_core.maintenance.kill import (
    KillStep,
    end_user_session,
    list_user_sessions,
    logout_everywhere_else,
    parse_kill_message,
    parse_pubsub_event,
    run_id_for,
    run_kill_step,
    shard_of,
    shard_ranges,
    split_points,
)
from session_core.maintenance.steps import Step, parse_step
from session_core.rules import hash_key, new_key
from session_core.store import SessionStore
from tests.conftest import ROOT, Ctx, FunctionClient, RpcCounter
from tests.test_cleanup import remaining
from tests.test_main import pubsub_push_body

NOW = time.time()


def seed_users(
    client: datastore.Client, settings: Settings, counts: dict[str, int], *, plain: bool = False
) -> dict[str, set[str]]:
    """Live sessions per user; returns the key names of each user's sessions."""
    store = SessionStore(client, settings)
    names: dict[str, set[str]] = {}
    entities = []
    for user, count in counts.items():
        names[user] = {new_key() if plain else hash_key(new_key()) for _ in range(count)}
        entities += [store.to_entity(SessionRecord(n, {"ip": "10.0.0.1"}, user, "k" * 13, NOW)) for n in names[user]]
    for start in range(0, len(entities), 500):
        client.put_multi(entities[start : start + 500])
    return names


def drain(client: datastore.Client, settings: Settings, queued: list[Step], *, twice: bool = False) -> int:
    deleted = 0
    while queued:
        step = queued.pop(0)
        assert isinstance(step, KillStep)
        deleted += run_kill_step(client, settings, step, enqueue=queued.append).deleted
        if twice:
            deleted += run_kill_step(client, settings, step, enqueue=lambda _: None).deleted
    return deleted


@pytest.fixture
def population(client: datastore.Client, settings: Settings) -> dict[str, set[str]]:
    users = seed_users(client, settings, {"alice": 1200, "bob": 7, "carol": 3, GUEST_USER: 40})
    users["viur-bob"] = seed_users(client, settings, {"bob": 2}, plain=True)["bob"]
    users["bob"] |= users.pop("viur-bob")
    return users


def everyone_but(population: dict[str, set[str]], *users: str) -> set[str]:
    return set().union(*(names for user, names in population.items() if user not in users))


def test_one_user_with_more_than_a_page_is_killed_inline(
    client: datastore.Client, settings: Settings, population: dict[str, set[str]]
) -> None:
    result = kill_sessions("alice", client=client, settings=settings)
    assert result.deleted == 1200 and not result.continued
    assert remaining(client, settings) == everyone_but(population, "alice")


def test_first_batch_goes_at_once_and_the_rest_continues_as_tasks(
    client: datastore.Client, settings: Settings, population: dict[str, set[str]], rpcs: RpcCounter
) -> None:
    queued: list[Step] = []
    rpcs.reset()
    result = kill_sessions("alice", client=client, settings=settings, enqueue=queued.append)
    # The run and the kill time recorded in one commit, one keys-only page, one delete commit, and the count.
    assert rpcs.calls == {"commit": 3, "run_query": 1, "begin_transaction": 1, "lookup": 1}
    assert result.deleted == 500 and result.continued and len(queued) == 1
    assert len(remaining(client, settings)) == sum(map(len, population.values())) - 500
    assert drain(client, settings, queued) == 700
    assert remaining(client, settings) == everyone_but(population, "alice")


def test_a_small_user_is_logged_out_before_the_call_returns(
    client: datastore.Client, settings: Settings, population: dict[str, set[str]]
) -> None:
    queued: list[Step] = []
    result = kill_sessions("bob", client=client, settings=settings, enqueue=queued.append)
    assert result.deleted == 9 and not result.continued and queued == []
    assert remaining(client, settings) == everyone_but(population, "bob")


def test_guest_kills_every_guest_session_through_shards(
    client: datastore.Client, settings: Settings, population: dict[str, set[str]]
) -> None:
    queued: list[Step] = []
    result = kill_sessions(GUEST_USER, client=client, settings=settings, enqueue=queued.append)
    assert result.shards == settings.shards == len(queued)
    assert drain(client, settings, queued) == 40
    assert remaining(client, settings) == everyone_but(population, GUEST_USER)


def test_each_shard_step_reports_how_many_shards_its_run_has(
    client: datastore.Client, settings: Settings, population: dict[str, set[str]]
) -> None:
    queued: list[Step] = []
    kill_sessions(GUEST_USER, client=client, settings=settings, enqueue=queued.append)
    results = [run_step(client, settings, step, enqueue=None, chains=len(queued)) for step in queued]
    assert [(result.shard, result.shards) for result in results] == [(n, settings.shards) for n in range(len(queued))]


def test_no_user_kills_every_session(
    client: datastore.Client, settings: Settings, population: dict[str, set[str]]
) -> None:
    result = kill_sessions(None, client=client, settings=settings)
    assert result.deleted == sum(map(len, population.values()))
    assert remaining(client, settings) == set()


def test_except_session_survives(client: datastore.Client, settings: Settings, population: dict[str, set[str]]) -> None:
    kept_hashed = sorted(population["alice"])[0]
    kill_sessions("alice", client=client, settings=settings, except_session=kept_hashed)
    assert remaining(client, settings) == everyone_but(population, "alice") | {kept_hashed}
    kept_plain = next(name for name in population["bob"] if len(name) == 42)
    kill_sessions(None, client=client, settings=settings, except_session=hash_key(kept_plain))
    assert remaining(client, settings) == {kept_plain}


def test_the_same_kill_delivered_twice_ends_in_the_same_state(
    client: datastore.Client, settings: Settings, population: dict[str, set[str]]
) -> None:
    for user in ("alice", None):
        queued: list[Step] = []
        for _ in range(2):
            run_id = ("e" if user else "f") * 32  # a message id names one kill
            kill_sessions(user, client=client, settings=settings, enqueue=queued.append, run_id=run_id)
        assert len({step.task_id for step in queued}) == len(queued) // 2  # the duplicates share task names
        drain(client, settings, queued, twice=True)
        if user == "alice":
            assert remaining(client, settings) == everyone_but(population, "alice")
    assert remaining(client, settings) == set()


def test_the_observer_sees_each_killed_session(
    client: datastore.Client, settings: Settings, population: dict[str, set[str]]
) -> None:
    seen: list[SessionRecord] = []
    kill_sessions("bob", client=client, settings=settings, observer=seen.append)
    assert {record.key_name for record in seen} == population["bob"]
    assert {record.user for record in seen} == {"bob"}


def test_kill_refuses_bad_arguments(client: datastore.Client, settings: Settings) -> None:
    with pytest.raises(MisuseError):
        kill_sessions("", client=client, settings=settings)
    with pytest.raises(MisuseError):
        kill_sessions("bob", client=client, settings=settings, except_session=new_key())  # a cookie


# -- devices ---------------------------------------------------------------------


def test_list_and_end_one_device(client: datastore.Client, settings: Settings, population: dict[str, set[str]]) -> None:
    devices = list_user_sessions(client, settings, "bob")
    assert len(devices) == 9
    assert {device.session_id for device in devices} == {n if len(n) == 64 else hash_key(n) for n in population["bob"]}
    assert all(device.ip == "10.0.0.1" and device.user_agent is None for device in devices)
    plain = next(name for name in population["bob"] if len(name) == 42)
    assert end_user_session(client, settings, "bob", hash_key(plain))
    assert not end_user_session(client, settings, "carol", devices[0].session_id)  # not carol's
    hashed = next(name for name in population["bob"] if len(name) == 64)
    assert end_user_session(client, settings, "bob", hashed)
    assert remaining(client, settings) == everyone_but(population) - {plain, hashed}


def test_logout_everywhere_else_keeps_the_current_session(
    client: datastore.Client, settings: Settings, population: dict[str, set[str]]
) -> None:
    session = Session(client, settings)
    session.load(Ctx())
    session.login("bob")
    session.save(Ctx())
    assert logout_everywhere_else(session) == 9
    assert remaining(client, settings) == everyone_but(population, "bob") | {session.session_id}
    with pytest.raises(MisuseError):
        logout_everywhere_else(Session(client, settings))


# -- messages and payloads ---------------------------------------------------------


def test_valid_messages() -> None:
    assert parse_kill_message(b'{"user": "u-1"}').user == "u-1"
    assert parse_kill_message(b'{"user": null}').user is None
    assert parse_kill_message(b'{"user": "__guest__"}').user == GUEST_USER
    kill = parse_kill_message(json.dumps({"user": "u", "except_session": "a" * 64}).encode())
    assert kill.except_session == "a" * 64


POISON = [
    (b"", "not JSON"),
    (b"kill bob", "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b'["bob"]', "not a JSON object"),
    (b'"bob"', "not a JSON object"),
    (b"{}", "missing"),
    (b'{"user": 42}', '"user" must be'),
    (b'{"user": ""}', '"user" must be'),
    (b'{"user": ["bob"]}', '"user" must be'),
    (b'{"user": {"id": 1}}', '"user" must be'),
    (b'{"user": true}', '"user" must be'),
    (b'{"user": "bob\\n"}', '"user" must be'),
    (json.dumps({"user": "x" * 1501}).encode(), '"user" must be'),
    (b'{"user": "bob", "extra": 1}', "unknown fields"),
    # A cookie in our format (a fixed one, so that every process of a parallel run collects the same test ids).
    (b'{"user": "bob", "except_session": "htJFhwIPA3TA5eNypjBiIwmaHYfFV16aEdxC4AvWru"}', "never a cookie"),
    (b'{"user": "bob", "except_session": 7}', "never a cookie"),
    (b'{"user": NaN}', "not JSON"),
    (b'{"user": "' + b"x" * 11000 + b'"}', "larger than"),
]


@pytest.mark.parametrize(("data", "reason"), POISON)
def test_poison_messages_are_named(data: bytes, reason: str) -> None:
    with pytest.raises(PoisonMessageError, match=reason):
        parse_kill_message(data)


@pytest.mark.parametrize(
    "event",
    [None, {}, {"message": {}}, {"message": {"data": 5}}, {"message": {"data": "%%%"}}, {"message": "x"}, [1]],
)
def test_pubsub_envelopes_without_data_are_poison(event: object) -> None:
    with pytest.raises(PoisonMessageError):
        parse_pubsub_event(event)


def test_pubsub_envelope_with_data() -> None:
    event = {"message": {"data": base64.b64encode(b'{"user": "bob"}').decode()}}
    assert parse_pubsub_event(event).user == "bob"


def test_kill_steps_survive_a_round_trip_through_their_payload() -> None:
    step = KillStep(
        run_id_for("m-1"), "bob", "a" * 64, 3, "0a", "1b", cursor="CgZDdXJzb3I=", page=7
    )  # a protocol buffer, as a cursor is
    assert parse_step(json.dumps(step.to_json()).encode()) == step
    assert run_id_for("m-1") == run_id_for("m-1") != run_id_for("m-2")


# -- shards -------------------------------------------------------------------------


def test_split_points_cut_a_sorted_sample_evenly() -> None:
    sample = [f"{i:04d}" for i in range(1600)]
    points = split_points(sample, 16)
    assert points == [f"{i:04d}" for i in range(100, 1600, 100)]
    ranges = shard_ranges(points)
    assert ranges[0] == (None, "0100") and ranges[-1] == ("1500", None) and len(ranges) == 16
    assert shard_of("0099", points) == 0 and shard_of("0100", points) == 1 and shard_of("zzzz", points) == 15
    assert split_points(["a", "a", "a"], 4) == ["a"]
    assert split_points([], 16) == []


def modules_entered(call: Callable[[], object]) -> set[str]:
    """The session_core files (package-relative) in which ``call`` runs a function, in any thread it starts.

    The log processors (``logging.py``), which every log line of every entry point passes through, are left out.
    """
    package = Path(session_core.__file__).parent
    entered: set[str] = set()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            path = Path(frame.f_code.co_filename)
            if path.is_relative_to(package):
                entered.add(path.relative_to(package).as_posix())

    threading.setprofile(profile)  # the sweep commits from a thread pool
    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
    return entered - {"logging.py"}


def test_a_kill_from_its_door_to_its_deletes_runs_in_the_files_that_hold_its_parts(
    client: datastore.Client, settings: Settings
) -> None:
    """What ``main.py``'s kill door runs for one user, read from the code that runs (a warm process).

    The door's handler, the kill, the sweep that pages, deletes and tells the
    observer, the store and the Datastore plumbing, plus what a kill records
    (its run and step, the user's kill time) and the checks of its input. A
    new file on this path is a choice to make here, not an accident: kill-only
    helpers live in ``maintenance/kill.py`` (no ``epochs.py``: the store raises
    epochs).
    """
    names = seed_users(client, settings, {"alice": 3, "bob": 2, "carol": 1})
    runtime = Runtime(settings, client, None, auth_requests.Request(), CertificateCache(settings.task_certs_url))

    def message(user: str) -> dict[str, object]:
        return pubsub_push_body(json.dumps({"user": user}).encode())

    functions.kill_user_sessions(runtime, message("carol"), "warm-up")  # imports done: only calls count
    entered = modules_entered(lambda: functions.kill_user_sessions(runtime, message("alice"), "message-1"))

    assert remaining(client, settings) == names["bob"]
    assert entered == {
        "functions.py",  # the door's handler, and the process's delete observer (_observers.py)
        "_observers.py",
        "maintenance/kill.py",  # parse the message, record the run, plan, run the first step
        "rules.py",  # the message's user and session id are checked
        "maintenance/steps.py",  # strict JSON; the step's chain and wire form
        "maintenance/runs.py",  # the run record, and its step counted
        "logins.py",  # the user's kill time (a remember-me cookie cannot undo the kill)
        "maintenance/events.py",  # lifecycle events (off here)
        "maintenance/sweep.py",  # page, delete, tell the observer
        "store.py",
        "_datastore.py",
    }


def test_a_kill_reads_from_main_py_to_its_deletes_in_five_files(
    function: FunctionClient, client: datastore.Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call chain of every delete commit of a kill-user message, from main.py's door down: five files.

    At each delete commit, the files on the committing thread's stack and on the stack of the thread
    that handles the request (the sweep commits from a pool while that thread waits on it). What the
    kill calls on the way and returns from (its checks, its records, events, pacing) is off this chain:
    the test above lists those files.
    """
    names = seed_users(client, settings, {"alice": 1200, "bob": 2})
    kill = function("kill_user_sessions", SESSION_BATCH_SIZE="100")
    package, entry = Path(session_core.__file__).parent, ROOT / "main.py"

    def ours(frame: FrameType | None) -> set[str]:
        files = set()
        while frame is not None:
            path = Path(frame.f_code.co_filename)
            if path == entry:
                files.add("main.py")
            elif path.is_relative_to(package) and path.name != "logging.py":
                files.add(path.relative_to(package).as_posix())
            frame = frame.f_back
        return files

    handler, chains = threading.get_ident(), []
    commit = sweep_module.commit
    committer = Path(commit.__code__.co_filename).relative_to(package).as_posix()  # where the commit is made

    def traced(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("delete"):
            chains.append(ours(sys._getframe(1)) | ours(sys._current_frames()[handler]) | {committer})
        return commit(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "commit", traced)

    assert kill.post("/", json=pubsub_push_body(b'{"user": "alice"}', "m-chain")).status_code == 200

    assert remaining(client, settings) == names["bob"]
    assert len(chains) >= 12  # 1,200 sessions in commits of 100
    assert all(
        chain == {"main.py", "functions.py", "maintenance/kill.py", "maintenance/sweep.py", "_datastore.py"}
        for chain in chains
    ), chains[0]
