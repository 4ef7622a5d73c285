"""`make run ONCE=1`: the whole local stack comes up, the demo's numbers are right, nothing is left behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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


def stack_processes() -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if any(name in cmdline for name in STACK_PROCESSES):
                found.add(int(entry.name))
    return found


@pytest.mark.parametrize("attempt", ["first run", "second run right after"])
def test_make_run_once_tells_the_story_and_stops_everything(attempt: str) -> None:
    before = stack_processes()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATASTORE_", "SESSION_", "CLOUD_TASKS_"))}
    done = subprocess.run(
        ["make", "--no-print-directory", "run", "ONCE=1"],
        cwd=ROOT,
        env=env,
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
    assert stack_processes() <= before  # every emulator and function process it started is gone


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
