"""What the three Cloud Functions do, without the web framework: ``main.py`` only wires them.

Each handler takes the request's parts and returns the JSON body of a 200
answer, or raises a library error (``main.py`` maps errors to statuses with
one table). Every handler is idempotent: Cloud Scheduler, Pub/Sub and Cloud
Tasks deliver at least once, and a repeated delivery ends in the same state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any

import structlog
from google.auth.transport import requests as auth_requests
from google.cloud import datastore

from session_core._observers import registered_delete_observer
from session_core.clients import datastore_client
from session_core.config import Settings
from session_core.errors import BadInputError, BodyTooLargeError
from session_core.maintenance.auth import CertificateCache, verify_task_caller
from session_core.maintenance.cleanup import start_clear_sessions
from session_core.maintenance.dispatch import queue_for
from session_core.maintenance.kill import kill_sessions, parse_pubsub_event, run_id_for
from session_core.maintenance.runs import RunRecorder, check_step
from session_core.maintenance.steps import Enqueue, Step, StepResult, Work, parse_step, strict_json
from session_core.store import DeleteObserver


@dataclass(frozen=True)
class Runtime:
    """What one function instance holds: settings and clients, built once."""

    settings: Settings
    datastore: datastore.Client
    enqueue: Enqueue | None
    auth_request: auth_requests.Request
    certificates: CertificateCache

    @classmethod
    def for_settings(cls, settings: Settings) -> Runtime:
        """The clients for these settings (built once per instance, on first use)."""
        certificates = CertificateCache(settings.task_certs_url)
        return cls(settings, datastore_client(settings), queue_for(settings), auth_requests.Request(), certificates)

    @property
    def observer(self) -> DeleteObserver | None:
        """The observers code ported from ViUR registered with ``Session.on_delete`` in this process."""
        return registered_delete_observer()


MAX_BODY_BYTES = 16 * 1024  # every body our own code sends is far smaller


def read_body(stream: IO[bytes], content_length: int | None) -> bytes:
    """At most MAX_BODY_BYTES of a request body; BodyTooLargeError (413) beyond, reading no more than that.

    A declared ``Content-Length`` over the cap is refused without reading;
    a chunked body is read only up to the cap.
    """
    if content_length is not None and content_length > MAX_BODY_BYTES:
        raise BodyTooLargeError(f"body over {MAX_BODY_BYTES} bytes")
    body = stream.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise BodyTooLargeError(f"body over {MAX_BODY_BYTES} bytes")
    return body


log = structlog.get_logger("session_core.functions")


def clear_sessions(rt: Runtime, body: bytes) -> dict[str, Any]:
    """Start a cleanup run; ``body`` is empty, ``{}`` or ``{"dry_run": bool}`` (else BadInputError)."""
    try:
        options = strict_json(body) if body.strip() else {}
    except RecursionError:
        raise BadInputError("body is nested too deeply") from None
    except ValueError:
        raise BadInputError("body is not JSON") from None
    if (
        not isinstance(options, dict)
        or set(options) - {"dry_run"}
        or not isinstance(options.get("dry_run", False), bool)
    ):
        raise BadInputError('body must be {} or {"dry_run": true|false}')
    result = start_clear_sessions(
        rt.datastore, rt.settings, enqueue=rt.enqueue, dry_run=options.get("dry_run", False), observer=rt.observer
    )
    return result.to_json()


def kill_user_sessions(rt: Runtime, data: object, message_id: str) -> dict[str, Any]:
    """Kill what a Pub/Sub kill-user message names (PoisonMessageError if it names nothing valid).

    The run id comes from the message id, so a redelivery names the same
    tasks and Cloud Tasks drops the duplicates.
    """
    structlog.contextvars.bind_contextvars(message_id=message_id)
    kill = parse_pubsub_event(data)
    result = kill_sessions(
        kill.user,
        client=rt.datastore,
        settings=rt.settings,
        except_session=kill.except_session,
        enqueue=rt.enqueue,
        run_id=run_id_for(message_id),
        observer=rt.observer,
    )
    return result.to_json()


def session_task(rt: Runtime, body: bytes, authorization: str | None) -> dict[str, Any]:
    """Check the caller, parse the step, admit it only if it is the step its run expects, run it.

    Answers only once the step's work is durable. A step its run does not
    expect is a ForbiddenError (403) before any work (see
    :func:`~session_core.maintenance.runs.check_step`). A step of a run that
    finished, or a duplicate delivery of a step its chain counted, is
    acknowledged without work; the duplicate of the step counted last
    enqueues its chain's next step again (a no-op, by task name, unless a
    crash came between that count and its enqueue).
    """
    verify_task_caller(authorization, rt.settings, rt.auth_request, rt.certificates)
    step = parse_step(body)
    structlog.contextvars.bind_contextvars(run_id=step.run_id)
    admission = check_step(RunRecorder(rt.datastore, rt.settings), step)
    run = admission.run
    if admission.skipped is not None:
        if admission.resend is not None and rt.enqueue is not None:
            rt.enqueue(admission.resend)
        log.info("session_task_skipped", reason=admission.skipped, kind=run.kind, page=step.page)
        return {"run_id": run.run_id, "skipped": True, "reason": admission.skipped}
    return run_step(
        rt.datastore, rt.settings, step, enqueue=rt.enqueue, observer=rt.observer, chains=run.chains
    ).to_json()


def run_step(
    client: datastore.Client,
    settings: Settings,
    step: Step,
    *,
    enqueue: Enqueue | None,
    observer: DeleteObserver | None = None,
    chains: int = 1,
) -> StepResult:
    """Run one step of a maintenance chain, as its own type runs it; ``chains``: how many its run has. Idempotent."""
    return step.run(Work(client, settings, enqueue, observer, chains))
