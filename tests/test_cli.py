"""The command line, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from session_core.testing import Emulator


def test_clear_command_deletes_expired_sessions_inline(
    datastore_emulator: Emulator, client: Any, settings: Any
) -> None:
    import json
    import time

    from tests.test_cleanup import remaining, seed

    live = seed(client, settings, 20, time.time())
    seed(client, settings, 300, time.time() - 86400)
    env = {
        **os.environ,
        "DATASTORE_EMULATOR_HOST": datastore_emulator.host,
        "SESSION_NAMESPACE": settings.namespace,
        "GOOGLE_CLOUD_PROJECT": settings.project,
    }
    dry = subprocess.run(
        [sys.executable, "-m", "session_core", "clear", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["deleted"] == 300 and len(remaining(client, settings)) == 320
    done = subprocess.run(
        [sys.executable, "-m", "session_core", "clear"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["deleted"] == 300
    assert '"event": "progress"' in done.stderr  # not a terminal: log lines, not a progress bar
    assert remaining(client, settings) == live


def test_bad_settings_fail_with_the_variable_named(datastore_emulator: Emulator) -> None:
    env = {**os.environ, "DATASTORE_EMULATOR_HOST": datastore_emulator.host, "SESSION_BATCH_SIZE": "9000"}
    done = subprocess.run(
        [sys.executable, "-m", "session_core", "clear"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "SESSION_BATCH_SIZE: expected a whole number from 1 to 500; got '9000'" in done.stderr


def test_kill_user_command(datastore_emulator: Emulator, client: Any, settings: Any) -> None:
    import json

    from tests.test_cleanup import remaining
    from tests.test_revocation import seed_users

    users = seed_users(client, settings, {"alice": 30, "bob": 4, "__guest__": 10})
    env = {
        **os.environ,
        "DATASTORE_EMULATOR_HOST": datastore_emulator.host,
        "SESSION_NAMESPACE": settings.namespace,
        "GOOGLE_CLOUD_PROJECT": settings.project,
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "session_core", "kill-user", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = cli("alice")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["deleted"] == 30
    kept = sorted(users["bob"])[0]
    assert json.loads(cli("--all", "--except", kept).stdout)["deleted"] == 13
    assert remaining(client, settings) == {kept}
    refused = cli("bob", "--except", "not-a-session-id")
    assert refused.returncode == 1 and "except_session must be a session id" in refused.stderr
