"""One save path: ``Session`` and the Django engine write through the same rule and the same insert retry.

Which name a save writes to (and whether that is a move) is one pure rule,
:func:`session_core.rules.save_target`; the writes are
:func:`session_core.session.insert_new` and
:func:`session_core.session.rewrite_stored`. Here both front ends save the
same sessions over a store that records what it is asked, and must ask the
same: an insert of a new session, an update, a ViUR plain name moved to its
hash, a taken name retried under a fresh key, an update refused for a session
gone meanwhile. Django keeps its own words for the outcomes (CreateError,
UpdateError). No emulator: the memory store keeps the Datastore store's
contract (tests/test_store_contract.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import pytest
from django.contrib.sessions.backends.base import CreateError, UpdateError
from django.test import override_settings

from session_core import Session, Settings, rules
from session_core.django import SessionStore as DjangoSession
from session_core.errors import StoreError
from session_core.rules import hash_key, save_target
from session_core.session import Saved
from session_core.store import SessionRecord
from session_core.testing import MemoryStore
from tests.conftest import Ctx
from tests.django_site import configure

configure()

NOW = 1_900_000_000.0
HASHED = Settings(cookie_secure=False, rampup=False)
PLAIN = replace(HASHED, key_storage="plain")
KEY = "K" * 42


# -- the rule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "stored", "target"),
    [
        (HASHED, hash_key(KEY), hash_key(KEY)),  # stored under its hash: updated in place
        (HASHED, KEY, hash_key(KEY)),  # ViUR plain-named under hashed storage: moves to its hash
        (HASHED, None, hash_key(KEY)),  # never loaded: its storage name
        (PLAIN, KEY, KEY),  # plain storage keeps plain names
        (PLAIN, hash_key(KEY), hash_key(KEY)),  # and leaves hashed ones where they are
        (PLAIN, None, KEY),
    ],
    ids=["hashed", "viur-plain-moves", "hashed-unknown", "plain", "plain-keeps-hashed", "plain-unknown"],
)
def test_which_name_a_save_writes_to(settings: Settings, stored: str | None, target: str) -> None:
    assert save_target(KEY, stored, settings) == target


# -- both front ends ask the store the same ----------------------------------------------------------


class Recording(MemoryStore):
    """The memory store, noting each write it is asked for: (operation, name written, name moved from)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.asked: list[tuple[str, str, str | None]] = []

    def insert(self, record: SessionRecord, *, delete: Sequence[str] = ()) -> bool:
        self.asked.append(("insert", record.key_name, None))
        return super().insert(record, delete=delete)

    def update(self, record: SessionRecord) -> bool:
        self.asked.append(("update", record.key_name, None))
        return super().update(record)

    def move(self, record: SessionRecord, old_name: str, *, old: SessionRecord | None = None) -> bool:
        self.asked.append(("move", record.key_name, old_name))
        return super().move(record, old_name, old=old)


def stored_as(store: MemoryStore, name: str) -> None:
    store.insert(SessionRecord(name, {"n": 0}, rules.GUEST_USER, "security", NOW, lifetime=3600.0))


def stored_under(name: str) -> Callable[[Recording], str]:
    """A session of cookie ``KEY`` stored under ``name`` before the request: the request sends ``KEY``."""

    def prepare(store: Recording) -> str:
        stored_as(store, name)
        return KEY

    return prepare


def save_with_session(store: Recording, cookie: str | None) -> str:
    """One request through :class:`Session`: load ``cookie``, count, commit; what the commit said."""
    session = Session(None, store.settings, store=store, clock=lambda: NOW)
    session.load(Ctx({store.settings.cookie_name: cookie} if cookie else {}))
    session["n"] = session.get("n", 0) + 1
    return session.commit().value


def save_with_django(store: Recording, cookie: str | None) -> str:
    """The same request through the Django engine (``request.session``); Django's outcome of the save."""
    with override_settings(SESSION_CORE_STORE=store, SESSION_CORE_SETTINGS=None):
        session = DjangoSession(cookie)
        session["n"] = session.get("n", 0) + 1
        try:
            session.save()
        except UpdateError:
            return "UpdateError"
        return "saved"


