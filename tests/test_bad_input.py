"""Bad input, generated: cookies, Pub/Sub messages, task payloads, clear requests.

Every figure the issue names is asserted exactly: 10,000 cookies with 0 server
errors, 0 Datastore RPCs for malformed ones and never an attacker-chosen byte
in a Set-Cookie; 1,000 messages and 1,000 task payloads with 0 escapes and 0 deletes.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import flask
import pytest
from google.cloud import datastore
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from werkzeug.http import parse_cookie

from session_core import Settings
from session_core.errors import PayloadError, PoisonMessageError
from session_core.flask import DatastoreSessionInterface
from session_core.maintenance.kill import parse_kill_message
from session_core.maintenance.steps import parse_step
from session_core.rules import hash_key, is_valid_key, new_key
from tests.conftest import VALID_CLEAR, VALID_KILL, FunctionClient, RpcCounter, examples
from tests.test_cleanup import remaining
from tests.test_revocation import POISON, seed_users

ROOT = Path(__file__).resolve().parent.parent
GENERATED = hsettings(
    max_examples=examples(1000),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def latin1(text: str) -> str:
    """How a WSGI server hands over arbitrary header bytes."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1")


COOKIES = st.one_of(
    st.text(max_size=100),
    st.text(min_size=1000, max_size=20_000),
    st.binary(max_size=200).map(lambda raw: raw.decode("latin-1")),
    st.text(alphabet="ABCabc0123456789", min_size=40, max_size=44),  # almost our format
    st.builds(lambda: new_key()),  # our exact format, unknown to the store
    st.builds(lambda: hash_key(new_key())),  # a hashed key presented as a cookie
    st.sampled_from(
        [
            "",
            " ",
            '""',
            "deleted",
            "null",
            "a" * 42 + "\r\nSet-Cookie: evil=1",
            "a" * 41 + ";",
            "%41" * 14,
            "a" * 42 + "\x00",
            "\uff21" * 42,  # fullwidth A: alphanumeric to str.isalnum, not to us
            "a" * 42 + " ",
            "\r\n\r\n<html>",
            "../../etc/passwd",
            "a" * 42 + "; Path=/evil",
        ]
    ),
)


@pytest.fixture
def app(client: datastore.Client, settings: Settings) -> flask.Flask:
    app = flask.Flask(__name__)
    app.config.update(
        SESSION_COOKIE_NAME=settings.cookie_name, SESSION_COOKIE_SECURE=True, SESSION_COOKIE_SAMESITE="Lax"
    )
    app.session_interface = DatastoreSessionInterface(client=client, settings=settings)

    @app.get("/")
    def read() -> str:
        return str(flask.session.get("n", 0))

    @app.post("/")
    def write() -> str:
        flask.session["n"] = flask.session.get("n", 0) + 1
        return "ok"

    return app


def test_ten_thousand_generated_cookies(
    app: flask.Flask, client: datastore.Client, settings: Settings, rpcs: RpcCounter
) -> None:
    browser = app.test_client(use_cookies=False)  # only the generated cookie is sent
    ours = re.compile(rf"{re.escape(settings.cookie_name)}=[A-Za-z0-9]{{42}}; Secure; HttpOnly; Path=/; SameSite=Lax")
    seen: Counter[str] = Counter()

    @hsettings(GENERATED, max_examples=examples(10_000))
    @given(value=COOKIES, write=st.integers(0, 19))
    def request_with(value: str, write: int) -> None:
        header = f"{settings.cookie_name}={latin1(value)}"
        rpcs.reset()
        response = browser.get("/", environ_overrides={"HTTP_COOKIE": header})
        seen["requests"] += 1
        assert response.status_code < 500
        received = parse_cookie(header).get(settings.cookie_name)  # what the app is handed
        if not is_valid_key(received):
            assert rpcs.total == 0, value  # malformed: decided without the store
            seen["malformed"] += 1
        else:
            assert rpcs.calls == {"lookup": 1}
        assert response.headers.getlist("Set-Cookie") == []  # a read writes nothing
        if write == 0:  # one in twenty also writes
            response = browser.post("/", environ_overrides={"HTTP_COOKIE": header})
            assert response.status_code < 500
            for set_cookie in response.headers.getlist("Set-Cookie"):
                assert ours.fullmatch(set_cookie), set_cookie
                issued = set_cookie.split(";", 1)[0].split("=", 1)[1]
                assert issued != received  # a server-chosen key, never the client's
            seen["writes"] += 1

    request_with()
    assert seen["requests"] >= 10_000
    assert seen["malformed"] > 5_000 and seen["writes"] > 200
    assert value_never_stored(client, settings)


