"""``make run`` (``python -m devstack``): the whole system on this machine, and a demo of it.

Starts, each on a free loopback port and in a process group of its own: the
Firestore emulator (Datastore mode), the Pub/Sub emulator with the kill-user
topic and a push subscription and the lifecycle events' topic and a pull
subscription, gcloud-tasks-emulator with the project's
queue, and functions-framework serving ``clear_sessions``,
``kill_user_sessions`` and ``session_task``. Then it runs a demo (a before and
after table), and, unless ``once``, seeds a user for each step of a
walkthrough, prints one ``export`` block and the steps' commands, and keeps
the stack up until Ctrl-C. Each command shows its effect when run in the
printed order: the command line prints its own summary, and the function
calls pipe their answer into :mod:`devstack.follow`, which shows the
function's summary line from its log and the before/after count. Whatever
happens, every process it started is stopped.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import shutil
import signal
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from google.cloud import datastore

from devstack.emulators import (
    ROOT,
    TASKS_PYTHON,
    cloud_tasks,
    functions_framework,
    pubsub,
    pubsub_publish,
    pubsub_pull_subscription,
    pubsub_push_subscription,
)
from session_core.clients import datastore_client
from session_core.config import Settings
from session_core.maintenance.events import REASONS, pull_events, subscriber_for
from session_core.maintenance.runs import list_runs
from session_core.maintenance.sweep import session_names
from session_core.rules import GUEST_USER, hash_key, iso_utc, new_key
from session_core.store import SessionRecord, SessionStore
from session_core.testing import Emulator, EmulatorError, firestore_datastore_mode, free_port, port_open

PROJECT = "session-core-local"
LOCATION = "local"
QUEUE = f"projects/{PROJECT}/locations/{LOCATION}/queues/session-tasks"
TOPIC = f"projects/{PROJECT}/topics/kill-user"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/kill-user-push"
EVENTS = "session-events"  # the lifecycle events' topic, and the pull subscription the demo and `events` read
EVENTS_TOPIC = f"projects/{PROJECT}/topics/{EVENTS}"
EVENTS_SUBSCRIPTION = f"{EVENTS}-demo"
MANY = "alice"


@dataclass(frozen=True)
class Stack:
    """Where everything listens."""

    datastore: str
    pubsub: str
    tasks: str
    clear_url: str
    kill_url: str
    task_url: str
    demo_url: str
    env: dict[str, str]


def publish(pubsub_host: str, message: dict[str, object]) -> None:
    """Publish a kill-user message exactly as an app does (JSON data)."""
    pubsub_publish(pubsub_host, TOPIC, json.dumps(message).encode())


def _check_tools() -> None:
    if shutil.which("java") is None:
        raise EmulatorError("java is not installed: the Google emulators need a Java 17+ runtime")
    if shutil.which("gcloud") is None:
        raise EmulatorError("gcloud is not installed: install google-cloud-cli and its emulator packages")


@contextmanager
def running_stack(log_dir: Path) -> Iterator[Stack]:
    """Start everything; stop everything on the way out, whatever happened."""
    _check_tools()
    if not TASKS_PYTHON.exists():
        raise EmulatorError(f"{TASKS_PYTHON} is missing: run `make run` (it creates .venv-tasks)")
    with ExitStack() as stack:
        ds = stack.enter_context(firestore_datastore_mode(log_dir))
        ps = stack.enter_context(pubsub(log_dir, PROJECT))
        pubsub_pull_subscription(ps.host, EVENTS_TOPIC, f"projects/{PROJECT}/subscriptions/{EVENTS_SUBSCRIPTION}")
        tq = stack.enter_context(cloud_tasks(log_dir, TASKS_PYTHON, [QUEUE]))
        ports = {name: free_port() for name in ("clear_sessions", "kill_user_sessions", "session_task")}
        task_url = f"http://127.0.0.1:{ports['session_task']}/"
        env = {
            "DATASTORE_EMULATOR_HOST": ds.host,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "SESSION_TASKS_QUEUE": QUEUE,
            "SESSION_TASK_URL": task_url,
            "CLOUD_TASKS_EMULATOR_HOST": tq.host,
            "SESSION_COOKIE_SECURE": "false",
            "SESSION_TASK_AUTH": "none",  # the explicit, emulator-only opt-out: the tasks emulator sends no token
            "SESSION_RAMPUP": "off",  # a demo, not a new load on a production database
            "SESSION_EVENTS_TOPIC": EVENTS,
            "PUBSUB_EMULATOR_HOST": ps.host,
        }
        for target, port in ports.items():
            stack.enter_context(
                functions_framework(
                    target, ROOT / "main.py", log_dir, env, port=port, cloudevent=target == "kill_user_sessions"
                )
            )
        demo_port = free_port()
        stack.enter_context(
            Emulator(
                "flask demo app",
                [sys.executable, "-m", "devstack.demo_app", "--port", str(demo_port)],
                demo_port,
                port_open(demo_port),
                log_dir / f"demo-app-{demo_port}.log",
                env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            )
        )
        pubsub_push_subscription(ps.host, TOPIC, SUBSCRIPTION, f"http://127.0.0.1:{ports['kill_user_sessions']}/")
        yield Stack(
            datastore=ds.host,
            pubsub=ps.host,
            tasks=tq.host,
            clear_url=f"http://127.0.0.1:{ports['clear_sessions']}/",
            kill_url=f"http://127.0.0.1:{ports['kill_user_sessions']}/",
            task_url=task_url,
            demo_url=f"http://127.0.0.1:{demo_port}/",
            env=env,
        )


# -- the demo -------------------------------------------------------------------------


@dataclass
class Population:
    names: dict[str, set[str]]


def seed_demo(client: datastore.Client, settings: Settings, now: float) -> Population:
    """A realistic mix, in ViUR's key layout and ours."""
    store = SessionStore(client, settings)
    expired_at = now - settings.life_time.total_seconds() - settings.clear_grace.total_seconds() - 3600
    plan = {  # category: (count, user, lastseen, plain ViUR layout?)
        "live guests (ours)": (400, GUEST_USER, now - 60, False),
        "live users (ViUR layout)": (100, "bob", now - 120, True),
        f"live sessions of {MANY}": (1200, MANY, now - 30, False),
        "expired (ours)": (4000, GUEST_USER, expired_at, False),
        "expired (ViUR layout)": (1000, GUEST_USER, expired_at - 86400, True),
    }
    names: dict[str, set[str]] = {}
    entities = []
    for category, (count, user, lastseen, plain) in plan.items():
        names[category] = set()
        for _ in range(count):
            cookie = new_key()
            name = cookie if plain else hash_key(cookie)
            names[category].add(name)
            if plain:
                entity = datastore.Entity(store.key(name), exclude_from_indexes=["data"])
                entity.update(data={"language": "de"}, static_security_key="k" * 13, lastseen=lastseen, user=user)
                entities.append(entity)
            else:
                entities.append(store.to_entity(SessionRecord(name, {"language": "en"}, user, "k" * 13, lastseen)))
    for start in range(0, len(entities), 500):
        client.put_multi(entities[start : start + 500])
    return Population(names)


