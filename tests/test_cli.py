"""The command line, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

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
