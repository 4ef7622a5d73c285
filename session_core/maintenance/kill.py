"""Kill-by-user: end the sessions of one user, of every guest, or of everyone.

One user: the first batch (at most ``batch_size`` keys, one commit) is deleted
at once, so a typical user is logged out before the call returns; the rest
continues as a chain of steps. Guests and everyone: the key space is split
into ``shards`` ranges whose boundaries come from the keys actually present,
one chain per shard. With no queue every step runs inline.

Every step is idempotent (deleting an absent key is a no-op) and its task
name is derived from the run id, the shard and the page.

Async apps call the awaitable forms (``akill_sessions``,
``alist_user_sessions``, ``aend_user_session``, ``alogout_everywhere_else``):
the same functions, run in a worker thread so that the event loop never waits
on Datastore.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import itertools
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial, wraps
from typing import Any, ParamSpec, TypeVar, overload

import structlog
from google.api_core import exceptions as gexc
from google.cloud import datastore

from session_core._datastore import FAIL_FAST, commit, translated
from session_core.config import Settings
from session_core.contract import Store
from session_core.epochs import EVERYONE as EPOCH_EVERYONE
from session_core.epochs import GUESTS as EPOCH_GUESTS
from session_core.errors import MisuseError, PayloadError, PoisonMessageError, StoreError
from session_core.logins import kill_record
from session_core.maintenance.events import EventPublisher, batch_events
from session_core.maintenance.pacing import pacer_for
from session_core.maintenance.runs import Run, RunRecorder
from session_core.maintenance.steps import (
    DuplicateKeyError,
    Enqueue,
    Step,
    Work,
    chain_fields,
    exact_fields,
    register,
    shard_field,
    strict_json,
    typed,
)
from session_core.maintenance.sweep import (
    Progress,
    Sweep,
    delete_batch,
    key_names,
    notify,
    offset_progress,
    page_limit,
    session_names,
    session_query,
    with_retries,
)
from session_core.rules import GUEST_USER, is_expired, session_id_of, valid_session_id, valid_user
from session_core.session import Session
from session_core.store import DeleteObserver, SessionStore

log = structlog.get_logger("session_core.kill")
T = TypeVar("T")
P = ParamSpec("P")


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
    # A kill of everyone or of every guest: the epoch it raised (its counter, when), and how long after the call.
    epoch: int | None = None
    epoch_at: float | None = None
    epoch_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- kill-user messages: what an app publishes to the kill-user topic, parsed strictly -----------------
#
# The message data is UTF-8 JSON, exactly ``{"user": USER | "__guest__" | null}`` with an optional
# ``"except_session": SESSION_ID``. Anything else raises PoisonMessageError: it can never succeed, so it
# is logged and acknowledged, never redelivered.

MAX_MESSAGE_BYTES = 10 * 1024
# The most of a CloudEvent the kill door reads: the largest valid message's data, base64, and room for
# the Pub/Sub envelope around it (ids, publish time, subscription, attributes); anything larger is poison.
MAX_EVENT_BYTES = 64 * 1024


@dataclass(frozen=True)
class KillRequest:
    """A parsed kill message: ``user`` None means every session."""

    user: str | None
    except_session: str | None = None


def parse_kill_message(data: bytes) -> KillRequest:
    """Parse a kill message's data (UTF-8 JSON); raise PoisonMessageError on anything else."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise PoisonMessageError(f"data larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        payload = strict_json(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise PoisonMessageError("data is not UTF-8") from None
    except DuplicateKeyError as exc:
        raise PoisonMessageError(f"duplicate field {exc.args[0]!r}") from None
    except RecursionError:
        raise PoisonMessageError("data is nested too deeply") from None
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


# -- shards: key ranges for the parallel chains of a kill of guests or of everyone ----------------------

SAMPLES_PER_SHARD = 256
KeyRange = tuple[str | None, str | None]


