"""The job contract of maintenance: a step type per operation, registered by its ``op``, and its payloads.

A long maintenance run (a cleanup, a kill, a rehash) is a chain of bounded
steps. Each operation is one :class:`Step` type, defined beside the code that
runs it (:class:`~session_core.maintenance.cleanup.ClearStep`,
:class:`~session_core.maintenance.kill.KillStep`,
:class:`~session_core.maintenance.rehash.RehashStep`), that

- parses itself from a task payload (:meth:`Step.parse`), strictly: a payload
  that does not parse is a :class:`~session_core.errors.PayloadError` (HTTP
  400); a cursor must be URL-safe base64 of a protocol buffer, as
  Datastore's are (what only Datastore can tell apart is a PayloadError at
  the query too);
- says which step of its run a chain is at (:meth:`Step.for_chain`), which is
  how a step is checked against its run
  (:func:`~session_core.maintenance.runs.check_step`);
- runs itself (:meth:`Step.run`).

:func:`register` files a type under its ``op``; :func:`parse_step` and
:func:`step_type` are the one place that dispatches on ``op``. As Django
imports ``SESSION_ENGINE``, the built-in types' modules (:data:`BUILT_IN`) are
imported on the first lookup, so whatever parses a step finds them.

Task names are a hash of the op, the run id, the chain and the step number,
so a duplicated delivery or a re-enqueue of the same step is deduplicated by
Cloud Tasks. Handing a step to Cloud Tasks is :mod:`session_core.maintenance.dispatch`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib
import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Protocol, Self, TypeVar

from google.cloud import datastore
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import DecodeError

from session_core.config import Settings
from session_core.errors import PayloadError
from session_core.store import DeleteObserver

MAX_PAYLOAD_BYTES = 16 * 1024
_RUN_ID = re.compile(r"[0-9a-f]{32}")
_CURSOR = re.compile(r"[A-Za-z0-9_\-]{1,4000}={0,2}")
BUILT_IN = (
    "session_core.maintenance.cleanup",
    "session_core.maintenance.kill",
    "session_core.maintenance.rehash",
    "session_core.maintenance.reshard",
)
"""The modules whose step types the registry loads on its first lookup (each registers its own)."""


class StepResult(Protocol):
    """What a step's run answers: the JSON that ``session_task`` returns."""

    def to_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True, kw_only=True)
class Chain:
    """What every step carries of its chain besides its run's id: where the chain is and what paces it.

    ``cursor`` and ``page``: where the chain's query is; ``started``: the
    run's start (epoch seconds); ``done``: what the chain deleted before this
    step. Keyword-only, so a step type's own fields keep their positions; the
    wire form (:meth:`Step.to_json`) puts them last, after the type's own.
    """

    cursor: str | None = None
    page: int = 0
    started: float = 0.0
    done: int = 0


_CHAIN = tuple(f.name for f in fields(Chain))


class Step(Chain, ABC):
    """One bounded step of a maintenance run; each operation subclasses it as a frozen dataclass.

    Every step carries its run's id and its :class:`Chain` fields (where
    its chain is, ``cursor`` and ``page``, the run's start, ``started``, and
    what its chain did before it, ``done``: those pace it). ``shard`` is its
    chain's number (None: the run's only chain). Steps are values: two equal
    steps are the same step, and :attr:`task_id` names it.
    """

    op: ClassVar[str]
    run_id: str
    shard: int | None = None

    @classmethod
    @abstractmethod
    def parse(cls, payload: dict[str, Any]) -> Self:
        """The step a JSON object describes (its ``op`` is this type's); PayloadError on anything else."""

    @classmethod
    @abstractmethod
    def for_chain(cls, run_id: str, params: Mapping[str, Any], started: float, chain: int) -> Self:
        """The first step of ``chain`` of the run recorded with ``params``; the run's later steps move on from it."""

    @abstractmethod
    def run(self, work: Work) -> StepResult:
        """Do this step's work within the time budget and enqueue the next; ``chains``: how many its run has.

        Idempotent: a redelivered step is counted once
        (:meth:`~session_core.maintenance.runs.RunRecorder.record_step`).
        """

    @classmethod
    def describe(cls, receipt: Mapping[str, Any]) -> tuple[str, str]:
        """How ``session-core runs`` shows a run of this type, from its receipt: (what it did, to what)."""
        return f"     deleted {receipt['deleted']:>9,}", cls.op

    @property
    def chain(self) -> int:
        """The chain this step belongs to: its shard, or 0 for a run's only chain."""
        return 0 if self.shard is None else self.shard

    def at(self, cursor: str | None, page: int, done: int) -> Self:
        """This step moved on to ``cursor`` and ``page``, with ``done`` deleted by its chain before it."""
        return replace(self, cursor=cursor, page=page, done=done)

    def to_json(self) -> dict[str, Any]:
        """The task payload: ``op``, the type's own fields in their order, then the :class:`Chain` fields."""
        own = [f.name for f in fields(self) if f.name not in _CHAIN]
        return {"op": self.op, **{name: getattr(self, name) for name in (*own, *_CHAIN)}}

    @property
    def task_id(self) -> str:
        """Deterministic task name: the same run, chain and page always name the same task."""
        return task_id(self.op, self.run_id, str(self.shard), str(self.page))


