"""Capacity models: clearing a backlog of expired sessions, and the active sessions write shards carry.

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

The second table: the active sessions one deployment carries with
``SESSION_WRITE_SHARDS`` = N, and what N costs its cleanup. Its parameters:

- ``RANGE_WRITES``: 500 writes a second per index range of sequential values
  (Google's guidance for an indexed field near "now"; above it one range is a
  hotspot); N write shards are N such ranges;
- ``REFRESH``: one write per session every 300 s (the refresh of a session in
  use; new sessions and changes would lower the figure);
- each cleanup run queries every write shard, each in ``SESSION_CLEAR_SHARDS``
  slices: N x slices chains, each at least one keys-only query and one lease,
  and with more than one chain a Cloud Task for each chain's first step.
"""

from __future__ import annotations

import argparse
import math

from session_core.maintenance.pacing import budget, rate

BACKLOGS = (1_000_000, 10_000_000, 100_000_000)
SHARDS = (1, 4, 16, 64)
WRITE_SHARDS = (1, 4, 16, 64)
RANGE_WRITES = 500  # writes a second one index range of sequential values takes
REFRESH = 300  # seconds between the writes of one session in use


def active_sessions(write_shards: int, *, range_writes: float = RANGE_WRITES, refresh: float = REFRESH) -> int:
    """Active sessions one deployment carries: each write shard is an index range of ``range_writes`` a second,
    and each session writes once every ``refresh`` seconds."""
    return int(write_shards * range_writes * refresh)


def cleanup_cost(write_shards: int, clear_shards: int = 1) -> tuple[int, int, int]:
    """What one cleanup run costs at least: (keys-only queries, chains, Cloud Tasks dispatches)."""
    chains = write_shards * clear_shards
    return chains, chains, 0 if chains == 1 else chains


def write_shard_rows(*, range_writes: float, refresh: float, clear_shards: int) -> list[tuple[str, ...]]:
    """The table's rows: N, active sessions, write rate, and what one cleanup run costs at least."""
    rows = []
    for shards in WRITE_SHARDS:
        queries, chains, tasks = cleanup_cost(shards, clear_shards)
        sessions = active_sessions(shards, range_writes=range_writes, refresh=refresh)
        rows.append(
            (str(shards), f"{sessions:,}", f"{shards * range_writes:,.0f}", f"{queries:,}", f"{chains:,}", f"{tasks:,}")
        )
    return rows


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]], markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
        for row in (header, *rows):
            print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))


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
    parser.add_argument(
        "--range-writes", type=float, default=RANGE_WRITES, help="writes a second one index range takes"
    )
    parser.add_argument("--refresh", type=float, default=REFRESH, help="seconds between one active session's writes")
    parser.add_argument("--clear-shards", type=int, default=1, help="SESSION_CLEAR_SHARDS (slices in each write shard)")
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
    print_table(header, rows, args.markdown)
    print(
        f"\nmodel: ramp-up {args.start:g}/s x1.5 every {args.period:g} s, shared by the run's chains; "
        f"one chain at most {args.chain_rate:,.0f}/s; a task per {args.budget:g} s of a chain's work; "
        f"the schedule alone allows {budget(3600, args.start, args.period):,.0f} deletes in the first hour"
    )
    print()
    written = write_shard_rows(range_writes=args.range_writes, refresh=args.refresh, clear_shards=args.clear_shards)
    header = (
        "SESSION_WRITE_SHARDS",
        "active sessions",
        "session writes/s",
        "cleanup queries a run",
        "cleanup chains",
        "task dispatches a run",
    )
    print_table(header, written, args.markdown)
    print(
        f"\nmodel: {args.range_writes:g} writes/s per index range, one write per active session every "
        f"{args.refresh:g} s; a cleanup run: write shards x SESSION_CLEAR_SHARDS ({args.clear_shards}) chains, "
        "each at least one keys-only query (more: one per page), a Cloud Task each when more than one"
    )


if __name__ == "__main__":
    main()
