"""Kill-by-user end to end, nothing mocked.

The Pub/Sub emulator pushes to ``kill_user_sessions`` served by functions-framework;
gcloud-tasks-emulator dispatches the continuations to ``session_task``, also served;
both use the Firestore emulator. Pages and the budget are tiny so every case fans out.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from google.cloud import datastore

from devstack.emulators import pubsub_publish, pubsub_push_subscription, pubsub_rest
from session_core import GUEST_USER, Settings
from session_core.rules import hash_key
from session_core.testing import Emulator, free_port
from tests.conftest import LOG_DIR, queue_env, serve_function
from tests.test_cleanup import remaining
from tests.test_revocation import seed_users

TOPIC = "kill-user"


@pytest.fixture
def stack(settings: Settings, tasks_emulator: Emulator, pubsub_emulator: Emulator) -> Iterator[tuple[str, str, Path]]:
    """A topic of this test's own with a push subscription to kill_user_sessions, and session_task for the queue.

    The Pub/Sub emulator is the run's own (conftest), not one started per test.
    """
    kill_port, task_port = free_port(), free_port()
    topic = f"{TOPIC}-{uuid.uuid4().hex[:10]}"
    env = queue_env(
        settings,
        tasks_emulator,
        task_port,
        SESSION_BATCH_SIZE="200",
        SESSION_PAGE_SIZE="200",
        SESSION_TIME_BUDGET="0",
        SESSION_SHARDS="4",
    )
    with ExitStack() as stack:
        stack.enter_context(serve_function("kill_user_sessions", kill_port, env, cloudevent=True))
        stack.enter_context(serve_function("session_task", task_port, env))
        project = f"projects/{settings.project}"
        subscription = f"{project}/subscriptions/{topic}-push"
        pubsub_push_subscription(
            pubsub_emulator.host, f"{project}/topics/{topic}", subscription, f"http://127.0.0.1:{kill_port}/"
        )
        stack.callback(pubsub_rest, pubsub_emulator.host, "DELETE", subscription)  # first: before its endpoint stops
        yield pubsub_emulator.host, f"{project}/topics/{topic}", LOG_DIR / f"kill_user_sessions-{kill_port}.log"


def publish(stack: tuple[str, str, Path], message: dict[str, object]) -> None:
    host, topic, _ = stack
    pubsub_publish(host, topic, json.dumps(message).encode())


def wait_until(client: datastore.Client, settings: Settings, expected: set[str], timeout: float = 60) -> set[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = remaining(client, settings)
        if left == expected:
            return left
        time.sleep(0.2)
    return remaining(client, settings)


def test_kill_messages_published_to_pubsub_end_exactly_the_targeted_sessions(
    client: datastore.Client, settings: Settings, stack: tuple[str, str, Path]
) -> None:
    users = seed_users(client, settings, {"alice": 1200, "bob": 6, "carol": 4, "dave": 3, GUEST_USER: 60})
    everyone = set().union(*users.values())

    publish(stack, {"user": "alice"})  # more than one page: first batch at once, the rest as tasks
    expected = everyone - users["alice"]
    assert wait_until(client, settings, expected) == expected

    kept = sorted(users["bob"])[0]
    publish(stack, {"user": "bob", "except_session": hash_key(kept) if len(kept) == 42 else kept})
    expected -= users["bob"] - {kept}
    assert wait_until(client, settings, expected) == expected

    publish(stack, {"user": GUEST_USER})  # one task per shard
    expected -= users[GUEST_USER]
    assert wait_until(client, settings, expected) == expected

    publish(stack, {"user": "carol"})
    publish(stack, {"user": "carol"})  # the same message twice
    expected -= users["carol"]
    assert wait_until(client, settings, expected) == expected

    survivor = sorted(users["dave"])[0]
    publish(stack, {"user": None, "except_session": survivor})
    assert wait_until(client, settings, {survivor}) == {survivor}


def test_poison_published_to_pubsub_is_dropped_without_redelivery(
    client: datastore.Client, settings: Settings, stack: tuple[str, str, Path]
) -> None:
    users = seed_users(client, settings, {"erin": 5})
    host, topic, log = stack
    for data in (b"not json", b'{"user": ""}', b'{"user": 1}', b'{"who": "erin"}'):
        pubsub_publish(host, topic, data)
    publish(stack, {"user": "nobody"})  # a valid one after the poison still works
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and log.read_text().count('"event": "kill_sessions"') < 1:
        time.sleep(0.2)
    time.sleep(1)  # a redelivery would come within the ack deadline's first retries
    assert remaining(client, settings) == users["erin"]
    assert log.read_text().count("kill_message_rejected") == 4  # each poison message once: acknowledged