def split_points(sorted_names: Sequence[str], shards: int) -> list[str]:
    """Boundaries that cut a sorted sample into ``shards`` equal parts (fewer if the sample is small)."""
    if shards <= 1 or not sorted_names:
        return []
    points = [sorted_names[len(sorted_names) * i // shards] for i in range(1, shards)]
    return sorted(set(points))


def shard_ranges(points: Sequence[str]) -> list[KeyRange]:
    """Half-open key-name ranges [lo, hi) covering every key, from split points."""
    bounds: list[str | None] = [None, *points, None]
    return list(itertools.pairwise(bounds))


def shard_of(name: str, points: Sequence[str]) -> int:
    """Which range of :func:`shard_ranges` a key name falls into."""
    return bisect.bisect_right(points, name)


def sample_key_names(client: datastore.Client, settings: Settings, count: int) -> list[str]:
    """About ``count`` key names drawn evenly from the sessions present, sorted.

    Production Datastore answers a ``__scatter__``-ordered query with a
    random sample (as Apache Beam splits queries): one query RPC. The
    Firestore emulator returns nothing for it; then one keys-only scan of
    every session fills a reservoir sample.
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


def plan_shards(client: datastore.Client, settings: Settings, shards: int) -> list[KeyRange]:
    """Key ranges for ``shards`` parallel chains, balanced on the keys present."""
    sample = sample_key_names(client, settings, shards * SAMPLES_PER_SHARD)
    return shard_ranges(split_points(sample, shards))


# -- steps ----------------------------------------------------------------------


@register
@dataclass(frozen=True)
class KillStep(Step):
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

    op = "kill"

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> KillStep:
        exact_fields(
            payload,
            {"op", "run_id", "user", "except_session", "shard", "lo", "hi", "cursor", "page", "started", "done"},
        )
        user = payload["user"]
        if user is not None and not valid_user(user):
            raise PayloadError("user is not a user key")
        except_session = payload["except_session"]
        if except_session is not None and not valid_session_id(except_session):
            raise PayloadError("except_session is not a session id")
        shard = shard_field(payload)
        bounds = [typed(payload, name, str, optional=True) for name in ("lo", "hi")]
        if any(bound is not None and (not bound or len(bound) > 1500) for bound in bounds):
            raise PayloadError("shard bounds are not key names")
        if shard is None and bounds != [None, None]:
            raise PayloadError("bounds without a shard")
        chain = chain_fields(payload)
        return cls(user=user, except_session=except_session, shard=shard, lo=bounds[0], hi=bounds[1], **chain)

    @classmethod
    def for_chain(cls, run_id: str, params: Mapping[str, Any], started: float, chain: int) -> KillStep:
        shards = params["shards"]
        lo, hi = (None, None) if shards is None else shards[chain]
        shard = None if shards is None else chain
        return cls(run_id, params["user"], params["except_session"], shard, lo, hi, started=started)

    @classmethod
    def describe(cls, receipt: Mapping[str, Any]) -> tuple[str, str]:
        user = receipt["user"]
        return f"     deleted {receipt['deleted']:>9,}", {None: "every session", GUEST_USER: "every guest"}.get(
            user, f"user {user!r}"
        )

    def run(self, work: Work) -> KillResult:
        return run_kill_step(
            work.client, work.settings, self, enqueue=work.enqueue, observer=work.observer, chains=work.chains
        )


def kill_params(user: str | None, except_session: str | None, shards: Sequence[KeyRange] | None) -> dict[str, Any]:
    """A kill run's parameters, as its run records them and :meth:`KillStep.for_chain` reads them."""
    ranges = None if shards is None else [list(bounds) for bounds in shards]
    return {"user": user, "except_session": except_session, "shards": ranges}


def epoch_name(user: str | None) -> str | None:
    """The epoch a kill of ``user`` raises: everyone's (None), the guests' (``"__guest__"``), or none (one user)."""
    if user is None:
        return EPOCH_EVERYONE
    return EPOCH_GUESTS if user == GUEST_USER else None


def _label(user: str | None) -> str:
    return "*" if user is None else user


def _query(client: datastore.Client, settings: Settings, step: KillStep) -> Callable[[], datastore.Query]:
    return partial(session_query, client, settings, user=step.user, lo=step.lo, hi=step.hi)


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
    observer: DeleteObserver | None = None,
    chains: int = 1,
    events: EventPublisher | None = None,
) -> KillResult:
    """Run one step of a kill chain within the time budget; enqueue the next. Idempotent.

    The step is counted, and its chain's next step recorded as the one the
    run expects, in one commit before that next step is enqueued
    (:meth:`~session_core.maintenance.runs.RunRecorder.record_step`); a step
    counted already is not counted twice, and enqueues only the step its run
    expects. A step its run does not expect raises ForbiddenError at that
    commit (``session_task`` refuses such a step before any work).

    With ``first_batch_only`` it deletes at most ``batch_size`` keys in one
    commit (the instant part of a one-user kill). ``observer`` is told of each
    deleted session. Kills are not paced unless ``SESSION_RAMPUP_KILL``: then
    this chain takes ``1 / chains`` of the run's ramp-up schedule. Logs one
    ``kill_sessions`` line. With lifecycle events on, each deleted batch is
    published as ``killed``.
    """
    started = time.monotonic()
    batch = batch_events(settings, events, "killed", step.run_id, step.user)
    budget = settings.time_budget.total_seconds() if enqueue is not None else None
    pacer = pacer_for(settings, step, chains=chains, within=budget) if settings.rampup_kill else None
    page_size = settings.batch_size if first_batch_only else None
    sweep = Sweep(
        client,
        settings,
        _query(client, settings, step),
        keep=_keeper(step.except_session),
        page_size=page_size,
        progress=progress,
        observer=observer,
        pacer=pacer,
        events=batch,
    )
    deadline = None if budget is None else started + budget
    outcome = sweep.run(step.cursor, deadline=deadline, max_pages=1 if first_batch_only else None)
    deleted, cursor, more = outcome.deleted, outcome.cursor, outcome.more
    if more and enqueue is None:  # no queue: the rest runs here and now
        rest = Sweep(
            client,
            settings,
            _query(client, settings, step),
            keep=_keeper(step.except_session),
            progress=offset_progress(progress, deleted),
            observer=observer,
            pacer=pacer,
            events=batch,
        )
        deleted += rest.run(cursor).deleted
        cursor, more = None, False
    recorder = RunRecorder(client, settings)
    following = recorder.advance(step, deleted, pages=outcome.pages, cursor=cursor, more=more, enqueue=enqueue)
    result = KillResult(
        run_id=step.run_id,
        user=_label(step.user),
        shard=step.shard,
        deleted=deleted,
        shards=0 if step.shard is None else chains,
        continued=following is not None,
        elapsed_s=round(time.monotonic() - started, 3),
    )
    log.info("kill_sessions", **result.to_json())
    return result


def _start_run(
    client: datastore.Client, settings: Settings, run_id: str, user: str | None, except_session: str | None
) -> Run:
    """Record a new kill run, with the user's kill time, in one commit; or find it, when a message comes again.

    One commit (an insert), and one lookup more only for a redelivered
    message, which keeps its run's recorded shards: the steps it enqueues
    again are the same steps, and Cloud Tasks drops the duplicates.
    """
    recorder = RunRecorder(client, settings)
    now = time.time()
    shards = None if user not in (None, GUEST_USER) else plan_shards(client, settings, settings.shards)
    run = Run(run_id, KillStep.op, kill_params(user, except_session, shards), now, chains=len(shards or [None]))
    killed = [] if user == GUEST_USER else [kill_record(client, settings, user, now)]  # no remember-me undoes it
    try:
        with translated("run"):
            commit(client, insert=[recorder.entity(run)], upsert=killed, rpc=FAIL_FAST)
    except StoreError as exc:
        if not isinstance(exc.cause, gexc.AlreadyExists) or (found := recorder.get(run_id)) is None:
            raise
        if (found.kind, found.params["user"], found.params["except_session"]) != (KillStep.op, user, except_session):
            raise MisuseError("run_id already names another run") from None
        return found  # the same message again: its run, with the shards it recorded
    return run


def kill_sessions(
    user: str | None = None,
    *,
    client: datastore.Client | None = None,
    settings: Settings | None = None,
    store: Store | None = None,
    except_session: str | None = None,
    enqueue: Enqueue | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
    observer: DeleteObserver | None = None,
    events: EventPublisher | None = None,
) -> KillResult:
    """Invalidate all active sessions of ``user``: "__guest__" all guests, None everyone.

    ``except_session`` (an opaque session id) survives. One user: the first
    batch is deleted before this returns; the rest goes to ``enqueue`` (or
    runs inline without a queue). Guests and everyone: one chain per shard,
    each enqueued (or run inline). The run is recorded first
    (:mod:`~session_core.maintenance.runs`), with the kill time of a user or
    of everyone (:mod:`session_core.logins`, so that a remember-me cookie
    cannot log them back in), in one commit. ``observer`` is told of each session
    deleted here (steps run later by Cloud Tasks tell the observer of the
    process that runs them). Idempotent; a repeated ``run_id`` names the
    same tasks, so Cloud Tasks drops the duplicates. A bad ``user`` or
    ``except_session`` raises MisuseError before any RPC. With lifecycle
    events on (a publisher passed, or ``SESSION_EVENTS_TOPIC``) each batch
    deleted is published as ``killed``.

    The sessions live in Datastore (``client`` and ``settings``, or ``store``
    a :class:`~session_core.store.SessionStore`), or in ``store``, another
    :class:`~session_core.contract.Store` (:class:`session_core.testing.MemoryStore`
    in an app's tests): there every matching session is deleted here and
    now, with no run record, no queue, no lifecycle events and no kill time.
    """
    if user is not None and not valid_user(user):
        raise MisuseError("user must be None, '__guest__' or a user key string")
    if except_session is not None and not valid_session_id(except_session):
        raise MisuseError("except_session must be a session id (64 hex digits)")
    chosen = _store_of(client, settings, store)
    run_id = run_id or uuid.uuid4().hex
    epoch = _raise_epoch(chosen, user, except_session, run_id)  # the first commit: signed out from here on
    if not isinstance(chosen, SessionStore):
        return _kill_in(chosen, user, except_session, run_id=run_id, observer=observer, epoch=epoch)
    client, settings = chosen.client, chosen.settings
    run = _start_run(client, settings, run_id, user, except_session)
    if run.params["shards"] is None:
        step = KillStep.for_chain(run.run_id, run.params, run.started, 0)
        return _with_epoch(
            run_kill_step(
                client,
                settings,
                step,
                enqueue=enqueue,
                first_batch_only=True,
                progress=progress,
                observer=observer,
                events=events,
            ),
            epoch,
        )
    started = time.monotonic()
    ranges = run.params["shards"]
    deleted = 0
    for shard in range(len(ranges)):
        step = KillStep.for_chain(run.run_id, run.params, run.started, shard)
        if enqueue is not None:
            enqueue(step)
        else:
            shard_result = run_kill_step(
                client,
                settings,
                step,
                progress=offset_progress(progress, deleted),
                observer=observer,
                chains=len(ranges),
                events=events,
            )
            deleted += shard_result.deleted
    run_id = run.run_id
    result = KillResult(
        run_id=run_id,
        user=_label(user),
        shard=None,
        deleted=deleted,
        shards=len(ranges),
        continued=enqueue is not None,
        elapsed_s=round(time.monotonic() - started, 3),
    )
    result = _with_epoch(result, epoch)
    log.info("kill_sessions", **result.to_json())
    return result


@dataclass(frozen=True)
class _Raised:
    counter: int
    at: float
    seconds: float


def _raise_epoch(store: Store, user: str | None, except_session: str | None, run_id: str) -> _Raised | None:
    """Raise the epoch a kill of everyone or of every guest ends its sessions by (none for one user).

    One transaction, before any shard planning: from its commit on, every
    session it covers loads as a fresh one, whatever the deletes still have
    to do. Logged as ``epoch_raised``.
    """
    name = epoch_name(user)
    if name is None:
        return None
    started = time.monotonic()
    epoch = store.raise_epoch(name, at=time.time(), run_id=run_id, except_session=except_session)
    raised = _Raised(epoch.counter, epoch.at, round(time.monotonic() - started, 3))
    log.info("epoch_raised", run_id=run_id, epoch=name, counter=raised.counter, at=raised.at, seconds=raised.seconds)
    return raised


def _with_epoch(result: KillResult, raised: _Raised | None) -> KillResult:
    if raised is None:
        return result
    return replace(result, epoch=raised.counter, epoch_at=raised.at, epoch_s=raised.seconds)


def _store_of(client: datastore.Client | None, settings: Settings | None, store: Store | None) -> Store:
    """The store a kill, list or end works on: ``store``, or Datastore's over ``client`` and ``settings``."""
    if store is not None:
        if client is not None or settings is not None:
            raise MisuseError("pass a store, or a client and settings, not both")
        return store
    if client is None or settings is None:
        raise MisuseError("pass a Datastore client and settings, or a store (store=...)")
    return SessionStore(client, settings)


def _kill_in(
    store: Store,
    user: str | None,
    except_session: str | None,
    *,
    run_id: str | None,
    observer: DeleteObserver | None,
    epoch: _Raised | None = None,
) -> KillResult:
    """Kill in a store of the app's own: every matching session but ``except_session``, at once."""
    started = time.monotonic()
    doomed = [record for record in store.sessions_of(user) if record.session_id != except_session]
    store.delete([record.key_name for record in doomed])
    notify(observer, doomed)
    result = KillResult(
        run_id=run_id or uuid.uuid4().hex,
        user=_label(user),
        shard=None,
        deleted=len(doomed),
        shards=0,
        continued=False,
        elapsed_s=round(time.monotonic() - started, 3),
    )
    result = _with_epoch(result, epoch)
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


@overload
def list_user_sessions(
    client: datastore.Client, settings: Settings, user: str, *, now: float | None = None
) -> list[SessionInfo]: ...


@overload
def list_user_sessions(*, store: Store, user: str, now: float | None = None) -> list[SessionInfo]: ...


def list_user_sessions(
    client: datastore.Client | None = None,
    settings: Settings | None = None,
    user: str | None = None,
    *,
    store: Store | None = None,
    now: float | None = None,
) -> list[SessionInfo]:
    """The user's active sessions, most recent first, in Datastore (``client``, ``settings``) or ``store``.

    ``user_agent`` and ``ip`` are read from the session data fields of those
    names, if the app stores them. Datastore: full entities, 100 a page.
    """
    if user is None:
        raise MisuseError("list_user_sessions needs a user")
    return _list(_store_of(client, settings, store), user, now)


def _list(store: Store, user: str, now: float | None) -> list[SessionInfo]:
    now = time.time() if now is None else now
    infos: list[SessionInfo] = []
    epochs = store.epochs()
    for record in store.sessions_of(user):
        if is_expired(record.expires(store.settings.life_time), now) or record.ended_by(epochs):
            continue  # expired, or ended by a kill of everyone whose deletes have not reached it yet
        agent, ip = record.data.get("user_agent"), record.data.get("ip")
        infos.append(
            SessionInfo(
                session_id=record.session_id,
                lastseen=record.seen,
                user_agent=agent if isinstance(agent, str) else None,
                ip=ip if isinstance(ip, str) else None,
            )
        )
    return sorted(infos, key=lambda info: info.lastseen, reverse=True)


@overload
def end_user_session(
    client: datastore.Client,
    settings: Settings,
    user: str,
    session_id: str,
    *,
    observer: DeleteObserver | None = None,
    events: EventPublisher | None = None,
) -> bool: ...


@overload
def end_user_session(
    *,
    store: Store,
    user: str,
    session_id: str,
    observer: DeleteObserver | None = None,
    events: EventPublisher | None = None,
) -> bool: ...


def end_user_session(
    client: datastore.Client | None = None,
    settings: Settings | None = None,
    user: str | None = None,
    session_id: str | None = None,
    *,
    store: Store | None = None,
    observer: DeleteObserver | None = None,
    events: EventPublisher | None = None,
) -> bool:
    """End one of ``user``'s sessions by its opaque id ("sign out this device").

    Only that user's session can be ended. True if one was deleted. With
    lifecycle events on, it is published as ``ended`` (a run of its own).
    In a ``store`` other than Datastore's it is deleted there (no events).
    """
    if user is None or session_id is None:
        raise MisuseError("end_user_session needs a user and a session id")
    return _end(_store_of(client, settings, store), user, session_id, observer=observer, events=events)


def _end(
    store: Store, user: str, session_id: str, *, observer: DeleteObserver | None, events: EventPublisher | None
) -> bool:
    if not valid_session_id(session_id):
        return False
    if not isinstance(store, SessionStore):
        matching = [record for record in store.sessions_of(user) if record.session_id == session_id]
        store.delete([record.key_name for record in matching])
        notify(observer, matching)
        return bool(matching)
    client, settings = store.client, store.settings
    with translated("lookup"):
        entity = client.get(store.key(session_id))
    name = session_id
    if entity is None or entity.get("user") != user:  # a ViUR session under its plain name, or not theirs
        found = key_names(partial(session_query, client, settings, user=user), page_limit(settings))
        match = next((candidate for candidate in found if session_id_of(candidate) == session_id), None)
        if match is None:
            return False
        name = match
    keys = [store.key(name)]
    _, records = delete_batch(client, keys, read=observer is not None)
    batch = batch_events(settings, events, "ended", uuid.uuid4().hex, user)
    if batch is not None:
        batch.deleted(keys, records)
    notify(observer, records)
    return True


def logout_everywhere_else(
    session: Session,
    *,
    enqueue: Enqueue | None = None,
    observer: DeleteObserver | None = None,
    events: EventPublisher | None = None,
) -> int:
    """Kill every other session of this session's user; this one survives.

    Needs a logged-in session (loaded, or logged in during this request: it
    has a ``session_id``); on a guest session it raises the session's
    ``misuse_error`` (a MisuseError; the adapters answer 400) before any RPC.
    Returns how many sessions were deleted at once (with ``enqueue``, more
    may follow as Cloud Tasks). It kills in the session's own store (a
    :class:`session_core.testing.MemoryStore` in an app's tests).
    """
    if session.user == GUEST_USER or session.session_id is None:
        raise session.misuse_error("only a logged-in session can log out its other sessions")
    result = kill_sessions(
        session.user,
        store=session.store,
        except_session=session.session_id,
        enqueue=enqueue,
        observer=observer,
        events=events,
    )
    return result.deleted


# -- awaitable forms, for async apps ------------------------------------------------


async def _in_worker_thread(call: Callable[[], T]) -> T:
    """Await ``call()`` run in a worker thread of anyio's default pool: the event loop keeps serving.

    anyio comes with the ``asgi`` extra (Starlette and FastAPI run on it);
    it is imported here, on first use, so the Cloud Functions never need it.
    If the awaiting task is cancelled, the call still runs to its end.
    """
    from anyio import to_thread

    return await to_thread.run_sync(call)


def _awaitable(call: Callable[P, T]) -> Callable[P, Awaitable[T]]:
    """``call``, awaitable: the same signature and promises, run in a worker thread (:func:`_in_worker_thread`).

    Every argument, and every callback among them, is used in that thread.
    """

    @wraps(call)
    async def awaitable(*args: P.args, **kwargs: P.kwargs) -> T:
        return await _in_worker_thread(partial(call, *args, **kwargs))

    awaitable.__name__ = awaitable.__qualname__ = f"a{call.__name__}"
    awaitable.__doc__ = f":func:`{call.__name__}`, awaitable: the same promises, its RPCs in a worker thread."
    return awaitable


akill_sessions = _awaitable(kill_sessions)
alist_user_sessions = _awaitable(list_user_sessions)
aend_user_session = _awaitable(end_user_session)
alogout_everywhere_else = _awaitable(logout_everywhere_else)


# ViUR's spellings, until ``session_core.viur`` holds them.
killSessionByUser = kill_sessions  # noqa: N816 - ViUR's name
akillSessionByUser = akill_sessions  # noqa: N816 - ViUR's name, with Django's "a" for its awaitable form