FRONT_ENDS = {"session": save_with_session, "django": save_with_django}


@pytest.fixture
def fresh_keys(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], None]:
    """Make the next fresh keys these (then random again): a taken name, on purpose."""

    def use(keys: list[str]) -> None:
        queue: Iterator[str] = iter(keys)
        real = rules.new_key
        monkeypatch.setattr(rules, "new_key", lambda: next(queue, None) or real())

    return use


def writes(
    front_end: str, settings: Settings, prepare: Callable[[Recording], str | None]
) -> list[tuple[str, str, str | None]]:
    """What one counting request through ``front_end`` asks the store to write, after ``prepare`` (its cookie)."""
    store = Recording(settings)
    cookie = prepare(store)
    store.asked.clear()
    FRONT_ENDS[front_end](store, cookie)
    return store.asked


SCENARIOS: dict[str, tuple[Settings, Callable[[Recording], str | None]]] = {
    "stored-hashed": (HASHED, stored_under(hash_key(KEY))),
    "viur-plain-under-hashed": (HASHED, stored_under(KEY)),
    "plain-storage": (PLAIN, stored_under(KEY)),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_session_and_django_rewrite_a_stored_session_alike(scenario: str) -> None:
    settings, prepare = SCENARIOS[scenario]
    assert writes("django", settings, prepare) == writes("session", settings, prepare)


def test_session_and_django_move_a_viur_plain_named_session_to_its_hash_in_one_move() -> None:
    settings, prepare = SCENARIOS["viur-plain-under-hashed"]
    for front_end in FRONT_ENDS:
        assert writes(front_end, settings, prepare) == [("move", hash_key(KEY), KEY)]


def test_a_new_session_whose_name_is_taken_is_inserted_under_another_fresh_key_in_both(
    fresh_keys: Callable[[list[str]], None],
) -> None:
    taken, free = "T" * 42, "F" * 42
    for front_end in FRONT_ENDS:
        fresh_keys([taken, free])
        asked = writes(front_end, HASHED, lambda store: stored_as(store, hash_key(taken)))
        assert asked == [("insert", hash_key(taken), None), ("insert", hash_key(free), None)], front_end


def test_after_three_taken_names_both_give_up_with_a_store_error(fresh_keys: Callable[[list[str]], None]) -> None:
    taken = ["A" * 42, "B" * 42, "C" * 42]
    for front_end in FRONT_ENDS:
        fresh_keys(taken)
        store = Recording(HASHED)
        for key in taken:
            stored_as(store, hash_key(key))
        with pytest.raises(StoreError, match="no free session key"):
            FRONT_ENDS[front_end](store, None)
        assert [name for _, name, _ in store.asked[-3:]] == [hash_key(key) for key in taken]


def test_a_session_gone_meanwhile_is_never_re_created_by_either() -> None:
    outcomes = {}
    for front_end in FRONT_ENDS:
        store = Recording(HASHED)
        stored_as(store, hash_key(KEY))
        if front_end == "session":
            session = Session(None, HASHED, store=store, clock=lambda: NOW)
            session.load(Ctx({HASHED.cookie_name: KEY}))
            store.delete([hash_key(KEY)])  # killed while the request held it
            session["n"] = 1
            outcomes[front_end] = session.commit()
        else:
            with override_settings(SESSION_CORE_STORE=store, SESSION_CORE_SETTINGS=None):
                django = DjangoSession(KEY)
                django.get("n")  # loaded
                store.delete([hash_key(KEY)])
                django["n"] = 1
                with pytest.raises(UpdateError):
                    django.save()
        assert store.sessions_of(None) == []
    assert outcomes == {"session": Saved.DROPPED}


def test_django_must_create_on_a_taken_key_is_one_insert_and_a_create_error() -> None:
    store = Recording(HASHED)
    stored_as(store, hash_key(KEY))
    store.asked.clear()
    with override_settings(SESSION_CORE_STORE=store, SESSION_CORE_SETTINGS=None), pytest.raises(CreateError):
        DjangoSession(KEY).save(must_create=True)
    assert store.asked == [("insert", hash_key(KEY), None)]  # Django's caller picks the next key, not us
