"""The README tells the truth: its settings, its commands, its numbers, and every Python block runs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from google.cloud import datastore
from werkzeug.test import Client

from session_core import Settings, _observers
from session_core.clients import datastore_client
from session_core.rules import hash_key
from tests.conftest import startproject

ROOT = Path(__file__).resolve().parent.parent


def test_only_the_entry_points_read_the_environment() -> None:
    readers = {
        str(path.relative_to(ROOT))
        for path in [*(ROOT / "session_core").rglob("*.py"), ROOT / "main.py"]
        if re.search(r"os\.environ|getenv", path.read_text().replace("``os.environ``", ""))  # not in docstrings
    }
    assert readers == {"main.py", "session_core/cli.py"}


def test_the_first_two_commands_are_make_run_and_make_test() -> None:
    commands = re.findall(r"^(make \w+)", (ROOT / "README.md").read_text(), re.M)
    assert commands[:2] == ["make run", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


# -- every Python block of the README runs ------------------------------------------------------


class Block(NamedTuple):
    heading: str  # the nearest heading above it, without its #s
    code: str  # dedented
    page: str = ""  # its page, under docs/


def readme_blocks() -> list[Block]:
    """Every ```python block of the docs pages (indented ones in lists too), with the heading it sits under."""
    blocks: list[Block] = []
    for page in sorted((ROOT / "docs").rglob("*.md")):
        heading, fence, lines = "", None, []
        for line in page.read_text().splitlines():
            if fence is None:
                if match := re.fullmatch(r"( *)```(\w*)", line):
                    fence, lines = (match[1], match[2]), []
                elif match := re.fullmatch(r"#{1,6} (.+)", line):
                    heading = match[1]
            elif line.strip() == "```" and line.startswith(fence[0]):
                if fence[1] == "python":
                    code = textwrap.dedent("\n".join(lines)) + "\n"
                    blocks.append(Block(heading, code, str(page.relative_to(ROOT / "docs"))))
                fence = None
            else:
                lines.append(line)
    return blocks


CONTINUES = re.compile(r"# continues the (.+) example above\n")
# A block that is (part of) a file of its page's project: "# app.py" starts it, "# app.py, continued" adds to it.
FILE = re.compile(r"# (\w+)\.py(, continued)?(?:: [^\n]*)?\n")


def page_files(block: Block) -> dict[str, str]:
    """The files of ``block``'s page as they stand once the reader has pasted it: name -> code."""
    files: dict[str, str] = {}
    blocks = readme_blocks()
    for other in blocks[: blocks.index(block) + 1]:
        if other.page == block.page and (match := FILE.match(other.code)):
            files[match[1]] = files.get(match[1], "") + other.code if match[2] else other.code
    return files


def stored_sessions(settings: Settings) -> dict[str, str]:
    """The stored sessions' names and users."""
    client = datastore_client(settings)
    return {
        entity.key.name: entity["user"]
        for entity in client.query(kind=settings.kind, namespace=settings.namespace).fetch()
    }


def drive_flask(example: dict[str, Any], settings: Settings) -> None:
    browser = example["app"].test_client()
    name = example["app"].config["SESSION_COOKIE_NAME"]
    assert browser.post("/cart/book").json == {"cart": ["book"]}
    assert browser.post("/cart/pen").json == {"cart": ["book", "pen"]}
    guest_key = cookie_value(browser, name)
    assert browser.post("/login/alice").data == b"ok"
    alice_key = cookie_value(browser, name)
    assert alice_key != guest_key and stored_sessions(settings) == {hash_key(alice_key): "alice"}  # rotated
    assert browser.post("/cart/cup").json == {"cart": ["cup"]}  # a login keeps only SESSION_PERSISTENT_FIELDS
    assert browser.post("/logout").data == b"ok"
    assert browser.get_cookie(name) is None and stored_sessions(settings) == {}  # an emptied guest: deleted
    assert browser.post("/cart/mug").json == {"cart": ["mug"]}
    assert cookie_value(browser, name) not in (guest_key, alice_key)


def cookie_value(browser: Any, name: str) -> str:
    cookie = browser.get_cookie(name)
    assert cookie is not None, f"no {name} cookie"
    value: str = cookie.value
    return value


