"""Kill-user messages: what an app publishes to the kill-user topic, parsed strictly.

The message data is UTF-8 JSON, exactly ``{"user": USER | "__guest__" | null}``
with an optional ``"except_session": SESSION_ID``. Anything else raises
:class:`~session_core.errors.PoisonMessageError`: it can never succeed, so it
is logged and acknowledged, never redelivered.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from session_core.errors import PoisonMessageError
from session_core.rules import valid_session_id, valid_user

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
