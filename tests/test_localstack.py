"""`make run ONCE=1`: the whole local stack comes up, the demo's numbers are right, nothing is left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import IO

import pytest

pytestmark = pytest.mark.slow  # fault and whole-stack runs: make test runs them, the 3.13 pass does not

ROOT = Path(__file__).resolve().parent.parent
STACK_PROCESSES = (
    "java",
    "gcloud_tasks_emulator",
    "functions-framework",
    "cloud_firestore_emulator",
    "pubsub",
    "devstack.demo_app",
)


# Every process a stack of this test starts inherits this variable: the stray-process check sees only
# those, so the emulators of tests running beside it (a parallel run) are not mistaken for its own.
STARTED_HERE = f"STACK_TEST_RUN={uuid.uuid4().hex}".encode()


def stack_processes() -> set[int]:
    """The stack processes (emulators, functions, the demo app) that a stack started by this test left."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if STARTED_HERE in environ and any(name in cmdline for name in STACK_PROCESSES):
                found.add(int(entry.name))
    return found


def stack_env() -> dict[str, str]:
    """A new user's shell: nothing of a test's emulator settings (and the mark of a stack started here)."""
    shell = {
        k: v for k, v in os.environ.items() if not k.startswith(("DATASTORE_", "SESSION_", "CLOUD_TASKS_", "PUBSUB_"))
    }
    name, value = STARTED_HERE.decode().split("=", 1)
    return {**shell, name: value}


def test_make_run_once_tells_the_story_and_stops_everything() -> None:
    done = subprocess.run(
        ["make", "--no-print-directory", "run", "ONCE=1"],
        cwd=ROOT,
        env=stack_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = {
        match[1].strip(): (int(match[2].replace(",", "")), int(match[3].replace(",", "")))
        for match in re.finditer(r"^  ([^\d\n]+?) +([\d,]+) +([\d,]+)$", done.stdout, re.M)
    }
    assert table == {
        "live guests (ours)": (400, 400),
        "live users (ViUR layout)": (100, 100),
        "live sessions of alice": (1200, 0),
        "expired (ours)": (4000, 0),
        "expired (ViUR layout)": (1000, 0),
    }
    assert re.search(r"clear_sessions \(HTTP POST, as Cloud Scheduler\): deleted 5,000 in [\d.]+ s", done.stdout)
    assert re.search(r"kill-user 'alice' .*: 1,200 sessions gone in [\d.]+ s", done.stdout)
    assert re.search(r"Flask demo page http://127.0.0.1:\d+/: signed in as 'carol'", done.stdout)
    assert re.search(  # the Flask sign-in rotated a key: no event; the cleanup and the kill: each session once
        r"lifecycle events \(topic session-events, pull subscription session-events-demo\): "
        r"expired 5,000 sessions in \d+ messages, killed 1,200 sessions in \d+ messages, ended 0 sessions in 0",
        done.stdout,
    )
    assert re.search(r"clear [0-9a-f]{32}  done +deleted +5,000  cutoff \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", done.stdout)
    assert "export " not in done.stdout  # ONCE: no walkthrough
    assert stack_processes() == set()  # every emulator and function process it started is gone


def read_until(stream: IO[str], marker: str, timeout: float) -> str:
    """What ``stream`` says up to and including the line that contains ``marker``."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"no {marker!r} in:\n" + "".join(seen)[-3000:])


def walkthrough(printed: str) -> tuple[str, list[tuple[str, str]]]:
    """The export block and each numbered step (its comment, its commands), as a user copies them."""
    export = printed.split("First, once:\n\n", 1)[1].split("\n\n", 1)[0]
    steps = re.findall(r"^  # \d+\. (.*)\n((?:  .*\n)+)", printed.split("in this order", 1)[1], re.M)
    return textwrap.dedent(export), [(what, textwrap.dedent(commands)) for what, commands in steps]


def test_make_run_walkthrough_each_printed_command_works_in_order_and_shows_its_effect() -> None:
    """Right after the run above: a new terminal pastes the export block, then each step; Ctrl-C stops it all."""
    stack = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=ROOT,
        env=stack_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    assert stack.stdout is not None
    try:
        printed = read_until(stack.stdout, "The Flask demo page: open", timeout=300)
        export, steps = walkthrough(printed)
        assert export.startswith("export DATASTORE_EMULATOR_HOST=") and export.count("export") == 1
        assert "python -m session_core" not in export and "SESSION_TASK_AUTH=none" in export
        shown = []
        for what, commands in steps:
            assert "DATASTORE_EMULATOR_HOST" not in commands  # the settings are exported once, not repeated
            done = subprocess.run(
                ["bash", "-c", f"set -eo pipefail\n{export}\n{commands}"],
                env=stack_env(),
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert done.returncode == 0, f"{commands}\n{done.stdout}\n{done.stderr}"
            shown.append((what, done.stdout + done.stderr))
    finally:
        os.killpg(stack.pid, signal.SIGINT)  # Ctrl-C
        rest = stack.communicate(timeout=120)[0]
    assert "stopped; every process of the stack has been ended" in rest, rest[-3000:]
    assert stack.returncode in (0, -signal.SIGINT)  # make itself dies of the Ctrl-C, once its job has stopped

    said = [what for what, _ in shown]
    dry, clear, kill, listed, ended, kept, left, events = [output for _, output in shown]
    assert said[0].startswith("dave has 300 expired sessions")
    assert "would delete 300 expired sessions (a dry run: nothing was deleted)" in dry
    assert '"deleted": 300' in clear and re.search(r'^clear_sessions log: \{.*"deleted": 300', clear, re.M)
    assert "expired sessions: 300 before, 0 after (the run deleted 300)" in clear
    assert said[2] == 'erin has 40 live sessions: kill them as an app does, publishing {"user": "erin"}'
    assert re.search(r'^kill_user_sessions read message \d+ as \{"user": "erin"\}', kill, re.M)
    assert re.search(r'^kill_user_sessions log: \{.*"user": "erin".*"deleted": 40', kill, re.M)
    assert "erin's sessions: 40 before, 0 after (the run deleted 40)" in kill
    assert said[3].startswith("frank has 12 live sessions") and "user 'frank' has 12 active sessions" in listed
    assert re.search(
        r"^ended session [0-9a-f]{64} of user 'frank'; 'frank' has 11 active sessions \(before: 12\)$", ended, re.M
    )
    assert re.search(
        r"^deleted 10 sessions of user 'frank' in [\d.]+ s .*; kept session [0-9a-f]{64}; "
        r"'frank' has 1 active session \(before: 11\)$",
        kept,
        re.M,
    )
    assert "user 'frank' has 1 active session" in left and "4 runs, newest first:" in left
    assert re.search(  # every step that deleted, as events: dave's expiry, erin's kill, frank's end and kill
        r"^\d+ events from projects/session-core-local/subscriptions/session-events-demo, "
        r"sessions by reason: expired 300, killed 50, ended 1$",
        events,
        re.M,
    )
    assert re.search(r"^  \S+Z  ended +1 sessions  run [0-9a-f]{32}  frank$", events, re.M)
    assert stack_processes() == set()


def test_a_missing_tool_is_named(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # no java, no gcloud
    done = subprocess.run(
        [sys.executable, "-m", "devstack", "--once"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "error: java is not installed: the Google emulators need a Java 17+ runtime" in done.stderr
