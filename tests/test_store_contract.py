"""One contract suite, run against both stores: the Datastore store (emulator) and the memory store.

Every check below is one promise of :class:`session_core.contract.Store`,
or of the kill, list and end functions given ``store=``. Each runs against
:class:`~session_core.store.SessionStore` on the Firestore emulator and
against :class:`session_core.testing.MemoryStore`, so the memory store an
app tests with cannot drift from production. A memory store that upserts
(the one mistake that would resurrect killed sessions) fails the suite.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from session_core import Session, SessionDataError, Settings
from session_core.contract import Store
from session_core.maintenance.kill import (
    end_user_session,
    kill_sessions,
    list_user_sessions,
    logout_everywhere_else,
)
from session_core.rules import GUEST_USER, hash_key, is_expired, new_key
from session_core.store import SessionRecord, SessionStore
from session_core.testing import MemoryStore
from tests.conftest import Ctx

NOW = 1_900_000_000.0
Check = Callable[[Store], None]
CHECKS: list[Check] = []


def check(function: Check) -> Check:
    """Register a contract check: it runs against every store."""
    CHECKS.append(function)
    return function


def record(
    name: str, *, user: str = GUEST_USER, data: dict[str, Any] | None = None, seen: float = NOW, **more: Any
) -> SessionRecord:
    return SessionRecord(
        key_name=name, data=data or {"n": 1}, user=user, static_security_key="k" * 13, seen=seen, **more
    )


def stored(store: Store, cookie: str) -> SessionRecord | None:
    return store.lookup_all([cookie]).get(cookie)


def session_of(store: Store, user: str, *, seen: float = NOW) -> tuple[str, SessionRecord]:
    """A stored session of ``user`` under its hashed name; its cookie and record."""
    cookie = new_key()
    written = record(hash_key(cookie), user=user, seen=seen)
    assert store.insert(written)
    return cookie, written


# -- lookup -------------------------------------------------------------------------------------


@check
def insert_then_lookup_finds_the_session_under_its_hashed_name(store: Store) -> None:
    cookie = new_key()
    written = record(hash_key(cookie), user="alice", data={"cart": [1, 2]}, lifetime=600.0)
    assert store.insert(written)
    assert stored(store, cookie) == written


@check
def lookup_finds_a_viur_session_under_its_plain_name(store: Store) -> None:
    cookie = new_key()
    assert store.insert(record(cookie, data={"viur": True}))
    found = stored(store, cookie)
    assert found is not None and found.key_name == cookie and found.data == {"viur": True}


@check
def lookup_prefers_the_hashed_name_when_both_exist(store: Store) -> None:
    cookie = new_key()
    assert store.insert(record(cookie, data={"which": "plain"}))
    assert store.insert(record(hash_key(cookie), data={"which": "hashed"}))
    assert stored(store, cookie) == record(
        hash_key(cookie), data={"which": "hashed"}, lifetime=store.settings.life_time.total_seconds()
    )


@check
def lookup_of_several_cookies_answers_only_the_stored_ones(store: Store) -> None:
    known, unknown = new_key(), new_key()
    assert store.insert(record(hash_key(known)))
    assert set(store.lookup_all([known, unknown])) == {known}
    assert store.lookup_all([]) == {}


# -- insert and update: never an upsert ---------------------------------------------------------------


@check
def insert_refuses_a_taken_name_and_then_does_nothing(store: Store) -> None:
    cookie, other = new_key(), new_key()
    assert store.insert(record(hash_key(cookie), data={"first": 1}))
    assert store.insert(record(hash_key(other)))
    assert not store.insert(record(hash_key(cookie), data={"second": 2}), delete=[hash_key(other)])
    assert stored(store, cookie) is not None and stored(store, cookie).data == {"first": 1}  # type: ignore[union-attr]
    assert stored(store, other) is not None  # the refused insert deleted nothing


@check
def insert_deletes_the_obsolete_names_in_the_same_write(store: Store) -> None:
    old, new = new_key(), new_key()
    assert store.insert(record(hash_key(old)))
    assert store.insert(record(hash_key(new)), delete=[hash_key(old), hash_key(new_key())])
    assert set(store.lookup_all([old, new])) == {new}


@check
def update_overwrites_a_stored_session(store: Store) -> None:
    cookie = new_key()
    assert store.insert(record(hash_key(cookie), data={"n": 1}))
    assert store.update(record(hash_key(cookie), user="bob", data={"n": 2}, seen=NOW + 60, lifetime=120.0))
    assert stored(store, cookie) == record(hash_key(cookie), user="bob", data={"n": 2}, seen=NOW + 60, lifetime=120.0)


@check
def update_of_a_missing_session_is_refused_and_writes_nothing(store: Store) -> None:
    cookie = new_key()
    assert not store.update(record(hash_key(cookie)))
    assert stored(store, cookie) is None


@check
def update_of_a_deleted_session_does_not_resurrect_it(store: Store) -> None:
    cookie = new_key()
    assert store.insert(record(hash_key(cookie), user="alice"))
    store.delete([hash_key(cookie)])  # killed while a request held it
    assert not store.update(record(hash_key(cookie), user="alice", data={"late": "write"}))
    assert stored(store, cookie) is None
    assert store.sessions_of("alice") == []


# -- move: all or none ----------------------------------------------------------------------------


@check
def move_rehomes_a_plain_name_to_its_hash(store: Store) -> None:
    cookie = new_key()
    assert store.insert(record(cookie, data={"n": 1}))
    assert store.move(record(hash_key(cookie), data={"n": 2}), cookie)
    assert stored(store, cookie) == record(
        hash_key(cookie), data={"n": 2}, lifetime=store.settings.life_time.total_seconds()
    )
    assert [r.key_name for r in store.sessions_of(None)] == [hash_key(cookie)]


@check
def move_when_the_old_session_is_gone_writes_nothing(store: Store) -> None:
    cookie = new_key()
    assert not store.move(record(hash_key(cookie)), cookie)
    assert store.sessions_of(None) == []


@check
def move_after_a_concurrent_move_updates_the_new_name(store: Store) -> None:
    cookie = new_key()
    assert store.insert(record(hash_key(cookie), data={"moved": "by another request"}))
    assert store.move(record(hash_key(cookie), data={"mine": True}), cookie)
    assert [(r.key_name, dict(r.data)) for r in store.sessions_of(None)] == [(hash_key(cookie), {"mine": True})]


# -- delete ---------------------------------------------------------------------------------------


@check
def delete_removes_the_named_sessions_and_ignores_absent_names(store: Store) -> None:
    kept, gone = new_key(), new_key()
    assert store.insert(record(hash_key(kept)))
    assert store.insert(record(gone))
    store.delete([gone, hash_key(new_key())])
    store.delete([])
    assert set(store.lookup_all([kept, gone])) == {kept}


# -- records as stored: lifetimes, expiry, values --------------------------------------------------


@check
def each_session_keeps_its_own_lifetime_and_none_reads_as_the_global_one(store: Store) -> None:
    short, default = new_key(), new_key()
    assert store.insert(record(hash_key(short), lifetime=90.0))
    assert store.insert(record(hash_key(default), lifetime=None))
    found = store.lookup_all([short, default])
    assert found[short].lifetime == 90.0 and found[short].expires(store.settings.life_time) == NOW + 90
    assert found[default].lifetime == store.settings.life_time.total_seconds()


@check
def an_expired_session_is_still_returned_as_stored(store: Store) -> None:
    cookie = new_key()
    assert store.insert(record(hash_key(cookie), seen=NOW - 7200, lifetime=60.0))
    found = stored(store, cookie)
    assert found is not None and found.seen == NOW - 7200
    assert is_expired(found.expires(store.settings.life_time), NOW)


@check
def values_come_back_as_datastore_stores_them(store: Store) -> None:
    cookie = new_key()
    data = {"t": (1, "a"), "nested": {"deep": [[1], [2]]}, "at": datetime(2030, 1, 2, 3, 4, 5), "b": b"\x00", "n": None}
    assert store.insert(record(hash_key(cookie), data=data))
    found = stored(store, cookie)
    assert found is not None
    assert dict(found.data) == {**data, "at": datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)}  # naive taken as UTC


@check
def data_datastore_would_refuse_raises_before_anything_is_written(store: Store) -> None:
    cookie = new_key()
    with pytest.raises(SessionDataError):
        store.insert(record(hash_key(cookie), data={"s": {1, 2}}))
    assert stored(store, cookie) is None


# -- users: sessions_of, kill, list, end -----------------------------------------------------------


@check
def sessions_of_a_user_of_the_guests_and_of_everyone(store: Store) -> None:
    session_of(store, "alice")
    session_of(store, "alice")
    session_of(store, "bob")
    session_of(store, GUEST_USER)
    assert [r.user for r in store.sessions_of("alice")] == ["alice", "alice"]
    assert [r.user for r in store.sessions_of(GUEST_USER)] == [GUEST_USER]
    assert sorted(r.user for r in store.sessions_of(None)) == sorted(["alice", "alice", "bob", GUEST_USER])


@check
def kill_by_user_ends_that_users_sessions_expired_ones_too_and_no_others(store: Store) -> None:
    alice = [session_of(store, "alice")[0], session_of(store, "alice", seen=NOW - 10**6)[0]]
    bob, _ = session_of(store, "bob")
    told: list[str] = []
    result = kill_sessions("alice", store=store, observer=lambda r: told.append(r.user))
    assert result.deleted == 2 and result.user == "alice"
    assert set(store.lookup_all([*alice, bob])) == {bob}
    assert told == ["alice", "alice"]


@check
def kill_keeps_the_excepted_session(store: Store) -> None:
    keep, kept = session_of(store, "alice")
    gone, _ = session_of(store, "alice")
    assert kill_sessions("alice", store=store, except_session=kept.session_id).deleted == 1
    assert set(store.lookup_all([keep, gone])) == {keep}


@check
def kill_of_the_guests_ends_every_guest_session_only(store: Store) -> None:
    guests = [session_of(store, GUEST_USER)[0] for _ in range(3)]
    alice, _ = session_of(store, "alice")
    assert kill_sessions(GUEST_USER, store=store).deleted == 3
    assert set(store.lookup_all([*guests, alice])) == {alice}


@check
def kill_of_everyone_ends_every_session(store: Store) -> None:
    cookies = [session_of(store, user)[0] for user in ("alice", "bob", GUEST_USER)]
    assert kill_sessions(None, store=store).deleted == 3
    assert store.lookup_all(cookies) == {}


@check
def list_user_sessions_gives_the_active_ones_most_recent_first(store: Store) -> None:
    _, older = session_of(store, "alice", seen=NOW - 60)
    _, newer = session_of(store, "alice", seen=NOW)
    session_of(store, "alice", seen=NOW - 10**6)  # expired
    session_of(store, "bob")
    infos = list_user_sessions(store=store, user="alice", now=NOW + 1)
    assert [(info.session_id, info.lastseen) for info in infos] == [
        (newer.session_id, NOW),
        (older.session_id, NOW - 60),
    ]


@check
def end_user_session_ends_only_that_users_session_by_its_id(store: Store) -> None:
    cookie, alices = session_of(store, "alice")
    viur = new_key()
    assert store.insert(record(viur, user="alice"))  # a ViUR session under its plain name
    assert not end_user_session(store=store, user="bob", session_id=alices.session_id)  # not bob's
    assert not end_user_session(store=store, user="alice", session_id="not an id")
    assert end_user_session(store=store, user="alice", session_id=alices.session_id)
    assert end_user_session(store=store, user="alice", session_id=hash_key(viur))
    assert store.lookup_all([cookie, viur]) == {}
    assert not end_user_session(store=store, user="alice", session_id=alices.session_id)  # ended already


@check
def logout_everywhere_else_keeps_only_the_current_session(store: Store) -> None:
    others = [session_of(store, "alice")[0] for _ in range(2)]
    mine, _ = session_of(store, "alice")
    session = Session(None, store.settings, store=store, clock=lambda: NOW)
    assert session.load(Ctx({store.settings.cookie_name: mine}))
    assert logout_everywhere_else(session) == 2
    assert set(store.lookup_all([*others, mine])) == {mine}


# -- epochs: kill-all and kill-guests take effect at once ----------------------------------------


@check
def both_epochs_come_with_the_lookup_and_start_at_zero(store: Store) -> None:
    cookie, written = session_of(store, "alice")
    records, epochs = store.lookup_with_epochs([cookie])
    assert {name: found.key_name for name, found in records.items()} == {cookie: written.key_name}
    assert (epochs.everyone.counter, epochs.guests.counter) == (0, 0) == (store.epochs().everyone.counter, 0)


@check
def raising_an_epoch_counts_up_keeps_its_time_and_is_never_deleted(store: Store) -> None:
    first = store.raise_epoch("all", at=NOW, run_id="run-1")
    second = store.raise_epoch("all", at=NOW + 5, run_id="run-2")
    assert (first.counter, first.at, second.counter, second.at) == (1, NOW, 2, NOW + 5)
    kill_sessions(None, store=store)  # deletes every session, never the epochs
    epochs = store.lookup_with_epochs([new_key()])[1]
    assert (epochs.everyone.counter, epochs.guests.counter) == (3, 0)


@check
def a_run_that_raised_the_epoch_already_raises_nothing(store: Store) -> None:
    assert store.raise_epoch("guest", at=NOW, run_id="run-1").counter == 1
    again = store.raise_epoch("guest", at=NOW + 60, run_id="run-1")  # the same message, delivered again
    assert (again.counter, again.at) == (1, NOW)
    assert store.epochs().guests.counter == 1 and store.epochs().everyone.counter == 0


@check
def the_kept_session_is_rewritten_to_the_new_counter_in_the_raise(store: Store) -> None:
    keep, kept = session_of(store, "admin")
    store.update(replace(kept, epoch=0, guest_epoch=0))
    store.raise_epoch("all", at=NOW, run_id="run-1", except_session=kept.session_id)
    raised = store.raise_epoch("all", at=NOW, run_id="run-2", except_session=kept.session_id)
    found = stored(store, keep)
    assert found is not None and found.epoch == raised.counter == 2
    assert not found.ended_by(store.epochs())


@check
def a_session_under_an_older_counter_is_ended_and_one_without_a_counter_by_time(store: Store) -> None:
    _, counted = session_of(store, "alice")
    store.update(replace(counted, epoch=0, guest_epoch=0))
    session_of(store, "bob", seen=NOW - 1)  # stored before epochs existed: no counter
    session_of(store, "carol", seen=NOW + 1)
    session_of(store, GUEST_USER, seen=NOW - 1)
    store.raise_epoch("all", at=NOW, run_id="run-1")
    epochs = store.epochs()
    ended = {r.user: r.ended_by(epochs) for r in store.sessions_of(None)}
    assert ended == {"alice": True, "bob": True, "carol": False, GUEST_USER: True}
    store.raise_epoch("guest", at=NOW + 10, run_id="run-2")  # the guests' epoch ends guests only
    _, later = session_of(store, "dave", seen=NOW + 5)
    assert not later.ended_by(store.epochs()) and stored_guest_ended(store, NOW + 5)


def stored_guest_ended(store: Store, seen: float) -> bool:
    _, guest = session_of(store, GUEST_USER, seen=seen)
    return guest.ended_by(store.epochs())


@check
def kill_of_everyone_signs_out_a_session_held_across_it(store: Store) -> None:
    cookie, _ = session_of(store, "alice")
    held = Session(None, store.settings, store=store, clock=lambda: NOW)
    assert held.load(Ctx({store.settings.cookie_name: cookie}))
    kept_cookie, kept = session_of(store, "admin")
    result = kill_sessions(None, store=store, except_session=kept.session_id)
    assert (result.epoch, result.epoch_at is not None) == (1, True)
    store.insert(replace(record(hash_key(cookie), user="alice"), epoch=0, guest_epoch=0))  # deletes not there yet
    held["after"] = True
    held.commit()  # saved after the kill, under the counter it loaded under
    again = Session(None, store.settings, store=store, clock=lambda: NOW)
    assert not again.load(Ctx({store.settings.cookie_name: cookie}))  # loads as a fresh session
    assert again.load(Ctx({store.settings.cookie_name: kept_cookie}))  # the kept one lives on


@check
def list_user_sessions_leaves_out_sessions_an_epoch_ended(store: Store) -> None:
    _, old = session_of(store, "alice", seen=NOW - 60)
    _, new = session_of(store, "alice", seen=NOW + 60)
    store.raise_epoch("all", at=NOW, run_id="run-1")
    assert [info.session_id for info in list_user_sessions(store=store, user="alice", now=NOW + 61)] == [new.session_id]
    assert old.session_id != new.session_id


# -- the absolute lifetime --------------------------------------------------------------------------


@check
def a_records_absolute_end_is_stored_and_ends_it_before_its_idle_expiry(store: Store) -> None:
    cookie = new_key()
    written = record(hash_key(cookie), user="alice", seen=NOW, lifetime=3600.0, absolute_end=NOW + 60)
    assert store.insert(written)
    found = stored(store, cookie)
    assert found == written and found.lifetime == 3600.0  # the idle lifetime is never shortened
    assert found.expires(store.settings.life_time) == NOW + 60
    assert found.idle_expires(store.settings.life_time) == NOW + 3600
    assert is_expired(found.expires(store.settings.life_time), NOW + 61)


# -- the suite, over both stores --------------------------------------------------------------------


@pytest.fixture(params=["datastore", "memory", "datastore-8-write-shards", "memory-8-write-shards"])
def store(request: pytest.FixtureRequest) -> Store:
    """The Datastore store on the emulator (a namespace of this test's own), or the memory store (no Java);
    each with one write shard (ViUR's layout) and with 8 (``SESSION_WRITE_SHARDS``)."""
    shards = 8 if request.param.endswith("-8-write-shards") else 1
    if request.param.startswith("memory"):
        return MemoryStore(Settings(namespace=f"t-{uuid.uuid4().hex[:12]}", rampup=False, write_shards=shards))
    settings = replace(request.getfixturevalue("settings"), write_shards=shards)
    return SessionStore(request.getfixturevalue("client"), settings)


@pytest.mark.parametrize("promise", CHECKS, ids=[function.__name__ for function in CHECKS])
def test_the_store_keeps_its_contract(store: Store, promise: Check) -> None:
    promise(store)


class UpsertingMemoryStore(MemoryStore):
    """A deliberate sabotage: a memory store whose update re-creates a missing session (an upsert)."""

    def update(self, record: SessionRecord) -> bool:
        if not super().update(record):
            self.insert(record)
        return True


def test_a_memory_store_that_upserts_fails_the_contract() -> None:
    failed = []
    for promise in CHECKS:
        try:
            promise(UpsertingMemoryStore(Settings(rampup=False)))
        except AssertionError:
            failed.append(promise.__name__)
    assert failed == [
        "update_of_a_missing_session_is_refused_and_writes_nothing",
        "update_of_a_deleted_session_does_not_resurrect_it",
        "move_when_the_old_session_is_gone_writes_nothing",
    ]
