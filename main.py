"""Cloud Functions entry points: each hands its request to session_core and answers.

- ``clear_sessions``: HTTP, called by Cloud Scheduler; starts a cleanup run.
- ``kill_user_sessions``: CloudEvent, triggered by the kill-user Pub/Sub topic.
- ``session_task``: HTTP, called by Cloud Tasks; runs one step of a chain.

Settings are read when the instance starts: a bad one stops it with exit
status 1 and one JSON log line naming the variable. Clients are built once,
on first use. One table maps library errors to answers and log lines.

The Pub/Sub door (``kill_user_sessions``) acknowledges, with one log line,
every event that can never succeed, even where functions-framework reads it
before our code does: a body over :data:`MAX_EVENT_BYTES` (refused after
reading at most that much), and one the cloudevents library cannot parse.
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
from cloudevents import exceptions as cloud_exceptions
from cloudevents.http import CloudEvent
from werkzeug.exceptions import RequestEntityTooLarge

from session_core import ConfigError, SessionCoreError, Settings, StoreError, functions
from session_core.logging import configure_logging
from session_core.maintenance import (
    BadInputError,
    BodyTooLargeError,
    DependencyUnavailableError,
    DispatchError,
    ForbiddenError,
    PoisonMessageError,
    UnauthenticatedError,
)
from session_core.maintenance.kill import MAX_EVENT_BYTES

configure_logging()  # before anything can log, so even the first line is structured and redacted
log = structlog.get_logger("main")
try:
    SETTINGS = Settings.from_env(os.environ)
except ConfigError as exc:  # a bad setting stops the instance at start-up: one line naming the variable
    log.critical("settings_invalid", variable=exc.setting, error=str(exc))
    raise SystemExit(1) from None

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


def _unreadable(status: int, reason: str) -> tuple[str, int, dict[str, str]]:
    """A body our code never saw (functions-framework reads CloudEvents first): one log line and an answer.

    The Pub/Sub door acknowledges it (a redelivery would fail the same way,
    for ever); an HTTP door answers ``status``.
    """
    name = flask.current_app.name
    if name == "kill_user_sessions":
        log.warning("kill_message_rejected", status=200, error=f"the event {reason}")
        return "", 200, {}
    log.warning(f"{name}_rejected", status=status, error=f"the body {reason}")
    return json.dumps({"error": f"the body {reason}"}), status, {"Content-Type": "application/json"}


@functions_framework.errorhandler(RecursionError)  # type: ignore[untyped-decorator]
def nested_too_deeply(error: RecursionError) -> tuple[str, int, dict[str, str]]:
    """A body nested deeper than Python's stack."""
    return _unreadable(400, "is nested too deeply")


@functions_framework.errorhandler(cloud_exceptions.GenericException)  # type: ignore[untyped-decorator]
def not_a_cloud_event(error: cloud_exceptions.GenericException) -> tuple[str, int, dict[str, str]]:
    """A CloudEvent the cloudevents library cannot read (it wraps a RecursionError in DataUnmarshallerError)."""
    nested = isinstance(error.__cause__ or error.__context__, RecursionError) or "RecursionError" in str(error)
    return _unreadable(
        400, "is nested too deeply" if nested else f"is not a readable CloudEvent ({type(error).__name__})"
    )


@functions_framework.errorhandler(RequestEntityTooLarge)  # type: ignore[untyped-decorator]
def too_large(error: RequestEntityTooLarge) -> tuple[str, int, dict[str, str]]:
    """A body over the Pub/Sub door's cap (:func:`_cap_event_bodies`), refused after reading at most the cap."""
    return _unreadable(413, f"is over {MAX_EVENT_BYTES} bytes")


def _cap_event_bodies() -> None:
    """Cap what functions-framework reads of a CloudEvent at MAX_EVENT_BYTES, as the HTTP doors cap theirs.

    functions-framework reads the whole body before calling the Pub/Sub door.
    With Flask's ``MAX_CONTENT_LENGTH`` one byte over the cap, a larger
    declared body is refused unread (``RequestEntityTooLarge``, answered by
    :func:`too_large`), and of a chunked one werkzeug reads one byte more
    than the cap and stops, so :func:`kill_user_sessions` sees that it is
    over. The HTTP doors keep their own, smaller cap
    (:func:`session_core.functions.read_body`) and their 413 answers.
    """
    if flask.has_app_context() and flask.current_app.name == "kill_user_sessions":  # functions-framework's app
        flask.current_app.config["MAX_CONTENT_LENGTH"] = MAX_EVENT_BYTES + 1


_cap_event_bodies()


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

    def kill() -> dict[str, Any]:
        if len(flask.request.get_data()) > MAX_EVENT_BYTES:  # what functions-framework read (a chunked body)
            raise PoisonMessageError(f"event larger than {MAX_EVENT_BYTES} bytes")
        return functions.kill_user_sessions(runtime(), cloud_event.get_data(), str(cloud_event["id"]))

    status, body = _handle("kill_message", kill)
    if status >= 500:
        raise RuntimeError(body["error"])
