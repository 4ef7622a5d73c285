"""Kill-by-user: end the sessions of one user, of every guest, or of everyone.

One user: the first batch (at most ``batch_size`` keys, one commit) is deleted
at once, so a typical user is logged out before the call returns; the rest
continues as a chain of steps. Guests and everyone: the key space is split
into ``shards`` ranges whose boundaries come from the keys actually present,
one chain per shard. With no queue every step runs inline.

Every step is idempotent (deleting an absent key is a no-op) and its task
name is derived from the run id, the shard and the page.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import itertools
import json
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import structlog
from google.cloud import datastore
from google.cloud.datastore.query import PropertyFilter

from session_core.config import Settings
from session_core.errors import SessionCoreError
from session_core.session import is_expired
from session_core.store import FAIL_FAST, GUEST_USER, SessionStore, session_id_of, translated
from session_core.sweep import (
    Progress,
    Sweep,
    delete_batch,
    key_names,
    page_limit,
    session_names,
    session_query,
    with_retries,
)
from session_core.tasks import Enqueue, KillStep, valid_session_id, valid_user

MAX_MESSAGE_BYTES = 10 * 1024
SAMPLES_PER_SHARD = 256
log = structlog.get_logger("session_core.revocation")


class PoisonMessageError(SessionCoreError):
    """A kill-user message that can never be processed; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"poison kill message: {reason}")


@dataclass(frozen=True)
class KillRequest:
    """A parsed kill message: ``user`` None means every session."""

    user: str | None
    except_session: str | None = None


