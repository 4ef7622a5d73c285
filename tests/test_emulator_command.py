"""``session-core emulator``: a local Datastore for an app in development, and what it says when it cannot start one."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from session_core.config import LOCAL_PROJECT, Settings
from session_core.testing import port_open

GCLOUD = "/usr/bin/gcloud"


def emulator_command(path: str) -> subprocess.CompletedProcess[str]:
    """``session-core emulator`` with ``PATH`` set to ``path`` (and nothing else of the environment's)."""
    return subprocess.run(
        [sys.executable, "-m", "session_core", "emulator"],
        env={"PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_gcloud_it_says_so_and_how_to_install_it_in_one_error_line(tmp_path: Path) -> None:
    done = emulator_command(str(tmp_path))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: gcloud is not installed")
    assert "apt-get install google-cloud-cli google-cloud-cli-firestore-emulator" in done.stderr


@pytest.mark.skipif(not Path(GCLOUD).exists(), reason="needs gcloud at /usr/bin/gcloud")
def test_without_java_it_says_so_and_how_to_install_it_in_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "gcloud").symlink_to(GCLOUD)  # gcloud, with its emulator, but no java on PATH
    done = emulator_command(str(tmp_path))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: Java is not installed")
    assert "apt-get install openjdk-17-jre-headless" in done.stderr


def test_it_serves_a_datastore_an_app_reaches_with_the_printed_environment_and_sigterm_stops_the_whole_group() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "session_core", "emulator"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    group = None
    try:
        assert process.stdout is not None and process.stderr is not None
        exports = dict(
            re.fullmatch(r"export (\w+)=(.*)\n", process.stdout.readline()).groups()  # type: ignore[union-attr]
            for _ in range(2)
        )
        assert process.stdout.readline().startswith("# plain http://")
        assert process.stdout.readline() == "export SESSION_COOKIE_SECURE=false\n"
        running = process.stderr.readline()
        group = int(re.search(r"process group (\d+)", running).group(1))  # type: ignore[union-attr]
        host = exports["DATASTORE_EMULATOR_HOST"]
        assert exports["GOOGLE_CLOUD_PROJECT"] == LOCAL_PROJECT
        with urllib.request.urlopen(f"http://{host}/", timeout=5) as answer:
            assert answer.status == 200
        # What the app builds from that environment is valid settings for it.
        settings = Settings.from_env({**exports, "SESSION_COOKIE_SECURE": "false"})
        assert settings.emulator_host == host and settings.cookie_secure is False

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert process.stderr.read().startswith("stopped the firestore emulator (datastore mode)")
        with pytest.raises(ProcessLookupError):
            os.killpg(group, 0)  # the gcloud wrapper and its Java child are gone
        assert not port_open(int(host.rsplit(":", 1)[1]))()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]
        if group is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
