"""Over the whole run: no log line carries a cookie value, a hashed session key, a security key or session data.

conftest records every key the run issues and tees every structured log line
the library writes in this process; the functions served as subprocesses log
to files under .local/. This test runs last (see conftest) and reads them all.
"""

from __future__ import annotations

import json
import re
import time

from google.cloud import datastore

from session_core import Session, Settings, kill_sessions
from session_core.maintenance.cleanup import start_clear_sessions
from tests.conftest import CAPTURED, LOG_DIR, ROOT, SECRETS, Ctx

CANARY = "canary-session-data-7f3a91"
TOKENS = re.compile(r"[A-Za-z0-9]+")


def structured_lines() -> list[str]:
    files = [*LOG_DIR.glob("*.log"), *(ROOT / ".local" / "stack-logs").glob("*.log")]
    lines = [*CAPTURED]
    for path in files:
        lines += [line for line in path.read_text(errors="replace").splitlines() if line.startswith("{")]
    return [line for line in lines if '"event"' in line]


def test_session_data_paths_log_no_data(client: datastore.Client, settings: Settings) -> None:
    """Drive every path that logs about a session, with a canary in its data."""
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
    assert any("session_gone_on_save" in line for line in CAPTURED)


def test_no_log_line_of_the_whole_run_carries_a_secret() -> None:
    lines = structured_lines()
    assert len(lines) > 1000  # the suite logs a lot: this is a real sample
    assert len(SECRETS) > 10_000
    events = {json.loads(line).get("event") for line in lines if line.startswith("{")}
    assert {"clear_sessions", "kill_sessions", "session_gone_on_save", "kill_message_rejected"} <= events
    leaks = [line for line in lines if CANARY in line or SECRETS.intersection(TOKENS.findall(line))]
    assert leaks == []


def test_the_capture_would_see_a_leak() -> None:
    """The check above is not vacuous: a line with a recorded key is found."""
    key = next(iter(SECRETS))
    assert SECRETS.intersection(TOKENS.findall(json.dumps({"event": "x", "oops": f"value {key}."})))