@dataclass(frozen=True)
class KillResult:
    """What one kill invocation or step did."""

    run_id: str
    user: str
    shard: int | None
    deleted: int
    shards: int
    continued: bool
    elapsed_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_kill_message(data: bytes) -> KillRequest:
    """Parse a kill message's data (UTF-8 JSON); raise PoisonMessageError on anything else."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise PoisonMessageError(f"data larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        payload = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise PoisonMessageError("data is not UTF-8") from None
    except ValueError:
        raise PoisonMessageError("data is not JSON") from None
    if not isinstance(payload, dict):
        raise PoisonMessageError("data is not a JSON object")
    unknown = set(payload) - {"user", "except_session"}
    if unknown:
        raise PoisonMessageError(f"unknown fields: {sorted(unknown)}")
    if "user" not in payload:
        raise PoisonMessageError('"user" is missing (use null for every session)')
    user = payload["user"]
    if user is not None and not valid_user(user):
        raise PoisonMessageError('"user" must be null or a non-empty printable string of at most 1500 bytes')
    except_session = payload.get("except_session")
    if except_session is not None and not valid_session_id(except_session):
        raise PoisonMessageError('"except_session" must be a session id (64 hex digits), never a cookie')
    return KillRequest(user=user, except_session=except_session)


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def parse_pubsub_event(data: object) -> KillRequest:
    """The kill request inside a Pub/Sub CloudEvent's data (``{"message": {"data": base64}}``)."""
    message = data.get("message") if isinstance(data, Mapping) else None
    encoded = message.get("data") if isinstance(message, Mapping) else None
    if not isinstance(encoded, str):
        raise PoisonMessageError("not a Pub/Sub message with data")
    if len(encoded) > MAX_MESSAGE_BYTES * 4 // 3 + 4:
        raise PoisonMessageError(f"data larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise PoisonMessageError("message data is not base64") from None
    return parse_kill_message(raw)


def run_id_for(message_id: str) -> str:
    """The same message always gives the same run id, so its tasks deduplicate."""
    return hashlib.sha256(f"kill:{message_id}".encode()).hexdigest()[:32]


# -- shards -------------------------------------------------------------------


def split_points(sorted_names: Sequence[str], shards: int) -> list[str]:
    """Boundaries that cut a sorted sample into ``shards`` equal parts (fewer if the sample is small)."""
    if shards <= 1 or not sorted_names:
        return []
    points = [sorted_names[len(sorted_names) * i // shards] for i in range(1, shards)]
    return sorted(set(points))


def shard_ranges(points: Sequence[str]) -> list[tuple[str | None, str | None]]:
    """Half-open key-name ranges [lo, hi) covering every key, from split points."""
    bounds: list[str | None] = [None, *points, None]
    return list(itertools.pairwise(bounds))


def sample_key_names(client: datastore.Client, settings: Settings, count: int) -> list[str]:
    """About ``count`` key names drawn evenly from the sessions present, sorted.

    Production Datastore answers a ``__scatter__``-ordered query with a
    random sample (as Apache Beam splits queries). The Firestore emulator
    returns nothing for it; then one keys-only scan fills a reservoir sample.
    """

    def scatter() -> list[str]:
        query = session_query(client, settings)
        query.order = ["__scatter__"]
        with translated("query"):
            return [entity.key.name for entity in query.fetch(limit=count, **FAIL_FAST)]

    names: list[str] = with_retries(scatter)
    if len(names) >= min(count, 2):
        return sorted(names)
    reservoir: list[str] = []
    rng = random.Random()
    for seen, name in enumerate(session_names(client, settings), start=1):
        if len(reservoir) < count:
            reservoir.append(name)
        else:
            slot = rng.randrange(seen)
            if slot < count:
                reservoir[slot] = name
    return sorted(reservoir)


def plan_shards(client: datastore.Client, settings: Settings, shards: int) -> list[tuple[str | None, str | None]]:
    """Key ranges for ``shards`` parallel chains, balanced on the keys present."""
    sample = sample_key_names(client, settings, shards * SAMPLES_PER_SHARD)
    return shard_ranges(split_points(sample, shards))


def shard_of(name: str, points: Sequence[str]) -> int:
    """Which range of :func:`shard_ranges` a key name falls into."""
    return bisect.bisect_right(points, name)


# -- steps ----------------------------------------------------------------------


def _label(user: str | None) -> str:
    return "*" if user is None else user


def _query(client: datastore.Client, settings: Settings, step: KillStep) -> Callable[[], datastore.Query]:
    store = SessionStore(client, settings)

    def make() -> datastore.Query:
        query = session_query(client, settings)
        if step.user is not None:
            query.add_filter(filter=PropertyFilter("user", "=", step.user))
        if step.lo is not None:
            query.add_filter(filter=PropertyFilter("__key__", ">=", store.key(step.lo)))
        if step.hi is not None:
            query.add_filter(filter=PropertyFilter("__key__", "<", store.key(step.hi)))
        return query

    return make


def _keeper(except_session: str | None) -> Callable[[datastore.Key], bool] | None:
    if except_session is None:
        return None
    return lambda key: session_id_of(key.name) == except_session


def run_kill_step(
    client: datastore.Client,
    settings: Settings,
    step: KillStep,
    *,
    enqueue: Enqueue | None = None,
    first_batch_only: bool = False,
    progress: Progress | None = None,
) -> KillResult:
    """Run one step of a kill chain within the time budget; enqueue the next. Idempotent.

    With ``first_batch_only`` it deletes at most ``batch_size`` keys in one
    commit (the instant part of a one-user kill). Logs one ``kill_sessions`` line.
    """
    started = time.monotonic()
    page_size = settings.batch_size if first_batch_only else None
    sweep = Sweep(
        client,
        settings,
        _query(client, settings, step),
        keep=_keeper(step.except_session),
        page_size=page_size,
        progress=progress,
    )
    deadline = started + settings.time_budget.total_seconds() if enqueue is not None else None
    outcome = sweep.run(step.cursor, deadline=deadline, max_pages=1 if first_batch_only else None)
    deleted, cursor, page = outcome.deleted, outcome.cursor, step.page + outcome.pages
    if cursor is not None and enqueue is None:  # no queue: the rest runs here and now
        rest = Sweep(
            client,
            settings,
            _query(client, settings, step),
            keep=_keeper(step.except_session),
            progress=_offset(progress, deleted),
        )
        deleted += rest.run(cursor).deleted
        cursor = None
    if cursor is not None and enqueue is not None:
        enqueue(KillStep(step.run_id, step.user, step.except_session, step.shard, step.lo, step.hi, cursor, page))
    result = KillResult(
        run_id=step.run_id,
        user=_label(step.user),
        shard=step.shard,
        deleted=deleted,
        shards=0 if step.shard is None else 1,
        continued=cursor is not None,
        elapsed_s=round(time.monotonic() - started, 3),
    )
    log.info("kill_sessions", **result.to_json())
    return result


def _offset(progress: Progress | None, done: int) -> Progress | None:
    """Progress of a later sweep, counted on from ``done``."""
    if progress is None:
        return None
    report = progress
    return lambda count, elapsed: report(done + count, elapsed)


def killSessionByUser(  # noqa: N802 - ViUR's name
    user: str | None = None,
    *,
    client: datastore.Client,
    settings: Settings,
    except_session: str | None = None,
    enqueue: Enqueue | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
) -> KillResult:
    """Invalidate all active sessions of ``user``: "__guest__" all guests, None everyone.

    ``except_session`` (an opaque session id) survives. One user: the first
    batch is deleted before this returns; the rest goes to ``enqueue`` (or
    runs inline without a queue). Guests and everyone: one chain per shard,
    each enqueued (or run inline). Idempotent; a repeated ``run_id`` names
    the same tasks, so Cloud Tasks drops the duplicates.
    """
    if user is not None and not valid_user(user):
        raise ValueError("user must be None, '__guest__' or a user key string")
    if except_session is not None and not valid_session_id(except_session):
        raise ValueError("except_session must be a session id (64 hex digits)")
    run_id = run_id or uuid.uuid4().hex
    if user is not None and user != GUEST_USER:
        step = KillStep(run_id, user, except_session)
        return run_kill_step(client, settings, step, enqueue=enqueue, first_batch_only=True, progress=progress)
    started = time.monotonic()
    ranges = plan_shards(client, settings, settings.shards)
    deleted = 0
    for shard, (lo, hi) in enumerate(ranges):
        step = KillStep(run_id, user, except_session, shard, lo, hi)
        if enqueue is not None:
            enqueue(step)
        else:
            deleted += run_kill_step(client, settings, step, progress=_offset(progress, deleted)).deleted
    result = KillResult(
        run_id=run_id,
        user=_label(user),
        shard=None,
        deleted=deleted,
        shards=len(ranges),
        continued=enqueue is not None,
        elapsed_s=round(time.monotonic() - started, 3),
    )
    log.info("kill_sessions", **result.to_json())
    return result


# -- one user's devices -----------------------------------------------------------


@dataclass(frozen=True)
class SessionInfo:
    """One active session of a user, safe to show: no cookie, no key."""

    session_id: str
    lastseen: float
    user_agent: str | None
    ip: str | None


def list_user_sessions(
    client: datastore.Client, settings: Settings, user: str, *, now: float | None = None
) -> list[SessionInfo]:
    """The user's active sessions, most recent first.

    ``user_agent`` and ``ip`` are read from the session data fields of those
    names, if the app stores them. Reads full entities, 100 a page.
    """
    now = time.time() if now is None else now
    infos: list[SessionInfo] = []
    cursor = None
    while True:
        query = client.query(kind=settings.kind, namespace=settings.namespace)
        query.add_filter(filter=PropertyFilter("user", "=", user))
        iterator = query.fetch(limit=100, start_cursor=cursor)
        with translated("query"):
            entities = list(iterator)
        for entity in entities:
            record = SessionStore.from_entity(entity)
            if is_expired(record.lastseen, now, settings.life_time):
                continue
            agent, ip = record.data.get("user_agent"), record.data.get("ip")
            infos.append(
                SessionInfo(
                    session_id=record.session_id,
                    lastseen=record.lastseen,
                    user_agent=agent if isinstance(agent, str) else None,
                    ip=ip if isinstance(ip, str) else None,
                )
            )
        token = iterator.next_page_token
        cursor = token.decode() if isinstance(token, bytes) else token
        if len(entities) < 100 or cursor is None:
            return sorted(infos, key=lambda info: info.lastseen, reverse=True)


def end_user_session(client: datastore.Client, settings: Settings, user: str, session_id: str) -> bool:
    """End one of ``user``'s sessions by its opaque id ("sign out this device").

    Only that user's session can be ended. True if one was deleted.
    """
    if not valid_session_id(session_id):
        return False
    store = SessionStore(client, settings)
    with translated("lookup"):
        entity = client.get(store.key(session_id))
    name = session_id
    if entity is None or entity.get("user") != user:  # a ViUR session under its plain name, or not theirs

        def users_keys() -> datastore.Query:
            query = session_query(client, settings)
            query.add_filter(filter=PropertyFilter("user", "=", user))
            return query

        found = key_names(users_keys, page_limit(settings))
        match = next((candidate for candidate in found if session_id_of(candidate) == session_id), None)
        if match is None:
            return False
        name = match
    delete_batch(client, [store.key(name)])
    return True