def drive_flask_login(example: dict[str, Any], settings: Settings) -> None:
    """The Flask-Login app alone: sign-in rotates the key and sets remember-me; sign-out clears both."""
    browser = example["app"].test_client()
    assert browser.get("/me").json == {"user": None}
    assert browser.post("/sign-in/bob").data == b"signed in"
    bob_key = cookie_value(browser, "session")
    assert stored_sessions(settings) == {hash_key(bob_key): "bob"}
    assert browser.post("/sign-in/alice").data == b"signed in"  # a second sign-in on the same browser
    alice_key = cookie_value(browser, "session")
    assert alice_key != bob_key and stored_sessions(settings) == {hash_key(alice_key): "alice"}  # rotated, indexed
    assert browser.get_cookie("remember_token") is not None  # Flask-Login's remember-me cookie
    assert browser.get("/me").json == {"user": "alice"}
    assert browser.post("/sign-out").data == b"signed out"
    assert browser.get_cookie("session") is None and browser.get_cookie("remember_token") is None  # both deleted
    assert browser.get("/me").json == {"user": None} and "alice" not in stored_sessions(settings).values()


def drive_viur_cookie(example: dict[str, Any], settings: Settings) -> None:
    assert example["app"].config["SESSION_COOKIE_NAME"] == f"viur_cookie_{settings.project}"
    drive_flask(example, settings)


def drive_wsgi(example: dict[str, Any], settings: Settings) -> None:
    browser = Client(example["app"])
    assert [browser.get("/").text for _ in range(2)] == ["1", "2"]


def drive_devices(example: dict[str, Any], settings: Settings) -> None:
    app = example["app"]
    guest, laptop, phone = app.test_client(), app.test_client(), app.test_client()
    assert guest.get("/devices").status_code == 401
    refused = guest.post("/sign-out-everywhere-else")
    assert refused.status_code == 400 and b"only a logged-in session" in refused.data  # not a 500
    signed_in = laptop.post("/sign-in/alice").json
    cookie = laptop.get_cookie("session")
    assert cookie is not None and signed_in == {"user": "alice", "this_device": hash_key(cookie.value)}
    phone_id = phone.post("/sign-in/alice").json["this_device"]
    devices = laptop.get("/devices").json
    assert {device["id"] for device in devices} == {signed_in["this_device"], phone_id}
    assert all(device["user_agent"].startswith("Werkzeug/") for device in devices)
    assert laptop.post(f"/devices/{phone_id}/sign-out").json == {"ended": True}
    assert phone.get("/devices").status_code == 401  # that device is signed out
    phone.post("/sign-in/alice")
    assert laptop.post("/sign-out-everywhere-else").json == {"ended": 1}
    assert [device["id"] for device in laptop.get("/devices").json] == [signed_in["this_device"]]


