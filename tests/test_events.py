"""Lifecycle events: apps anywhere learn which sessions ended, and why, through the real Pub/Sub emulator."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from functions_framework import create_app
from google.cloud import datastore
from structlog.testing import capture_logs

from session_core import Session, SessionRecord, Settings
from session_core.maintenance.cleanup import start_clear_sessions
from session_core.maintenance.events import event_message, topic_path
from session_core.maintenance.kill import end_user_session, kill_sessions, logout_everywhere_else
from session_core.rules import GUEST_USER, hash_key, new_key, new_security_key
from session_core.store import SessionStore
from session_core.testing import Emulator, free_port
from tests.conftest import ROOT, Ctx, EventsTopic, FunctionClient, RpcCounter, queue_env, serve_function
from tests.test_cleanup import remaining

ISO_MS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


class Seeded:
    """Sessions written as an app writes them, remembering every secret they hold."""

    def __init__(self, client: datastore.Client, settings: Settings) -> None:
        self.store = SessionStore(client, settings)
        self.client = client
        self.secrets: set[str] = set()
        self.users: dict[str, str] = {}  # session id -> user

    def add(self, user: str, count: int, lastseen: float) -> set[str]:
        """``count`` sessions of ``user`` last seen at ``lastseen``; returns their session ids."""
        entities, ids = [], set()
        for _ in range(count):
            cookie, skey, data = new_key(), new_security_key(), f"card-{new_key()[:12]}"
            self.secrets |= {cookie, skey, data}
            record = SessionRecord(hash_key(cookie), {"payment": data}, user, skey, lastseen)
            entities.append(self.store.to_entity(record))
            ids.add(record.session_id)
            self.users[record.session_id] = user
        for start in range(0, len(entities), 500):
            self.client.put_multi(entities[start : start + 500])
        return ids


def sessions_in(events: list[Any]) -> dict[str, str]:
    """session id -> user, over every event; a session twice would fail (each deleted once here)."""
    pairs = [(s["session_id"], s["user"]) for event in events for s in event["sessions"]]
    assert len(pairs) == len({session_id for session_id, _ in pairs})
    return dict(pairs)


def test_an_event_is_the_documented_json_and_a_bare_topic_is_in_the_settings_project() -> None:
    message = json.loads(event_message("ended", "r1", 1795676700.5, [("a" * 64, "alice")]))
    assert message == {
        "reason": "ended",
        "run_id": "r1",
        "at": "2026-11-26T07:05:00.500Z",
        "sessions": [{"session_id": "a" * 64, "user": "alice"}],
    }
    assert topic_path(Settings(project="shop", events_topic="ends")) == "projects/shop/topics/ends"
    assert topic_path(Settings(events_topic="projects/audit/topics/ends")) == "projects/audit/topics/ends"
    assert topic_path(Settings()) is None


def test_cleanup_publishes_exactly_the_expired_sessions_with_their_users_and_nothing_secret(
    client: datastore.Client, events_topic: EventsTopic
) -> None:
    settings = replace(events_topic.settings, batch_size=100)
    seeded = Seeded(client, settings)
    now = time.time()
    expired = seeded.add("alice", 130, now - 86400) | seeded.add(GUEST_USER, 170, now - 86400)
    live = seeded.add("alice", 20, now)
    result = start_clear_sessions(client, settings, now=now)
    assert result.deleted == 300
    events = events_topic.received()
    assert sessions_in(events) == {session_id: seeded.users[session_id] for session_id in expired}
    assert not live & set(sessions_in(events))
    assert {e["reason"] for e in events} == {"expired"} and {e["run_id"] for e in events} == {result.run_id}
    assert all(re.fullmatch(ISO_MS, e["at"]) and 0 < len(e["sessions"]) <= 100 for e in events)
    raw = json.dumps(events)
    assert not [secret for secret in seeded.secrets if secret in raw]  # no cookie, security key or data


def test_a_dry_run_publishes_nothing(client: datastore.Client, events_topic: EventsTopic) -> None:
    seeded = Seeded(client, events_topic.settings)
    seeded.add("alice", 50, time.time() - 86400)
    result = start_clear_sessions(client, events_topic.settings, dry_run=True)
    assert (result.counted, result.deleted) == (50, 0)
    assert events_topic.received() == []


def test_kills_publish_killed_for_one_user_for_guests_and_for_everyone(
    client: datastore.Client, events_topic: EventsTopic
) -> None:
    settings = replace(events_topic.settings, batch_size=50, shards=4)
    seeded = Seeded(client, settings)
    now = time.time()
    alice, bob, guests = seeded.add("alice", 120, now), seeded.add("bob", 30, now), seeded.add(GUEST_USER, 40, now)
    keep = next(iter(alice))
    one = kill_sessions("alice", client=client, settings=settings, except_session=keep)
    first = events_topic.received()
    assert sessions_in(first) == dict.fromkeys(alice - {keep}, "alice")
    assert {(e["reason"], e["run_id"]) for e in first} == {("killed", one.run_id)}
    kill_sessions(GUEST_USER, client=client, settings=settings)
    assert sessions_in(events_topic.received()) == dict.fromkeys(guests, GUEST_USER)
    kill_sessions(None, client=client, settings=settings)  # everyone: each batch is read for its users
    assert sessions_in(events_topic.received()) == {**dict.fromkeys(bob, "bob"), keep: "alice"}


def test_a_kill_of_one_user_knows_the_user_and_reads_no_session_more_than_without_events(
    client: datastore.Client, events_topic: EventsTopic, rpcs: RpcCounter
) -> None:
    seeded = Seeded(client, events_topic.settings)
    carol, dan = seeded.add("carol", 30, time.time()), seeded.add("dan", 30, time.time())
    rpcs.reset()
    kill_sessions("dan", client=client, settings=replace(events_topic.settings, events_topic=None))
    without_events = dict(rpcs.calls)
    rpcs.reset()
    kill_sessions("carol", client=client, settings=events_topic.settings)
    assert dict(rpcs.calls) == without_events  # the same lookups (the run's receipt), no session read
    assert sessions_in(events_topic.received()) == dict.fromkeys(carol, "carol")
    assert dan


def test_logout_everywhere_else_is_killed_and_ending_one_device_is_ended(
    client: datastore.Client, events_topic: EventsTopic
) -> None:
    settings = events_topic.settings
    seeded = Seeded(client, settings)
    others = seeded.add("dave", 3, time.time())
    session = Session(client, settings)
    session.load(Ctx())
    session.login("dave")
    session.save(Ctx())
    assert logout_everywhere_else(session) == 3
    phone = seeded.add("dave", 1, time.time())
    [phone_id] = phone
    assert end_user_session(client, settings, "dave", phone_id)
    events = events_topic.received()
    assert [(e["reason"], sorted(s["session_id"] for s in e["sessions"])) for e in events] == [
        ("killed", sorted(others)),
        ("ended", [phone_id]),
    ]
    assert session.session_id not in sessions_in(events)  # the session that asked lives on


def test_key_rotation_on_login_and_logout_sends_no_event(client: datastore.Client, events_topic: EventsTopic) -> None:
    session = Session(client, events_topic.settings)
    session.load(Ctx())
    session["cart"] = 1
    session.save(Ctx())
    session.login("erin")  # a new key: the old entity is deleted, the session lives on
    session.save(Ctx())
    session.logout()
    session.save(Ctx())
    assert events_topic.received() == []


def test_a_publish_failure_is_logged_and_the_step_still_deletes_and_succeeds(
    client: datastore.Client, events_topic: EventsTopic
) -> None:
    settings = replace(events_topic.settings, events_topic="no-such-topic", batch_size=50)
    seeded = Seeded(client, settings)
    seeded.add("frank", 120, time.time() - 86400)
    with capture_logs() as logs:
        result = start_clear_sessions(client, settings)
    assert result.deleted == 120 and not result.skipped
    lost = [line for line in logs if line["event"] == "session_events_lost"]
    assert sum(line["sessions"] for line in lost) == 120 and {line["error"] for line in lost} == {"NotFound"}
    assert {line["run_id"] for line in lost} == {result.run_id} and {line["reason"] for line in lost} == {"expired"}
    assert not [line for line in logs if line["log_level"] == "error" and line["event"] != "session_events_lost"]


def test_the_functions_publish_from_their_settings_alone(
    client: datastore.Client, events_topic: EventsTopic, function: FunctionClient
) -> None:
    settings = events_topic.settings
    seeded = Seeded(client, settings)
    expired = seeded.add(GUEST_USER, 40, time.time() - 86400)
    assert settings.pubsub_emulator_host is not None and settings.events_topic is not None
    clear = function(
        "clear_sessions", PUBSUB_EMULATOR_HOST=settings.pubsub_emulator_host, SESSION_EVENTS_TOPIC=settings.events_topic
    )
    response = clear.post("/", json={})
    assert response.status_code == 200, response.get_data(as_text=True)
    events = events_topic.received()
    assert sessions_in(events) == dict.fromkeys(expired, GUEST_USER)
    assert Counter(e["reason"] for e in events) == {"expired": 1}


def test_without_a_topic_nothing_imports_pubsub(client: datastore.Client, settings: Settings) -> None:
    code = (
        "import sys, time\n"
        "from session_core import Settings\n"
        "from session_core.clients import datastore_client\n"
        "from session_core.maintenance.cleanup import start_clear_sessions\n"
        "from session_core.maintenance.kill import kill_sessions\n"
        f"s = Settings(project={settings.project!r}, emulator_host={settings.emulator_host!r},"
        f" namespace={settings.namespace!r}, rampup=False)\n"
        "c = datastore_client(s)\n"
        "start_clear_sessions(c, s)\n"
        "kill_sessions('alice', client=c, settings=s)\n"
        "print(sorted(m for m in sys.modules if 'pubsub' in m))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def test_with_events_the_cleanup_reads_each_batch_once_more_and_nothing_else(
    client: datastore.Client, events_topic: EventsTopic, rpcs: RpcCounter
) -> None:
    settings = replace(events_topic.settings, batch_size=100)
    seeded = Seeded(client, settings)
    seeded.add(GUEST_USER, 300, time.time() - 86400)
    rpcs.reset()
    start_clear_sessions(client, replace(settings, events_topic=None))
    without_events = dict(rpcs.calls)
    seeded.add(GUEST_USER, 300, time.time() - 86400)
    rpcs.reset()
    start_clear_sessions(client, settings)
    assert dict(rpcs.calls) == {**without_events, "lookup": without_events["lookup"] + 3}  # one lookup per batch
    assert len(sessions_in(events_topic.received())) == 300


@pytest.mark.slow
def test_sharded_cleanup_steps_run_by_cloud_tasks_publish_every_expired_session(
    client: datastore.Client, events_topic: EventsTopic, tasks_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = events_topic.settings
    seeded = Seeded(client, settings)
    now = time.time()
    expired = seeded.add(GUEST_USER, 600, now - 2 * 86400) | seeded.add("alice", 200, now - 3 * 86400)
    live = seeded.add("alice", 20, now)
    assert settings.pubsub_emulator_host is not None and settings.events_topic is not None
    port = free_port()
    env = queue_env(
        settings,
        tasks_emulator,
        port,
        SESSION_CLEAR_SHARDS="2",
        SESSION_TIME_BUDGET="0",  # one page a step: each chain goes on in Cloud Tasks
        SESSION_PAGE_SIZE="100",
        PUBSUB_EMULATOR_HOST=settings.pubsub_emulator_host,
        SESSION_EVENTS_TOPIC=settings.events_topic,
    )
    with serve_function("session_task", port, env):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        sys.modules.pop("main", None)
        response = create_app("clear_sessions", str(ROOT / "main.py")).test_client().post("/")
        assert response.status_code == 200 and response.get_json()["shards"] == 2
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and remaining(client, settings) != live:
            time.sleep(0.5)
    assert remaining(client, settings) == live
    events = events_topic.received(settle=2.0)
    published = {(s["session_id"], s["user"]) for event in events for s in event["sessions"]}  # a retry may repeat
    assert published == {(session_id, seeded.users[session_id]) for session_id in expired}
    assert {(e["reason"], e["run_id"]) for e in events} == {("expired", response.get_json()["run_id"])}


@pytest.mark.parametrize("failure", ["import", "credentials"])
def test_a_publisher_that_cannot_be_imported_or_built_never_fails_a_delete(
    client: datastore.Client, settings: Settings, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """The client is built on the first publish, inside it: every failure there is a lost event, logged."""
    from session_core.maintenance import events

    with_events = replace(settings, events_topic="session-events")  # Pub/Sub itself: no emulator
    monkeypatch.setattr(events, "_PUBLISHERS", {})  # no publisher of an earlier test
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    if failure == "import":
        monkeypatch.setitem(sys.modules, "google.pubsub_v1", None)  # google-cloud-pubsub cannot be imported
    else:
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")  # no client can be built
    seeded = Seeded(client, with_events)
    seeded.add("alice", 5, time.time())
    bob = seeded.add("bob", 2, time.time())
    seeded.add(GUEST_USER, 4, time.time() - 86400)
    phone = sorted(bob)[0]
    with capture_logs() as logs:
        assert kill_sessions("alice", client=client, settings=with_events).deleted == 5
        assert end_user_session(client, with_events, "bob", phone)
        assert start_clear_sessions(client, with_events).deleted == 4
    assert len(remaining(client, settings)) == 1  # bob's other device: every delete happened
    lost = [line for line in logs if line["event"] == "session_events_lost"]
    assert [(line["reason"], line["sessions"]) for line in lost] == [("killed", 5), ("ended", 1), ("expired", 4)]
    assert not [line for line in logs if line["log_level"] == "error" and line["event"] != "session_events_lost"]