def stored_names(client: datastore.Client, settings: Settings) -> set[str]:
    return set(session_names(client, settings))


def _counts(population: Population, present: set[str]) -> dict[str, int]:
    return {category: len(names & present) for category, names in population.names.items()}


def run_demo(stack: Stack) -> dict[str, object]:
    """Seed, clear as Cloud Scheduler would, kill as an app would; print and return the figures."""
    settings = Settings.from_env(stack.env)
    client = datastore_client(settings)
    population = seed_demo(client, settings, time.time())
    before = _counts(population, stored_names(client, settings))

    started = time.monotonic()
    request = urllib.request.Request(  # noqa: S310 - the loopback function
        stack.clear_url, method="POST", data=b"{}", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as response:  # noqa: S310 - loopback
        cleared = json.loads(response.read())
    clear_s = time.monotonic() - started

    targets = population.names[f"live sessions of {MANY}"]
    started = time.monotonic()
    publish(stack.pubsub, {"user": MANY})
    while targets & stored_names(client, settings):
        if time.monotonic() - started > 120:
            raise EmulatorError(f"the kill of {MANY} did not finish in 120 s")
        time.sleep(0.1)
    kill_s = time.monotonic() - started
    after = _counts(population, stored_names(client, settings))

    width = max(map(len, before))
    print(f"\n  {'sessions':<{width}}  {'before':>7}  {'after':>7}")
    for category in before:
        print(f"  {category:<{width}}  {before[category]:>7,}  {after[category]:>7,}")
    print(
        f"\n  clear_sessions (HTTP POST, as Cloud Scheduler): deleted {cleared['deleted']:,} in {clear_s:.2f} s "
        f"({cleared['deleted'] / clear_s:,.0f}/s), {cleared['batches']} batches"
    )
    print(
        f"  kill-user {MANY!r} (Pub/Sub push -> function -> Cloud Tasks): {len(targets):,} sessions gone in "
        f"{kill_s:.2f} s ({len(targets) / kill_s:,.0f}/s)\n"
    )
    print(f"  Flask demo page {stack.demo_url}: {visit_demo_page(stack.demo_url)}")
    events = received_events(settings, {"expired": cleared["deleted"], "killed": len(targets)})
    shown = ", ".join(
        f"{reason} {sessions:,} sessions in {messages} messages" for reason, (sessions, messages) in events.items()
    )
    print(f"  lifecycle events (topic {EVENTS}, pull subscription {EVENTS_SUBSCRIPTION}): {shown}")
    print("  (the sign-in rotated the session's key: a key rotation is no event)")
    print("\n  runs (session-core runs: the receipts every run leaves):")
    for run in list_runs(client, settings, limit=5):
        subject = run.params.get("user", "") if run.kind == "kill" else f"cutoff {iso_utc(run.params['cutoff'])}"
        print(f"    {run.kind:<5} {run.run_id}  {run.status:<7} deleted {run.deleted:>6,}  {subject}")
    print()
    return {
        "before": before,
        "after": after,
        "cleared": cleared,
        "clear_s": clear_s,
        "kill_s": kill_s,
        "events": {reason: sessions for reason, (sessions, _) in events.items()},
    }


def received_events(settings: Settings, expected: dict[str, int], timeout: float = 30) -> dict[str, tuple[int, int]]:
    """Pull the demo's lifecycle events until ``expected`` sessions per reason came (or ``timeout``).

    Returns (sessions, messages) per reason. They are published after each
    commit, so the last may arrive just after the sessions are gone.
    """
    subscriber = subscriber_for(settings)
    subscription = f"projects/{PROJECT}/subscriptions/{EVENTS_SUBSCRIPTION}"
    counts: dict[str, tuple[int, int]] = {reason: (0, 0) for reason in REASONS}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(counts[r][0] < n for r, n in expected.items()):
        for event in pull_events(subscriber, subscription, timeout=1.0):
            sessions, messages = counts[event["reason"]]
            counts[event["reason"]] = (sessions + len(event["sessions"]), messages + 1)
    return counts


def visit_demo_page(url: str) -> str:
    """Sign in on the demo page as a browser would (cookies kept); say what the page then showed."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    form = urllib.parse.urlencode({"user": "carol", "remember": "on"}).encode()
    request = urllib.request.Request(f"{url}login", data=form, method="POST")  # noqa: S310 - the loopback demo
    with opener.open(request, timeout=30) as response:
        page = response.read().decode()  # the redirect back to / was followed with the new session cookie
    signed_in = "signed in as carol" in page
    flashed = "Welcome, carol" in page
    if not (signed_in and flashed):
        raise EmulatorError(f"the Flask demo page did not sign carol in: {page[:300]!r}")
    return "signed in as 'carol' (Flask-Login, session key rotated), the flash message shown after the redirect"


# -- the walkthrough: commands to paste, each with an effect to see -------------------------

CLEARED, KILLED, DEVICES = "dave", "erin", "frank"  # one user per command that targets one
AGENTS = ("Firefox on Linux", "Safari on iPhone", "Chrome on Android", "Edge on Windows")


@dataclass(frozen=True)
class Walkthrough:
    """What the walkthrough seeded, for its commands to act on."""

    expired: int  # CLEARED's sessions, past their expiry: the cleanup's
    killed: int  # KILLED's live sessions: the published kill's
    devices: list[str]  # DEVICES' session ids, most recent first: sessions, end, kill-user --except


def seed_walkthrough(client: datastore.Client, settings: Settings, now: float) -> Walkthrough:
    """A user for each command: expired sessions to clear, a user to kill, a user with devices to list."""
    store = SessionStore(client, settings)
    expired_at = now - settings.life_time.total_seconds() - settings.clear_grace.total_seconds() - 3600
    records = [SessionRecord(hash_key(new_key()), {}, CLEARED, "k" * 13, expired_at) for _ in range(300)]
    records += [SessionRecord(hash_key(new_key()), {}, KILLED, "k" * 13, now - 60) for _ in range(40)]
    devices = [
        SessionRecord(
            hash_key(new_key()),
            {"ip": f"203.0.113.{10 + n}", "user_agent": AGENTS[n % len(AGENTS)]},
            DEVICES,
            "k" * 13,
            now - 60 * (n + 1),
        )
        for n in range(12)
    ]
    entities = [store.to_entity(record) for record in [*records, *devices]]
    for start in range(0, len(entities), 500):
        client.put_multi(entities[start : start + 500])
    return Walkthrough(expired=300, killed=40, devices=[record.session_id for record in devices])


def walkthrough_commands(stack: Stack, seeded: Walkthrough) -> tuple[str, list[tuple[str, str]]]:
    """The ``export`` block, and (what it shows, the command) for each step, in the order they work in."""
    exported = {
        **stack.env,
        "CLEAR_URL": stack.clear_url,
        "PUBSUB_HOST": stack.pubsub,
        "PYTHONPATH": str(ROOT),
    }
    lines = [f"{name}={value}" for name, value in exported.items()] + [f'PATH="{ROOT}/.venv/bin:$PATH"']
    export = "export " + " \\\n    ".join(lines)
    message = json.dumps({"user": KILLED})
    first, kept = seeded.devices[-1], seeded.devices[0]
    steps = [
        (
            f"{CLEARED} has {seeded.expired} expired sessions: count what the cleanup would delete (nothing is)",
            "python -m session_core clear --dry-run",
        ),
        (
            "the cleanup exactly as Cloud Scheduler calls it; devstack.follow shows the function's summary line",
            "curl -s -X POST -H 'Content-Type: application/json' -d '{}' \"$CLEAR_URL\" | python -m devstack.follow",
        ),
        (
            f"{KILLED} has {seeded.killed} live sessions: kill them as an app does, publishing {message}",
            "curl -s -X POST -H 'Content-Type: application/json' \\\n"
            f'    -d "{{\\"messages\\": [{{\\"data\\": \\"$(printf \'%s\' \'{message}\' | base64)\\"}}]}}" \\\n'
            f'    "http://$PUBSUB_HOST/v1/{TOPIC}:publish" | python -m devstack.follow',
        ),
        (
            f"{DEVICES} has {len(seeded.devices)} live sessions, one per device: list them",
            f"python -m session_core sessions {DEVICES}",
        ),
        (
            f"{DEVICES} has {len(seeded.devices)} sessions: sign out the oldest device (its id is in the list)",
            f"python -m session_core end {DEVICES} {first}",
        ),
        (
            f"{DEVICES} has {len(seeded.devices) - 1} sessions left: sign out everywhere but the newest device",
            f"python -m session_core kill-user {DEVICES} --except {kept}",
        ),
        (
            f"what is left of {DEVICES}, and the receipts of the runs above",
            f"python -m session_core sessions {DEVICES} && python -m session_core runs --limit 4",
        ),
        (
            f"the lifecycle events the steps above published to {EVENTS} (an app anywhere can subscribe)",
            f"python -m session_core events {EVENTS_SUBSCRIPTION}",
        ),
    ]
    return export, steps


def print_commands(stack: Stack, seeded: Walkthrough) -> None:
    export, steps = walkthrough_commands(stack, seeded)
    print("Try it in another terminal (the stack stays up until Ctrl-C). First, once:\n")
    print(textwrap.indent(export, "  "))
    print("\nThen each of these, in this order; each shows what it did:\n")
    for number, (what, command) in enumerate(steps, 1):
        print(f"  # {number}. {what}")
        print(textwrap.indent(command, "  "), end="\n\n")
    print(
        f"  The Flask demo page: open {stack.demo_url}, sign in as anyone; "
        "`python -m session_core sessions NAME` lists that session.\n",
        flush=True,
    )


def run_stack(*, once: bool) -> int:
    """The ``make run`` main job. Returns an exit code; never leaves a process behind."""
    log_dir = ROOT / ".local" / "stack-logs"
    shutil.rmtree(log_dir, ignore_errors=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # Ctrl-C, even when started from a shell that ignores it for background jobs
    try:
        print(f"starting the local stack (logs in {log_dir}) ...", flush=True)
        with running_stack(log_dir) as stack:
            print(
                f"  Datastore emulator {stack.datastore}, Pub/Sub emulator {stack.pubsub}, "
                f"Cloud Tasks emulator {stack.tasks}"
            )
            print(
                f"  clear_sessions {stack.clear_url}  kill_user_sessions {stack.kill_url}  "
                f"session_task {stack.task_url}"
            )
            print(
                "  note: session_task runs steps without a token here (SESSION_TASK_AUTH=none, the explicit"
                " opt-out that only an emulator allows; a deployment always checks Cloud Tasks' OIDC token)",
                flush=True,
            )
            run_demo(stack)
            if once:
                return 0
            settings = Settings.from_env(stack.env)
            seeded = seed_walkthrough(datastore_client(settings), settings, time.time())
            print_commands(stack, seeded)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopped; every process of the stack has been ended")
        return 0
    except EmulatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
