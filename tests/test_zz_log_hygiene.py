"""Over the whole run: no log line carries a cookie value, a hashed session key, a security key or session data.

conftest records every key the run issues and checks every structured log line
this process writes as it is written (conftest.LogWatch: a test that logs a secret
fails on the spot, in any lane, in parallel too); the functions served as
subprocesses log to files under .local/. The whole-run check runs last (see
conftest; after a parallel run, `make test` runs this file on its own) and reads
those files, with what the watch saw (each parallel worker leaves its own).
"""

from __future__ import annotations

import json
import time

import pytest
from google.cloud import datastore

from session_core import Session, Settings, kill_sessions, rules
from session_core.maintenance.cleanup import start_clear_sessions
from tests.conftest import CANARY, LOG_DIR, ROOT, SECRETS, WATCH, Ctx, LogWatch, leaks


def parallel_workers_watch() -> tuple[int, set[str]]:
    """What the workers of a parallel run watched (conftest.pytest_sessionfinish): their line count, their events.

    Their secrets join this process's, so the files below are checked against every key the run issued.
    """
    lines, events = 0, set()
    for path in LOG_DIR.glob("watch-*.json"):
        watched = json.loads(path.read_text())
        SECRETS.update(watched["secrets"])
        lines += watched["lines"]
        events |= set(watched["events"])
    return lines, events


def subprocess_lines() -> list[str]:
    """The structured lines the functions, emulators and local stack wrote to their log files."""
    files = [*LOG_DIR.glob("*.log"), *(ROOT / ".local" / "stack-logs").glob("*.log")]
    lines = []
    for path in files:
        lines += [line for line in path.read_text(errors="replace").splitlines() if line.startswith("{")]
    return [line for line in lines if '"event"' in line]


def test_session_data_paths_log_no_data(client: datastore.Client, settings: Settings) -> None:
    """Drive every path that logs about a session, with a canary in its data."""
    gone_on_save = WATCH.events["session_gone_on_save"]
    session = Session(client, settings)
    session.load(Ctx())
    session.login("canary-user")
    session["secret"] = CANARY
    session.save(Ctx())
    gone = Session(client, settings)
    gone.load(Ctx({settings.cookie_name: session.cookie_key or ""}))
    kill_sessions("canary-user", client=client, settings=settings)
    gone["secret"] = CANARY + "-2"
    gone.save(Ctx())  # logs session_gone_on_save
    other = Session(client, settings, clock=lambda: time.time() - 86400)
    other.load(Ctx())
    other["secret"] = CANARY
    other.save(Ctx())
    start_clear_sessions(client, settings, observer=print)
    assert WATCH.events["session_gone_on_save"] > gone_on_save  # the watch saw this test's lines


@pytest.mark.emulator  # a real sample is what the emulator, function and stack tests log before it
def test_no_log_line_of_the_whole_run_carries_a_secret() -> None:
    workers_lines, workers_events = parallel_workers_watch()
    lines = subprocess_lines()
    assert WATCH.lines + workers_lines + len(lines) > 1000  # the suite logs a lot: this is a real sample
    assert len(SECRETS) > 10_000
    events = set(WATCH.events) | workers_events | {json.loads(line).get("event") for line in lines}
    assert {"clear_sessions", "kill_sessions", "session_gone_on_save", "kill_message_rejected"} <= events
    assert WATCH.leaks == []  # every line this process wrote, each checked as it was written
    assert [line for line in lines if leaks(line)] == []


def test_the_capture_would_see_a_leak() -> None:
    """The checks above are not vacuous: a line with a recorded key, or with the canary, is found and kept."""
    key = rules.new_key()  # recorded, as every key the run issues
    watch = LogWatch()
    watch.see(json.dumps({"event": "x", "oops": f"value {key}."}) + "\n" + json.dumps({"event": "y", "n": 1}))
    watch.see(json.dumps({"event": "z", "data": CANARY}))
    assert [line for _, line in watch.leaks] == [
        json.dumps({"event": "x", "oops": f"value {key}."}),
        json.dumps({"event": "z", "data": CANARY}),
    ]
    assert watch.lines == 3 and watch.events == {"x": 1, "y": 1, "z": 1}
