"""Log lines never carry credentials or session contents."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest
import structlog

from session_core import Session, Settings, StoreError
from session_core.clients import datastore_client
from session_core.logging import REDACTED, Redact, configure_logging
from session_core.rules import hash_key, new_key
from session_core.testing import free_port
from tests.conftest import Ctx


def test_redact_replaces_secret_fields_and_keeps_the_rest() -> None:
    event = {"event": "x", "cookie": "abc", "data": {"a": 1}, "static_security_key": "k", "deleted": 3}
    assert Redact()(None, "info", event) == {
        "event": "x",
        "cookie": REDACTED,
        "data": REDACTED,
        "static_security_key": REDACTED,
        "deleted": 3,
    }


def test_json_logging_has_cloud_severity_and_redacts(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True)
    try:
        structlog.get_logger().warning("session_gone_on_save", cookie="secret-cookie", deleted=1)
    finally:
        configure_logging(json=True)  # as the suite runs
    line = json.loads(capsys.readouterr().err.strip())
    assert line["severity"] == "WARNING" and line["event"] == "session_gone_on_save"
    assert line["cookie"] == REDACTED and line["deleted"] == 1
    assert "secret-cookie" not in json.dumps(line)


def test_redact_scrubs_key_shaped_values_inside_any_string() -> None:
    from session_core.rules import hash_key, new_key

    cookie = new_key()
    message = f'404 no entity to update: name: "{cookie}" and /viur-session/{hash_key(cookie)}'
    event = Redact()(None, "error", {"event": "clear_sessions_failed", "error": message, "run_id": "a" * 32})
    assert cookie not in event["error"] and hash_key(cookie) not in event["error"]
    assert event["error"].count(REDACTED) == 2
    assert event["run_id"] == "a" * 32  # run ids (32 hex) are not secrets


def test_an_apps_log_exception_after_a_datastore_error_in_load_carries_no_cookie(
    offline_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reviewed case: a load fails, the app logs the exception, the traceback's frames hold the cookie."""
    unreachable = replace(
        offline_settings, emulator_host=f"127.0.0.1:{free_port()}", request_timeout=timedelta(seconds=1)
    )
    cookie = new_key()
    session = Session(datastore_client(unreachable), unreachable)
    with pytest.raises(StoreError):
        try:
            session.load(Ctx({unreachable.cookie_name: cookie}))
        except StoreError:
            structlog.get_logger("app").exception("session_load_failed")
            raise
    written = capsys.readouterr().err
    [line] = [json.loads(text) for text in written.splitlines() if "session_load_failed" in text]
    assert line["exception"][0]["exc_type"] == "TransientStoreError"  # the traceback is there ...
    assert cookie not in written and hash_key(cookie) not in written  # ... without the cookie
    assert all("locals" not in frame for frame in line["exception"][0]["frames"])


def test_a_secret_inside_a_rendered_exception_message_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    cookie = new_key()
    try:
        raise KeyError(f"no session {cookie}")
    except KeyError:
        structlog.get_logger("app").exception("lookup_failed")
    written = capsys.readouterr().err
    assert cookie not in written and REDACTED in written


@pytest.mark.parametrize(
    "shape",
    ["sid{}", "{}sid", "cookie=sid{};", "%3D{}", "%3d{}%3B", "viur_cookie%3D{}", "x{}y"],
)
def test_a_key_glued_to_letters_or_url_encoded_is_redacted(shape: str) -> None:
    cookie = new_key()
    for secret in (cookie, hash_key(cookie)):
        event = Redact()(None, "warning", {"event": "x", "error": f"refused {shape.format(secret)} at /login"})
        assert secret not in event["error"] and secret[:20] not in event["error"]
        assert event["error"].startswith("refused ") and event["error"].endswith(" at /login")
        assert REDACTED in event["error"]