def drive_events_subscriber(example: dict[str, Any], settings: Settings) -> None:
    """The subscriber example, given a real event twice (as at-least-once delivery may): told once, acked twice."""
    from session_core.maintenance.events import event_message

    class Message:
        def __init__(self, data: bytes) -> None:
            self.data, self.acked = data, False

        def ack(self) -> None:
            self.acked = True

    data = event_message("killed", "r" * 32, 1795676700.0, [("a" * 64, "alice"), ("b" * 64, "bob")])
    messages = [Message(data), Message(data)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for message in messages:
            example["on_event"](message)
    assert all(message.acked for message in messages)
    assert printed.getvalue().splitlines() == [
        f"alice: session {'a' * 12} killed at 2026-11-26T07:05:00.000Z",
        f"bob: session {'b' * 12} killed at 2026-11-26T07:05:00.000Z",
    ]


def drive_tutorial_app(example: dict[str, Any], settings: Settings) -> None:
    """The tutorial's finished app, as its curl commands drive it: count, log in, log out, sign out elsewhere."""
    app = example["create_app"](settings)
    laptop, phone = app.test_client(), app.test_client()
    assert [laptop.get("/").text for _ in range(2)] == ["visit 1\n", "visit 2\n"]
    assert laptop.get("/me").text == "__guest__\n"
    guest_key = cookie_value(laptop, "session")
    assert laptop.post("/login", data={"user": "alice"}).text == "signed in as alice\n"
    alice_key = cookie_value(laptop, "session")
    assert alice_key != guest_key and stored_sessions(settings) == {hash_key(alice_key): "alice"}  # rotated
    assert laptop.get("/").text == "visit 1\n"  # only SESSION_PERSISTENT_FIELDS_ON_LOGIN survive
    assert laptop.post("/logout").text == "signed out\n"
    assert laptop.get_cookie("session") is None and stored_sessions(settings) == {}  # an empty guest: deleted
    assert laptop.post("/sign-out-everywhere-else").status_code == 400  # a guest's: never a 500
    for browser in (phone, laptop):
        assert browser.post("/login", data={"user": "alice"}).text == "signed in as alice\n"
    assert laptop.post("/sign-out-everywhere-else").text == "other sessions ended: 1\n"
    assert (laptop.get("/me").text, phone.get("/me").text) == ("alice\n", "__guest__\n")


def drive_tutorial_tests(example: dict[str, Any], settings: Settings) -> None:
    """The tutorial's test_app.py, run by pytest with the plugin's fixtures: its 3 tests pass.

    The plugin's ``session_core_emulator`` is pointed at this run's emulator (a conftest.py of the
    folder overrides it), so that no second emulator starts; everything else is the plugin's.
    """
    assert settings.emulator_host
    port = settings.emulator_host.rsplit(":", 1)[1]
    (Path.cwd() / "conftest.py").write_text(
        "import pytest\n\nfrom session_core.testing import DatastoreEmulator\n\n\n"
        "@pytest.fixture(scope='session')\n"
        f"def session_core_emulator():\n    return DatastoreEmulator(port={port})  # the suite's, running\n"
    )
    command = [sys.executable, "-m", "pytest", "-q", "-W", "error", "-p", "session_core.pytest_plugin"]
    command += ["-p", "no:cacheprovider", "test_app.py"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=Path.cwd(), env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0 and "3 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]


def drive_settings_file(example: dict[str, Any], settings: Settings) -> None:
    assert example["settings"].namespace == settings.namespace  # from the file, not the environment


# The blocks a test here drives through requests, by heading. Every other block is run (its imports,
# its module-level code); these sections' blocks are also driven elsewhere:
#   Starlette and FastAPI: tests/test_asgi.py::test_the_starlette_pages_examples_run
#   Django: tests/test_django.py::test_the_django_pages_* (settings edits to startproject, the sign-out view)
#   Developing and testing your app locally: tests/test_packaging.py (pytest runs it from an installed wheel)
DRIVERS: dict[str, Callable[[dict[str, Any], Settings], None]] = {
    "Flask": drive_flask,
    "Flask-Login": drive_flask_login,
    "6. Sign out everywhere else": drive_tutorial_app,
    "7. Test it": drive_tutorial_tests,
    "Sharing sessions with ViUR": drive_viur_cookie,
    "Any WSGI framework": drive_wsgi,
    "Who is signed in, and their devices": drive_devices,
    "Running in production": drive_settings_file,
    "Lifecycle events": drive_events_subscriber,
}


@pytest.mark.parametrize(
    "block", readme_blocks(), ids=lambda block: f"{block.heading}: {block.code.splitlines()[0][:40]}"
)
def test_every_python_block_of_the_readme_runs(
    block: Block, settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each block runs as its reader would paste it: settings from the environment (or the file it names)."""
    if match := re.match(r"# not run alone: (.+)", block.code):
        pytest.skip(f"the README says it cannot run alone: {match[1]}")
    assert settings.emulator_host and settings.namespace
    monkeypatch.setenv("DATASTORE_EMULATOR_HOST", settings.emulator_host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", settings.project)
    monkeypatch.setenv("SESSION_NAMESPACE", settings.namespace)
    (tmp_path / "settings.json").write_text(json.dumps({"SESSION_NAMESPACE": settings.namespace}))
    monkeypatch.chdir(tmp_path)
    code = block.code
    example: dict[str, Any] = {"__name__": "readme_example"}
    if match := CONTINUES.match(code):
        [first, *_] = [other.code for other in readme_blocks() if other.heading == match[1]]
        code = first + code
    modules: list[str] = []
    if match := FILE.match(code):  # the page's files so far, in the folder the block runs in
        files = page_files(block)
        if (opening := FILE.match(files[match[1]])) and opening[2] and match[1] == "settings":
            settings_py = startproject(tmp_path)  # it continues a django-admin startproject project's settings
            files["settings"] = settings_py.read_text() + files["settings"]
            example["__file__"] = str(settings_py)
        code = files[match[1]]
        for name, text in files.items():
            (tmp_path / f"{name}.py").write_text(text)
        modules = [name for name in files if name != match[1]]
        monkeypatch.syspath_prepend(str(tmp_path))
    observers = list(_observers._REGISTERED)  # a block may register Session.on_delete: not beyond this test
    try:
        exec(compile(code, f"README.md ({block.heading})", "exec"), example)
        if block.heading in DRIVERS:
            DRIVERS[block.heading](example, settings)
    finally:
        _observers._REGISTERED[:] = observers
        for name in modules:
            sys.modules.pop(name, None)


def test_every_driver_names_a_readme_section_with_python() -> None:
    assert set(DRIVERS) <= {block.heading for block in readme_blocks()}


# -- the numbers the README states ----------------------------------------------------------------


class Billed:
    """What a client's RPCs are billed as in Datastore mode: entity reads, writes, deletes, small operations.

    A lookup is a read per key; a keys-only query is one read plus a small operation per key it
    returns (any other query: a read per entity); each mutation of a commit is a write or a delete.
    """

    def __init__(self, client: datastore.Client) -> None:
        self.operations: Counter[str] = Counter()
        api = client._datastore_api
        lookup, commit, run_query = api.lookup, api.commit, api.run_query

        def counted_lookup(*args: Any, request: dict[str, Any], **kwargs: Any) -> Any:
            self.operations["reads"] += len(request["keys"])
            return lookup(*args, request=request, **kwargs)

        def counted_commit(*args: Any, request: dict[str, Any], **kwargs: Any) -> Any:
            for mutation in request["mutations"]:
                kind = getattr(mutation, "_pb", mutation).WhichOneof("operation")
                self.operations["deletes" if kind == "delete" else "writes"] += 1
            return commit(*args, request=request, **kwargs)

        def counted_query(*args: Any, request: dict[str, Any], **kwargs: Any) -> Any:
            response = run_query(*args, request=request, **kwargs)
            found = len(response.batch.entity_results)
            projection = [field.property.name for field in request["query"].projection]
            if projection == ["__key__"]:
                self.operations["reads"] += 1
                self.operations["small"] += found
            else:
                self.operations["reads"] += max(1, found)
            return response

        api.lookup, api.commit, api.run_query = counted_lookup, counted_commit, counted_query


def cleanup_operations(expired: int, page: int = 10_000) -> dict[str, int]:
    """The README's formula: P = floor(N / page) + 1 query pages."""
    pages = expired // page + 1
    return {"deletes": expired + 1, "reads": 2 * pages + 4, "writes": pages + 2, "small": expired}


def test_the_sizing_sections_operation_counts_are_what_a_cleanup_costs(
    client: datastore.Client, settings: Settings
) -> None:
    from session_core.maintenance.cleanup import start_clear_sessions
    from session_core.maintenance.kill import kill_sessions
    from tests.test_cleanup import seed
    from tests.test_revocation import seed_users

    seed(client, settings, 12_000, time.time() - 86400)
    seed(client, settings, 50, time.time())
    billed = Billed(client)
    assert start_clear_sessions(client, settings).deleted == 12_000
    assert dict(billed.operations) == cleanup_operations(12_000)

    seed_users(client, settings, {"alice": 30})
    billed.operations.clear()
    kill_sessions("alice", client=client, settings=settings)
    assert dict(billed.operations) == {"deletes": 30, "reads": 2, "writes": 3, "small": 30}

    per_100k = cleanup_operations(100_000)
    section = (ROOT / "docs" / "explanation" / "sizing.md").read_text()
    assert f"| {per_100k['deletes']:,} |" in section and f"| {per_100k['reads']} |" in section
    assert f"| {per_100k['writes']} |" in section
    assert "A kill of one user with k sessions costs k deletes, 2 reads" in section and "and 3 writes" in section


def test_the_command_line_table_names_every_command_and_what_it_reads() -> None:
    from session_core.cli import COMMANDS

    section = (ROOT / "docs" / "how-to" / "command-line.md").read_text()
    rows = re.findall(r"^\| `([a-z-]+)[^`]*` \|[^|]+\|([^|]*)\| `([^`]+)` \|$", section.replace("\\|", "/"), re.M)
    documented = {name: (set(re.findall(r"`([A-Z_]+)`", reads)), example) for name, reads, example in rows}
    assert documented == {command.name: (set(command.environment), command.examples[0]) for command in COMMANDS}
