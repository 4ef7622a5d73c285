"""The command line, ``session-core COMMAND`` (or ``python -m session_core COMMAND``).

Every command runs the library in this process, against the Datastore the
settings name, with the same code the Cloud Functions run. The commands are
one table, :data:`COMMANDS`, that :func:`command` fills: the function that
runs a command carries its help (its docstring, as in click), the environment
variables it reads, examples and its arguments, so ``--help`` and the docs'
generated command reference say the same, and a new command is one more decorated function. What a
command prints is built in :mod:`session_core._render`.

What a run prints: on stderr, progress (one rewritten line on a terminal, log
lines otherwise), then one summary line; on stdout, the result as one JSON
document. Exit status: 0 done, 1 failed or nothing done (the summary says
why), 2 a usage error, 130 interrupted. A failure is one ``error: ...`` line
on stderr, never a traceback. What the sessions, runs and events hold (a user
agent an app stored, say) is printed with its control characters escaped, so
stored data cannot drive the operator's terminal.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import signal
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import structlog
from google.cloud import datastore
from google.cloud.datastore.query import PropertyFilter

from session_core import _render as render
from session_core._datastore import translated
from session_core._observers import registered_delete_observer
from session_core._render import Console, Outcome, printable
from session_core.clients import datastore_client
from session_core.config import LOCAL_PROJECT, Settings
from session_core.errors import ConfigError, SessionCoreError
from session_core.logging import configure_logging
from session_core.maintenance.cleanup import ClearResult, start_clear_sessions
from session_core.maintenance.events import REASONS, pull_events, subscriber_for
from session_core.maintenance.kill import KillResult, end_user_session, kill_sessions, list_user_sessions
from session_core.maintenance.rehash import RehashResult, start_rehash
from session_core.maintenance.runs import list_runs
from session_core.rules import GUEST_USER, cutoff_for, iso_utc
from session_core.testing import EmulatorError, emulator_missing, firestore_datastore_mode

# The variables every command reads: where the sessions are.
WHERE = ("GOOGLE_CLOUD_PROJECT", "DATASTORE_EMULATOR_HOST", "SESSION_DATABASE", "SESSION_NAMESPACE", "SESSION_KIND")
ENVIRONMENT = {  # what each variable means to a command (docs/reference/settings.md says the rest)
    "GOOGLE_CLOUD_PROJECT": "the project (optional with an emulator)",
    "DATASTORE_EMULATOR_HOST": "host:port of a Datastore emulator instead of the project's database",
    "SESSION_DATABASE": "the Firestore database (default: (default))",
    "SESSION_NAMESPACE": "the Datastore namespace (default: the default namespace)",
    "SESSION_KIND": "the sessions' kind (default: viur-session)",
    "SESSION_LIFE_TIME": "the life time every stored lastseen is encoded against (default 3600 s)",
    "SESSION_CLEAR_GRACE": "seconds past a session's expiry before it is deleted (default 300)",
    "SESSION_BATCH_SIZE": "keys per delete commit (default 500)",
    "SESSION_PAGE_SIZE": "keys per query page (default 10000)",
    "SESSION_DELETES_IN_FLIGHT": "delete commits at once (default 4)",
    "SESSION_LEASE_TTL": "how long a crashed cleanup blocks the next one (default 60 s)",
    "SESSION_SHARDS": "key-range shards for --guest and --all (default 16)",
    "SESSION_KEY_STORAGE": "how sessions are named: rehash runs only with `hashed`",
    "SESSION_RAMPUP": "pace the deletes by Datastore's ramp-up rule (default on)",
    "SESSION_EVENTS_TOPIC": "publish lifecycle events of what a command deletes to this Pub/Sub topic (default: off)",
    "PUBSUB_EMULATOR_HOST": "host:port of a Pub/Sub emulator instead of Pub/Sub",
}


class UsageError(Exception):
    """The command line asks for something it cannot do as given (exit status 2)."""


def _ask(question: str) -> str:
    """Ask on stderr (stdout carries only the JSON); the answer is a line of stdin."""
    sys.stderr.write(question)
    sys.stderr.flush()
    return sys.stdin.readline()


@dataclass
class Context:
    """What a command runs with: settings, a client, stderr, and whether a person can be asked."""

    settings: Settings
    console: Console
    interactive: bool  # stdin is a terminal: a person can answer a question
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)  # the command's environment (PATH)
    ask: Callable[[str], str] = field(default=_ask, repr=False)
    _client: datastore.Client | None = field(default=None, repr=False)

    @property
    def client(self) -> datastore.Client:
        if self._client is None:
            self._client = datastore_client(self.settings)
        return self._client

    def where(self) -> str:
        """The sessions this command acts on, as a person reads it."""
        s = self.settings
        place = f"the emulator at {s.emulator_host}" if s.emulator_host else f"project {s.project!r}"
        return f"{place}, database {s.database or '(default)'}, namespace {s.namespace or '(default)'}, kind {s.kind!r}"


@dataclass(frozen=True)
class Command:
    """One entry of the command table."""

    name: str
    summary: str  # one line, in the list of commands
    description: str  # what ``COMMAND --help`` explains
    environment: tuple[str, ...]  # what it reads besides WHERE
    examples: tuple[str, ...]
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Context], Outcome]
    reads_settings: bool = True  # False: it runs with the default Settings, whatever the environment says


Run = Callable[[argparse.Namespace, Context], Outcome]

COMMANDS: list[Command] = []
"""The command table, in the order ``--help`` lists it: each :func:`command` below adds one entry."""


def command(
    name: str,
    *,
    environment: tuple[str, ...] = (),
    examples: tuple[str, ...],
    arguments: Callable[[argparse.ArgumentParser], None],
    reads_settings: bool = True,
) -> Callable[[Run], Run]:
    """Add the function below to :data:`COMMANDS` as ``name``.

    Its docstring is its help, as in click: the first line the summary, the
    rest (its lines joined) the description.
    """

    def register(run: Run) -> Run:
        summary, _, description = inspect.cleandoc(run.__doc__ or "").partition("\n\n")
        COMMANDS.append(
            Command(name, summary, " ".join(description.split()), environment, examples, arguments, run, reads_settings)
        )
        return run

    return register


# -- clear ------------------------------------------------------------------------------


def _clear_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="count what would be deleted; delete nothing")


# How many of the newest sessions a clear would delete it reads, to check that they have expired.
CLEAR_CHECK_SESSIONS = 10


def _check_clear(ctx: Context, now: float) -> None:
    """ConfigError unless the newest sessions the clear would delete have expired by their own stored ``expires``.

    The clear deletes by ``lastseen`` against this command's
    ``SESSION_LIFE_TIME``; an app that stores sessions with a longer one
    writes ``lastseen = expires - its life time``, so with this command's
    shorter one its live sessions look expired. Every entity an app writes
    has ``expires - lastseen`` = the app's life time, so the newest
    candidates by ``lastseen`` are the ones that expire last: if the
    :data:`CLEAR_CHECK_SESSIONS` newest have expired, so has every older one
    written with the same setting. One query, whatever the number of
    candidates. Entities without ``expires`` (ViUR's own) are judged by
    ``lastseen`` alone, as ViUR does.
    """
    settings = ctx.settings
    query = ctx.client.query(kind=settings.kind, namespace=settings.namespace)
    query.add_filter(filter=PropertyFilter("lastseen", "<", cutoff_for(now, settings)))
    query.order = ["-lastseen"]
    with translated("query"):
        newest = list(query.fetch(limit=CLEAR_CHECK_SESSIONS))
    alive = [
        (entity["expires"].timestamp(), float(entity["lastseen"]))
        for entity in newest
        if isinstance(entity.get("expires"), datetime) and entity["expires"].timestamp() > now
    ]
    if not alive:
        return
    expires, lastseen = max(alive)
    raise ConfigError(
        "SESSION_LIFE_TIME",
        f"the life time the app stores sessions with (about {expires - lastseen:,.0f} s): {len(alive)} of the "
        f"{len(newest)} newest sessions this clear would delete have not expired (one expires {iso_utc(expires)}), "
        "so nothing was deleted",
        f"{settings.life_time.total_seconds():,.0f} s",
    )


@command(
    "clear",
    environment=(
        "SESSION_LIFE_TIME",
        "SESSION_CLEAR_GRACE",
        "SESSION_PAGE_SIZE",
        "SESSION_BATCH_SIZE",
        "SESSION_DELETES_IN_FLIGHT",
        "SESSION_LEASE_TTL",
        "SESSION_EVENTS_TOPIC",
    ),
    examples=("session-core clear --dry-run", "session-core clear"),
    arguments=_clear_arguments,
)
def _clear(args: argparse.Namespace, ctx: Context) -> Outcome:
    """delete expired sessions now (what the scheduled clear_sessions does)

    Delete every session past its own expiry plus SESSION_CLEAR_GRACE, in this process, under the same lease as the
    scheduled function: if a cleanup is running, this one is skipped. With --dry-run it only counts: the JSON then
    has "dry_run": true, "counted": N (what it would delete) and "deleted": 0. The cutoff is printed as ISO 8601 UTC
    beside its epoch value. Running it again is always safe. It first reads the newest sessions it would delete and
    refuses, deleting nothing, if one of them has not expired by its own stored expiry: SESSION_LIFE_TIME here is
    shorter than the app's.
    """
    verb = "would delete" if args.dry_run else "deleted"
    _check_clear(ctx, time.time())
    result: ClearResult = start_clear_sessions(
        ctx.client,
        ctx.settings,
        dry_run=args.dry_run,
        progress=ctx.console.progress(verb),
        observer=registered_delete_observer(),
    )
    return render.cleared(result)


# -- kill-user --------------------------------------------------------------------------


def _kill_arguments(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("user", nargs="?", help="the user key whose sessions end")
    who.add_argument("--guest", action="store_true", help="every guest session")
    who.add_argument("--all", action="store_true", help="every session: every user's and every guest's")
    parser.add_argument(
        "--except",
        dest="except_session",
        metavar="SESSION_ID",
        help="a session id to keep (as `session-core sessions USER` lists them)",
    )
    parser.add_argument("--yes", action="store_true", help="kill --guest or --all without asking")


@command(
    "kill-user",
    environment=(
        "SESSION_SHARDS",
        "SESSION_PAGE_SIZE",
        "SESSION_BATCH_SIZE",
        "SESSION_DELETES_IN_FLIGHT",
        "SESSION_EVENTS_TOPIC",
    ),
    examples=(
        "session-core kill-user alice",
        "session-core kill-user alice --except SESSION_ID    # keep that one device",
        "session-core kill-user --guest --yes",
    ),
    arguments=_kill_arguments,
)
def _kill(args: argparse.Namespace, ctx: Context) -> Outcome:
    """end a user's sessions now, or every guest's, or everyone's

    End every session of USER at once (they are signed out on their next request), or with --guest every guest
    session, or with --all every session; --except keeps one session. --guest and --all ask for confirmation on a
    terminal and need --yes otherwise. A kill also records the user's kill time, so a Flask-Login remember-me cookie
    cannot sign them back in. Running it again is safe.
    """
    user = None if args.all else GUEST_USER if args.guest or args.user == GUEST_USER else args.user
    if user in (None, GUEST_USER) and not args.yes:
        whom = "every session (every user's and every guest's)" if user is None else "every guest session"
        if not _confirmed(ctx, f"kill-user {'--all' if user is None else '--guest'}", f"This ends {whom}"):
            return render.not_confirmed()
    before = _active(ctx, user)
    result: KillResult = kill_sessions(
        user,
        client=ctx.client,
        settings=ctx.settings,
        except_session=args.except_session,
        progress=ctx.console.progress("deleted"),
        observer=registered_delete_observer(),
    )
    summary = render.killed(result, user, args.except_session)
    return _with_counts(ctx, user, before, summary, result.to_json())


def _confirmed(ctx: Context, command: str, what: str) -> bool:
    """Whether a person typed yes to ``what`` (UsageError when no one can be asked: the command needs --yes)."""
    if not ctx.interactive:
        raise UsageError(f"{command} needs --yes when not run from a terminal")
    answer = ctx.ask(f"{what} in {ctx.where()}.\nType 'yes' to go on: ")
    return answer.strip().lower() in ("y", "yes")


def _active(ctx: Context, user: str | None) -> int | None:
    """How many active sessions a named user has (None for guests and everyone: not one user's devices)."""
    return None if user in (None, GUEST_USER) else len(list_user_sessions(ctx.client, ctx.settings, user))


def _with_counts(ctx: Context, user: str | None, before: int | None, summary: str, result: dict[str, Any]) -> Outcome:
    """The outcome, with one named user's active sessions before and after it (JSON: active_before, active_after)."""
    return render.with_counts(user, before, _active(ctx, user), summary, result)


# -- sessions, end ------------------------------------------------------------------------


def _user_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user", help="the user key (what the app passed to login)")


@command(
    "sessions", environment=("SESSION_LIFE_TIME",), examples=("session-core sessions alice",), arguments=_user_argument
)
def _sessions(args: argparse.Namespace, ctx: Context) -> Outcome:
    """list a user's active sessions: id, last seen, IP and user agent

    List USER's active sessions, most recent first: each session's opaque id (what `end` and `kill-user --except`
    take), when it was last seen, and the IP and user agent if the app stores them in the session as `ip` and
    `user_agent`. Reads the sessions' entities, 100 a query.
    """
    if args.user == GUEST_USER:
        raise UsageError("guests are not one user: there is no list of every guest session")
    return render.sessions(args.user, list_user_sessions(ctx.client, ctx.settings, args.user))


def _end_arguments(parser: argparse.ArgumentParser) -> None:
    _user_argument(parser)
    parser.add_argument("session_id", help="the session's id (as `session-core sessions USER` lists them)")


@command(
    "end",
    environment=("SESSION_PAGE_SIZE", "SESSION_EVENTS_TOPIC"),
    examples=("session-core end alice SESSION_ID",),
    arguments=_end_arguments,
)
def _end(args: argparse.Namespace, ctx: Context) -> Outcome:
    """end one session of a user (sign out one device)

    End USER's session SESSION_ID (as `session-core sessions USER` lists them): that device is signed out on its
    next request. Only that user's session can be ended; exit status 1 when there is none.
    """
    before = _active(ctx, args.user)
    ended = end_user_session(
        ctx.client, ctx.settings, args.user, args.session_id, observer=registered_delete_observer()
    )
    summary, result = render.ended(args.user, args.session_id, ended)
    if ended:
        return _with_counts(ctx, args.user, before, summary, result)
    return Outcome(summary, result, status=1)


# -- runs -----------------------------------------------------------------------------------


def _runs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=20, help="how many, newest first (default 20)")


@command("runs", examples=("session-core runs --limit 5",), arguments=_runs_arguments)
def _runs(args: argparse.Namespace, ctx: Context) -> Outcome:
    """the recent cleanup, kill, rehash and reshard runs: status and counts (the receipts)

    List the runs that cleanups, kills, rehashes and reshards recorded (the scheduled function, kill-user messages
    and this command), newest first, with their status and counts. A dry run's count is `counted`. Runs are kept
    seven days (with deploy.sh --ttl).
    """
    return render.runs([run.to_json() for run in list_runs(ctx.client, ctx.settings, args.limit)])


# -- events -------------------------------------------------------------------------------


def _events_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "subscription", help="a pull subscription of SESSION_EVENTS_TOPIC: its name, or projects/P/subscriptions/S"
    )
    parser.add_argument("--follow", action="store_true", help="keep waiting for more until Ctrl-C")
    parser.add_argument("--wait", type=float, default=5.0, help="without --follow, stop after S quiet seconds (5)")
    parser.add_argument("--limit", type=int, help="stop after N events")


