"""The security review's findings, each as the attack or mistake that exposed it, run against the real functions.

The doors are ``main.py``'s functions served by functions-framework's own app
(``function`` fixture) or as processes; storage is the Firestore emulator.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from functions_framework import create_app
from google.cloud import datastore

from session_core import ConfigError, Session, Settings
from session_core.maintenance.cleanup import start_clear_sessions
from session_core.maintenance.kill import kill_sessions
from session_core.maintenance.runs import list_runs
from session_core.rules import cutoff_for, hash_key, new_key
from session_core.store import SessionRecord, SessionStore
from tests.conftest import (
    VALID_CLEAR,
    VALID_KILL,
    Ctx,
    FunctionClient,
    SigningKey,
    oidc_task_door,
    record_run,
    serve_function,
    token,
)
from tests.test_cleanup import remaining, seed
from tests.test_main import pubsub_push_body
from tests.test_revocation import seed_users

ROOT = Path(__file__).resolve().parent.parent
DEEP = b"[" * 10_000  # ten thousand nested lists, 10 KB: under the body cap


def kill_step(run_id: str, user: str | None, **extra: object) -> dict[str, object]:
    return {**VALID_KILL, "run_id": run_id, "user": user, "page": 1, **extra}


def clear_step(run_id: str, cutoff: float) -> dict[str, object]:
    return {**VALID_CLEAR, "run_id": run_id, "cutoff": cutoff, "page": 1}


@pytest.fixture
def users(client: datastore.Client, settings: Settings) -> dict[str, set[str]]:
    return seed_users(client, settings, {"alice": 20, "bob": 5, "__guest__": 10})


def everyone(users: dict[str, set[str]]) -> set[str]:
    return set().union(*users.values())


# -- 1. the task door is closed by default -------------------------------------------------


def test_without_an_audience_session_task_refuses_every_step_as_misconfigured(
    function: FunctionClient,
    client: datastore.Client,
    settings: Settings,
    users: dict[str, set[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    step = kill_step("a" * 32, None)  # "kill everyone", even of a run that exists
    record_run(client, settings, step)
    door = function("session_task", SESSION_TASK_AUTH="oidc")  # the default, and no SESSION_TASK_AUDIENCE
    response = door.post("/", json=step)
    assert response.status_code == 500
    assert remaining(client, settings) == everyone(users)
    assert '"event": "session_task_misconfigured"' in capsys.readouterr().err


def test_the_opt_out_is_accepted_only_next_to_an_emulator_and_warns_on_every_step(
    function: FunctionClient,
    client: datastore.Client,
    settings: Settings,
    users: dict[str, set[str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"GOOGLE_CLOUD_PROJECT": "shop", "SESSION_TASK_AUTH": "none"})
    assert refused.value.setting == "SESSION_TASK_AUTH"
    step = kill_step("c" * 32, "bob")
    record_run(client, settings, step)
    door = function("session_task")  # SESSION_TASK_AUTH=none, with DATASTORE_EMULATOR_HOST
    assert door.post("/", json=step).status_code == 200
    assert capsys.readouterr().err.count('"event": "session_task_unauthenticated"') == 1
    monkeypatch.delenv("DATASTORE_EMULATOR_HOST")
    monkeypatch.setenv("SESSION_TASK_AUTH", "none")
    import sys

    sys.modules.pop("main", None)
    with pytest.raises(SystemExit) as stopped:  # the instance does not start: exit status 1, one line naming it
        create_app("session_task", str(ROOT / "main.py"))
    assert stopped.value.code == 1
    assert json.loads(capsys.readouterr().err)["variable"] == "SESSION_TASK_AUTH"


# -- 2. a step must belong to a run our own code started ----------------------------------------


def test_a_replayed_valid_token_with_forged_steps_deletes_nothing(
    function: FunctionClient,
    client: datastore.Client,
    settings: Settings,
    users: dict[str, set[str]],
    signing_key: SigningKey,
) -> None:
    door = oidc_task_door(function, signing_key)
    header = {"Authorization": f"Bearer {token(signing_key.signer)}"}  # one valid token, captured once
    genuine = kill_step("d" * 32, "bob")
    record_run(client, settings, genuine)
    clear_run = clear_step("e" * 32, cutoff_for(time.time(), settings))
    record_run(client, settings, clear_run)
    forged = [
        kill_step("d" * 32, None),  # the genuine run's id, "kill everyone"
        kill_step("d" * 32, "alice"),  # another user
        kill_step("d" * 32, None, shard=0, lo=None, hi=None),  # a shard the run never had
        kill_step("f" * 32, None),  # a run that was never started
        {**clear_run, "cutoff": 4e9},  # the clear run's id, every live session
        clear_step("0" * 32, 4e9),
    ]
    statuses = Counter(door.post("/", json=step, headers=header).status_code for step in forged)
    assert statuses == {403: len(forged)}
    assert remaining(client, settings) == everyone(users)
    assert door.post("/", json=genuine, headers=header).status_code == 200  # the real step runs
    assert remaining(client, settings) == everyone(users) - users["bob"]


def test_a_step_of_a_finished_run_is_acknowledged_without_work(
    function: FunctionClient, client: datastore.Client, settings: Settings
) -> None:
    result = kill_sessions("bob", client=client, settings=settings)
    [run] = [run for run in list_runs(client, settings) if run.run_id == result.run_id]
    assert run.status == "done" and run.kind == "kill" and run.params["user"] == "bob"
    seed_users(client, settings, {"bob": 3})  # bob signed in again since
    replay = kill_step(result.run_id, "bob", started=run.started)
    response = function("session_task").post("/", json=replay)
    assert response.status_code == 200 and response.get_json()["skipped"] is True
    assert len(remaining(client, settings)) == 3  # his new sessions live on


def test_the_clear_worker_never_deletes_a_session_before_its_expiry_whatever_the_step_says(
    client: datastore.Client, settings: Settings
) -> None:
    from session_core.maintenance.cleanup import ClearStep, run_clear_step

    now = 2_000_000_000.0
    expired, live = seed(client, settings, 10, now - 86400), seed(client, settings, 10, now - 60)
    step = ClearStep("1" * 32, cutoff=4e9)  # a step whose run says so: the rule still wins
    record_run(client, settings, {**step.to_json(), "started": 0.0})
    run_clear_step(client, settings, step, now=now)
    assert remaining(client, settings) == live and not expired & remaining(client, settings)


def test_runs_are_receipts_with_status_and_counts(client: datastore.Client, settings: Settings) -> None:
    now = time.time()
    seed(client, settings, 30, now - 86400)
    cleared = start_clear_sessions(client, settings)
    killed = kill_sessions("__guest__", client=client, settings=settings)
    runs = {run.run_id: run for run in list_runs(client, settings)}
    assert runs[cleared.run_id].status == "done" and runs[cleared.run_id].deleted == 30
    assert runs[killed.run_id].kind == "kill" and runs[killed.run_id].params["user"] == "__guest__"
    assert next(iter(runs)) == killed.run_id  # newest first


# -- 4. one wrong value must not mean "everyone" ----------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b'{"user": "alice", "user": null}',
        b'{"user": null, "user": "alice"}',
        b'{"user": "a", "except_session": null, "except_session": null}',
    ],
)
def test_a_kill_message_with_a_duplicate_field_is_poison(
    function: FunctionClient,
    client: datastore.Client,
    settings: Settings,
    users: dict[str, set[str]],
    capsys: pytest.CaptureFixture[str],
    data: bytes,
) -> None:
    response = function("kill_user_sessions").post("/", json=pubsub_push_body(data))
    assert response.status_code == 200  # acknowledged: it can never succeed
    assert remaining(client, settings) == everyone(users)
    assert "duplicate field" in capsys.readouterr().err


def test_a_task_payload_with_a_duplicate_field_is_refused(
    function: FunctionClient, client: datastore.Client, settings: Settings, users: dict[str, set[str]]
) -> None:
    step = kill_step("2" * 32, "bob")
    record_run(client, settings, step)
    body = json.dumps(step)[:-1] + ', "user": null}'
    assert function("session_task").post("/", data=body, content_type="application/json").status_code == 400
    assert remaining(client, settings) == everyone(users)


# -- 5. deep JSON ------------------------------------------------------------------------


def test_deep_json_gets_400_at_the_http_doors_and_is_acknowledged_at_the_pubsub_one(
    function: FunctionClient,
    client: datastore.Client,
    settings: Settings,
    users: dict[str, set[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert function("clear_sessions").post("/", data=DEEP).status_code == 400
    assert function("session_task").post("/", data=DEEP).status_code == 400
    kill = function("kill_user_sessions")
    assert kill.post("/", json=pubsub_push_body(DEEP)).status_code == 200  # deep message data: poison
    assert kill.post("/", data=DEEP, content_type="application/json").status_code == 200  # a deep envelope
    assert remaining(client, settings) == everyone(users)
    assert capsys.readouterr().err.count('"event": "kill_message_rejected"') == 2


# -- 6. the first line of a fresh instance is structured ------------------------------------


def test_the_first_poison_message_of_a_fresh_instance_is_logged_as_structured_redacted_json(
    settings: Settings,
) -> None:
    from session_core.testing import free_port

    port = free_port()
    env = {"DATASTORE_EMULATOR_HOST": settings.emulator_host or "", "SESSION_NAMESPACE": settings.namespace or ""}
    cookie = new_key()
    poison = json.dumps({"user": "\x1b[31mred", "cookie": cookie}).encode()
    import urllib.request

    with serve_function("kill_user_sessions", port, env, cloudevent=True) as server:
        body = json.dumps(pubsub_push_body(poison)).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        log = server.log_path.read_text()
    [line] = [text for text in log.splitlines() if "kill_message_rejected" in text]
    event = json.loads(line)
    assert event["severity"] == "WARNING" and "\x1b" not in line
    assert cookie not in log


# -- 7. bodies are capped before they are read ---------------------------------------------


class CountingStream(io.RawIOBase):
    """A request body of ``size`` bytes, made up as it is read, that counts what the server reads of it."""

    def __init__(self, size: int) -> None:
        self.size, self.position, self.read_bytes = size, 0, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True  # werkzeug's test client measures the body by seeking to its end

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = {0: offset, 1: self.position + offset, 2: self.size + offset}[whence]
        return self.position

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.size - self.position)
        buffer[:count] = b" " * count
        self.position += count
        self.read_bytes += count
        return count


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize("target", ["clear_sessions", "session_task"])
def test_a_300_mib_body_gets_413_reading_at_most_16_kib_and_runs_no_cleanup(
    function: FunctionClient, client: datastore.Client, settings: Settings, declared: bool, target: str
) -> None:
    expired = seed(client, settings, 20, time.time() - 86400)
    body = CountingStream(300 * 1024 * 1024)
    door = function(target)
    chunked = {"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}
    response = door.post("/", input_stream=body, environ_overrides={} if declared else chunked)
    assert response.status_code == 413
    assert body.read_bytes <= (0 if declared else 16 * 1024 + 64 * 1024)  # at most the cap and one read buffer
    assert remaining(client, settings) == expired  # no cleanup ran


# -- 8. moving a ViUR plain-key session under concurrent requests --------------------------------


def test_concurrent_saves_of_a_plain_key_session_moving_to_its_hash_never_log_the_user_out(
    client: datastore.Client, settings: Settings
) -> None:
    cookie = new_key()
    plain = replace(settings, key_storage="plain")
    store = SessionStore(client, plain)
    assert store.insert(SessionRecord(cookie, {"n": 0}, "alice", "k" * 13, time.time()))
    outcomes: Counter[str] = Counter()

    def request(index: int) -> None:
        session = Session(client, settings)  # hashed storage: the first save moves it
        if not session.load(Ctx({settings.cookie_name: cookie})):
            outcomes["logged out on load"] += 1
            return
        session[f"r{index}"] = index
        ctx = Ctx()
        try:
            session.save(ctx)
        except Exception as exc:
            outcomes[type(exc).__name__] += 1
            return
        cleared = "Max-Age=0" in " ".join(ctx.set_cookies)
        outcomes["cleared" if cleared else "dropped" if session.new else "saved"] += 1  # dropped: found gone

    for _ in range(10):  # ten rounds of eight requests at once
        store.insert(SessionRecord(cookie, {"n": 0}, "alice", "k" * 13, time.time()))
        client.delete(store.key(hash_key(cookie)))
        threads = [threading.Thread(target=request, args=(index,)) for index in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert outcomes == {"saved": 80}
    assert client.get(store.key(cookie)) is None and client.get(store.key(hash_key(cookie))) is not None


# -- 10. cookies ---------------------------------------------------------------------------


def test_of_duplicate_cookies_of_our_name_the_one_that_loads_a_live_session_wins(
    client: datastore.Client, settings: Settings
) -> None:
    session = Session(client, settings)
    session.load(Ctx())
    session["mine"] = True
    ctx = Ctx()
    session.save(ctx)
    mine = ctx.set_cookies[0].split(";")[0].split("=", 1)[1]
    planted = new_key()  # a sibling subdomain set a cookie of our name, sent first
    from session_core.wsgi import WSGIContext

    context = WSGIContext({"HTTP_COOKIE": f"{settings.cookie_name}={planted}; {settings.cookie_name}={mine}"})
    again = Session(client, settings)
    assert again.load(context) and again["mine"] is True and again.cookie_key == mine


def test_a_host_prefixed_cookie_name_is_accepted() -> None:
    assert Settings(cookie_name="__Host-sid").cookie_name == "__Host-sid"


@pytest.mark.parametrize(
    ("changes", "setting"),
    [
        ({"cookie_name": "__Host-sid", "cookie_secure": False}, "cookie_secure"),
        ({"cookie_name": "__secure-sid", "cookie_secure": False}, "cookie_secure"),
        ({"cookie_name": "__Host-sid", "cookie_path": "/app"}, "cookie_path"),
        ({"cookie_name": "__HOST-sid", "cookie_domain": "example.com"}, "cookie_path"),
    ],
)
def test_a_prefixed_cookie_name_without_what_browsers_require_is_refused_at_start(
    changes: dict[str, Any], setting: str
) -> None:
    with pytest.raises(ConfigError, match=setting):  # browsers would drop the cookie: nobody could stay signed in
        Settings(**changes)
