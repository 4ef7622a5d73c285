"""The Cloud Tasks and Pub/Sub emulators start, work and stop leaving no process.

The Cloud Tasks emulator (PyPI ``gcloud-tasks-emulator``) runs from ``.venv-tasks``;
the client here is the app's own ``google-cloud-tasks``. These tests also pin down
where the emulator differs from Cloud Tasks: no OIDC token, no task-name dedup.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from devstack.emulators import cloud_tasks, pubsub
from session_core.testing import Emulator, port_open

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = ROOT / ".local" / "test-logs"
TASKS_PYTHON = ROOT / ".venv-tasks" / "bin" / "python"
LOCATION = "projects/session-core-test/locations/europe-west3"
QUEUE = f"{LOCATION}/queues/session-tasks"
SERVICE_ACCOUNT = "session-tasks@session-core-test.iam.gserviceaccount.com"
HEADERS_RECORD = LOG_DIR / "cloud-tasks-delivery-headers.json"  # what the emulator sent, for reference


@dataclass
class Delivery:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Target:
    """A local HTTP endpoint that records what it receives; answers 503 to paths in ``failing`` once."""

    port: int
    deliveries: list[Delivery] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def to(self, path: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.path == path]

    def wait_for(self, path: str, count: int = 1, timeout: float = 10.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while len(self.to(path)) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.to(path)


@pytest.fixture
def target() -> Iterator[Target]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    recorder = Target(port=int(server.server_address[1]))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with recorder.lock:
                recorder.deliveries.append(Delivery(self.command, self.path, dict(self.headers.items()), body))
                status = 503 if self.path in recorder.failing else 204
                recorder.failing.discard(self.path)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, fmt: str, *args: object) -> None:
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def tasks_emulator() -> Iterator[Emulator]:
    with cloud_tasks(LOG_DIR, TASKS_PYTHON, queues=[QUEUE]) as emulator:
        yield emulator


@pytest.fixture
def tasks_client(tasks_emulator: Emulator) -> Iterator[tasks_v2.CloudTasksClient]:
    channel = grpc.insecure_channel(tasks_emulator.host)
    with tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel)) as client:
        yield client


def http_task(url: str, payload: dict[str, object], name: str) -> tasks_v2.Task:
    return tasks_v2.Task(
        name=name,
        http_request=tasks_v2.HttpRequest(
            http_method=tasks_v2.HttpMethod.POST,
            url=url,
            headers={"Content-Type": "application/json"},
            body=json.dumps(payload).encode(),
            oidc_token=tasks_v2.OidcToken(service_account_email=SERVICE_ACCOUNT, audience=url),
        ),
    )


def test_the_queue_named_at_start_exists(tasks_client: tasks_v2.CloudTasksClient) -> None:
    assert QUEUE in [queue.name for queue in tasks_client.list_queues(parent=LOCATION)]
    # CreateQueue of an existing queue returns it (the real API answers ALREADY_EXISTS).
    assert tasks_client.create_queue(parent=LOCATION, queue=tasks_v2.Queue(name=QUEUE)).name == QUEUE


def test_an_http_task_is_posted_to_its_exact_url(tasks_client: tasks_v2.CloudTasksClient, target: Target) -> None:
    name = f"{QUEUE}/tasks/clear-0123456789abcdef-0"
    created = tasks_client.create_task(
        parent=QUEUE, task=http_task(target.url("/session_task?via=tasks"), {"op": "clear", "page": 0}, name)
    )
    assert created.name == name

    [delivery] = target.wait_for("/session_task?via=tasks")
    HEADERS_RECORD.write_text(json.dumps(delivery.headers, indent=2, sort_keys=True) + "\n")
    assert delivery.method == "POST"
    assert json.loads(delivery.body) == {"op": "clear", "page": 0}
    assert delivery.headers["Content-Type"] == "application/json"
    assert delivery.headers["X-Cloudtasks-Queuename"] == QUEUE  # the full path, not the short id
    assert delivery.headers["X-Cloudtasks-Taskname"] == "clear-0123456789abcdef-0"
    assert delivery.headers["X-Cloudtasks-Taskretrycount"] == "0"
    assert delivery.headers["User-Agent"].startswith("Python-urllib/")
    # The emulator ignores oidc_token: no bearer token to verify locally.
    assert "Authorization" not in delivery.headers


def test_a_duplicate_task_name_is_not_deduplicated(tasks_client: tasks_v2.CloudTasksClient, target: Target) -> None:
    name = f"{QUEUE}/tasks/dup-0123456789abcdef-1"
    task = http_task(target.url("/dup"), {"n": 1}, name)
    tasks_client.create_task(parent=QUEUE, task=task)
    tasks_client.create_task(parent=QUEUE, task=task)  # Cloud Tasks would raise AlreadyExists here
    assert len(target.wait_for("/dup", count=2)) == 2


def test_a_failed_task_is_retried_at_once(tasks_client: tasks_v2.CloudTasksClient, target: Target) -> None:
    target.failing.add("/flaky")
    tasks_client.create_task(parent=QUEUE, task=http_task(target.url("/flaky"), {"n": 2}, f"{QUEUE}/tasks/flaky-1"))
    first, second = target.wait_for("/flaky", count=2)
    assert [first.headers["X-Cloudtasks-Taskretrycount"], second.headers["X-Cloudtasks-Taskretrycount"]] == ["0", "1"]
    time.sleep(0.5)
    assert len(target.to("/flaky")) == 2  # a 2xx ends it


def test_stopping_the_tasks_emulator_leaves_no_process(tmp_path: Path) -> None:
    emulator = cloud_tasks(tmp_path, TASKS_PYTHON).start()
    assert emulator.process is not None
    pgid = emulator.process.pid
    emulator.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert not port_open(emulator.port)()


def test_a_malformed_queue_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a queue path"):
        cloud_tasks(tmp_path, TASKS_PYTHON, queues=["session-tasks"])


def test_the_pubsub_emulator_starts_answers_and_stops(tmp_path: Path) -> None:
    emulator = pubsub(tmp_path, "session-core-test").start()
    assert emulator.process is not None
    pgid = emulator.process.pid
    try:
        with urllib.request.urlopen(f"http://{emulator.host}/", timeout=5) as response:
            assert (response.status, response.read().strip()) == (200, b"Ok")
        topic = "projects/session-core-test/topics/session-events"
        create = urllib.request.Request(f"http://{emulator.host}/v1/{topic}", method="PUT", data=b"{}")
        create.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(create, timeout=5) as response:
            assert json.loads(response.read())["name"] == topic
    finally:
        emulator.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert not port_open(emulator.port)()
