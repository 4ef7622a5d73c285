"""Pure rules: key formats, identities, expiry, refresh and the cleanup cutoff.

No I/O here: every rule takes what it needs (``now``, the settings) as an
argument, so it is tested without a server.

The session key is the cookie value. We only ever accept the exact format we
issue: 42 characters of ``[A-Za-z0-9]`` drawn with :mod:`secrets` (ViUR issues
the same shape, so its cookies stay valid), about 250 bits of entropy.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import string
from datetime import UTC, datetime, timedelta

from session_core.config import Settings

GUEST_USER = "__guest__"
KEY_LENGTH = 42
MAX_USER_BYTES = 1500  # Datastore's limit for an indexed string
REFRESH_AFTER = timedelta(minutes=5)
MAX_LIFETIME = timedelta(days=3650)
_ALPHABET = string.ascii_letters + string.digits
_KEY = re.compile(rf"[A-Za-z0-9]{{{KEY_LENGTH}}}")
_SESSION_ID = re.compile(r"[0-9a-f]{64}")


# -- keys and ids ------------------------------------------------------------------


def new_key() -> str:
    """A fresh session key: 42 characters from :mod:`secrets`, about 250 bits."""
    return _random_text(KEY_LENGTH)


def new_security_key() -> str:
    """A fresh static security key (13 characters, as ViUR issues)."""
    return _random_text(13)


_UNBIASED = 256 - 256 % len(_ALPHABET)  # bytes below this map uniformly onto the alphabet


def _random_text(length: int) -> str:
    """``length`` characters of the alphabet, each uniform, from :func:`secrets.token_bytes` (one call, mostly)."""
    chars: list[str] = []
    while len(chars) < length:
        chars += [_ALPHABET[b % len(_ALPHABET)] for b in secrets.token_bytes(2 * length) if b < _UNBIASED]
    return "".join(chars[:length])


def is_valid_key(value: object) -> bool:
    """True only for a value of exactly the shape :func:`new_key` issues."""
    return isinstance(value, str) and _KEY.fullmatch(value) is not None


def hash_key(cookie_key: str) -> str:
    """The hashed entity name (and opaque session id) of a cookie value."""
    return hashlib.sha256(cookie_key.encode("ascii")).hexdigest()


def session_id_of(key_name: str) -> str:
    """The opaque session id of a stored name: hashed names are their own id, plain ones are hashed."""
    return key_name if len(key_name) == 64 else hash_key(key_name)


def storage_name(cookie_key: str, settings: Settings) -> str:
    """The entity name a new session with this cookie value is written under."""
    return hash_key(cookie_key) if settings.key_storage == "hashed" else cookie_key


def save_target(cookie_key: str, stored_name: str | None, settings: Settings) -> str:
    """The entity name a save of an existing session writes to; a move when it differs from ``stored_name``.

    Where it is stored, except that a ViUR plain-named session under hashed
    storage (``SESSION_KEY_STORAGE``) moves to its hash. Not known where it is
    stored (``stored_name`` None: never loaded): its :func:`storage_name`.
    """
    if stored_name is None or (settings.key_storage == "hashed" and stored_name == cookie_key):
        return storage_name(cookie_key, settings)
    return stored_name


def valid_session_id(value: object) -> bool:
    """An opaque session id: 64 lowercase hex digits (never a cookie)."""
    return isinstance(value, str) and _SESSION_ID.fullmatch(value) is not None


def valid_user(value: object) -> bool:
    """A user key as it is stored and killed: a non-empty printable string that fits an index.

    ``"__guest__"`` passes (it is how guests are stored); :func:`valid_login`
    refuses it.
    """
    return (
        isinstance(value, str)
        and 0 < len(value.encode("utf-8", "surrogatepass")) <= MAX_USER_BYTES
        and value.isprintable()
    )


def valid_login(value: object) -> bool:
    """A key a session may log in as: a valid user key that is not the guest marker."""
    return valid_user(value) and value != GUEST_USER


# -- time ----------------------------------------------------------------------------
#
# Every session has its own idle lifetime (default: SESSION_LIFE_TIME, the
# "global" one). A save at real time ``seen`` stores
#     expires  = seen + lifetime
#     lastseen = expires - global lifetime
# so that anything that knows only the global lifetime (viur-core, older
# versions, the cleanup's one keys-only query ``lastseen < now - global - grace``)
# sees the session alive exactly until its own expiry. With the default
# lifetime, ``lastseen`` is the real time, as ViUR writes it.


def valid_lifetime(seconds: float) -> bool:
    """A session's own lifetime: any positive duration up to ten years."""
    return 0 < seconds <= MAX_LIFETIME.total_seconds()


