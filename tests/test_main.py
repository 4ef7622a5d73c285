"""The Cloud Functions in main.py, served by functions-framework's own app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.cloud import datastore

from session_core import Settings
from session_core._datastore import settings_key
from session_core.maintenance.leases import LEASE_KIND, LEASE_NAME
from tests.conftest import VALID_CLEAR, VALID_KILL, FunctionClient, record_run
from tests.test_cleanup import remaining, seed

MAIN = Path(__file__).resolve().parent.parent / "main.py"


@pytest.fixture
def expired_and_live(client: datastore.Client, settings: Settings) -> tuple[set[str], set[str]]:
    now = time.time()
    return seed(client, settings, 600, now - 86400), seed(client, settings, 40, now)


@pytest.mark.smoke  # CI's Python 3.13 pass runs it after make check
def test_scheduler_post_clears_expired_sessions(
    function: FunctionClient,
    client: datastore.Client,
    settings: Settings,
    expired_and_live: tuple[set[str], set[str]],
) -> None:
    response = function("clear_sessions").post("/")
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {
        "run_id",
        "cutoff",
        "cutoff_utc",
        "deleted",
        "counted",
        "batches",
        "continued",
        "skipped",
        "elapsed_s",
        "dry_run",
        "shard",
        "shards",
    }
    assert body["deleted"] == body["counted"] == 600 and body["batches"] == 2 and body["shards"] == 1
    assert not body["skipped"] and not body["continued"] and not body["dry_run"]
    assert body["cutoff_utc"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(body["cutoff"]))
    assert remaining(client, settings) == expired_and_live[1]


def test_dry_run_answers_what_it_would_delete_and_deletes_nothing(
    function: FunctionClient,
    client: datastore.Client,
    settings: Settings,
    expired_and_live: tuple[set[str], set[str]],
) -> None:
    response = function("clear_sessions").post("/", json={"dry_run": True})
    assert response.status_code == 200
    body = response.get_json()
    assert (body["dry_run"], body["counted"], body["deleted"]) == (True, 600, 0)
    assert remaining(client, settings) == expired_and_live[0] | expired_and_live[1]


@pytest.mark.parametrize(
    ("method", "body", "status"),
    [
        ("GET", None, 405),
        ("PUT", b"{}", 405),
        ("POST", b"not json", 400),
        ("POST", b"[]", 400),
        ("POST", b'{"dry_run": "yes"}', 400),
        ("POST", b'{"dry_run": false, "extra": 1}', 400),
    ],
)
def test_bad_clear_requests_get_clear_errors_and_delete_nothing(
    function: FunctionClient,
    client: datastore.Client,
    settings: Settings,
    expired_and_live: tuple[set[str], set[str]],
    method: str,
    body: bytes | None,
    status: int,
) -> None:
    response = function("clear_sessions").open("/", method=method, data=body)
    assert response.status_code == status
    assert "error" in response.get_json()
    assert remaining(client, settings) == expired_and_live[0] | expired_and_live[1]


@pytest.mark.smoke  # CI's Python 3.13 pass runs it after make check
def test_session_task_runs_a_clear_step(
    function: FunctionClient,
    client: datastore.Client,
    settings: Settings,
    expired_and_live: tuple[set[str], set[str]],
) -> None:

    step = {**VALID_CLEAR, "run_id": "d" * 32, "cutoff": time.time() - 3900, "started": time.time()}
    record_run(client, settings, step)
    task = function("session_task")
    for _ in range(2):  # a duplicated delivery is harmless
        response = task.post("/", data=json.dumps(step), content_type="application/json")
        assert response.status_code == 200
    assert remaining(client, settings) == expired_and_live[1]


def clear_payload(**changed: object) -> bytes:
    """A clear step's JSON with some fields changed (``drop=...`` removes one)."""
    step: dict[str, object] = {**VALID_CLEAR, "run_id": "d" * 32, "cutoff": 1, "started": 1}
    step.pop(str(changed.pop("drop", "")), None)
    return json.dumps({**step, **changed}).encode()


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"nope",
        b"[]",
        b'{"op": "clear"}',
        clear_payload(op="other"),
        clear_payload(run_id="xyz"),
        clear_payload(cutoff="1"),
        clear_payload(cursor="%%"),
        clear_payload(page=-1),
        clear_payload(dry_run=0),
        clear_payload(x=1),
        clear_payload(drop="started"),
        clear_payload(lo=5.0),  # bounds without a shard
        clear_payload(cutoff=float("nan")),
    ],
)
def test_malformed_task_payloads_get_400_and_delete_nothing(
    function: FunctionClient,
    client: datastore.Client,
    settings: Settings,
    expired_and_live: tuple[set[str], set[str]],
    payload: bytes,
) -> None:
    response = function("session_task").post("/", data=payload, content_type="application/json")
    assert response.status_code == 400
    assert remaining(client, settings) == expired_and_live[0] | expired_and_live[1]


