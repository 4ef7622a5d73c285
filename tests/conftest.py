"""Shared fixtures: one real Firestore emulator (Datastore mode) per run, a namespace per test."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from flask.testing import FlaskClient
from functions_framework import create_app
from google.auth import crypt, jwt
from google.cloud import datastore

from devstack.emulators import cloud_tasks, functions_framework, pubsub, pubsub_pull_subscription
from session_core import Settings, rules
from session_core import logging as logging_module
from session_core._wire import wire_of
from session_core.clients import datastore_client
from session_core.rules import hash_key
from session_core.testing import Emulator, firestore_datastore_mode
from tests.lanes import examples, mark_lanes, pytest_runtest_call

__all__ = ["examples", "pytest_runtest_call"]  # a property's example count for the lane; the check lane's guard

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = ROOT / ".local" / "test-logs"
WHOLE_RUN_CHECK = "SESSION_CORE_TEST_WHOLE_RUN"  # set: this run checks the logs a parallel run left in LOG_DIR
QUEUE = "projects/session-core-test/locations/europe-west3/queues/session-tasks"


# Every credential this run issues (cookie values, their hashed names, security keys): every log line
# is checked against them as it is written (LogWatch), and the functions' own log files at the end.
SECRETS: set[str] = set()
CANARY = "canary-session-data-7f3a91"  # session data that tests/test_zz_log_hygiene.py stores
TOKENS = re.compile(r"[A-Za-z0-9]+")


def leaks(line: str) -> bool:
    """True if a log line carries the canary or a credential this run issued."""
    return CANARY in line or not SECRETS.isdisjoint(TOKENS.findall(line))


class LogWatch:
    """Every structured line this process logs, checked for secrets as it is written; nothing is copied.

    A line that leaks is kept with the test that wrote it, and that test fails (``_no_log_line_leaks``):
    this holds in every lane and in parallel runs. The rest is only counted, by event, so that the
    whole-run check in tests/test_zz_log_hygiene.py can show it watched a real sample.
    """

    def __init__(self) -> None:
        self.lines = 0
        self.events: Counter[str] = Counter()
        self.leaks: list[tuple[str, str]] = []  # (test node id, line)
        self.test = ""

    def see(self, text: str) -> None:
        for line in text.splitlines():
            if '"event"' not in line:
                continue
            self.lines += 1
            if line.startswith("{"):
                self.events[str(json.loads(line).get("event"))] += 1
            if leaks(line):
                self.leaks.append((self.test, line))


WATCH = LogWatch()


def pytest_configure(config: pytest.Config) -> None:
    """Record secrets and watch log lines for the whole run; a SIGTERM unwinds like Ctrl-C."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    # A parallel run's workers share the controller's directory; the whole-run check after a parallel run
    # (make test: tests/test_zz_log_hygiene.py in a run of its own) reads what that run left there.
    if not hasattr(config, "workerinput") and not os.environ.get(WHOLE_RUN_CHECK):
        shutil.rmtree(LOG_DIR, ignore_errors=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    issue_key, issue_security_key = rules.new_key, rules.new_security_key

    def recorded_key() -> str:
        key = issue_key()
        SECRETS.update((key, hash_key(key)))
        return key

    def recorded_security_key() -> str:
        key = issue_security_key()
        SECRETS.add(key)
        return key

    rules.new_key = recorded_key  # type: ignore[assignment]
    rules.new_security_key = recorded_security_key  # type: ignore[assignment]
    write = logging_module._CurrentStderr.write

    def watched(self: Any, text: str) -> int:
        WATCH.see(text)
        return write(self, text)

    logging_module._CurrentStderr.write = watched  # type: ignore[method-assign]
    logging_module.configure_logging(json=True)


@pytest.fixture(autouse=True)
def _no_log_line_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Whatever a test logs in this process carries no credential it or another test was issued."""
    WATCH.test = request.node.nodeid
    before = len(WATCH.leaks)
    yield
    leaked = [line for _, line in WATCH.leaks[before:]]
    assert leaked == [], "log lines carry a credential or session data"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A parallel run's worker leaves what it watched for the whole-run check (tests/test_zz_log_hygiene.py)."""
    if worker := getattr(session.config, "workerinput", {}).get("workerid"):
        watched = {"secrets": sorted(SECRETS), "lines": WATCH.lines, "events": dict(WATCH.events)}
        (LOG_DIR / f"watch-{worker}.json").write_text(json.dumps(watched))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark what each test needs (tests/lanes.py). The log-hygiene check reads what the others logged: it runs last."""
    mark_lanes(items)
    items.sort(key=lambda item: "test_zz_log_hygiene" in item.nodeid)


# The run's Datastore emulator, once a test has started it.
STARTED: list[Emulator] = []


@pytest.fixture(scope="session")
def datastore_emulator() -> Iterator[Emulator]:
    """The Firestore emulator in Datastore mode, on a free port, for the whole run."""
    emulator = firestore_datastore_mode(LOG_DIR).start()
    STARTED.append(emulator)
    previous = os.environ.get("DATASTORE_EMULATOR_HOST")
    os.environ["DATASTORE_EMULATOR_HOST"] = emulator.host
    try:
        yield emulator
    finally:
        STARTED.remove(emulator)
        emulator.stop()
        if previous is None:
            os.environ.pop("DATASTORE_EMULATOR_HOST", None)
        else:
            os.environ["DATASTORE_EMULATOR_HOST"] = previous


def wipe(emulator: Emulator) -> None:
    """Delete every entity in every namespace of ``emulator``: its own ``POST /reset``."""
    request = urllib.request.Request(f"http://{emulator.host}/reset", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        answer.read()


@pytest.fixture(scope="module", autouse=True)
def empty_datastore_for_each_file() -> Iterator[None]:
    """Each test file starts on an empty emulator: what one file left behind never slows the next.

    The emulator's queries slow down with every entity it holds, in any
    namespace: listing 50 sessions took 37 ms, and 181 ms once another
    namespace held 100,000. Tests keep to namespaces of their own, so a
    file never reads what another left.
    """
    yield
    if STARTED:
        wipe(STARTED[0])


# Where an offline client sends an RPC it should not make: nothing listens on port 1, so it fails at once.
NO_EMULATOR = "127.0.0.1:1"


@pytest.fixture
def offline_settings() -> Settings:
    """Default settings in a namespace of this test's own, with no emulator behind them (tests that make no RPC)."""
    return Settings(
        project="session-core-test",
        emulator_host=NO_EMULATOR,
        namespace=f"t-{uuid.uuid4().hex[:12]}",
        cookie_name="viur_cookie_session-core-test",
        rampup=False,  # the tests that pace say so
    )


@pytest.fixture
def offline_client(offline_settings: Settings) -> datastore.Client:
    """A Datastore client with nothing behind it: for tests that prove an operation makes no RPC."""
    return datastore_client(offline_settings)


@pytest.fixture
def settings(offline_settings: Settings, datastore_emulator: Emulator) -> Settings:
    """Default settings in a namespace of this test's own, on the session's emulator."""
    return replace(offline_settings, emulator_host=datastore_emulator.host)


@pytest.fixture
def plain_settings(settings: Settings) -> Settings:
    return replace(settings, key_storage="plain")


@pytest.fixture
def client(settings: Settings) -> datastore.Client:
    return datastore_client(settings)


class Clock:
    """A clock that stands still until a test moves it (it starts at the real time): pass it in, never sleep."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Ctx:
    """A request context: cookies in, headers out (what a web framework gives)."""

    def __init__(self, cookies: dict[str, str] | None = None) -> None:
        self.cookies = dict(cookies or {})
        self.headers: list[tuple[str, str]] = []

    def get_cookie(self, name: str) -> str | None:
        return self.cookies.get(name)

    def add_header(self, name: str, value: str) -> None:
        self.headers.append((name, value))

    @property
    def set_cookies(self) -> list[str]:
        return [value for name, value in self.headers if name == "Set-Cookie"]


class RpcCounter:
    """Counts the Datastore RPCs a client makes, by method name."""

    METHODS = (
        "lookup",
        "commit",
        "run_query",
        "run_aggregation_query",
        "begin_transaction",
        "rollback",
        "allocate_ids",
        "reserve_ids",
    )

    def __init__(self, client: datastore.Client) -> None:
        self.calls: Counter[str] = Counter()
        for api in (client._datastore_api, wire_of(client)):  # the client library's RPCs, and the request path's
            for name in self.METHODS:
                original = getattr(api, name, None)
                if original is None:
                    continue

                def counted(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
                    self.calls[_name] += 1
                    return _original(*args, **kwargs)

                setattr(api, name, counted)

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def reset(self) -> None:
        self.calls.clear()


@pytest.fixture
def rpcs(client: datastore.Client) -> RpcCounter:
    return RpcCounter(client)


@pytest.fixture
def offline_rpcs(offline_client: datastore.Client) -> RpcCounter:
    return RpcCounter(offline_client)


@pytest.fixture(scope="session")
def tasks_emulator() -> Iterator[Emulator]:
    """gcloud-tasks-emulator from its own venv, with the project's queue."""
    with cloud_tasks(LOG_DIR, ROOT / ".venv-tasks" / "bin" / "python", queues=[QUEUE]) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[Emulator]:
    """The Pub/Sub emulator, for the whole run; each test makes topics of its own."""
    with pubsub(LOG_DIR, "session-core-test") as emulator:
        yield emulator


class EventsTopic(NamedTuple):
    """A topic of this test's own with a pull subscription, and settings that publish lifecycle events to it."""

    settings: Settings
    topic: str
    subscription: str

    def received(self, *, settle: float = 1.0) -> list[Any]:
        """Every event published so far (pulled and acknowledged), once none came for ``settle`` seconds."""
        from session_core.maintenance.events import pull_events, subscriber_for

        subscriber = subscriber_for(self.settings)
        events: list[Any] = []
        while batch := pull_events(subscriber, self.subscription, timeout=settle):
            events += batch
        return events


@pytest.fixture
def events_topic(settings: Settings, pubsub_emulator: Emulator) -> EventsTopic:
    name = f"events-{uuid.uuid4().hex[:10]}"
    topic = f"projects/{settings.project}/topics/{name}"
    subscription = f"projects/{settings.project}/subscriptions/{name}"
    pubsub_pull_subscription(pubsub_emulator.host, topic, subscription)
    with_events = replace(settings, events_topic=name, pubsub_emulator_host=pubsub_emulator.host)
    return EventsTopic(with_events, topic, subscription)


def serve_function(target: str, port: int, env: dict[str, str], *, cloudevent: bool = False) -> Emulator:
    """functions-framework serving a target of main.py as its own process (start it with ``with``)."""
    return functions_framework(target, ROOT / "main.py", LOG_DIR, env, port=port, cloudevent=cloudevent)


def in_the_environment(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ``settings``' sessions are, in the environment, as an app's reader or a function reads it."""
    assert settings.emulator_host and settings.namespace
    monkeypatch.setenv("DATASTORE_EMULATOR_HOST", settings.emulator_host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", settings.project)
    monkeypatch.setenv("SESSION_NAMESPACE", settings.namespace)


FunctionClient = Callable[..., FlaskClient]


@pytest.fixture
def function(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> FunctionClient:
    """functions-framework's own test client for a target of main.py, configured by environment.

    ``function("session_task", SESSION_TASK_AUDIENCE=...)`` adds settings.
    """
    in_the_environment(settings, monkeypatch)
    monkeypatch.setenv("SESSION_TASK_AUTH", "none")  # the emulator-only opt-out; test_auth.py turns OIDC on
    monkeypatch.setenv("SESSION_RAMPUP", "off")  # the tests that pace say so
    monkeypatch.delenv("SESSION_TASKS_QUEUE", raising=False)

    def make(target: str, **env: str) -> FlaskClient:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        sys.modules.pop("main", None)  # a fresh instance: settings and clients are built on first use
        return create_app(target, str(ROOT / "main.py")).test_client()

    return make


def oidc_task_door(function: FunctionClient, signing_key: SigningKey) -> FlaskClient:
    """``session_task`` as deployed: it checks Cloud Tasks' OIDC token, against the throwaway key's certificates."""
    return function(
        "session_task",
        SESSION_TASK_AUTH="oidc",
        SESSION_TASK_AUDIENCE=AUDIENCE,
        SESSION_TASKS_SERVICE_ACCOUNT=TASKS_ACCOUNT,
        SESSION_TASK_CERTS_URL=signing_key.certs_url,
    )


def queue_env(settings: Settings, tasks_emulator: Emulator, task_port: int, **extra: str) -> dict[str, str]:
    """Environment for functions that continue through the tasks emulator to session_task on ``task_port``."""
    assert settings.emulator_host and settings.namespace
    return {
        "DATASTORE_EMULATOR_HOST": settings.emulator_host,
        "GOOGLE_CLOUD_PROJECT": settings.project,
        "SESSION_NAMESPACE": settings.namespace,
        "SESSION_TASKS_QUEUE": QUEUE,
        "SESSION_TASK_URL": f"http://127.0.0.1:{task_port}/",
        "CLOUD_TASKS_EMULATOR_HOST": tasks_emulator.host,
        "SESSION_TASK_AUTH": "none",  # the tasks emulator sends no OIDC token
        "SESSION_RAMPUP": "off",
        **extra,
    }


# -- the docs pages' Python blocks (tests/test_docs_pages.py runs them all; other tests drive some) ----

DOCS = ROOT / "docs"
NOT_RUN_ALONE = re.compile(r"# not run alone: (.+)")


def page_path(page: str) -> Path:
    """``README.md`` is the repository's; every other page is a path under ``docs/``."""
    return ROOT / page if page == "README.md" else DOCS / page


class Block(NamedTuple):
    line: int  # the page's line of the block's first line of code
    code: str  # dedented (a block inside a list item is indented)

    def run(self, page: str, namespace: dict[str, Any]) -> None:
        """Execute the block in ``namespace``; blank lines before it make a traceback name the page's own lines."""
        exec(compile("\n" * (self.line - 1) + self.code, page, "exec"), namespace)

    @property
    def not_run_alone(self) -> str | None:
        """Why the block cannot run alone, from its first line ``# not run alone: <why>``; None if it can."""
        match = NOT_RUN_ALONE.match(self.code)
        return match[1] if match else None


def python_blocks(text: str) -> list[Block]:
    """Every ```python block of a Markdown page (indented ones in lists too), in order."""
    blocks: list[Block] = []
    fence: tuple[str, str] | None = None
    start, lines = 0, list[str]()
    for number, line in enumerate(text.splitlines(), 1):
        if fence is None:
            if match := re.fullmatch(r"( *)```(\w*)", line):
                fence, start, lines = (match[1], match[2]), number + 1, []
        elif line.strip() == "```" and line.startswith(fence[0]):
            if fence[1] == "python":
                blocks.append(Block(start, textwrap.dedent("\n".join(lines)) + "\n"))
            fence = None
        else:
            lines.append(line)
    assert fence is None, "a code fence is never closed"
    return blocks


def doc_python_blocks(page: str) -> list[str]:
    """The code of the ```python blocks of ``page`` (``README.md``, or a path under ``docs/``), in order."""
    return [block.code for block in python_blocks(page_path(page).read_text())]


def startproject(folder: Path, name: str = "mysite") -> Path:
    """``django-admin startproject NAME FOLDER`` (Django's own template, in a process of its own): its settings.py."""
    command = [sys.executable, "-m", "django", "startproject", name, str(folder)]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return folder / name / "settings.py"


# A task step's JSON exactly as our code enqueues it (the wire format); tests change fields with {**STEP, ...}.
VALID_CLEAR = {
    "op": "clear",
    "run_id": "a" * 32,
    "cutoff": 1.0,
    "cursor": None,
    "page": 0,
    "dry_run": False,
    "shard": None,
    "lo": None,
    "hi": None,
    "started": 1_900_000_000.0,
    "done": 0,
}
VALID_KILL = {
    "op": "kill",
    "run_id": "b" * 32,
    "user": None,
    "except_session": None,
    "shard": None,
    "lo": None,
    "hi": None,
    "cursor": None,
    "page": 0,
    "started": 1_900_000_000.0,
    "done": 0,
}


def record_run(client: datastore.Client, settings: Settings, step: dict[str, Any]) -> None:
    """Write the run a step payload belongs to, expecting that very step, so that session_task accepts it."""
    from session_core.maintenance.kill import kill_params
    from session_core.maintenance.runs import ChainState, Run, RunRecorder, clear_params

    recorder = RunRecorder(client, settings)
    shards = None if step["shard"] is None else [(None, None)] * step["shard"] + [(step["lo"], step["hi"])]
    if step["op"] == "clear":
        params = clear_params(step["cutoff"], step["dry_run"], shards)
    else:
        params = kill_params(step["user"], step["except_session"], shards)
    expected = {step["shard"] or 0: ChainState(step["page"], step["cursor"], step["done"])}
    run = Run(step["run_id"], step["op"], params, step["started"], chains=len(shards or [None]), expected=expected)
    client.put(recorder.entity(run))


# -- Google-style OIDC tokens, signed by a throwaway key whose certificate a local server serves ---------

AUDIENCE = "https://europe-west3-session-core-test.cloudfunctions.net/session_task"
TASKS_ACCOUNT = "session-tasks@session-core-test.iam.gserviceaccount.com"


class SigningKey(NamedTuple):
    """The throwaway key, the URL of its certificates, and the certificate server's counters and switch."""

    signer: crypt.Signer
    certs_url: str
    fetches: list[float]  # one entry per certificate GET
    down: threading.Event  # set: the certificate endpoint answers 503


@pytest.fixture(scope="session")
def signing_key() -> Iterator[SigningKey]:
    """A throwaway RSA key, and a local URL serving its certificate the way Google serves its own."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "throwaway")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    certs = json.dumps({"kid-1": cert.public_bytes(serialization.Encoding.PEM).decode()}).encode()
    fetches: list[float] = []
    down = threading.Event()

    class Certs(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetches.append(time.time())
            if down.is_set():
                self.send_response(503)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "public, max-age=21600, must-revalidate, no-transform")  # as Google
            self.end_headers()
            self.wfile.write(certs)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Certs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        url = f"http://127.0.0.1:{server.server_port}/certs"
        yield SigningKey(crypt.RSASigner.from_string(pem, key_id="kid-1"), url, fetches, down)
    finally:
        server.shutdown()
        server.server_close()


def token(
    signer: crypt.Signer,
    *,
    audience: str = AUDIENCE,
    email: str = TASKS_ACCOUNT,
    expires_in: int = 600,
    issuer: str = "https://accounts.google.com",
) -> str:
    """An ID token as Google signs them for Cloud Tasks (by default: valid, for our audience and account)."""
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": "1234",
        "email": email,
        "email_verified": True,
        "iat": now - 60,
        "exp": now + expires_in,
    }
    return jwt.encode(signer, claims).decode()