def value_never_stored(client: datastore.Client, settings: Settings) -> bool:
    """Every stored session has a server-chosen hashed name (no fixation)."""
    return all(len(name) == 64 for name in remaining(client, settings))


# -- Pub/Sub messages ----------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
MESSAGES = st.one_of(
    st.binary(max_size=300),
    JSON.map(lambda value: json.dumps(value).encode()),
    st.dictionaries(st.sampled_from(["user", "except_session", "User", "users", ""]), JSON, max_size=3).map(
        lambda value: json.dumps(value).encode()
    ),
    st.builds(
        lambda user, extra: json.dumps({"user": user, **extra}).encode(),
        st.one_of(st.integers(), st.booleans(), st.lists(st.text()), st.just(""), st.text(min_size=1501)),
        st.dictionaries(st.text(max_size=5), JSON, max_size=2),
    ),
    st.builds(
        lambda session: json.dumps({"user": "bob", "except_session": session}).encode(),
        st.one_of(st.text(max_size=70), st.builds(lambda: new_key()), st.integers()),
    ),
)


def is_poison(data: bytes) -> bool:
    try:
        parse_kill_message(data)
    except PoisonMessageError:
        return True
    return False


def test_a_thousand_generated_poison_messages_delete_nothing(
    function: FunctionClient, client: datastore.Client, settings: Settings
) -> None:
    users = seed_users(client, settings, {"bob": 5, "__guest__": 5, "True": 2, "0": 2})
    before = remaining(client, settings)
    kill = function("kill_user_sessions")
    sent: Counter[str] = Counter()

    def deliver(data: bytes) -> None:
        body = {"message": {"data": base64.b64encode(data).decode(), "messageId": "m"}, "subscription": "s"}
        assert kill.post("/", json=body).status_code == 200  # nothing escapes: no 500
        sent["messages"] += 1

    @GENERATED
    @given(data=MESSAGES.filter(is_poison))
    def poison(data: bytes) -> None:
        deliver(data)

    poison()
    for data, _ in POISON:
        deliver(data)
    assert sent["messages"] >= 1000 + len(POISON)
    assert remaining(client, settings) == before and len(before) == sum(map(len, users.values()))


# -- task payloads ---------------------------------------------------------------------------


def mutated(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    fields = sorted(base)
    return st.one_of(
        st.builds(
            lambda drop: json.dumps({k: v for k, v in base.items() if k != drop}).encode(), st.sampled_from(fields)
        ),
        st.builds(lambda key, value: json.dumps({**base, key: value}).encode(), st.sampled_from(fields), JSON),
        st.builds(lambda key, value: json.dumps({**base, key: value}).encode(), st.text(max_size=8), JSON),
    )


PAYLOADS = st.one_of(
    st.binary(max_size=300),
    JSON.map(lambda value: json.dumps(value).encode()),
    mutated(VALID_CLEAR),
    mutated(VALID_KILL),
    st.just(json.dumps({**VALID_CLEAR, "pad": "x" * 20_000}).encode()),
)


def is_malformed(body: bytes) -> bool:
    try:
        parse_step(body)
    except PayloadError:
        return True
    return False


def test_a_thousand_generated_task_payloads_get_400_and_delete_nothing(
    function: FunctionClient, client: datastore.Client, settings: Settings
) -> None:
    seed_users(client, settings, {"bob": 5, "__guest__": 5})
    before = remaining(client, settings)
    task = function("session_task")
    statuses: Counter[int] = Counter()

    @GENERATED
    @given(body=PAYLOADS.filter(is_malformed))
    def deliver(body: bytes) -> None:
        response = task.post("/", data=body, content_type="application/json")
        statuses[response.status_code] += 1
        assert response.status_code == (413 if len(body) > 16 * 1024 else 400)  # over the cap: refused unread

    deliver()
    assert set(statuses) <= {400, 413} and sum(statuses.values()) >= 1000
    assert remaining(client, settings) == before


# -- clear requests --------------------------------------------------------------------------


def test_generated_clear_requests_get_clear_errors_and_delete_nothing(
    function: FunctionClient, client: datastore.Client, settings: Settings
) -> None:
    import time

    from tests.test_cleanup import seed

    seed(client, settings, 50, time.time() - 86400)
    before = remaining(client, settings)
    clear = function("clear_sessions")
    statuses: Counter[int] = Counter()

    @hsettings(GENERATED, max_examples=examples(300))
    @given(method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "POST"]), body=PAYLOADS | MESSAGES)
    def request(method: str, body: bytes) -> None:
        if method == "POST":
            try:
                options = json.loads(body) if body.strip() else {}
            except ValueError:
                options = None
            if options == {} or (
                isinstance(options, dict) and set(options) == {"dry_run"} and isinstance(options["dry_run"], bool)
            ):
                return  # a valid request; not bad input
        response = clear.open("/", method=method, data=body)
        statuses[response.status_code] += 1
        expected = 405 if method != "POST" else 413 if len(body) > 16 * 1024 else 400
        assert response.status_code == expected
        assert "error" in response.get_json()

    request()
    assert sum(statuses.values()) >= 200 and set(statuses) <= {400, 405, 413}
    assert remaining(client, settings) == before


