"""Log lines never carry credentials or session contents."""

from __future__ import annotations

import json

import pytest
import structlog

from session_core.logging import REDACTED, Redact, configure_logging


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