@command(
    "events",
    environment=("PUBSUB_EMULATOR_HOST",),
    examples=("session-core events session-events-tail --follow", "session-core events session-events-demo"),
    arguments=_events_arguments,
)
def _events(args: argparse.Namespace, ctx: Context) -> Outcome:
    """tail the lifecycle events: which sessions ended, and why (expired, killed, ended)

    Pull the lifecycle events that cleanup, kills and `end` publish to SESSION_EVENTS_TOPIC from a pull subscription
    of that topic, print a line per event as it arrives, and acknowledge them. Stops after --wait quiet seconds,
    after --limit events, or with --follow at Ctrl-C; then prints how many sessions ended for each reason, and every
    event as JSON. Events are at-least-once: the same session can come twice.
    """
    from google.api_core import exceptions as gexc

    name = args.subscription
    subscription = name if name.startswith("projects/") else f"projects/{ctx.settings.project}/subscriptions/{name}"
    subscriber = subscriber_for(ctx.settings)
    received: list[Any] = []
    quiet_since = time.monotonic()
    try:
        while args.limit is None or len(received) < args.limit:
            room = 100 if args.limit is None else min(100, args.limit - len(received))
            batch = pull_events(subscriber, subscription, max_messages=room, timeout=1.0)
            if not batch:
                if not args.follow and time.monotonic() - quiet_since >= args.wait:
                    break
                continue
            quiet_since = time.monotonic()
            for event in batch:
                ctx.console.row(render.event_row(event))
            received += batch
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a --follow ends: what was received is acknowledged, and is summed up below
    except gexc.NotFound:
        raise UsageError(f"there is no subscription {subscription}") from None
    return render.events(subscription, received, REASONS)


