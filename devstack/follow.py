"""``... | python -m devstack.follow``: what a function call of the walkthrough did, on the terminal.

``make run`` prints commands that pipe a function's answer into this: the
answer of ``clear_sessions`` (it names its run) or of a Pub/Sub publish (its
message ids name the kill runs). It echoes the answer, waits until each run
has finished, then prints what the function read (for a kill message), the
functions' own summary lines for that run from the stack's logs, and the
before/after count of what the run targeted: a user's live sessions, or the
expired sessions. Repository tooling, like the rest of :mod:`devstack`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from google.cloud import datastore
from google.cloud.datastore.query import PropertyFilter

from devstack.emulators import ROOT
from session_core.clients import datastore_client
from session_core.config import Settings
from session_core.maintenance.kill import run_id_for
from session_core.maintenance.runs import Run, RunRecorder
from session_core.maintenance.sweep import key_names, page_limit, session_query
from session_core.rules import GUEST_USER

LOG_DIR = ROOT / ".local" / "stack-logs"
SUMMARY_EVENTS = ("clear_sessions", "kill_sessions")


class FollowError(Exception):
    """What the walkthrough expected did not happen; the message says what and where to look."""


def runs_named_by(answer: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """(run id, Pub/Sub message id or None) for each run an answer names."""
    if isinstance(answer.get("run_id"), str):
        return [(answer["run_id"], None)]
    ids = answer.get("messageIds")
    if isinstance(ids, list) and ids:
        return [(run_id_for(str(message_id)), str(message_id)) for message_id in ids]
    raise FollowError(f"this answer names no run: {json.dumps(answer)}")


def finished_run(recorder: RunRecorder, run_id: str, timeout: float = 60.0) -> Run:
    """The run once its status is ``done`` (every chain finished); FollowError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = recorder.get(run_id)
        if run is not None and run.status == "done":
            return run
        time.sleep(0.1)
    raise FollowError(f"run {run_id} did not finish in {timeout:.0f} s; see the logs in {LOG_DIR}")


def summary_lines(log_dir: Path, run_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(function, parsed line) for every summary line of ``run_id`` in the stack's function logs."""
    for path in sorted(log_dir.glob("*.log")):
        function = path.stem.rsplit("-", 1)[0]
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{") or run_id not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("run_id") == run_id and event.get("event") in SUMMARY_EVENTS:
                yield function, event


def wait_for_lines(log_dir: Path, run: Run, timeout: float = 10.0) -> list[tuple[str, dict[str, Any]]]:
    """The run's summary lines, once there are as many as it recorded steps (a line is logged just after)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = list(summary_lines(log_dir, run.run_id))
        if len(lines) >= run.steps or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def count_sessions(client: datastore.Client, settings: Settings, **equal_or_before: Any) -> int:
    """Keys-only count: ``user=...`` (equal) or ``lastseen=...`` (before), as the run's own query filters."""
    query_filter = (
        PropertyFilter("user", "=", equal_or_before["user"])
        if "user" in equal_or_before
        else PropertyFilter("lastseen", "<", equal_or_before["lastseen"])
    )

    def make() -> datastore.Query:
        query = session_query(client, settings)
        query.add_filter(filter=query_filter)
        return query

    return sum(1 for _ in key_names(make, page_limit(settings)))


def describe(run: Run, client: datastore.Client, settings: Settings) -> str:
    """The before/after count of what ``run`` targeted (before = after + what the run deleted)."""
    if run.kind == "clear":
        left = count_sessions(client, settings, lastseen=run.params["cutoff"])
        if run.params["dry_run"]:
            return f"expired sessions: {left:,} (a dry run: it would delete {run.deleted:,} and deleted none)"
        return f"expired sessions: {left + run.deleted:,} before, {left:,} after (the run deleted {run.deleted:,})"
    user = run.params["user"]
    if user is None:
        return f"every session: the run deleted {run.deleted:,}"
    left = count_sessions(client, settings, user=user)
    who = "guest sessions" if user == GUEST_USER else f"{user}'s sessions"
    return f"{who}: {left + run.deleted:,} before, {left:,} after (the run deleted {run.deleted:,})"


def follow(answer_text: str, environ: Mapping[str, str], log_dir: Path = LOG_DIR) -> list[str]:
    """The lines to show for a function's answer (see the module docstring)."""
    try:
        answer = json.loads(answer_text)
    except ValueError:
        raise FollowError(f"not a JSON answer: {answer_text.strip()[:300]!r}") from None
    if not isinstance(answer, dict):
        raise FollowError(f"not a JSON object: {answer_text.strip()[:300]!r}")
    settings = Settings.from_env(environ)
    client = datastore_client(settings)
    recorder = RunRecorder(client, settings)
    shown = [answer_text.strip()]
    for run_id, message_id in runs_named_by(answer):
        run = finished_run(recorder, run_id)
        if message_id is not None:
            read = {"user": run.params["user"]}
            if run.params["except_session"] is not None:
                read["except_session"] = run.params["except_session"]
            shown.append(f"kill_user_sessions read message {message_id} as {json.dumps(read)} (run {run_id})")
        for function, event in wait_for_lines(log_dir, run):
            fields = {name: value for name, value in event.items() if name not in ("timestamp", "severity")}
            shown.append(f"{function} log: {json.dumps(fields)}")
        shown.append(describe(run, client, settings))
    return shown


def main() -> int:
    try:
        lines = follow(sys.stdin.read(), os.environ)
    except FollowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