Enqueue = Callable[[Step], None]
"""Hands the next step of a chain to whatever runs it later (Cloud Tasks: ``dispatch.CloudTasksQueue``)."""


@dataclass(frozen=True)
class Work:
    """What a step runs with: the store's client and settings, the queue (None: run the chain on inline),
    the observer of deleted sessions, and how many chains the step's run has."""

    client: datastore.Client
    settings: Settings
    enqueue: Enqueue | None
    observer: DeleteObserver | None = None
    chains: int = 1


S = TypeVar("S", bound=type[Step])
_TYPES: dict[str, type[Step]] = {}
_LOADED: list[bool] = []  # set once BUILT_IN is imported


def register(cls: S) -> S:
    """File a step type under its ``op`` (a class decorator); the same op twice is an error."""
    known = _TYPES.setdefault(cls.op, cls)
    if known is not cls:
        raise ValueError(f"op {cls.op!r} is taken by {known.__qualname__}")
    return cls


def unregister(op: str) -> None:
    """Forget the step type of ``op`` (tests that register a type of their own)."""
    _TYPES.pop(op, None)


def step_type(op: str) -> type[Step]:
    """The step type registered for ``op``; PayloadError if none is."""
    if not _LOADED:
        for module in BUILT_IN:
            importlib.import_module(module)  # each registers its own step type
        _LOADED.append(True)
    found = _TYPES.get(op)
    if found is None:
        raise PayloadError("unknown op")
    return found


def task_id(*parts: str) -> str:
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:40]


def parse_step(body: bytes) -> Step:
    """Parse a task payload strictly, as the step type its ``op`` names; raise PayloadError on anything unexpected."""
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
    op = payload.get("op")
    return step_type(op if isinstance(op, str) else "").parse(payload)


# -- JSON parsed strictly: task payloads, kill messages, clear bodies --------------------------


class DuplicateKeyError(ValueError):
    """A JSON object names a field twice (``{"user": "a", "user": null}``): never guess which one counts."""


def strict_json(text: str | bytes) -> Any:
    """``json.loads`` that refuses duplicate keys and NaN/Infinity.

    Raises DuplicateKeyError, RecursionError (nesting deeper than Python's
    stack) or ValueError; callers turn each into their bad-input error.
    """
    return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(key)
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


# -- what every step type parses the same way ------------------------------------------


def typed(payload: dict[str, Any], name: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
    """The named field if it has the type asked for (a JSON bool is not a number)."""
    value = payload[name]
    if optional and value is None:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise PayloadError(f"{name} has the wrong type")
    return value


def cursor_of(payload: dict[str, Any]) -> str | None:
    cursor: str | None = typed(payload, "cursor", str, optional=True)
    if cursor is not None:
        if not _CURSOR.fullmatch(cursor):
            raise PayloadError("cursor is not a query cursor")
        try:
            Empty.FromString(base64.urlsafe_b64decode(cursor.encode()))  # a cursor is a protocol buffer
        except (binascii.Error, ValueError, DecodeError):
            raise PayloadError("cursor is not a query cursor") from None
    return cursor


def page_of(payload: dict[str, Any]) -> int:
    page = typed(payload, "page", int)
    if not 0 <= page <= 10_000_000:
        raise PayloadError("page out of range")
    return int(page)


def exact_fields(payload: dict[str, Any], expected: set[str]) -> None:
    if set(payload) != expected:
        raise PayloadError(f"fields must be exactly {sorted(expected)}")
    run_id = typed(payload, "run_id", str)
    if not _RUN_ID.fullmatch(run_id):
        raise PayloadError("run_id is not 32 hex digits")


def epoch_of(payload: dict[str, Any], name: str, optional: bool = False) -> float | None:
    value = typed(payload, name, (int, float), optional=optional)
    if value is not None and (not math.isfinite(value) or value < 0):
        raise PayloadError(f"{name} is not a finite epoch time")
    return None if value is None else float(value)


def pace_of(payload: dict[str, Any]) -> tuple[float, int]:
    started = epoch_of(payload, "started")
    done = typed(payload, "done", int)
    if not 0 <= done <= 10**12:
        raise PayloadError("done out of range")
    assert started is not None
    return started, int(done)


def shard_field(payload: dict[str, Any]) -> int | None:
    shard = typed(payload, "shard", int, optional=True)
    if shard is not None and not 0 <= shard < 1024:
        raise PayloadError("shard out of range")
    return None if shard is None else int(shard)


def chain_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """What every step carries of its run and chain, checked: ``run_id``, ``cursor``, ``page``, ``started``, ``done``.

    Call it after :func:`exact_fields`; a step type's ``parse`` adds its own fields.
    """
    started, done = pace_of(payload)
    return {
        "run_id": payload["run_id"],
        "cursor": cursor_of(payload),
        "page": page_of(payload),
        "started": started,
        "done": done,
    }
