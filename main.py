"""Cloud Functions entry points: each hands its request to session_core and answers.

- ``clear_sessions``: HTTP, called by Cloud Scheduler; starts a cleanup run.
- ``kill_user_sessions``: CloudEvent, triggered by the kill-user Pub/Sub topic.
- ``session_task``: HTTP, called by Cloud Tasks; runs one step of a chain.

Settings are read when the instance starts (a bad one stops it, naming the
variable); clients are built once, on first use. One table maps library
errors to answers and log lines.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any

import flask
import functions_framework
import structlog
from cloudevents.http import CloudEvent

from session_core import Settings, functions
from session_core.errors import (
    BadInputError,
    BodyTooLargeError,
    ConfigError,
    DependencyUnavailableError,
    DispatchError,
    ForbiddenError,
    SessionCoreError,
    StoreError,
    UnauthenticatedError,
)
from session_core.logging import configure_logging

configure_logging()  # before anything can log, so even the first line is structured and redacted
log = structlog.get_logger("main")
SETTINGS = Settings.from_env(os.environ)  # a bad setting stops the instance at start-up, naming the variable

# error type -> (status, log line suffix, public message; None: the error's own words)
ANSWERS: dict[type[SessionCoreError], tuple[int, str, str | None]] = {  # the first that matches answers
    BodyTooLargeError: (413, "rejected", None),
    BadInputError: (400, "rejected", None),
    UnauthenticatedError: (401, "refused", None),
    ForbiddenError: (403, "refused", None),
    ConfigError: (500, "misconfigured", "the function is misconfigured; see its logs"),
    StoreError: (503, "failed", "datastore unavailable; retry"),
    DispatchError: (503, "failed", "cloud tasks unavailable; retry"),
    DependencyUnavailableError: (503, "failed", "token certificates unavailable; retry"),
}


@functools.cache
def runtime() -> functions.Runtime:
    return functions.Runtime.for_settings(SETTINGS)


def _handle(name: str, call: Callable[[], dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """Run a handler; map a library error to (status, body) and log ``<name>_<suffix>``."""
    structlog.contextvars.clear_contextvars()
    try:
        return 200, call()
    except SessionCoreError as exc:
        status, suffix, message = next(row for kind, row in ANSWERS.items() if isinstance(exc, kind))
        log.log(40 if status >= 500 else 30, f"{name}_{suffix}", status=status, error=str(exc))
        return status, {"error": message or str(exc)}


def _body(request: flask.Request) -> bytes:
    return functions.read_body(request.stream, request.content_length)


def _http(name: str, request: flask.Request, call: Callable[[], dict[str, Any]]) -> flask.Response:
    status, body = (405, {"error": "use POST"}) if request.method != "POST" else _handle(name, call)
    if status == 413:  # streamed, so functions-framework does not read the rest of the body after us
        return flask.Response(iter([json.dumps(body)]), status=413, mimetype="application/json")
    return flask.Response(json.dumps(body), status=status, mimetype="application/json")


@functions_framework.errorhandler(RecursionError)  # type: ignore[untyped-decorator]
def nested_too_deeply(error: RecursionError) -> tuple[str, int, dict[str, str]]:
    """A body nested deeper than Python's stack, met before our code (functions-framework parses CloudEvents).

    The Pub/Sub door acknowledges it (a redelivery would fail the same way,
    for ever); an HTTP door answers 400.
    """
    name = flask.current_app.name
    if name == "kill_user_sessions":
        log.warning("kill_message_rejected", status=200, error="the event is nested too deeply")
        return "", 200, {}
    log.warning(f"{name}_rejected", status=400, error="the body is nested too deeply")
    return json.dumps({"error": "the body is nested too deeply"}), 400, {"Content-Type": "application/json"}


@functions_framework.http
def clear_sessions(request: flask.Request) -> flask.Response:
    """POST, optional JSON ``{"dry_run": bool}``: start deleting expired sessions."""
    return _http("clear_sessions", request, lambda: functions.clear_sessions(runtime(), _body(request)))


@functions_framework.http
def session_task(request: flask.Request) -> flask.Response:
    """Cloud Tasks target: run one bounded step; 2xx only once the step is durable."""
    authorization = request.headers.get("Authorization")
    return _http("session_task", request, lambda: functions.session_task(runtime(), _body(request), authorization))


@functions_framework.cloud_event
def kill_user_sessions(cloud_event: CloudEvent) -> None:
    """Pub/Sub: a poison message is logged and acknowledged; a failure is logged and raised, so Pub/Sub redelivers."""
    status, body = _handle(
        "kill_message",
        lambda: functions.kill_user_sessions(runtime(), cloud_event.get_data(), str(cloud_event["id"])),
    )
    if status >= 500:
        raise RuntimeError(body["error"])
