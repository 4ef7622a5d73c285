"""The docs pages tell the truth: each page's Python blocks run in order, and its numbers and tables are the code's.

Every ```python block of every page (README.md and each page under ``docs/``) runs, page by page: one
test per page executes that page's blocks in order in one namespace, as a reader who pastes them one
after another would, with the settings a reader's shell would have. A block that cannot run alone
starts with the line ``# not run alone: <why>``; it is reported as a skipped subtest with that reason,
and the page's other blocks still run. Pages whose app is driven through requests name a driver in
:data:`DRIVERS`, keyed by the page's path.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from google.cloud import datastore
from werkzeug.test import Client

from session_core import Settings, _observers
from session_core.clients import datastore_client
from session_core.rules import hash_key
from tests.conftest import DOCS, Block, in_the_environment, page_path, python_blocks, startproject

ROOT = Path(__file__).resolve().parent.parent
# A block that is (part of) a file of the page's project: "# app.py" starts it, "# app.py, continued" adds to it;
# "# settings.py, continued" with no settings.py before it continues a `django-admin startproject` project's.
FILE = re.compile(r"# (\w+)\.py(, continued)?(?:: [^\n]*)?\n")


def fences(text: str) -> tuple[int, int]:
    """The page's ```python fences, and how many of them open with ``# not run alone:``, counted line by line."""
    opened = re.findall(r"^ *```python *\n *(.*)", text, re.M)
    return len(opened), sum(1 for first in opened if first.startswith("# not run alone: "))


def pages_with_python() -> list[str]:
    pages = ["README.md", *sorted(str(page.relative_to(DOCS)) for page in DOCS.rglob("*.md"))]
    return [page for page in pages if fences(page_path(page).read_text())[0]]


class PageFiles:
    """The files a page's reader has saved so far, in ``folder``: name -> code."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.code = folder, dict[str, str]()

    def add(self, block: str) -> tuple[str, str]:
        """Save ``block`` into its file (a new one, or the end of one); return the file's name and whole code."""
        match = FILE.match(block)
        assert match is not None
        name, continued = match[1], bool(match[2])
        if continued and name not in self.code and name == "settings":
            (self.folder / "django").mkdir()
            self.code[name] = startproject(self.folder / "django").read_text()  # Django's own template
        self.code[name] = self.code.get(name, "") + block if continued else block
        (self.folder / f"{name}.py").write_text(self.code[name])
        sys.modules.pop(name, None)  # a later import sees the file as it is now
        return name, self.code[name]

    def forget(self) -> None:
        for name in self.code:
            sys.modules.pop(name, None)