# -- rehash ---------------------------------------------------------------------------------


def _rehash_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--delete", action="store_true", help="delete plain-key sessions instead of moving them")
    parser.add_argument("--dry-run", action="store_true", help="count the plain-key sessions; change nothing")
    parser.add_argument("--yes", action="store_true", help="rehash --delete without asking")


@command(
    "rehash",
    environment=("SESSION_KEY_STORAGE", "SESSION_BATCH_SIZE", "SESSION_PAGE_SIZE", "SESSION_RAMPUP"),
    examples=("session-core rehash --dry-run", "SESSION_KEY_STORAGE=hashed session-core rehash"),
    arguments=_rehash_arguments,
)
def _rehash(args: argparse.Namespace, ctx: Context) -> Outcome:
    """move every session still under ViUR's plain cookie name to its hashed name

    A session stored under ViUR's plain cookie name is a live credential in any export or backup until its next save
    moves it. This moves every one of them now, each batch the way a saving request does (no user is logged out, no
    deleted session comes back); --delete deletes them instead (their users sign in again) and asks for confirmation
    on a terminal, --yes otherwise; --dry-run only counts them. Runs only with SESSION_KEY_STORAGE=hashed, once
    every app instance reads hashed names. Paced like cleanup; running it again is safe.
    """
    verb = "found" if args.dry_run else "deleted" if args.delete else "moved"
    question = "This deletes every plain-key session (their users sign in again)"
    if args.delete and not args.dry_run and not args.yes and not _confirmed(ctx, "rehash --delete", question):
        return render.not_confirmed()
    result: RehashResult = start_rehash(
        ctx.client, ctx.settings, delete=args.delete, dry_run=args.dry_run, progress=ctx.console.progress(verb)
    )
    return render.rehashed(result, verb, args.dry_run)


