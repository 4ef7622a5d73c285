"""Django's own session tests, run against ``session_core.django`` on the emulator.

The suite downloads the sdist of the installed Django from PyPI (once, into
``.local/``; checked against the hashes of locks/sources.txt) and runs, in a
process of their own, the two test classes of
Django's ``tests/sessions_tests/tests.py`` that are about a backend's contract
and not one storage: ``SessionTestsMixin`` (which every Django backend runs,
sync and async) with our ``SessionStore`` as its backend, and
``SessionMiddlewareTests`` with our engine as ``SESSION_ENGINE``. Each test gets
a namespace of its own. Every test passes except the two that check what we
change on purpose (our key format; no row in Django's database table).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from session_core.testing import Emulator
from tests.conftest import ROOT
from tests.locks import locked

pytestmark = pytest.mark.slow
VERSION = importlib.metadata.version("django")
CACHE = ROOT / ".local" / "django-sdist"
DELIBERATE = {
    "DatastoreSessionTests.test_session_key_valid_string_saved": (
        "Django keeps any key of 8 or more characters; we keep only the 42 [A-Za-z0-9] characters we issue"
    ),
    "DatastoreSessionMiddlewareTests.test_empty_session_saved": (
        "it reads the session back from Django's database table, which this engine does not write"
    ),
}
RUNNER = '''
"""Run Django's SessionTestsMixin and SessionMiddlewareTests against session_core.django; print JSON outcomes."""
import json
import os
import sys
import unittest
import uuid

import django
from django.conf import settings

from session_core import Settings


def fresh_settings():
    return Settings(
        project="session-core-test",
        emulator_host=os.environ["DATASTORE_EMULATOR_HOST"],
        namespace="django-own-" + uuid.uuid4().hex[:10],
    )


settings.configure(
    SECRET_KEY="django-own-tests",
    INSTALLED_APPS=[
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "django.contrib.sessions",
        "sessions_tests",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    SESSION_ENGINE="session_core.django",
    SESSION_CORE_SETTINGS=fresh_settings(),
    USE_TZ=True,
)
django.setup()

from django.test import SimpleTestCase, override_settings
from django.test.utils import setup_databases, setup_test_environment

setup_test_environment()
setup_databases(verbosity=0, interactive=False)

from sessions_tests.tests import SessionMiddlewareTests, SessionTestsMixin

from session_core.django import SessionStore


class OwnNamespace:
    def setUp(self):
        self.enterContext(override_settings(SESSION_CORE_SETTINGS=fresh_settings()))
        super().setUp()


class DatastoreSessionTests(OwnNamespace, SessionTestsMixin, SimpleTestCase):
    backend = SessionStore


class DatastoreSessionMiddlewareTests(OwnNamespace, SessionMiddlewareTests):
    pass


class Outcomes(unittest.TestResult):
    def __init__(self):
        super().__init__()
        self.outcomes = {}

    def name(self, test):
        return f"{type(test).__name__}.{test._testMethodName}"

    def addSuccess(self, test):
        self.outcomes[self.name(test)] = "passed"

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.outcomes[self.name(test)] = "failed"

    def addError(self, test, err):
        super().addError(test, err)
        self.outcomes[self.name(test)] = "failed"

    def addSkip(self, test, reason):
        self.outcomes[self.name(test)] = "skipped"


loader = unittest.TestLoader()
suite = unittest.TestSuite(
    [loader.loadTestsFromTestCase(DatastoreSessionTests), loader.loadTestsFromTestCase(DatastoreSessionMiddlewareTests)]
)
result = Outcomes()
suite.run(result)
for test, trace in [*result.failures, *result.errors]:
    print(f"--- {test}", trace, sep="\\n", file=sys.stderr)
print(json.dumps(result.outcomes))
'''


def django_tests() -> Path:
    """Django's tests directory, from the sdist of the installed version."""
    root = CACHE / f"django-{VERSION}"
    if not (root / "tests" / "sessions_tests").is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        pinned = locked("sources", "django", VERSION, CACHE)
        subprocess.run(
            [*pip, "--require-hashes", "-r", str(pinned), "-d", str(CACHE)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        with tarfile.open(CACHE / f"django-{VERSION}.tar.gz") as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(f"django-{VERSION}/tests/sessions_tests/")]
            archive.extractall(CACHE, members=members, filter="data")
    (root / "session_core_django_runner.py").write_text(RUNNER)
    return root


def test_djangos_own_session_tests_pass_against_our_engine(datastore_emulator: Emulator) -> None:
    root = django_tests()
    done = subprocess.run(
        [sys.executable, "session_core_django_runner.py"],
        cwd=root,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": f"{root / 'tests'}:{ROOT}",
            "DATASTORE_EMULATOR_HOST": datastore_emulator.host,
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    outcomes: dict[str, str] = json.loads(done.stdout.splitlines()[-1])
    assert len(outcomes) >= 77, outcomes  # 64 of the mixin, 13 of the middleware
    failed = {name for name, outcome in outcomes.items() if outcome == "failed"}
    assert failed == set(DELIBERATE), done.stderr[-8000:]
    assert sum(outcome == "passed" for outcome in outcomes.values()) == len(outcomes) - len(DELIBERATE)
