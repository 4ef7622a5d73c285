"""A pytest plugin for apps that use session_core: a real local Datastore, or a memory store, as fixtures.

pytest loads it by itself once session-core is installed (the ``pytest11``
entry point ``session_core``); ``-p no:session_core`` turns it off. Every
fixture is named ``session_core_*``, so none collides with pytest-django's or
pytest-flask's ``settings`` and ``client``:

- ``session_core_emulator``: one Firestore emulator in Datastore mode for the
  test run (a :class:`~session_core.testing.DatastoreEmulator`); a test that
  needs it is skipped, with what is missing and how to install it, when gcloud,
  its emulator or Java is not there;
- ``session_core_emulator_host``: its ``host:port`` (``DATASTORE_EMULATOR_HOST``);
- ``session_core_settings``: :class:`~session_core.config.Settings` for it, in a
  namespace of each test's own;
- ``session_core_client``: a Datastore client for those settings;
- ``session_core_memory_store``: a fresh :class:`~session_core.testing.MemoryStore`
  (no Java).

Loading the plugin starts and imports nothing: the emulator starts when a
test first asks for it, and stops with its whole process group at the end of
the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from google.cloud import datastore

    from session_core.config import Settings
    from session_core.testing import DatastoreEmulator, MemoryStore


@pytest.fixture(scope="session")
def session_core_emulator() -> Iterator[DatastoreEmulator]:
    """One Firestore emulator in Datastore mode for the whole run; skips the test when it cannot run here."""
    from session_core.testing import DatastoreEmulator, emulator_missing

    missing = emulator_missing()
    if missing is not None:
        pytest.skip(f"session_core_emulator: {missing}")
    with DatastoreEmulator() as emulator:
        yield emulator


@pytest.fixture(scope="session")
def session_core_emulator_host(session_core_emulator: DatastoreEmulator) -> str:
    """``127.0.0.1:PORT`` of the run's emulator: what ``DATASTORE_EMULATOR_HOST`` says to an app."""
    return session_core_emulator.host


@pytest.fixture
def session_core_settings(session_core_emulator: DatastoreEmulator) -> Settings:
    """Settings pointed at the run's emulator, in a namespace of this test's own."""
    return session_core_emulator.settings()


@pytest.fixture
def session_core_client(session_core_emulator: DatastoreEmulator, session_core_settings: Settings) -> datastore.Client:
    """A Datastore client for :func:`session_core_settings`."""
    return session_core_emulator.client(session_core_settings)


@pytest.fixture
def session_core_memory_store() -> MemoryStore:
    """A fresh in-memory store with the Datastore store's contract, for tests without Java."""
    from session_core.testing import MemoryStore

    return MemoryStore()
