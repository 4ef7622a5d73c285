"""Cloud Functions entry points. Each one parses its input, calls session_core, and answers.

- ``clear_sessions``: HTTP, called by Cloud Scheduler; starts a cleanup run.
- ``kill_user_sessions``: CloudEvent, triggered by the kill-user Pub/Sub topic.
- ``session_task``: HTTP, called by Cloud Tasks; runs one step of a chain.

Clients and settings are built once per instance, on first use. Errors map to
status codes: bad input 400/405, a caller without a valid token 401/403,
Datastore failures 503 (so Scheduler and Cloud Tasks retry; every step is
idempotent). A poison Pub/Sub message is logged and acknowledged.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import flask
import functions_framework
import structlog
from cloudevents.http import CloudEvent
from google.auth.transport import requests as auth_requests

from session_core import Settings, StoreError
from session_core.auth import AuthError, verify_task_caller
from session_core.cleanup import run_clear_step, start_clear_sessions
from session_core.clients import datastore_client, tasks_client
from session_core.logging import configure_logging
from session_core.revocation import PoisonMessageError, killSessionByUser, parse_pubsub_event, run_id_for, run_kill_step
from session_core.tasks import ClearStep, CloudTasksQueue, Enqueue, PayloadError, parse_step

log = structlog.get_logger("main")


class _Runtime:
    def __init__(self) -> None:
        configure_logging()
        self.settings = Settings.from_env(os.environ)
        self.datastore = datastore_client(self.settings)
        self.enqueue: Enqueue | None = None
        if self.settings.tasks_queue is not None:
            self.enqueue = CloudTasksQueue(tasks_client(self.settings), self.settings)
        self.auth_request = auth_requests.Request()


@functools.cache
def runtime() -> _Runtime:
    return _Runtime()


def _answer(status: int, **body: Any) -> flask.Response:
    return flask.Response(json.dumps(body), status=status, mimetype="application/json")


@functions_framework.http
def clear_sessions(request: flask.Request) -> flask.Response:
    """POST, optional JSON ``{"dry_run": bool}``: start deleting expired sessions."""
    if request.method != "POST":
        return _answer(405, error="use POST")
    body = request.get_data()
    try:
        options = json.loads(body) if body.strip() else {}
    except ValueError:
        return _answer(400, error="body is not JSON")
    if (
        not isinstance(options, dict)
        or set(options) - {"dry_run"}
        or not isinstance(options.get("dry_run", False), bool)
    ):
        return _answer(400, error='body must be {} or {"dry_run": true|false}')
    rt = runtime()
    try:
        result = start_clear_sessions(
            rt.datastore, rt.settings, enqueue=rt.enqueue, dry_run=options.get("dry_run", False)
        )
    except StoreError as exc:
        log.error("clear_sessions_failed", operation=exc.operation, error=str(exc.cause))
        return _answer(503, error="datastore unavailable; retry")
    return _answer(200, **result.to_json())


@functions_framework.cloud_event
def kill_user_sessions(cloud_event: CloudEvent) -> None:
    """Pub/Sub: ``{"user": ..., "except_session": ...}``. Poison messages are logged and dropped.

    Idempotent: the run id comes from the message id, so a redelivery names
    the same tasks. A Datastore failure raises, so Pub/Sub redelivers.
    """
    try:
        kill = parse_pubsub_event(cloud_event.get_data())
    except PoisonMessageError as exc:
        log.error("kill_message_rejected", reason=exc.reason, message_id=cloud_event["id"])
        return
    rt = runtime()
    killSessionByUser(
        kill.user,
        client=rt.datastore,
        settings=rt.settings,
        except_session=kill.except_session,
        enqueue=rt.enqueue,
        run_id=run_id_for(str(cloud_event["id"])),
    )


@functions_framework.http
def session_task(request: flask.Request) -> flask.Response:
    """Cloud Tasks target: run one bounded step; 2xx only once the step is durable."""
    if request.method != "POST":
        return _answer(405, error="use POST")
    rt = runtime()
    try:
        verify_task_caller(request.headers.get("Authorization"), rt.settings, rt.auth_request)
    except AuthError as exc:
        log.warning("session_task_refused", status=exc.status, reason=exc.reason)
        return _answer(exc.status, error=exc.reason)
    try:
        step = parse_step(request.get_data())
    except PayloadError as exc:
        log.error("session_task_rejected", reason=exc.reason)
        return _answer(400, error=exc.reason)
    try:
        if isinstance(step, ClearStep):
            result: Any = run_clear_step(rt.datastore, rt.settings, step, enqueue=rt.enqueue)
        else:
            result = run_kill_step(rt.datastore, rt.settings, step, enqueue=rt.enqueue)
    except StoreError as exc:
        log.error("session_task_failed", run_id=step.run_id, operation=exc.operation, error=str(exc.cause))
        return _answer(503, error="datastore unavailable; retry")
    return _answer(200, **result.to_json())
