"""A viur-core 3.9 app with ``session_core.viur.install()``: our sessions, through viur-core's own request handler.

The app (tests/viur/app.py) runs in viur-core's Python 3.12 venv (the agreement test's), served
by viur-core's WSGI app and driven by webob's test client; these tests drive it and read the
Datastore with our client.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.cloud import datastore

from session_core import Settings, kill_sessions
from session_core.clients import datastore_client
from session_core.rules import hash_key, is_valid_key
from session_core.testing import Emulator
from tests.conftest import ROOT
from tests.test_viur_agreement import credentials, viur_python  # noqa: F401 - the agreement test's venv

pytestmark = pytest.mark.slow
PROJECT = "viur-inplace"  # a project of its own: viur-core reads the default namespace
COOKIE = f"viur_cookie_{PROJECT}"


class ViurApp:
    """One process of the app: ``request`` sends a request through viur-core's WSGI app."""

    def __init__(self, python: Path, service_account: Path, host: str, mode: str, **env: str) -> None:
        self.base = tempfile.mkdtemp(prefix="viur-project-")
        self.process = subprocess.Popen(
            [str(python), str(ROOT / "tests" / "viur" / "app.py"), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # viur-core's project base: a fresh folder, so it is no part of its venv's path wherever the
            # checkout is (viur-core strips it from a skeleton's file name before it checks the folder).
            cwd=self.base,
            env={
                "PATH": os.environ["PATH"],
                "PYTHONPATH": str(ROOT),
                "GOOGLE_APPLICATION_CREDENTIALS": str(service_account),
                "GOOGLE_CLOUD_PROJECT": PROJECT,
                "DATASTORE_EMULATOR_HOST": host,
                "GAE_ENV": "localdev",
                **env,
            },
        )

    def _ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith("@@"):
                answer: dict[str, Any] = json.loads(line[2:])
                return answer
        raise AssertionError(self.close())

    def request(self, path: str, cookie: str | None = None, **headers: str) -> dict[str, Any]:
        return self._ask({"path": path, "cookie": cookie and f"{COOKIE}={cookie}", "headers": headers})

    def defaults(self) -> dict[str, Any]:
        return self._ask({"defaults": True})

    def periodic_tasks(self) -> list[str]:
        tasks: list[str] = self._ask({"periodic": True})["periodic"]
        return tasks

    def close(self) -> str:
        """End the process; its stderr's tail."""
        assert self.process.stdin is not None and self.process.stderr is not None
        if self.process.stderr.closed:
            return ""  # closed already (a failed request closes it to report its stderr)
        if not self.process.stdin.closed:
            self.process.stdin.close()
        self.process.wait(timeout=60)
        err = self.process.stderr.read()
        self.process.stderr.close()
        if self.process.stdout is not None:
            self.process.stdout.close()
        shutil.rmtree(self.base, ignore_errors=True)
        return err[-3000:]


def cookie_of(response: dict[str, Any]) -> str | None:
    """The session key the response sets, or None."""
    for name, value in response["headers"]:
        if name.lower() == "set-cookie" and value.startswith(f"{COOKIE}="):
            key = value.split(";")[0].split("=", 1)[1]
            return key or None
    return None


def header(response: dict[str, Any], name: str) -> str | None:
    return next((value for key, value in response["headers"] if key.lower() == name.lower()), None)


@pytest.fixture
def client(datastore_emulator: Emulator) -> Iterator[datastore.Client]:
    settings = Settings(project=PROJECT, emulator_host=datastore_emulator.host)
    client = datastore_client(settings)
    yield client
    client.delete_multi([entity.key for entity in client.query(kind="viur-session").fetch()])


@pytest.fixture
def ours(viur_python: Path, credentials: Path, datastore_emulator: Emulator) -> Iterator[ViurApp]:  # noqa: F811
    app = ViurApp(viur_python, credentials, datastore_emulator.host, "ours")
    yield app
    app.close()


@pytest.fixture
def stock(viur_python: Path, credentials: Path, datastore_emulator: Emulator) -> Iterator[ViurApp]:  # noqa: F811
    app = ViurApp(viur_python, credentials, datastore_emulator.host, "stock")
    yield app
    app.close()


def names(client: datastore.Client) -> set[str]:
    return {entity.key.name for entity in client.query(kind="viur-session").fetch()}


def test_a_counter_is_kept_across_requests_under_the_hashed_name(ours: ViurApp, client: datastore.Client) -> None:
    first = ours.request("/counter")
    key = cookie_of(first)
    assert first["body"] == "1" and key is not None and is_valid_key(key)
    assert [ours.request("/counter", key)["body"] for _ in range(3)] == ["2", "3", "4"]
    assert names(client) == {hash_key(key)}  # the cookie value is nowhere in the store
    assert client.get(client.key("viur-session", hash_key(key)))["data"]["n"] == 4


def test_a_stock_viur_session_loads_and_moves_to_its_hashed_name_on_its_first_save(
    stock: ViurApp, ours: ViurApp, client: datastore.Client
) -> None:
    login = stock.request("/user/login?name=alice")
    key = cookie_of(login)
    assert key is not None and names(client) == {key}  # viur-core's own Session: stored under the cookie value
    assert ours.request("/user/me", key)["body"] == "alice"
    assert ours.request("/counter", key)["body"] == "1"
    assert names(client) == {hash_key(key)}
    stored = client.get(client.key("viur-session", hash_key(key)))
    assert stored["user"] == "user-alice" and stored["data"]["user"]["name"] == "alice"
    assert ours.request("/user/me", key)["body"] == "alice"


def test_a_session_deleted_while_a_request_holds_it_is_not_written_back(
    ours: ViurApp, client: datastore.Client
) -> None:
    key = cookie_of(ours.request("/user/login?name=bob"))
    assert key is not None
    assert ours.request("/counter", key)["body"] == "1" and names(client) == {hash_key(key)}
    answer = ours.request("/counter/meanwhile", key)  # deleted after the load, before the save
    assert answer["status"] == 200 and answer["body"] == "2" and cookie_of(answer) is None
    assert names(client) == set()  # viur-core's db.put would have brought it back
    assert ours.request("/user/me", key)["body"] == "guest"


def test_kill_by_user_signs_that_viur_user_out_and_logout_everywhere_else_keeps_this_device(
    ours: ViurApp, client: datastore.Client, datastore_emulator: Emulator
) -> None:
    phone, laptop, tablet = (cookie_of(ours.request("/user/login?name=carol")) for _ in range(3))
    dave = cookie_of(ours.request("/user/login?name=dave"))
    assert all((phone, laptop, tablet, dave)) and ours.request("/user/me", phone)["body"] == "carol"

    assert ours.request("/user/others", laptop)["body"] == "2"  # logout_everywhere_else, on viur-core's session
    assert [ours.request("/user/me", key)["body"] for key in (phone, laptop, tablet)] == ["guest", "carol", "guest"]

    settings = Settings(project=PROJECT, emulator_host=datastore_emulator.host)
    assert kill_sessions("user-carol", client=client, settings=settings).deleted == 1
    assert ours.request("/user/me", laptop)["body"] == "guest"
    assert ours.request("/user/me", dave)["body"] == "dave"


def test_viur_cores_own_cleanup_is_off_its_periodic_tasks(ours: ViurApp, stock: ViurApp) -> None:
    cleanup = "viur_core_session_start_clear_sessions"
    assert cleanup in stock.periodic_tasks()
    assert cleanup not in ours.periodic_tasks()


def test_a_first_time_visitor_gets_a_working_csrf_key(ours: ViurApp, client: datastore.Client) -> None:
    created = ours.request("/csrf/create")
    key = cookie_of(created)
    assert key is not None  # securitykey.create reset the session (it was not loaded) and it was saved
    assert names(client) == {hash_key(key)}
    assert ours.request(f"/csrf/check?skey={created['body']}", key)["body"] == "valid"
    assert ours.request(f"/csrf/check?skey={created['body']}")["body"] == "invalid"  # bound to that session


def test_a_deferred_tasks_request_writes_no_session(ours: ViurApp, client: datastore.Client) -> None:
    task = ours.request("/counter", **{"X-AppEngine-TaskName": "t1", "X-AppEngine-User-IP": "10.0.0.1"})
    assert task["body"] == "1" and cookie_of(task) is None
    assert names(client) == set()


@pytest.fixture
def frozen_datastore() -> Iterator[str]:
    """A Datastore host that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_a_frozen_datastore_gives_503_with_retry_after_not_500(
    viur_python: Path,  # noqa: F811
    credentials: Path,  # noqa: F811
    datastore_emulator: Emulator,
    frozen_datastore: str,
) -> None:
    app = ViurApp(
        viur_python,
        credentials,
        datastore_emulator.host,
        "ours",
        SESSIONS_HOST=frozen_datastore,
        SESSION_REQUEST_TIMEOUT="1",
    )
    try:
        save = app.request("/counter")  # no cookie: nothing to load; the save is what fails
        load = app.request("/counter", "a" * 42)  # a cookie: the load fails
    finally:
        app.close()
    for answer in (save, load):
        assert answer["status"] == 503 and header(answer, "Retry-After") == "1"
        assert cookie_of(answer) is None
    assert save["body"] != "1"


def test_the_adapters_pages_viur_row_is_what_viur_cores_defaults_give_in_place(
    ours: ViurApp, client: datastore.Client, datastore_emulator: Emulator
) -> None:
    """docs/how-to/adapters.md's ViUR row: viur-core 3.9.3's defaults, through install(), on the emulator."""
    from tests.test_adapters_page import Defaults, documented, set_cookie, stored_lifetime

    answer = ours.request("/counter")
    key, dev = set_cookie([value for name, value in answer["headers"] if name.lower() == "set-cookie"], COOKIE)
    assert "secure" not in dev and "samesite" not in dev  # viur-core's dev server sends neither
    defaults = ours.defaults()
    life_time = timedelta(seconds=defaults["life_time"])
    settings = Settings(project=PROJECT, emulator_host=datastore_emulator.host, life_time=life_time)
    _, production = set_cookie([defaults["production_cookie"]], COOKIE)
    measured = Defaults(
        cookie=COOKIE,
        secure="secure" in production,
        same_site=production.get("samesite"),
        lifetime=stored_lifetime(client, settings, key),
        max_age=float(dev["max-age"]),
        survives=frozenset(defaults["persistent_fields_on_login"]),
    )
    assert measured == documented(PROJECT)["ViUR (in place)"]
