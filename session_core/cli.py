"""Command line: ``session-core COMMAND`` (or ``python -m session_core COMMAND``).

``clear`` and ``kill-user`` run the library inline against whatever
Datastore the environment names (``DATASTORE_EMULATOR_HOST`` for an
emulator), with the same settings as the Cloud Functions; on a terminal they
show progress, otherwise they log.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

import structlog

from session_core.clients import datastore_client
from session_core.config import Settings
from session_core.errors import SessionCoreError
from session_core.logging import configure_logging
from session_core.maintenance.cleanup import start_clear_sessions
from session_core.maintenance.kill import killSessionByUser
from session_core.maintenance.runs import list_runs
from session_core.rules import GUEST_USER
from session_core.session import registered_delete_observer

log = structlog.get_logger("session_core.cli")


def _progress(verb: str) -> Callable[[int, float], None]:
    """Progress on a terminal (one rewritten line), log lines otherwise."""
    tty = sys.stderr.isatty()

    def report(done: int, elapsed: float) -> None:
        rate = done / elapsed if elapsed > 0 else 0.0
        if tty:
            print(f"\r{verb} {done:,} sessions  ({rate:,.0f}/s, {elapsed:.1f} s)", end="", file=sys.stderr, flush=True)
        else:
            log.info("progress", done=done, rate_per_s=round(rate), elapsed_s=round(elapsed, 1))

    return report


def _run(args: argparse.Namespace, settings: Settings) -> dict[str, object]:
    client = datastore_client(settings)
    if args.command == "runs":
        return {"runs": [run.to_json() for run in list_runs(client, settings, args.limit)]}
    observer = registered_delete_observer()
    if args.command == "clear":
        verb = "counted" if args.dry_run else "deleted"
        result = start_clear_sessions(
            client, settings, dry_run=args.dry_run, progress=_progress(verb), observer=observer
        )
        return result.to_json()
    user = GUEST_USER if args.guest else None if args.all else args.user
    killed = killSessionByUser(
        user,
        client=client,
        settings=settings,
        except_session=args.except_session,
        progress=_progress("deleted"),
        observer=observer,
    )
    return killed.to_json()


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="session-core", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    clear = commands.add_parser("clear", help="delete expired sessions now, inline")
    clear.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
    kill = commands.add_parser("kill-user", help="end a user's sessions now, inline")
    who = kill.add_mutually_exclusive_group(required=True)
    who.add_argument("user", nargs="?", help="the user key")
    who.add_argument("--guest", action="store_true", help="every guest session")
    who.add_argument("--all", action="store_true", help="every session")
    kill.add_argument("--except", dest="except_session", metavar="SESSION", help="a session id to keep")
    runs = commands.add_parser("runs", help="the recent cleanup and kill runs, with their status and counts")
    runs.add_argument("--limit", type=int, default=20, help="how many, newest first (default 20)")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        settings = Settings.from_env(dict(os.environ if environ is None else environ))
        result = _run(args, settings)
    except (SessionCoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(json.dumps(result))
    return 0
