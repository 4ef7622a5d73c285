"""Command line: ``python -m session_core COMMAND``.

Commands run the library inline against whatever Datastore the environment
names (``DATASTORE_EMULATOR_HOST`` for an emulator), with the same settings
as the Cloud Functions. On a terminal they show progress; otherwise they log.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

import structlog

from session_core.config import Settings
from session_core.errors import SessionCoreError
from session_core.logging import configure_logging

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


def _clear(args: argparse.Namespace, settings: Settings) -> int:
    from session_core.cleanup import start_clear_sessions
    from session_core.clients import datastore_client

    verb = "counted" if args.dry_run else "deleted"
    result = start_clear_sessions(datastore_client(settings), settings, dry_run=args.dry_run, progress=_progress(verb))
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(json.dumps(result.to_json()))
    return 0


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m session_core", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run the library against a local Datastore emulator")
    clear = commands.add_parser("clear", help="delete expired sessions now, inline")
    clear.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
    args = parser.parse_args(argv)
    configure_logging()
    environ = dict(os.environ if environ is None else environ)
    if args.command == "demo":
        from session_core._demo import run_demo

        return run_demo(environ)
    try:
        settings = Settings.from_env(environ)
        return _clear(args, settings)
    except SessionCoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