# -- kill_user_sessions ------------------------------------------------------------


def pubsub_push_body(data: bytes, message_id: str = "m-1") -> dict[str, object]:
    """The body the Pub/Sub emulator POSTs to a push endpoint."""
    import base64

    return {
        "message": {"data": base64.b64encode(data).decode(), "messageId": message_id, "attributes": {}},
        "subscription": "projects/session-core-test/subscriptions/kill-user-push",
    }


@pytest.fixture
def users(client: datastore.Client, settings: Settings) -> dict[str, set[str]]:
    from tests.test_revocation import seed_users

    return seed_users(client, settings, {"alice": 30, "bob": 5, "__guest__": 12})


@pytest.mark.smoke  # CI's Python 3.13 pass runs it after make check
def test_kill_message_as_a_raw_pubsub_push(
    function: FunctionClient,
    client: datastore.Client,
    settings: Settings,
    users: dict[str, set[str]],
) -> None:
    response = function("kill_user_sessions").post("/", json=pubsub_push_body(b'{"user": "alice"}'))
    assert response.status_code == 200
    assert remaining(client, settings) == users["bob"] | users["__guest__"]


def test_kill_message_as_a_structured_cloudevent(
    function: FunctionClient,
    client: datastore.Client,
    settings: Settings,
    users: dict[str, set[str]],
) -> None:
    import base64

    event = {
        "specversion": "1.0",
        "type": "google.cloud.pubsub.topic.v1.messagePublished",
        "source": "//pubsub.googleapis.com/projects/session-core-test/topics/kill-user",
        "id": "m-2",
        "datacontenttype": "application/json",
        "data": {"message": {"data": base64.b64encode(b'{"user": "__guest__"}').decode(), "messageId": "m-2"}},
    }
    response = function("kill_user_sessions").post(
        "/", data=json.dumps(event), headers={"Content-Type": "application/cloudevents+json"}
    )
    assert response.status_code == 200
    assert remaining(client, settings) == users["alice"] | users["bob"]


