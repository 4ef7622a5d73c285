"""``python -m devstack [--once]``: what ``make run`` runs."""

from __future__ import annotations

import argparse
import sys

from devstack.stack import run_stack
from session_core.logging import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description="the whole system locally, with a demo")
    parser.add_argument("--once", action="store_true", help="exit after the demo instead of keeping the stack up")
    args = parser.parse_args(argv)
    configure_logging()
    return run_stack(once=args.once)


if __name__ == "__main__":
    sys.exit(main())
