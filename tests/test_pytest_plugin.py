"""The pytest plugin an app's own suite gets (entry point ``pytest11``): ``session_core_*`` fixtures, run by pytest."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

PLUGIN = ("-p", "session_core.pytest_plugin")
CHECKOUT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _checkout_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inner pytest imports session_core from this checkout (the package is not installed in the venv)."""
    monkeypatch.setenv("PYTHONPATH", str(CHECKOUT))


# An app's test file: pytest-django and pytest-flask's names (settings, client) stay the app's own.
APP_TESTS = """
import pytest
from google.cloud import datastore

from session_core import Session
from session_core.config import Settings
from session_core.testing import MemoryStore


@pytest.fixture
def settings():
    return "the app's own settings"


@pytest.fixture
def client():
    return "the app's own client"


def test_the_apps_settings_and_client_are_its_own(settings, client):
    assert (settings, client) == ("the app's own settings", "the app's own client")


def test_a_memory_store_keeps_a_session(session_core_memory_store):
    assert isinstance(session_core_memory_store, MemoryStore)
    session = Session(None, session_core_memory_store.settings, store=session_core_memory_store)
    session["cart"] = 3
    session.commit()
    assert session_core_memory_store.sessions_of(None)[0].data["cart"] == 3


def test_the_emulator_holds_what_a_session_saves(
    session_core_emulator_host, session_core_settings, session_core_client, settings
):
    assert isinstance(session_core_settings, Settings) and isinstance(session_core_client, datastore.Client)
    assert session_core_settings.emulator_host == session_core_emulator_host
    session = Session(session_core_client, session_core_settings)
    session["cart"] = 3
    session.commit()
    kind = session_core_settings.kind
    query = session_core_client.query(kind=kind, namespace=session_core_settings.namespace)
    assert len(list(query.fetch())) == 1


def test_each_test_has_a_namespace_of_its_own(session_core_settings, session_core_client):
    query = session_core_client.query(kind=session_core_settings.kind, namespace=session_core_settings.namespace)
    assert list(query.fetch()) == []
"""


@pytest.mark.stack
@pytest.mark.emulator
def test_the_fixtures_give_an_emulator_settings_a_client_and_a_memory_store_beside_the_apps_own(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_app=APP_TESTS)
    result = pytester.runpytest_subprocess(*PLUGIN, "-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


@pytest.mark.stack
def test_without_gcloud_or_java_the_emulators_tests_skip_saying_what_is_missing(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytester.makepyfile(test_app=APP_TESTS)
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcloud, no java
    result = pytester.runpytest_subprocess(*PLUGIN, "-q", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines(["*session_core_emulator: gcloud is not installed (not on PATH): install*"])
