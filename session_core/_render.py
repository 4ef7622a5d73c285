"""How the command line shows what a command did: one summary line, rows, progress; stored text escaped.

:mod:`session_core.cli` holds the command table and the arguments; each
command calls the library and hands what it got to a function here, which
builds the :class:`Outcome`: the summary line (and rows) for stderr, the
JSON for stdout. :class:`Console` writes stderr as an operator reads it.
Everything printed on stderr passes through :func:`printable`, so stored
data (a user agent an app kept) cannot drive the operator's terminal.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import structlog

from session_core.maintenance.cleanup import ClearResult
from session_core.maintenance.kill import KillResult, SessionInfo
from session_core.maintenance.rehash import RehashResult
from session_core.maintenance.steps import step_type
from session_core.maintenance.sweep import Progress
from session_core.rules import GUEST_USER, iso_utc

log = structlog.get_logger("session_core.cli")
# Summary lines the library logs for each step: the command prints one summary of its own instead.
STEP_EVENTS = frozenset({"clear_sessions", "kill_sessions", "rehash_sessions"})


def printable(text: str) -> str:
    """``text`` with every character that is not printable (controls, escapes, bidi marks) shown as ``repr`` does.

    Everything the command prints on stderr passes through it: a stored user
    agent of ``"\\x1b]0;pwned\\x07"`` is shown as those characters, not obeyed.
    """
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


@dataclass(frozen=True)
class Outcome:
    """What a command did: one summary line (and rows under it) for stderr, the JSON for stdout."""

    summary: str
    result: Mapping[str, Any] | None  # None: the command printed its stdout itself (``emulator``'s environment)
    rows: Sequence[str] = ()
    status: int = 0


class Console:
    """stderr as an operator reads it: progress, log lines that never run into it, one summary.

    On a terminal the progress is one line rewritten in place; a log line
    (a retry warning, say) first ends it, and the summary replaces it. Not
    on a terminal, progress is a ``progress`` log line. Rates are over the
    whole command (every shard of a kill), from when :meth:`progress` was
    called.
    """

    def __init__(self, stream: TextIO, *, tty: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.tty = tty
        self.clock = clock
        self._open = False  # a progress line is on the terminal, not ended

    def progress(self, verb: str) -> Progress:
        """A callback for the library's ``progress=``: it reports ``verb`` N sessions, at the command's rate."""
        started = self.clock()

        def report(done: int, _step_elapsed: float) -> None:
            elapsed = self.clock() - started
            rate = done / elapsed if elapsed > 0 else 0.0
            if self.tty:
                line = f"{verb} {done:,} sessions ({rate:,.0f}/s, {elapsed:.1f} s)"
                self.stream.write(f"\r\x1b[K{line}")
                self.stream.flush()
                self._open = True
            else:
                log.info("progress", verb=verb, done=done, rate_per_s=round(rate), elapsed_s=round(elapsed, 1))

        return report

    def end_line(self) -> None:
        """End the progress line, if one is showing, so that what follows starts on a line of its own."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False

    def summary(self, outcome: Outcome) -> None:
        """The command's one summary line (replacing the progress line on a terminal), then its rows."""
        if self._open:
            self.stream.write("\r\x1b[K")
            self._open = False
        self.stream.write("".join(f"{printable(line)}\n" for line in [outcome.summary, *outcome.rows]))
        self.stream.flush()

    def row(self, line: str) -> None:
        """A line printed as it happens (the events a tail receives), after any progress line."""
        self.end_line()
        self.stream.write(f"{printable(line)}\n")
        self.stream.flush()

    def log_processor(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        """structlog processor: drop the library's per-step summaries; end the progress line before a log line.

        Text values are made :func:`printable`: on a terminal, log lines are
        printed as they are, and one can carry stored data (an error's detail).
        """
        if event.get("event") in STEP_EVENTS:
            raise structlog.DropEvent
        self.end_line()
        for field_name, value in event.items():
            if isinstance(value, str):
                event[field_name] = printable(value)
        return event


# -- what each command says -----------------------------------------------------------------


def count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def seconds(elapsed: float) -> str:
    return f"{elapsed:.2f} s" if elapsed < 10 else f"{elapsed:,.1f} s"


def rate(number: int, elapsed: float) -> str:
    return f"{number / elapsed:,.0f}/s" if elapsed > 0 else "-/s"


def timed(what: str, number: int, elapsed: float, detail: str = "") -> str:
    """``what`` in so many seconds, at its rate (``detail`` inside the brackets, after the rate)."""
    return f"{what} in {seconds(elapsed)} ({rate(number, elapsed)}{detail})"


def cleared(result: ClearResult) -> Outcome:
    cutoff = f"cutoff {iso_utc(result.cutoff)} ({result.cutoff:.3f})"
    if result.skipped:
        return Outcome(
            f"skipped: another cleanup run holds the lease, so nothing was deleted ({cutoff})", result.to_json()
        )
    if result.dry_run:
        summary = f"would delete {result.counted:,} expired sessions (a dry run: nothing was deleted); {cutoff}"
    else:
        commits = f", {count(result.batches, 'commit')}"
        summary = timed(f"deleted {result.deleted:,} expired sessions", result.deleted, result.elapsed_s, commits)
        summary += f"; {cutoff}"
    return Outcome(summary, result.to_json())


def killed(result: KillResult, user: str | None, except_session: str | None) -> str:
    """The summary line of a kill (before the user's counts, :func:`with_counts`)."""
    whose = {None: "sessions (every user's and every guest's)", GUEST_USER: "guest sessions"}.get(
        user, f"sessions of user {user!r}"
    )
    spread = f" across {result.shards} shards" if result.shards else ""
    kept = f"; kept session {except_session}" if except_session else ""
    summary = timed(f"deleted {result.deleted:,} {whose}{spread}", result.deleted, result.elapsed_s) + kept
    if result.epoch_at is None:
        return summary
    return (  # a kill of everyone or of every guest: signed out before any delete
        f"signed out at {iso_utc(result.epoch_at)} (epoch {result.epoch}, {seconds(result.epoch_s or 0.0)}"
        f" after the call): every session it covers loads as a fresh one from then on; {summary}"
    )


def not_confirmed() -> Outcome:
    """No one typed yes: nothing was deleted (exit status 1)."""
    return Outcome("not confirmed: nothing was deleted", {"confirmed": False, "deleted": 0}, status=1)


def with_counts(
    user: str | None, before: int | None, after: int | None, summary: str, result: dict[str, Any]
) -> Outcome:
    """The outcome, with one named user's active sessions before and after it (JSON: active_before, active_after)."""
    if before is None or after is None:
        return Outcome(summary, result)
    counts = {"active_before": before, "active_after": after}
    return Outcome(f"{summary}; {user!r} has {count(after, 'active session')} (before: {before:,})", result | counts)


def sessions(user: str, infos: Sequence[SessionInfo]) -> Outcome:
    """A user's sessions: one row each, most recent first."""
    listed = [
        {
            "session_id": info.session_id,
            "lastseen": info.lastseen,
            "lastseen_utc": iso_utc(info.lastseen),
            "user_agent": info.user_agent,
            "ip": info.ip,
        }
        for info in infos
    ]
    rows = [
        f"  {info['session_id']}  last seen {info['lastseen_utc']}  {info['ip'] or '-'}  {info['user_agent'] or '-'}"
        for info in listed
    ]
    summary = f"user {user!r} has {count(len(listed), 'active session')}" + (", most recent first:" if listed else "")
    return Outcome(summary, {"user": user, "sessions": listed}, rows)


def ended(user: str, session_id: str, done: bool) -> tuple[str, dict[str, Any]]:
    """The summary of ending one session, and its JSON (status 1, with no counts, when there was none)."""
    result = {"user": user, "session_id": session_id, "ended": done}
    if done:
        return f"ended session {session_id} of user {user!r}", result
    return f"user {user!r} has no session {session_id}: nothing was ended", result


def rehashed(result: RehashResult, verb: str, dry_run: bool) -> Outcome:
    found = count(result.handled, "plain-key session")
    if dry_run:
        return Outcome(f"found {found} (a dry run: nothing was changed)", result.to_json())
    return Outcome(timed(f"{verb} {found}", result.handled, result.elapsed_s), result.to_json())


def event_row(event: Mapping[str, Any]) -> str:
    """One lifecycle event as a line: when, why, how many sessions, the run, the first three users."""
    sessions = event.get("sessions", [])
    users: Counter[str] = Counter(s.get("user", "?") for s in sessions)
    shown = ", ".join(f"{user} ({n})" if n > 1 else user for user, n in users.most_common(3))
    more = f" and {len(users) - 3} more" if len(users) > 3 else ""
    return (
        f"  {event.get('at', '?')}  {event.get('reason', '?'):<7} {len(sessions):>5,} sessions"
        f"  run {event.get('run_id', '?')}  {shown}{more}"
    )


def events(subscription: str, received: Sequence[Any], reasons: Sequence[str]) -> Outcome:
    """What a tail received: the sessions by reason, and every event as JSON."""
    counts = {reason: 0 for reason in reasons}
    for event in received:
        if event.get("reason") in counts:
            counts[event["reason"]] += len(event.get("sessions", []))
    summed = ", ".join(f"{reason} {n:,}" for reason, n in counts.items())
    summary = f"{count(len(received), 'event')} from {subscription}, sessions by reason: {summed}"
    return Outcome(summary, {"subscription": subscription, "counts": counts, "events": list(received)})


def runs(receipts: Sequence[dict[str, Any]]) -> Outcome:
    """The recent runs, newest first: one row each, as its step type describes it."""
    rows = []
    for run in receipts:
        done, subject = step_type(run["kind"]).describe(run)
        rows.append(f"  {run['started'][:19]}  {run['kind']:<5} {run['run_id']}  {run['status']:<7} {done}  {subject}")
    summary = f"{count(len(receipts), 'run')}, newest first" + (":" if receipts else "")
    return Outcome(summary, {"runs": list(receipts)}, rows)


def emulator_environment(host: str, project: str) -> str:
    """What to export for an app to use the emulator at ``host``, as shell lines (stdout of ``emulator``)."""
    return (
        f"export DATASTORE_EMULATOR_HOST={host}\n"
        f"export GOOGLE_CLOUD_PROJECT={project}\n"
        "# plain http:// in development: send the session cookie without Secure (keep it on in production)\n"
        "export SESSION_COOKIE_SECURE=false\n"
    )


def emulator_running(name: str, host: str, group: int, log: str) -> str:
    return f"{name} running at {host} (process group {group}; log {log}); Ctrl-C or SIGTERM stops it"


def emulator_stopped(name: str, host: str) -> Outcome:
    return Outcome(f"stopped the {name} at {host}: its data is gone", None)
