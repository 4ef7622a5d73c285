"""Flask's own session tests, run against DatastoreSessionInterface.

The suite downloads the sdist of the installed Flask from PyPI (once, into
``.local/``; checked against the hashes of locks/sources.txt), and runs every
test of its session, flashing and session-transaction tests with every Flask
app's ``session_interface`` swapped for ours, on the emulator. They all pass
except the three that check what we change on purpose: a session that needs
no ``SECRET_KEY`` (so there is no null session) and is not signed (so a new
key does not empty it).
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from session_core.testing import Emulator
from tests.conftest import ROOT
from tests.locks import locked

pytestmark = pytest.mark.slow
VERSION = importlib.metadata.version("flask")
CACHE = ROOT / ".local" / "flask-sdist"
FILES = ["test_basic.py", "test_testing.py", "test_helpers.py", "test_signals.py", "test_reqctx.py"]
SELECTED = "session or flash"
DELIBERATE = {
    "test_basic.py::test_missing_session": "no SECRET_KEY is needed, so there is no null session",
    "test_basic.py::test_session_secret_key_fallbacks": "nothing is signed, so a new SECRET_KEY keeps the session",
    "test_testing.py::test_session_transactions_no_null_sessions": "no SECRET_KEY is needed: no null session",
}
PLUGIN = '''
import os
import uuid

import _pytest.monkeypatch
import flask
import pytest

# Flask 3.1's conftest predates pytest 9, which renamed ``notset``.
if not hasattr(_pytest.monkeypatch, "notset"):
    _pytest.monkeypatch.notset = _pytest.monkeypatch.NOTSET

from session_core import Settings
from session_core.clients import datastore_client
from session_core.flask import DatastoreSessionInterface


@pytest.fixture(autouse=True)
def _sessions_in_datastore(monkeypatch):
    """Every Flask app of the test gets our interface, in a namespace of the test's own."""
    settings = Settings(
        project="session-core-test",
        emulator_host=os.environ["DATASTORE_EMULATOR_HOST"],
        namespace="flask-own-" + uuid.uuid4().hex[:10],
    )
    interface = DatastoreSessionInterface(client=datastore_client(settings), settings=settings)
    monkeypatch.setattr(flask.Flask, "session_interface", interface)
'''


def flask_tests() -> Path:
    """Flask's tests directory, from the sdist of the installed version."""
    root = CACHE / f"flask-{VERSION}"
    if not (root / "tests").is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        pinned = locked("sources", "flask", VERSION, CACHE)
        subprocess.run(
            [*pip, "--require-hashes", "-r", str(pinned), "-d", str(CACHE)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        with tarfile.open(CACHE / f"flask-{VERSION}.tar.gz") as archive:
            archive.extractall(CACHE, filter="data")
    (root / "session_core_plugin.py").write_text(PLUGIN)
    return root


def test_flasks_own_session_tests_pass_against_our_interface(tmp_path: Path, datastore_emulator: Emulator) -> None:
    root = flask_tests()
    report = tmp_path / "junit.xml"
    pytest_argv = [sys.executable, "-m", "pytest", "-p", "session_core_plugin", "-p", "no:cacheprovider", "-q"]
    done = subprocess.run(
        [*pytest_argv, "--junitxml", str(report), "-k", SELECTED, *(f"tests/{name}" for name in FILES)],
        cwd=root,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": f"{root}:{ROOT}",
            "DATASTORE_EMULATOR_HOST": datastore_emulator.host,
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    outcomes: dict[str, str] = {}
    for case in ElementTree.parse(report).iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}.py::{case.get('name')}"
        failed = case.find("failure") is not None or case.find("error") is not None
        outcomes[name] = "failed" if failed else "skipped" if case.find("skipped") is not None else "passed"
    assert len(outcomes) >= 24, done.stdout[-3000:]
    failed = {name for name, outcome in outcomes.items() if outcome == "failed"}
    assert failed == set(DELIBERATE), done.stdout[-5000:]
    assert sum(outcome == "passed" for outcome in outcomes.values()) == len(outcomes) - len(DELIBERATE)
