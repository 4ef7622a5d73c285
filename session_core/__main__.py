"""Command line: ``python -m session_core COMMAND``."""

from __future__ import annotations

import argparse
import sys

from session_core.logging import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m session_core", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run the library against a local Datastore emulator")
    args = parser.parse_args(argv)
    configure_logging()
    if args.command == "demo":
        from session_core._demo import run_demo

        return run_demo()
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
