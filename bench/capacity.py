"""A capacity model for clearing a backlog of expired sessions: prints the README's table.

    .venv/bin/python -m bench.capacity            # the table, with the parameters it assumes
    .venv/bin/python -m bench.capacity --markdown # the same as a Markdown table

It is a model, not a measurement. Its parameters (each can be changed on the
command line):

- the ramp-up rule the cleanup follows (``SESSION_RAMPUP_START`` 500 deletes a
  second, raised by half every ``SESSION_RAMPUP_PERIOD`` of 300 s), shared by
  all the run's chains;
- ``CHAIN_RATE``: the most one chain deletes a second. With 4 commits of 500
  keys in flight and about 200 ms per delete commit in production, that is
  10,000 a second (the emulator measured 13,292 on this machine with the
  defaults, ``bench.clear``);
- ``SESSION_TIME_BUDGET``: 300 s a step, so a chain dispatches one Cloud Task
  per 300 s of work (and its first step is a task too, or the scheduler call);
- every chain gets an equal share of the backlog (the slices are balanced to
  within 1.5x of the mean; the model takes them as equal).
"""

from __future__ import annotations

import argparse
import math

from session_core.maintenance.pacing import budget, rate

BACKLOGS = (1_000_000, 10_000_000, 100_000_000)
SHARDS = (1, 4, 16, 64)


def time_to_clear(backlog: int, shards: int, *, start: float, period: float, chain_rate: float) -> float:
    """Seconds until ``backlog`` deletes are done: the schedule, capped at ``shards * chain_rate``."""
    cap = shards * chain_rate
    elapsed, done = 0.0, 0.0
    while done < backlog:
        allowed = min(rate(elapsed, start, period), cap)
        boundary = (math.floor(elapsed / period) + 1) * period  # the schedule is flat until here
        step = min(boundary - elapsed, (backlog - done) / allowed)
        done += allowed * step
        elapsed += step
    return elapsed


def dispatches(seconds: float, shards: int, budget_s: float) -> int:
    """Cloud Tasks dispatches: each chain runs ``ceil(seconds / budget)`` steps."""
    return shards * max(1, math.ceil(seconds / budget_s))


def peak_rate(seconds: float, shards: int, *, start: float, period: float, chain_rate: float) -> float:
    return min(rate(seconds, start, period), shards * chain_rate)


def duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", type=float, default=500, help="SESSION_RAMPUP_START (deletes a second)")
    parser.add_argument("--period", type=float, default=300, help="SESSION_RAMPUP_PERIOD (seconds)")
    parser.add_argument("--chain-rate", type=float, default=10_000, help="the most one chain deletes a second")
    parser.add_argument("--budget", type=float, default=300, help="SESSION_TIME_BUDGET (seconds a step)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    shape = {"start": args.start, "period": args.period, "chain_rate": args.chain_rate}
    rows = []
    for backlog in BACKLOGS:
        for shards in SHARDS:
            seconds = time_to_clear(backlog, shards, **shape)
            rows.append(
                (
                    f"{backlog:,}",
                    str(shards),
                    duration(seconds),
                    f"{dispatches(seconds, shards, args.budget):,}",
                    f"{peak_rate(seconds, shards, **shape):,.0f}",
                )
            )
    header = ("expired sessions", "shards", "time to clear", "task dispatches", "peak deletes/s")
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
        for row in (header, *rows):
            print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    print(
        f"\nmodel: ramp-up {args.start:g}/s x1.5 every {args.period:g} s, shared by the run's chains; "
        f"one chain at most {args.chain_rate:,.0f}/s; a task per {args.budget:g} s of a chain's work; "
        f"the schedule alone allows {budget(3600, args.start, args.period):,.0f} deletes in the first hour"
    )


if __name__ == "__main__":
    main()