def expires_at(seen: float, lifetime: float) -> float:
    """When a session seen at ``seen`` with this lifetime (seconds) dies."""
    return seen + lifetime


def ends_at(idle_expires: float, absolute_end: float | None) -> float:
    """When a session dies: its idle expiry, or its absolute end (``SESSION_ABSOLUTE_LIFE_TIME``) if earlier.

    The stored ``lastseen`` encodes this, so the cleanup's one query and
    viur-core's own ``Session.load`` see a session past either limit as expired.
    """
    return idle_expires if absolute_end is None else min(idle_expires, absolute_end)


def absolute_end_of(start: float, settings: Settings) -> float | None:
    """The absolute end of a session created (or logged in) at ``start``; None with no absolute lifetime set."""
    limit = settings.absolute_life_time
    return None if limit is None else start + limit.total_seconds()


def stored_lastseen(expires: float, global_life_time: timedelta) -> float:
    """The ``lastseen`` written for a session that dies at ``expires`` (see above)."""
    return expires - global_life_time.total_seconds()


# -- write shards (SESSION_WRITE_SHARDS) ---------------------------------------------------
#
# With N > 1 write shards, a session's indexed ``lastseen`` is replaced by one
# indexed string, ``"<shard>:<lastseen>"``: the shard (4 digits) derived from
# the session id, and ``lastseen`` as whole microseconds, offset and padded to
# 19 digits, so that string order is numeric order. Writes "now" then land at
# the end of N index ranges that never meet, not of one; the cleanup's slice
# of shard k is two inequalities on that one property (the built-in index).

SHARD_DIGITS = 4
_LASTSEEN_OFFSET_US = 10**17  # lastseen down to about 3,170 years before 1970 encodes
_LASTSEEN_DIGITS = 19


def write_shard(key_name: str, shards: int) -> int:
    """The index range (0 to ``shards - 1``) a session writes to: from its session id, so uniform (a SHA-256)
    and the same under its plain and its hashed name."""
    return int(session_id_of(key_name)[:8], 16) % shards


def encode_lastseen(lastseen: float) -> str:
    """``lastseen`` as fixed-width digits whose string order is its numeric order (to the microsecond)."""
    micros = math.floor(lastseen * 1_000_000) + _LASTSEEN_OFFSET_US
    return f"{min(max(micros, 0), 10**_LASTSEEN_DIGITS - 1):0{_LASTSEEN_DIGITS}d}"


def decode_lastseen(encoded: str) -> float:
    """The ``lastseen`` (to the microsecond) that :func:`encode_lastseen` encoded."""
    return (int(encoded) - _LASTSEEN_OFFSET_US) / 1_000_000


def shard_lastseen(shard: int, lastseen: float) -> str:
    """The indexed value of a session in write shard ``shard``, last seen (as stored) at ``lastseen``."""
    return f"{shard:0{SHARD_DIGITS}d}:{encode_lastseen(lastseen)}"


def shard_bounds(shard: int, lo: float | None, hi: float) -> tuple[str, str]:
    """The values ``[low, high)`` of shard ``shard``'s sessions with ``lo <= lastseen < hi`` (lo None: all below hi)."""
    low = f"{shard:0{SHARD_DIGITS}d}:" if lo is None else shard_lastseen(shard, lo)
    return low, shard_lastseen(shard, hi)


def is_expired(expires: float, now: float) -> bool:
    """Dead once its expiry has passed (ViUR's rule ``lastseen < now - life time``, per session)."""
    return expires < now


def refresh_interval(lifetime: float) -> float:
    """How often, in seconds, a session in use rewrites its expiry: ``min(5 minutes, lifetime / 2)``."""
    return min(REFRESH_AFTER.total_seconds(), lifetime / 2)


def needs_refresh(seen: float, now: float, lifetime: float) -> bool:
    """True when a session last written at ``seen`` should be written again, though unchanged.

    Throttled to :func:`refresh_interval`, so a short session cannot expire while in use.
    """
    return now - seen > refresh_interval(lifetime)


def cutoff_for(now: float, settings: Settings) -> float:
    """Sessions whose stored ``lastseen`` is before this are past their own expiry plus the grace."""
    return now - (settings.life_time + settings.clear_grace).total_seconds()


def iso_utc(epoch: float) -> str:
    """An epoch time as ISO 8601 in UTC, to the second (``2026-11-26T07:55:30Z``): for people, beside the number."""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