# -- emulator -------------------------------------------------------------------------------


def _emulator_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, help="the port to listen on, on 127.0.0.1 (default: a free one)")


@command(
    "emulator",
    examples=("session-core emulator", "session-core emulator --port 8081"),
    arguments=_emulator_arguments,
    reads_settings=False,
)
def _emulator(args: argparse.Namespace, ctx: Context) -> Outcome:
    """run a local Datastore (the Firestore emulator in Datastore mode) for an app in development

    Start Google's Firestore emulator in Datastore mode on a free port of 127.0.0.1 (or --port), print on stdout the
    environment an app needs to use it (DATASTORE_EMULATOR_HOST, GOOGLE_CLOUD_PROJECT, and
    SESSION_COOKIE_SECURE=false for plain http://), and keep it running until Ctrl-C or SIGTERM, which stop the
    emulator and its Java process; what it stored is gone. It needs gcloud with the Firestore emulator component,
    and Java 17+: without one, it says which is missing and how to install it. It reads no settings.
    """
    missing = emulator_missing(ctx.environ.get("PATH"))
    if missing is not None:
        raise EmulatorError(missing)
    emulator = firestore_datastore_mode(Path(tempfile.mkdtemp(prefix="session-core-emulator-")), args.port)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    try:
        emulator.start()
        assert emulator.process is not None
        sys.stdout.write(render.emulator_environment(emulator.host, LOCAL_PROJECT))
        sys.stdout.flush()
        ctx.console.row(
            render.emulator_running(emulator.name, emulator.host, emulator.process.pid, str(emulator.log_path))
        )
        while not stop.wait(0.5):
            if emulator.process.poll() is not None:
                raise EmulatorError(
                    f"the {emulator.name} exited with {emulator.process.returncode}; see {emulator.log_path}"
                )
    except KeyboardInterrupt:
        pass  # Ctrl-C is how it ends
    finally:
        signal.signal(signal.SIGTERM, previous)
        emulator.stop()
    return render.emulator_stopped(emulator.name, emulator.host)


