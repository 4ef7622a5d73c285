"""What the code writes and publishes is exactly what its typed descriptions (and so the docs' reference) say.

Every entity here is written by the library's own code on the real emulator,
and every event is published to the real Pub/Sub emulator and pulled back.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from google.cloud import datastore

from session_core._schema import Record, Stored, unindexed
from session_core.config import Settings
from session_core.epochs import RECORD as EPOCH_RECORD
from session_core.logins import RECORD as LOGIN_RECORD
from session_core.logins import kill_record, record_login
from session_core.maintenance import leases, reshard, runs
from session_core.maintenance.events import (
    ATTRIBUTES,
    FIELDS,
    REASON_MEANINGS,
    REASONS,
    SESSION_FIELDS,
    publisher_for,
    subscriber_for,
)
from session_core.rules import hash_key, new_key, new_security_key
from session_core.store import SESSION_PROPERTIES, SessionRecord, SessionStore
from tests.conftest import EventsTopic

# What the client library reads each documented Datastore type as.
PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "embedded entity": (datastore.Entity,),
    "string": (str,),
    "string (JSON)": (str,),
    "string or null": (str, type(None)),
    "float (epoch seconds)": (float,),
    "float (seconds)": (float,),
    "integer": (int,),
    "timestamp": (datetime,),
    "array of strings": (list,),
}


def assert_described(entity: datastore.Entity, properties: tuple[Stored, ...], present: set[str], shards: int) -> None:
    """The entity holds exactly the ``present`` properties, indexed as described, each of its described type."""
    described = {p.name: p for p in properties}
    assert set(entity) == present and present <= set(described)
    assert set(entity.exclude_from_indexes) & present == set(unindexed(properties, shards)) & present
    for name in present:
        assert isinstance(entity[name], PYTHON_TYPES[described[name].type]), name
        assert not isinstance(entity[name], bool), name


@pytest.mark.parametrize("shards", [1, 4])
def test_a_stored_session_holds_exactly_its_documented_properties(
    client: datastore.Client, settings: Settings, shards: int
) -> None:
    store = SessionStore(client, replace(settings, write_shards=shards))
    now = time.time()
    plain = SessionRecord(hash_key(new_key()), {"n": 1}, "alice", new_security_key(), now, lifetime=3600.0)
    full = replace(plain, key_name=hash_key(new_key()), epoch=2, guest_epoch=1, absolute_end=now + 60)
    assert store.insert(plain) and store.insert(full)

    by_presence = {
        presence: {p.name for p in SESSION_PROPERTIES if p.present == presence}
        for presence in ("always", "when set", "with N > 1 write shards")
    }
    always = by_presence["always"] | (by_presence["with N > 1 write shards"] if shards > 1 else set())
    assert_described(client.get(store.key(plain.key_name)), SESSION_PROPERTIES, always, shards)
    assert_described(client.get(store.key(full.key_name)), SESSION_PROPERTIES, always | by_presence["when set"], shards)


HOLES = {"<sha256(user)>": "[0-9a-f]{64}", "<chain>": "[0-9]+"}  # what stands in a documented key name


def name_patterns(record: Record) -> list[str]:
    """The documented key names (`kill:user:<sha256(user)>`) as regular expressions."""
    return [
        "".join(HOLES[part] if part in HOLES else re.escape(part) for part in re.split(r"(<[^>]+>)", name))
        for name in re.findall(r"`([^`]+)`", record.names)
    ]


def test_every_other_record_holds_exactly_its_documented_properties_under_its_documented_names(
    client: datastore.Client, settings: Settings
) -> None:
    now = time.time()
    store = SessionStore(client, settings)
    store.raise_epoch("all", at=now, run_id="run-1")
    record_login(client, settings, "alice", now)
    client.put(kill_record(client, settings, "alice", now))
    client.put(kill_record(client, settings, None, now))
    recorder = runs.RunRecorder(client, settings)
    client.put(recorder.entity(runs.Run("run-1", "clear", runs.clear_params(now, False), now, chains=2)))
    assert leases.take_leases(client, settings, "run-1", now, 2, recorder.entity(runs.Run("run-1", "clear", {}, now)))
    reshard.record_layout(client, settings, 4, now)

    records = (EPOCH_RECORD, LOGIN_RECORD, runs.RECORD, leases.RECORD, reshard.RECORD)
    seen: dict[str, int] = {}
    for record in records:
        entities = list(client.query(kind=record.kind, namespace=settings.namespace).fetch())
        seen[record.kind] = len(entities)
        for entity in entities:
            assert_described(entity, record.properties, {p.name for p in record.properties}, 1)
            patterns = name_patterns(record)
            assert not patterns or any(re.fullmatch(p, str(entity.key.name)) for p in patterns), entity.key.name
    assert seen == {
        EPOCH_RECORD.kind: 1,
        LOGIN_RECORD.kind: 3,
        runs.KIND: 1,
        leases.LEASE_KIND: 2,
        reshard.LAYOUT_KIND: 1,
    }


def test_a_published_event_holds_exactly_its_documented_fields_and_attributes(events_topic: EventsTopic) -> None:
    session_id = hash_key(new_key())
    publisher = publisher_for(events_topic.settings)
    assert publisher is not None and publisher.publish("ended", "run-1", [(session_id, "alice")])

    subscriber = subscriber_for(events_topic.settings)
    [received] = subscriber.pull(subscription=events_topic.subscription, max_messages=10, timeout=10).received_messages
    message: Any = received.message
    body = json.loads(message.data)
    assert dict(message.attributes) == {"reason": "ended"} and [a.name for a in ATTRIBUTES] == ["reason"]
    assert list(body) == [field.name for field in FIELDS]
    assert [list(entry) for entry in body["sessions"]] == [[field.name for field in SESSION_FIELDS]]
    assert body["sessions"] == [{"session_id": session_id, "user": "alice"}]
    assert set(REASON_MEANINGS) == set(REASONS) == {"expired", "killed", "ended"}
