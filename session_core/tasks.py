"""Cloud Tasks: step payloads, deterministic task names, and dispatch.

A long maintenance run is a chain of bounded steps. Each step is a small JSON
payload that ``session_task`` receives; parsing is strict, and a payload that
does not parse is a :class:`PayloadError` (HTTP 400, not retried). Task names
are a hash of the run id and the step number, so a duplicated delivery or a
re-enqueue of the same step is deduplicated by Cloud Tasks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import tasks_v2
from google.protobuf import duration_pb2

from session_core.config import Settings
from session_core.errors import SessionCoreError, StoreError

MAX_PAYLOAD_BYTES = 16 * 1024
_RUN_ID = re.compile(r"[0-9a-f]{32}")
_CURSOR = re.compile(r"[A-Za-z0-9_\-]{1,4000}={0,2}")


class PayloadError(SessionCoreError):
    """A task payload that is not exactly what we enqueue; ``reason`` says what is wrong."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"bad task payload: {reason}")


@dataclass(frozen=True)
class ClearStep:
    """One bounded step of an expired-session cleanup run."""

    run_id: str
    cutoff: float
    cursor: str | None = None
    page: int = 0
    dry_run: bool = False

    op = "clear"

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "run_id": self.run_id,
            "cutoff": self.cutoff,
            "cursor": self.cursor,
            "page": self.page,
            "dry_run": self.dry_run,
        }

    @property
    def task_id(self) -> str:
        """Deterministic task name: the same run and page always name the same task."""
        return task_id(self.op, self.run_id, str(self.page))


def task_id(*parts: str) -> str:
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:40]


def _field(payload: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = payload[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise PayloadError(f"{name} has the wrong type")
    return value


def parse_step(body: bytes) -> ClearStep:
    """Parse a task payload strictly; raise PayloadError on anything unexpected."""
    if len(body) > MAX_PAYLOAD_BYTES:
        raise PayloadError("payload too large")
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise PayloadError("not JSON") from None
    if not isinstance(payload, dict):
        raise PayloadError("not a JSON object")
    if payload.get("op") != "clear":
        raise PayloadError("unknown op")
    expected = {"op", "run_id", "cutoff", "cursor", "page", "dry_run"}
    if set(payload) != expected:
        raise PayloadError(f"fields must be exactly {sorted(expected)}")
    run_id = _field(payload, "run_id", str)
    if not _RUN_ID.fullmatch(run_id):
        raise PayloadError("run_id is not 32 hex digits")
    cutoff = _field(payload, "cutoff", (int, float))
    if isinstance(cutoff, bool) or not math.isfinite(cutoff) or cutoff < 0:
        raise PayloadError("cutoff is not a finite epoch time")
    cursor = payload["cursor"]
    if cursor is not None:
        if not isinstance(cursor, str) or not _CURSOR.fullmatch(cursor):
            raise PayloadError("cursor is not a query cursor")
        try:
            base64.urlsafe_b64decode(cursor.encode())
        except (binascii.Error, ValueError):
            raise PayloadError("cursor is not a query cursor") from None
    page = _field(payload, "page", int)
    if not 0 <= page <= 10_000_000:
        raise PayloadError("page out of range")
    dry_run = _field(payload, "dry_run", bool)
    return ClearStep(run_id=run_id, cutoff=float(cutoff), cursor=cursor, page=page, dry_run=dry_run)


Enqueue = Callable[[ClearStep], None]


class CloudTasksQueue:
    """Enqueue steps as HTTP tasks to ``session_task``; a duplicate name is success.

    One CreateTask RPC per step. With ``SESSION_TASKS_SERVICE_ACCOUNT`` the task
    carries an OIDC token for that account with the task URL as audience.
    """

    def __init__(self, client: tasks_v2.CloudTasksClient, settings: Settings) -> None:
        if settings.tasks_queue is None or settings.task_url is None:
            raise ValueError("CloudTasksQueue needs SESSION_TASKS_QUEUE and SESSION_TASK_URL")
        self.client = client
        self.queue = settings.tasks_queue
        self.url = settings.task_url
        self.service_account = settings.tasks_service_account
        self.deadline = min(settings.time_budget + timedelta(seconds=120), timedelta(minutes=30))

    def task(self, step: ClearStep) -> tasks_v2.Task:
        request = tasks_v2.HttpRequest(
            http_method=tasks_v2.HttpMethod.POST,
            url=self.url,
            headers={"Content-Type": "application/json"},
            body=json.dumps(step.to_json()).encode(),
        )
        if self.service_account:
            request.oidc_token = tasks_v2.OidcToken(service_account_email=self.service_account, audience=self.url)
        return tasks_v2.Task(
            name=f"{self.queue}/tasks/{step.task_id}",
            http_request=request,
            dispatch_deadline=duration_pb2.Duration(seconds=int(self.deadline.total_seconds())),
        )

    def __call__(self, step: ClearStep) -> None:
        try:
            self.client.create_task(parent=self.queue, task=self.task(step))
        except gexc.AlreadyExists:
            return  # the same step was enqueued before: Cloud Tasks deduplicated it
        except gexc.GoogleAPICallError as exc:
            raise StoreError("enqueue", exc) from exc
