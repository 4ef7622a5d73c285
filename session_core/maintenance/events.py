"""Lifecycle events: which sessions cleanup, kills and "end this device" deleted, and why, on Pub/Sub.

Off unless ``SESSION_EVENTS_TOPIC`` is set; only then is google-cloud-pubsub
imported (the ``events`` extra). One message per commit batch, published
after the commit::

    {"reason": "expired" | "killed" | "ended", "run_id": "...", "at": "2026-11-26T09:40:00.123Z",
     "sessions": [{"session_id": "...", "user": "..."}]}

with the attribute ``reason`` (for subscription filters). A session is named
by its opaque ``session_id``: never a cookie, a security key or its data.

Delivery is best-effort: a publish is retried for at most
:data:`PUBLISH_DEADLINE_S`, and a failure is logged (``session_events_lost``)
and never fails the step, whose deletes are committed already. That holds
for every failure: the client is built on the first publish, inside it, so
a library that cannot be imported or a client that cannot be built (no
credentials) is a lost event too, never a failed delete. (A topic set
without the ``events`` extra is refused earlier, by the settings.) A crash
between commit and publish loses that batch's event; a retried step can
publish a batch twice, so consumers dedupe on ``session_id``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from google.api_core import exceptions as gexc
from google.cloud import datastore

from session_core._datastore import TRANSIENT
from session_core._schema import Field
from session_core.config import EVENTS_EXTRA, Settings
from session_core.errors import ConfigError
from session_core.rules import session_id_of
from session_core.store import SessionRecord

Reason = Literal["expired", "killed", "ended"]
REASONS: tuple[Reason, ...] = ("expired", "killed", "ended")
PUBLISH_DEADLINE_S = 10.0  # one batch's publish, retries included
ATTEMPT_TIMEOUT_S = 5.0
# After a publish failed, later ones get one attempt each for this long: an outage
# costs each batch one short try, not a 10-second wait.
DEGRADED_FOR_S = 60.0

ATTRIBUTES = (Field("reason", "string", "the event's reason, for subscription filters"),)
"""The attributes of every event message (tests compare them with a message published to the emulator)."""
FIELDS = (
    Field("reason", "string", "why the sessions were deleted: " + ", ".join(f"`{r}`" for r in REASONS)),
    Field("run_id", "string", "the run that deleted them (cleanup or kill); a fresh random id for one ended device"),
    Field(
        "at", "string (ISO 8601, UTC, milliseconds)", "when the batch was published, e.g. `2026-11-26T09:40:00.123Z`"
    ),
    Field("sessions", "array of objects", "the sessions one commit deleted, each with the two fields below"),
)
"""The JSON fields of every event, as :func:`event_message` writes them (tests compare them with a published one)."""
SESSION_FIELDS = (
    Field("session_id", "string", "the opaque session id: 64 hex digits, the SHA-256 of the cookie; never a cookie"),
    Field("user", "string", "the session's user key, or `__guest__`"),
)
"""The fields of each entry of ``sessions``."""
REASON_MEANINGS: dict[Reason, str] = {
    "expired": "the cleanup deleted sessions past their expiry and the grace (`clear_sessions`)",
    "killed": "a kill deleted one user's, every guest's or everyone's sessions (`kill_sessions` and its callers)",
    "ended": "one device was signed out by its session id (`end_user_session`)",
}
"""What each reason means (the events reference lists them)."""

log = structlog.get_logger("session_core.events")


# -- the message (pure) ---------------------------------------------------------------------


def event_message(reason: Reason, run_id: str, at: float, sessions: Iterable[tuple[str, str]]) -> bytes:
    """The JSON of one event: ``sessions`` as (session_id, user) pairs; ``at`` epoch seconds."""
    stamp = datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = {
        "reason": reason,
        "run_id": run_id,
        "at": stamp,
        "sessions": [{"session_id": session_id, "user": user} for session_id, user in sessions],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def topic_path(settings: Settings) -> str | None:
    """The full topic name, ``projects/P/topics/T``; a bare name is in the settings' project."""
    topic = settings.events_topic
    if topic is None or topic.startswith("projects/"):
        return topic
    return f"projects/{settings.project}/topics/{topic}"


# -- publishing ---------------------------------------------------------------------------