# -- CloudEvents the kill door never gets to parse ------------------------------------------------

BINARY_EVENT = {  # a binary-mode CloudEvent: attributes in headers, the Pub/Sub envelope as the body
    "ce-specversion": "1.0",
    "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
    "ce-source": "//pubsub.googleapis.com/projects/session-core-test/topics/kill-user",
    "ce-id": "m-deep",
    "Content-Type": "application/json",
}


def rejected_lines(err: str) -> list[dict[str, Any]]:
    """Every line on stderr, as JSON (a line that is not JSON, such as a traceback's, fails the test)."""
    return [json.loads(line) for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("deep", [b'{"a":' * 5000 + b"1" + b"}" * 5000, b"[" * 5000], ids=["objects", "lists"])
def test_a_binary_cloudevent_nested_5000_deep_is_acknowledged_with_one_json_line(
    function: FunctionClient,
    client: datastore.Client,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    deep: bytes,
) -> None:
    users = seed_users(client, settings, {"alice": 3})
    kill = function("kill_user_sessions")
    capsys.readouterr()
    response = kill.post("/", data=deep, headers=BINARY_EVENT)
    assert response.status_code == 200  # acknowledged: a redelivery would fail the same way, for ever
    [line] = rejected_lines(capsys.readouterr().err)
    assert (line["event"], line["severity"], line["error"]) == (
        "kill_message_rejected",
        "WARNING",
        "the event is nested too deeply",
    )
    assert remaining(client, settings) == users["alice"]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_30_mb_cloudevent_is_acknowledged_reading_at_most_64_kib(
    function: FunctionClient,
    client: datastore.Client,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    declared: bool,
) -> None:
    from tests.test_hardening import CountingStream

    users = seed_users(client, settings, {"alice": 3})
    kill = function("kill_user_sessions")
    capsys.readouterr()
    body = CountingStream(30 * 1024 * 1024)
    chunked = {"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}
    response = kill.post("/", input_stream=body, headers=BINARY_EVENT, environ_overrides={} if declared else chunked)
    assert response.status_code == 200  # acknowledged: it can never be a kill message
    assert body.read_bytes <= (0 if declared else 64 * 1024 + 1)  # the cap, and one byte to see it is over
    [line] = rejected_lines(capsys.readouterr().err)
    assert line["event"] == "kill_message_rejected" and "65536 bytes" in line["error"]
    assert remaining(client, settings) == users["alice"]


def test_a_kill_message_in_a_binary_cloudevent_under_the_cap_still_kills(
    function: FunctionClient, client: datastore.Client, settings: Settings
) -> None:
    users = seed_users(client, settings, {"alice": 3, "bob": 2})
    envelope = {"message": {"data": base64.b64encode(b'{"user": "alice"}').decode(), "messageId": "m-ok"}}
    response = function("kill_user_sessions").post("/", data=json.dumps(envelope), headers=BINARY_EVENT)
    assert response.status_code == 200
    assert remaining(client, settings) == users["bob"]
