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
from dataclasses import asdict, dataclass
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
        return {"op": self.op, **asdict(self)}

    @property
    def task_id(self) -> str:
        """Deterministic task name: the same run and page always name the same task."""
        return task_id(self.op, self.run_id, str(self.page))


def task_id(*parts: str) -> str:
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:40]


@dataclass(frozen=True)
class KillStep:
    """One bounded step of a kill-by-user run: one user's sessions, or one key-range shard.

    ``user`` None means every session; ``shard`` None means the one-user chain,
    otherwise ``lo`` <= key name < ``hi`` (None: unbounded) bounds the shard.
    ``except_session`` is an opaque session id (SHA-256 hex), never a cookie.
    """

    run_id: str
    user: str | None
    except_session: str | None = None
    shard: int | None = None
    lo: str | None = None
    hi: str | None = None
    cursor: str | None = None
    page: int = 0

    op = "kill"

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, **asdict(self)}

    @property
    def task_id(self) -> str:
        return task_id(self.op, self.run_id, str(self.shard), str(self.page))


Step = ClearStep | KillStep
_SESSION_ID = re.compile(r"[0-9a-f]{64}")
MAX_USER_BYTES = 1500  # Datastore's limit for an indexed string


def _field(payload: dict[str, Any], name: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
    """The named field if it has the type asked for (a JSON bool is not a number)."""
    value = payload[name]
    if optional and value is None:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise PayloadError(f"{name} has the wrong type")
    return value


def valid_user(value: object) -> bool:
    """A user key as it is stored: a non-empty string that fits an index."""
    return (
        isinstance(value, str)
        and 0 < len(value.encode("utf-8", "surrogatepass")) <= MAX_USER_BYTES
        and value.isprintable()
    )


def valid_session_id(value: object) -> bool:
    return isinstance(value, str) and _SESSION_ID.fullmatch(value) is not None


def _cursor(payload: dict[str, Any]) -> str | None:
    cursor: str | None = _field(payload, "cursor", str, optional=True)
    if cursor is not None:
        if not _CURSOR.fullmatch(cursor):
            raise PayloadError("cursor is not a query cursor")
        try:
            base64.urlsafe_b64decode(cursor.encode())
        except (binascii.Error, ValueError):
            raise PayloadError("cursor is not a query cursor") from None
    return cursor


def _page(payload: dict[str, Any]) -> int:
    page = _field(payload, "page", int)
    if not 0 <= page <= 10_000_000:
        raise PayloadError("page out of range")
    return int(page)


def _exact_fields(payload: dict[str, Any], expected: set[str]) -> None:
    if set(payload) != expected:
        raise PayloadError(f"fields must be exactly {sorted(expected)}")
    run_id = _field(payload, "run_id", str)
    if not _RUN_ID.fullmatch(run_id):
        raise PayloadError("run_id is not 32 hex digits")


def _parse_clear(payload: dict[str, Any]) -> ClearStep:
    _exact_fields(payload, {"op", "run_id", "cutoff", "cursor", "page", "dry_run"})
    cutoff = _field(payload, "cutoff", (int, float))
    if not math.isfinite(cutoff) or cutoff < 0:
        raise PayloadError("cutoff is not a finite epoch time")
    return ClearStep(
        run_id=payload["run_id"],
        cutoff=float(cutoff),
        cursor=_cursor(payload),
        page=_page(payload),
        dry_run=_field(payload, "dry_run", bool),
    )


def _parse_kill(payload: dict[str, Any]) -> KillStep:
    _exact_fields(payload, {"op", "run_id", "user", "except_session", "shard", "lo", "hi", "cursor", "page"})
    user = payload["user"]
    if user is not None and not valid_user(user):
        raise PayloadError("user is not a user key")
    except_session = payload["except_session"]
    if except_session is not None and not valid_session_id(except_session):
        raise PayloadError("except_session is not a session id")
    shard = _field(payload, "shard", int, optional=True)
    if shard is not None and not 0 <= shard < 1024:
        raise PayloadError("shard out of range")
    bounds = [_field(payload, name, str, optional=True) for name in ("lo", "hi")]
    if any(bound is not None and (not bound or len(bound) > 1500) for bound in bounds):
        raise PayloadError("shard bounds are not key names")
    if shard is None and bounds != [None, None]:
        raise PayloadError("bounds without a shard")
    return KillStep(
        run_id=payload["run_id"],
        user=user,
        except_session=except_session,
        shard=shard,
        lo=bounds[0],
        hi=bounds[1],
        cursor=_cursor(payload),
        page=_page(payload),
    )


def parse_step(body: bytes) -> Step:
    """Parse a task payload strictly; raise PayloadError on anything unexpected."""
    if len(body) > MAX_PAYLOAD_BYTES:
        raise PayloadError("payload too large")
    try:
        payload = json.loads(body, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError):
        raise PayloadError("not JSON") from None
    if not isinstance(payload, dict):
        raise PayloadError("not a JSON object")
    if payload.get("op") == "clear":
        return _parse_clear(payload)
    if payload.get("op") == "kill":
        return _parse_kill(payload)
    raise PayloadError("unknown op")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


Enqueue = Callable[[Step], None]


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

    def task(self, step: Step) -> tasks_v2.Task:
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

    def __call__(self, step: Step) -> None:
        try:
            self.client.create_task(parent=self.queue, task=self.task(step))
        except gexc.AlreadyExists:
            return  # the same step was enqueued before: Cloud Tasks deduplicated it
        except gexc.GoogleAPICallError as exc:
            raise StoreError("enqueue", exc) from exc
