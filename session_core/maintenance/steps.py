"""Task steps: the payloads of a long run's chain, their strict parsing, and their task names.

A long maintenance run is a chain of bounded steps. Each step is a small JSON
payload that ``session_task`` receives; parsing is strict, and a payload that
does not parse is a :class:`~session_core.errors.PayloadError` (HTTP 400): a
cursor must be URL-safe base64 of a protocol buffer, as Datastore's are (what
only Datastore can tell apart is a PayloadError at the query too).
Task names are a hash of the run id and the step number, so a duplicated
delivery or a re-enqueue of the same step is deduplicated by Cloud Tasks.
Handing a step to Cloud Tasks is :mod:`session_core.maintenance.dispatch`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import DecodeError

from session_core.errors import PayloadError
from session_core.maintenance.messages import DuplicateKeyError, strict_json
from session_core.rules import valid_session_id, valid_user

MAX_PAYLOAD_BYTES = 16 * 1024
_RUN_ID = re.compile(r"[0-9a-f]{32}")
_CURSOR = re.compile(r"[A-Za-z0-9_\-]{1,4000}={0,2}")


@dataclass(frozen=True)
class ClearStep:
    """One bounded step of an expired-session cleanup run: one chain, the slice ``lo <= lastseen < hi``.

    ``shard`` None is the run's only chain (no bounds); otherwise ``lo`` and
    ``hi`` (None: unbounded) bound the slice, below the cutoff either way.
    ``started`` is the run's start (epoch seconds) and ``done`` what the
    chain deleted before this step: together they pace it (ramp-up).
    """

    run_id: str
    cutoff: float
    cursor: str | None = None
    page: int = 0
    dry_run: bool = False
    shard: int | None = None
    lo: float | None = None
    hi: float | None = None
    started: float = 0.0
    done: int = 0

    op = "clear"

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, **asdict(self)}

    @property
    def task_id(self) -> str:
        """Deterministic task name: the same run, chain and page always name the same task."""
        return task_id(self.op, self.run_id, str(self.shard), str(self.page))


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
    started: float = 0.0
    done: int = 0

    op = "kill"

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, **asdict(self)}

    @property
    def task_id(self) -> str:
        return task_id(self.op, self.run_id, str(self.shard), str(self.page))


@dataclass(frozen=True)
class RehashStep:
    """One bounded step of a rehash run: move (or, with ``delete``, delete) ViUR plain-key sessions."""

    run_id: str
    delete: bool = False
    dry_run: bool = False
    cursor: str | None = None
    page: int = 0
    started: float = 0.0
    done: int = 0

    op = "rehash"

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, **asdict(self)}

    @property
    def task_id(self) -> str:
        return task_id(self.op, self.run_id, str(self.page))


Step = ClearStep | KillStep | RehashStep
Enqueue = Callable[[Step], None]
"""Hands the next step of a chain to whatever runs it later (Cloud Tasks: ``dispatch.CloudTasksQueue``)."""


def _field(payload: dict[str, Any], name: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
    """The named field if it has the type asked for (a JSON bool is not a number)."""
    value = payload[name]
    if optional and value is None:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise PayloadError(f"{name} has the wrong type")
    return value


def _cursor(payload: dict[str, Any]) -> str | None:
    cursor: str | None = _field(payload, "cursor", str, optional=True)
    if cursor is not None:
        if not _CURSOR.fullmatch(cursor):
            raise PayloadError("cursor is not a query cursor")
        try:
            Empty.FromString(base64.urlsafe_b64decode(cursor.encode()))  # a cursor is a protocol buffer
        except (binascii.Error, ValueError, DecodeError):
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


def _epoch(payload: dict[str, Any], name: str, optional: bool = False) -> float | None:
    value = _field(payload, name, (int, float), optional=optional)
    if value is not None and (not math.isfinite(value) or value < 0):
        raise PayloadError(f"{name} is not a finite epoch time")
    return None if value is None else float(value)


def _pace(payload: dict[str, Any]) -> tuple[float, int]:
    started = _epoch(payload, "started")
    done = _field(payload, "done", int)
    if not 0 <= done <= 10**12:
        raise PayloadError("done out of range")
    assert started is not None
    return started, int(done)


def _parse_clear(payload: dict[str, Any]) -> ClearStep:
    _exact_fields(
        payload, {"op", "run_id", "cutoff", "cursor", "page", "dry_run", "shard", "lo", "hi", "started", "done"}
    )
    cutoff = _epoch(payload, "cutoff")
    assert cutoff is not None
    shard = _field(payload, "shard", int, optional=True)
    if shard is not None and not 0 <= shard < 1024:
        raise PayloadError("shard out of range")
    lo, hi = _epoch(payload, "lo", optional=True), _epoch(payload, "hi", optional=True)
    if shard is None and (lo, hi) != (None, None):
        raise PayloadError("bounds without a shard")
    started, done = _pace(payload)
    return ClearStep(
        run_id=payload["run_id"],
        cutoff=cutoff,
        cursor=_cursor(payload),
        page=_page(payload),
        dry_run=_field(payload, "dry_run", bool),
        shard=shard,
        lo=lo,
        hi=hi,
        started=started,
        done=done,
    )


def _parse_rehash(payload: dict[str, Any]) -> RehashStep:
    _exact_fields(payload, {"op", "run_id", "delete", "dry_run", "cursor", "page", "started", "done"})
    started, done = _pace(payload)
    return RehashStep(
        run_id=payload["run_id"],
        delete=_field(payload, "delete", bool),
        dry_run=_field(payload, "dry_run", bool),
        cursor=_cursor(payload),
        page=_page(payload),
        started=started,
        done=done,
    )


def _parse_kill(payload: dict[str, Any]) -> KillStep:
    _exact_fields(
        payload,
        {"op", "run_id", "user", "except_session", "shard", "lo", "hi", "cursor", "page", "started", "done"},
    )
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
    started, done = _pace(payload)
    return KillStep(
        run_id=payload["run_id"],
        user=user,
        except_session=except_session,
        shard=shard,
        lo=bounds[0],
        hi=bounds[1],
        cursor=_cursor(payload),
        page=_page(payload),
        started=started,
        done=done,
    )


def parse_step(body: bytes) -> Step:
    """Parse a task payload strictly; raise PayloadError on anything unexpected."""
    if len(body) > MAX_PAYLOAD_BYTES:
        raise PayloadError("payload too large")
    try:
        payload = strict_json(body)
    except DuplicateKeyError as exc:
        raise PayloadError(f"duplicate field {exc.args[0]!r}") from None
    except RecursionError:
        raise PayloadError("nested too deeply") from None
    except (UnicodeDecodeError, ValueError):
        raise PayloadError("not JSON") from None
    if not isinstance(payload, dict):
        raise PayloadError("not a JSON object")
    if payload.get("op") == "clear":
        return _parse_clear(payload)
    if payload.get("op") == "kill":
        return _parse_kill(payload)
    if payload.get("op") == "rehash":
        return _parse_rehash(payload)
    raise PayloadError("unknown op")