def _environment_help(names: Sequence[str]) -> str:
    width = max(map(len, names))
    return "\n".join(f"  {name:<{width}}  {ENVIRONMENT[name]}" for name in names)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (exit status 2) that says where the usage is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, printable(f"{self.prog}: error: {message} (see {self.prog} --help)") + "\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser: a sub-command per entry of :data:`COMMANDS`, each with its own help."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="session-core",
        formatter_class=formatter,
        description=(
            "Operate session_core's sessions from a shell: the cleanup and kills the Cloud Functions run,\n"
            "a user's sessions, and the receipts of recent runs. Each command runs here, inline."
        ),
        epilog=(
            "settings: every command reads the variables of the settings reference (docs/reference/settings.md)\n"
            "(or --settings FILE, the file deploy.sh hands the functions). Where the sessions are:\n"
            f"{_environment_help(WHERE)}\n\n"
            "output: progress and one summary line on stderr; the result as JSON on stdout.\n"
            "exit status: 0 done, 1 failed or nothing done, 2 usage error, 130 interrupted.\n"
            "`session-core COMMAND --help` tells each command's variables and examples."
        ),
    )
    parser.add_argument("--settings", metavar="FILE", help="read settings from this JSON file, then the environment")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = commands.add_parser(
            command.name,
            help=command.summary,
            formatter_class=formatter,
            description=textwrap.fill(command.description, 88),
            epilog=(
                f"environment (and the where-variables of `session-core --help`):\n"
                f"{_environment_help(command.environment) if command.environment else '  nothing more'}\n\n"
                "examples:\n" + "\n".join(f"  {example}" for example in command.examples)
            ),
        )
        command.arguments(sub)
        sub.set_defaults(run=command.run, reads_settings=command.reads_settings)
    return parser


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command; returns the exit status (see the module docstring). An error is one line, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(sys.stderr, tty=sys.stderr.isatty())
    configure_logging()
    structlog.configure(processors=[console.log_processor, *structlog.get_config()["processors"]])
    env = dict(os.environ if environ is None else environ)
    try:
        if not args.reads_settings:
            settings = Settings()
        elif args.settings:
            settings = Settings.from_file(args.settings, env)
        else:
            settings = Settings.from_env(env)
        ctx = Context(settings, console, interactive=sys.stdin.isatty(), environ=env)
        outcome: Outcome = args.run(args, ctx)
    except UsageError as exc:
        console.end_line()
        parser.exit(2, printable(f"session-core {args.command}: error: {exc}") + "\n")
    except (SessionCoreError, ValueError) as exc:
        console.end_line()
        print(printable(f"error: {exc}"), file=sys.stderr)
        return 1
    except Exception as exc:  # what no command expects (a library's own error) still ends as one line
        console.end_line()
        print(printable(f"error: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        console.end_line()
        print(
            "interrupted: what was deleted stays deleted, nothing more is; running the command again is safe",
            file=sys.stderr,
        )
        return 130
    console.summary(outcome)
    if outcome.result is not None:
        print(json.dumps(outcome.result))
    return outcome.status
