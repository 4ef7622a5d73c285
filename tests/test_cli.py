"""The command line, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from session_core.emulators import Emulator


def test_demo_runs_against_the_emulator(datastore_emulator: Emulator) -> None:
    env = {**os.environ, "DATASTORE_EMULATOR_HOST": datastore_emulator.host}
    done = subprocess.run(
        [sys.executable, "-m", "session_core", "demo"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "0 sessions stored (nothing written)" in done.stdout
    assert "cart={'cart': ['book', 'pen']}; 1 session stored" in done.stdout
    assert "new cookie: True; cart after login={'cart': []}" in done.stdout
    assert "moved to hashed key: True" in done.stdout


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
