"""Per-user kill and login times: what keeps a remember-me cookie from undoing a kill.

A kill deletes a user's sessions, but a "remember me" cookie (Flask-Login's,
for one) would log the browser straight back in: its value is the same on
every device of the user, so it cannot be revoked per device. So a kill
records when it happened, every interactive login records when it happened,
and a login from a remember-me cookie is refused while the kill is newer.

Small entities of kind ``session_core-login``, in the settings' namespace,
each with an ``at`` epoch time: ``kill:user:<sha256(user)>`` and
``login:user:<sha256(user)>`` per user, and ``kill:all`` for a kill of
everyone. A user's names always carry ``user:`` and a hash, so no user key
(``*``, ``all``, ``user:x``) can name the everyone-record. Costs: one commit
per kill and per interactive login, one lookup per remember-me login, none
per request; each within the request deadline (``SESSION_REQUEST_TIMEOUT``).

Names of 0.12 and earlier (``kill:<sha256>``, ``login:<sha256>``, and ``kill:*`` for
everyone *and* for a user named ``*``) are still read, never written, so a
kill recorded before the upgrade still refuses a remember-me login after it.
An old ``kill:*`` counts as a kill of everyone: it cannot tell the two
apart, and taking it for less would let a kill of everyone be undone.
"""

from __future__ import annotations

import hashlib

from google.cloud import datastore

from session_core._datastore import settings_key, within
from session_core._schema import Record, Stored, unindexed
from session_core.config import Settings

KIND = "session_core-login"
EVERYONE = "all"  # the everyone-record's name: ``kill:all``; a user's names are ``<event>:user:<sha256>``
_LEGACY_EVERYONE = "*"  # 0.12 and earlier: ``kill:*``, which a user named ``*`` wrote too
RECORD = Record(
    KIND,
    f"`kill:user:<sha256(user)>`, `login:user:<sha256(user)>`, `kill:{EVERYONE}` (a kill of everyone)",
    "when a user (or everyone) was last killed, and when a user last logged in interactively: "
    "a remember-me login is refused while the kill is newer",
    (Stored("at", "float (epoch seconds)", False, "when the kill or the interactive login happened"),),
)
"""The kill and login records (:func:`_entity` writes them)."""
_UNINDEXED = unindexed(RECORD.properties)


def _digest(user: str) -> str:
    return hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()


def _name(event: str, user: str | None) -> str:
    """The record of ``event`` ("kill" or "login") for ``user``; None: everyone."""
    return f"{event}:{EVERYONE}" if user is None else f"{event}:user:{_digest(user)}"


def _legacy_name(event: str, user: str | None) -> str:
    """The name the same record had in 0.12 and earlier (read, never written)."""
    if user is None or user == _LEGACY_EVERYONE:
        return f"{event}:{_LEGACY_EVERYONE}"
    return f"{event}:{_digest(user)}"


def _entity(client: datastore.Client, settings: Settings, name: str, at: float) -> datastore.Entity:
    entity = datastore.Entity(settings_key(client, settings, KIND, name), exclude_from_indexes=_UNINDEXED)
    entity["at"] = float(at)
    return entity


def kill_record(client: datastore.Client, settings: Settings, user: str | None, at: float) -> datastore.Entity:
    """The entity recording that ``user`` (None: everyone) was killed at ``at``; upsert it with the kill."""
    return _entity(client, settings, _name("kill", user), at)


def record_login(client: datastore.Client, settings: Settings, user: str, at: float) -> None:
    """Remember that ``user`` logged in interactively at ``at``. One commit."""
    entity = _entity(client, settings, _name("login", user), at)
    within(settings.request_timeout.total_seconds(), "login record", lambda rpc: client.put(entity, **rpc))


def remembered_login_allowed(client: datastore.Client, settings: Settings, user: str) -> bool:
    """False while a kill of ``user`` (or of everyone) is newer than their last interactive login.

    One lookup RPC (of the current names and those of 0.12 and earlier).
    """
    kills = {_name("kill", user), _name("kill", None), _legacy_name("kill", user), _legacy_name("kill", None)}
    logins = {_name("login", user), _legacy_name("login", user)}
    keys = [settings_key(client, settings, KIND, name) for name in sorted(kills | logins)]
    entities = within(
        settings.request_timeout.total_seconds(), "login record", lambda rpc: client.get_multi(keys, **rpc)
    )
    found = {entity.key.name: float(entity["at"]) for entity in entities}
    killed = max((found.get(name, 0.0) for name in kills), default=0.0)
    return killed <= max((found.get(name, 0.0) for name in logins), default=0.0)