class EventPublisher:
    """Publishes events to one topic with a Pub/Sub publisher client (the GAPIC ``google.pubsub_v1`` one).

    ``client`` is that client, or None with ``connect``, which builds it on
    the first publish (again on the next one if it failed). Thread-safe: the
    sweep publishes from its commit threads. One synchronous Publish RPC per
    event, retried for at most :data:`PUBLISH_DEADLINE_S`; after a failure,
    :data:`DEGRADED_FOR_S` of single attempts.
    """

    def __init__(
        self,
        client: Any,
        topic: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        connect: Callable[[], Any] | None = None,
    ) -> None:
        self.client = client
        self.topic = topic
        self.clock = clock
        self._connect = connect
        self._lock = threading.Lock()
        self._degraded_until = float("-inf")

    def publish(self, reason: Reason, run_id: str, sessions: Sequence[tuple[str, str]]) -> bool:
        """Publish one event; True if Pub/Sub took it. Never raises: any failure is logged."""
        if not sessions:
            return True
        try:
            self._publish(reason, run_id, sessions)
        except Exception as exc:  # best-effort: the deletes are committed; say what was lost
            with self._lock:
                self._degraded_until = self.clock() + DEGRADED_FOR_S
            cause = exc.cause if isinstance(exc, gexc.RetryError) and exc.cause is not None else exc
            log.error(
                "session_events_lost",
                reason=reason,
                run_id=run_id,
                sessions=len(sessions),
                topic=self.topic,
                error=type(cause).__name__,
                detail=str(cause)[:200],
            )
            return False
        return True

    def _publish(self, reason: Reason, run_id: str, sessions: Sequence[tuple[str, str]]) -> None:
        from google.api_core.retry import Retry, if_exception_type
        from google.pubsub_v1 import PubsubMessage

        with self._lock:
            degraded = self.clock() < self._degraded_until
            if self.client is None and self._connect is not None:
                self.client = self._connect()
        retry = None
        if not degraded:
            transient = if_exception_type(*TRANSIENT, gexc.ResourceExhausted, gexc.Unknown)  # Pub/Sub's too
            retry = Retry(predicate=transient, initial=0.1, maximum=2.0, multiplier=2.0, timeout=PUBLISH_DEADLINE_S)
        data = event_message(reason, run_id, time.time(), sessions)
        message = PubsubMessage(data=data, attributes={"reason": reason})
        self.client.publish(topic=self.topic, messages=[message], retry=retry, timeout=ATTEMPT_TIMEOUT_S)


_PUBLISHERS: dict[tuple[str, str | None], EventPublisher] = {}
_PUBLISHERS_LOCK = threading.Lock()


def publisher_for(settings: Settings) -> EventPublisher | None:
    """This process's publisher for ``SESSION_EVENTS_TOPIC`` (built on first use), or None when events are off.

    The maintenance functions call it when no publisher is passed to them,
    so that setting the topic is all an app or a function needs.
    """
    topic = topic_path(settings)
    if topic is None:
        return None
    cache_key = (topic, settings.pubsub_emulator_host)
    with _PUBLISHERS_LOCK:
        if cache_key not in _PUBLISHERS:
            _PUBLISHERS[cache_key] = EventPublisher(None, topic, connect=lambda: _client("Publisher", settings))
        return _PUBLISHERS[cache_key]


def subscriber_for(settings: Settings) -> Any:
    """A Pub/Sub subscriber client (GAPIC) for the settings' project or emulator."""
    return _client("Subscriber", settings)


def _client(which: Literal["Publisher", "Subscriber"], settings: Settings) -> Any:
    try:
        import grpc
        from google import pubsub_v1
        from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
        from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport
    except ImportError:
        raise ConfigError("google-cloud-pubsub", f"installed for lifecycle events: {EVENTS_EXTRA}") from None
    channel = None if settings.pubsub_emulator_host is None else grpc.insecure_channel(settings.pubsub_emulator_host)
    if which == "Publisher":
        if channel is None:
            return pubsub_v1.PublisherClient()
        return pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=channel))
    if channel is None:
        return pubsub_v1.SubscriberClient()
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


# -- what one run reports -------------------------------------------------------------------


@dataclass(frozen=True)
class BatchEvents:
    """What one run tells its publisher after each commit: the reason, the run, and whose sessions.

    ``user`` is the user of every session the run deletes, when the run
    knows it (a kill of one user, or of guests): the event is then built
    from the keys alone. Otherwise (cleanup, a kill of everyone) each batch
    is read before it is deleted, for its users.
    """

    publisher: EventPublisher
    reason: Reason
    run_id: str
    user: str | None = None

    @property
    def needs_records(self) -> bool:
        return self.user is None

    def deleted(self, keys: Sequence[datastore.Key], records: Sequence[SessionRecord]) -> bool:
        """Publish the batch just committed; True if Pub/Sub took it (or there was nothing to say)."""
        if self.user is not None:
            sessions = [(session_id_of(str(key.name)), self.user) for key in keys]
        else:
            sessions = [(record.session_id, record.user) for record in records]
        return self.publisher.publish(self.reason, self.run_id, sessions)


def batch_events(
    settings: Settings,
    publisher: EventPublisher | None,
    reason: Reason,
    run_id: str,
    user: str | None = None,
) -> BatchEvents | None:
    """The run's events: to ``publisher``, or this process's one for the settings; None when events are off."""
    publisher = publisher if publisher is not None else publisher_for(settings)
    return None if publisher is None else BatchEvents(publisher, reason, run_id, user)


# -- reading them (the command line, the local stack, tests) ----------------------------------


def pull_events(subscriber: Any, subscription: str, *, max_messages: int = 100, timeout: float = 10.0) -> list[Any]:
    """Pull and acknowledge up to ``max_messages`` events: their decoded JSON, in the order received.

    Waits up to ``timeout`` seconds for the first; none by then is an empty list.
    """
    from google.api_core import exceptions as gexc

    try:
        response = subscriber.pull(subscription=subscription, max_messages=max_messages, timeout=timeout)
    except gexc.DeadlineExceeded:
        return []
    received = list(response.received_messages)
    if received:
        subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in received])
    return [json.loads(m.message.data) for m in received]