def blocks_alone(page: str, numbers: list[int], settings: Settings, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Blocks ``numbers`` (1-based) of ``page``, run in a namespace of their own against a Datastore namespace of
    their own (``settings.namespace`` plus the numbers): one app of a page that shows several."""
    monkeypatch.setenv("SESSION_NAMESPACE", f"{settings.namespace}-{'-'.join(map(str, numbers))}")
    blocks = python_blocks(page_path(page).read_text())
    example: dict[str, Any] = {"__name__": "docs_page"}
    for number in numbers:
        blocks[number - 1].run(page, example)
    return example


def pytest_with_the_plugin(*args: str) -> subprocess.CompletedProcess[str]:
    """pytest in the working directory (a page's folder), with session_core's plugin and this checkout's code."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "session_core.pytest_plugin", "-p", "no:cacheprovider", "-q", *args],
        cwd=Path.cwd(),
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # this checkout's session_core (not installed in the venv)
        capture_output=True,
        text=True,
        timeout=300,
    )


# -- what a page's app does, driven through requests ------------------------------------------------


def drive_quick_start(example: dict[str, Any], settings: Settings) -> None:
    """The README's quick start counts visits per browser (tests/test_packaging.py also serves it with flask run)."""
    browser = example["app"].test_client()
    assert [browser.get("/").text for _ in range(2)] == ["visit 1\n", "visit 2\n"]
    assert example["app"].test_client().get("/").text == "visit 1\n"  # another browser, another session


def stored_sessions(settings: Settings) -> dict[str, str]:
    """The stored sessions' names and users."""
    client = datastore_client(settings)
    return {
        entity.key.name: entity["user"]
        for entity in client.query(kind=settings.kind, namespace=settings.namespace).fetch()
    }


def cookie_value(browser: Any, name: str) -> str:
    cookie = browser.get_cookie(name)
    assert cookie is not None, f"no {name} cookie"
    value: str = cookie.value
    return value


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
    done = pytest_with_the_plugin("-W", "error", "test_app.py")
    assert done.returncode == 0 and "3 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]


def drive_tutorial(example: dict[str, Any], settings: Settings) -> None:
    """The tutorial's finished app.py, driven as its curl commands do; then its test_app.py under pytest."""
    drive_tutorial_app(example, settings)
    drive_tutorial_tests(example, settings)


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


def drive_settings_file(example: dict[str, Any], settings: Settings) -> None:
    assert example["settings"].namespace == settings.namespace  # from the file, not the environment


# The pages whose app a test here drives through requests, by the page's path. Every other page's blocks
# are run (their imports, their module-level code); these pages' apps are driven elsewhere:
#   how-to/flask.md: its three apps, each alone (test_the_flask_pages_apps_each_do_what_the_page_says);
#   how-to/starlette.md: tests/test_asgi.py; how-to/django.md: tests/test_django.py;
#   how-to/testing.md: its tests, under pytest with the plugin of an installed wheel: tests/test_packaging.py
#   (which also serves README.md's app with `flask run`).
DRIVERS: dict[str, Callable[[dict[str, Any], Settings], None]] = {
    "README.md": drive_quick_start,
    "tutorial/first-flask-app.md": drive_tutorial,
    "how-to/wsgi.md": drive_wsgi,
    "how-to/session-api.md": drive_devices,
    "how-to/production.md": drive_settings_file,
    "how-to/events.md": drive_events_subscriber,
}

EXECUTED: dict[str, int] = {}  # blocks executed per page, for the summary line


@pytest.fixture(scope="module", autouse=True)
def _executed_blocks_summary(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the pages ran: one line per page with the count of its blocks that ran (shown without -s too)."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if EXECUTED and reporter is not None:
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            total = sum(EXECUTED.values())
            reporter.write_sep("-", f"docs pages: {total} Python blocks executed on {len(EXECUTED)} page(s)")
            reporter.write_line(", ".join(f"{page} {count}" for page, count in EXECUTED.items()))


@pytest.mark.parametrize(
    "page",
    [pytest.param(page, id=page) for page in pages_with_python()],
)
def test_every_python_block_of_the_page_runs_in_order(
    page: str, settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, subtests: pytest.Subtests
) -> None:
    """A page's blocks run in order in one namespace (a later block may use an earlier one), as a reader pastes them.

    Settings come from the environment, as in the reader's shell (or from the settings.json in the
    working directory that a block names); each block is a subtest; one marked ``# not run alone:``
    is skipped with its reason, and every other block runs.
    """
    in_the_environment(settings, monkeypatch)
    (tmp_path / "settings.json").write_text(json.dumps({"SESSION_NAMESPACE": settings.namespace}))
    monkeypatch.chdir(tmp_path)
    text = page_path(page).read_text()
    blocks = python_blocks(text)
    in_fences, marked = fences(text)
    assert len(blocks) == in_fences
    observers = list(_observers._REGISTERED)  # a block may register Session.on_delete: not beyond this test
    example: dict[str, Any] = {"__name__": "docs_page"}
    files = PageFiles(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # the page's files import each other, as in the reader's folder
    executed = 0
    try:
        for number, block in enumerate(blocks, 1):
            with subtests.test(msg=f"block {number} of {len(blocks)}, line {block.line}"):
                if why := block.not_run_alone:
                    pytest.skip(f"{page} line {block.line} cannot run alone: {why}")
                if FILE.match(block.code):  # the whole file so far runs, as the reader's saved file would
                    name, code = files.add(block.code)
                    example.update(__file__=str(tmp_path / f"{name}.py"))
                    exec(compile(code, f"{page} ({name}.py)", "exec"), example)
                else:
                    block.run(page, example)
                executed += 1
            if executed + sum(1 for b in blocks[:number] if b.not_run_alone) < number:
                break  # that block failed (reported above): the blocks after it would fail for its sake
        assert executed == in_fences - marked, f"{executed} of the {in_fences - marked} blocks to run ran"
        if page in DRIVERS:
            DRIVERS[page](example, settings)
    finally:
        _observers._REGISTERED[:] = observers
        files.forget()
    EXECUTED[page] = executed


def test_the_flask_pages_apps_each_do_what_the_page_says(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Flask app, the Flask-Login app (another app, not beside it) and the Flask app sharing ViUR's cookie."""
    in_the_environment(settings, monkeypatch)  # each app's namespace: blocks_alone
    for numbers, drive in (([1], drive_flask), ([2], drive_flask_login), ([1, 3], drive_viur_cookie)):
        example = blocks_alone("how-to/flask.md", numbers, settings, monkeypatch)
        drive(example, replace(settings, namespace=os.environ["SESSION_NAMESPACE"]))


def test_every_driver_names_a_page_with_python() -> None:
    assert set(DRIVERS) <= set(pages_with_python())


def test_the_block_reader_finds_indented_blocks_and_the_not_run_alone_reason() -> None:
    page = "Text.\n\n```python\nx = 1\n```\n\n- item:\n\n   ```python\n   # not run alone: needs y\n   y()\n   ```\n"
    assert python_blocks(page) == [Block(4, "x = 1\n"), Block(10, "# not run alone: needs y\ny()\n")]
    assert [block.not_run_alone for block in python_blocks(page)] == [None, "needs y"]
    assert fences(page) == (2, 1)


# -- README.md ------------------------------------------------------------------------------------------


def test_readme_first_two_commands_are_make_run_and_make_test() -> None:
    commands = re.findall(r"^(make \w+)", (ROOT / "README.md").read_text(), re.M)
    assert commands[:2] == ["make run", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def heading_anchor(heading: str) -> str:
    """The id Python-Markdown's toc (mkdocs) and GitHub give a heading: lower case, punctuation dropped."""
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


def test_readme_links_work_outside_the_repository() -> None:
    """The README is the wheel's long description (PyPI): each link is absolute, or an anchor of the README itself."""
    text = (ROOT / "README.md").read_text()
    outside_code = re.sub(r"```.*?```", "", text, flags=re.S)
    targets = [
        *re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", outside_code),  # [text](target "title")
        *re.findall(r"^\s*\[[^\]]+\]:\s*(\S+)", outside_code, re.M),  # [label]: target
        *re.findall(r"<a\s[^>]*href=\"([^\"]+)\"", outside_code),
    ]
    anchors = {heading_anchor(heading) for heading in re.findall(r"^#{1,6} (.+)", outside_code, re.M)}
    assert targets, "no link found: the pattern or the README changed"
    broken = [t for t in targets if not (re.match(r"https?://", t) or (t.startswith("#") and t[1:] in anchors))]
    assert broken == []


def test_readme_is_at_most_about_200_lines() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


# -- how-to/configuration.md ----------------------------------------------------------------------------


def test_configuration_page_settings_reach_the_library_only_through_the_entry_points() -> None:
    """The page says the environment is read into ``Settings`` (``Settings.from_env(os.environ)``), by the caller."""
    assert "`Settings.from_env(os.environ)`" in (DOCS / "how-to" / "configuration.md").read_text()
    readers = {
        str(path.relative_to(ROOT))
        for path in [*(ROOT / "session_core").rglob("*.py"), ROOT / "main.py"]
        if re.search(r"os\.environ|getenv", path.read_text().replace("``os.environ``", ""))  # not in docstrings
    }
    assert readers == {"main.py", "session_core/cli.py"}


# -- how-to/command-line.md -----------------------------------------------------------------------------


def test_command_line_page_table_names_every_command_and_what_it_reads() -> None:
    from session_core.cli import COMMANDS

    section = (DOCS / "how-to" / "command-line.md").read_text()
    rows = re.findall(r"^\| `([a-z-]+)[^`]*` \|[^|]+\|([^|]*)\| `([^`]+)` \|$", section.replace("\\|", "/"), re.M)
    documented = {name: (set(re.findall(r"`([A-Z_]+)`", reads)), example) for name, reads, example in rows}
    assert documented == {command.name: (set(command.environment), command.examples[0]) for command in COMMANDS}


# -- explanation/sizing.md ------------------------------------------------------------------------------


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
    """The sizing page's formula: P = floor(N / page) + 1 query pages."""
    pages = expired // page + 1
    return {"deletes": expired + 1, "reads": 2 * pages + 4, "writes": pages + 2, "small": expired}


def test_sizing_page_operation_counts_are_what_a_cleanup_and_a_kill_cost(
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
    section = (DOCS / "explanation" / "sizing.md").read_text()
    assert f"| {per_100k['deletes']:,} |" in section and f"| {per_100k['reads']} |" in section
    assert f"| {per_100k['writes']} |" in section
    assert "A kill of one user with k sessions costs k deletes, 2 reads" in section and "and 3 writes" in section