def test_poison_messages_are_acknowledged_and_delete_nothing(
    function: FunctionClient,
    client: datastore.Client,
    settings: Settings,
    users: dict[str, set[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.test_revocation import POISON

    kill = function("kill_user_sessions")
    for data, _ in POISON:
        assert kill.post("/", json=pubsub_push_body(data)).status_code == 200
    assert remaining(client, settings) == users["alice"] | users["bob"] | users["__guest__"]
    rejected = [line for line in capsys.readouterr().err.splitlines() if "kill_message_rejected" in line]
    assert len(rejected) == len(POISON)


@pytest.mark.smoke  # CI's Python 3.13 pass runs it after make check
def test_session_task_runs_a_kill_step(
    function: FunctionClient,
    client: datastore.Client,
    settings: Settings,
    users: dict[str, set[str]],
) -> None:
    step = {**VALID_KILL, "run_id": "f" * 32, "user": "bob", "page": 1}
    record_run(client, settings, step)
    response = function("session_task").post("/", json=step)
    assert response.status_code == 200 and response.get_json()["deleted"] == 5
    assert remaining(client, settings) == users["alice"] | users["__guest__"]


def test_a_datastore_outage_during_a_kill_is_logged_and_raised_so_pubsub_redelivers(
    function: FunctionClient, capsys: pytest.CaptureFixture[str]
) -> None:
    from session_core.testing import free_port

    kill = function("kill_user_sessions", DATASTORE_EMULATOR_HOST=f"127.0.0.1:{free_port()}")  # nothing listens
    response = kill.post("/", json=pubsub_push_body(b'{"user": "alice"}'))
    assert response.status_code == 500  # Pub/Sub redelivers on any non-2xx answer
    failed = [json.loads(line) for line in capsys.readouterr().err.splitlines() if '"kill_message_failed"' in line]
    assert len(failed) == 1 and failed[0]["severity"] == "ERROR" and failed[0]["message_id"] == "m-1"
    assert failed[0]["error"].startswith("datastore ")  # the kill record or the query: the first RPC that failed


def test_a_cloud_tasks_outage_is_not_reported_as_a_datastore_one(
    function: FunctionClient,
    client: datastore.Client,
    settings: Settings,
    expired_and_live: tuple[set[str], set[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from session_core.testing import free_port

    clear = function(
        "clear_sessions",
        SESSION_TASKS_QUEUE="projects/p/locations/l/queues/q",
        SESSION_TASK_URL="http://127.0.0.1:9/",
        CLOUD_TASKS_EMULATOR_HOST=f"127.0.0.1:{free_port()}",  # nothing listens
        SESSION_TIME_BUDGET="0",
        SESSION_PAGE_SIZE="100",
    )
    response = clear.post("/")
    assert response.status_code == 503 and response.get_json() == {"error": "cloud tasks unavailable; retry"}
    failed = [json.loads(line) for line in capsys.readouterr().err.splitlines() if '"clear_sessions_failed"' in line]
    assert len(failed) == 1 and failed[0]["error"].startswith("cloud tasks create_task failed")
    lease = settings_key(client, settings, LEASE_KIND, LEASE_NAME)
    assert client.get(lease) is None  # released: the scheduler's retry is not blocked by it


# -- start-up -------------------------------------------------------------------------------------


def start(*argv: str, hide_events_extra: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    """Start a door as Cloud Functions does (``functions-framework --target``), settings in the environment.

    With ``hide_events_extra``, google-cloud-pubsub cannot be imported (a ``[flask]`` install, say).
    """
    base = {k: v for k, v in os.environ.items() if not k.startswith("SESSION_") and k != "DATASTORE_EMULATOR_HOST"}
    hide = "import sys; sys.modules['google.pubsub_v1'] = None; " if hide_events_extra else ""
    code = f"{hide}import sys; from functions_framework._cli import _cli; sys.exit(_cli())"
    return subprocess.run(
        [sys.executable, "-c", code, *argv, "--source", str(MAIN), "--port", "0"],
        env={**base, "GOOGLE_CLOUD_PROJECT": "session-core-test", **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=MAIN.parent,
    )


@pytest.mark.parametrize("target", ["clear_sessions", "kill_user_sessions", "session_task"])
def test_a_bad_setting_stops_a_door_at_start_up_with_one_json_line_naming_it(target: str) -> None:
    done = start("--target", target, SESSION_BATCH_SIZE="9000")
    assert done.returncode == 1
    [line] = done.stderr.splitlines()  # not a 34-line traceback
    logged = json.loads(line)
    assert (logged["event"], logged["severity"], logged["variable"]) == (
        "settings_invalid",
        "CRITICAL",
        "SESSION_BATCH_SIZE",
    )
    assert logged["error"] == "SESSION_BATCH_SIZE: expected a whole number from 1 to 500; got '9000'"


def test_a_topic_without_the_events_extra_stops_the_functions_at_start_up_naming_the_extra() -> None:
    done = start("--target", "kill_user_sessions", hide_events_extra=True, SESSION_EVENTS_TOPIC="session-events")
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    logged = json.loads(line)
    assert logged["event"] == "settings_invalid" and logged["variable"] == "SESSION_EVENTS_TOPIC"
    assert "pip install 'session-core[events]'" in logged["error"]
