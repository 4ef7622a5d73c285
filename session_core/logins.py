"""Per-user kill and login times: what keeps a remember-me cookie from undoing a kill.

A kill deletes a user's sessions, but a "remember me" cookie (Flask-Login's,
for one) would log the browser straight back in: its value is the same on
every device of the user, so it cannot be revoked per device. So a kill
records when it happened, every interactive login records when it happened,
and a login from a remember-me cookie is refused while the kill is newer.

Two small entities per user, kind ``session_core-login``, in the settings'
namespace: ``kill:<sha256(user)>`` and ``login:<sha256(user)>`` with an
``at`` epoch time; a kill of everyone writes ``kill:*``. Costs: one commit
per kill and per interactive login, one lookup per remember-me login, none
per request; each within the request deadline (``SESSION_REQUEST_TIMEOUT``).
"""

from __future__ import annotations

import hashlib

from google.cloud import datastore

from session_core.config import Settings
from session_core.store import settings_key, within

KIND = "session_core-login"
EVERYONE = "*"


def _name(event: str, user: str) -> str:
    who = EVERYONE if user == EVERYONE else hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{event}:{who}"


def _entity(client: datastore.Client, settings: Settings, name: str, at: float) -> datastore.Entity:
    entity = datastore.Entity(settings_key(client, settings, KIND, name), exclude_from_indexes=("at",))
    entity["at"] = float(at)
    return entity


def kill_record(client: datastore.Client, settings: Settings, user: str | None, at: float) -> datastore.Entity:
    """The entity recording that ``user`` (None: everyone) was killed at ``at``; upsert it with the kill."""
    return _entity(client, settings, _name("kill", EVERYONE if user is None else user), at)


def record_login(client: datastore.Client, settings: Settings, user: str, at: float) -> None:
    """Remember that ``user`` logged in interactively at ``at``. One commit."""
    entity = _entity(client, settings, _name("login", user), at)
    within(settings.request_timeout.total_seconds(), "login record", lambda rpc: client.put(entity, **rpc))


def remembered_login_allowed(client: datastore.Client, settings: Settings, user: str) -> bool:
    """False while a kill of ``user`` (or of everyone) is newer than their last interactive login.

    One lookup RPC of three keys.
    """
    names = [_name("kill", user), _name("kill", EVERYONE), _name("login", user)]
    keys = [settings_key(client, settings, KIND, name) for name in names]
    entities = within(
        settings.request_timeout.total_seconds(), "login record", lambda rpc: client.get_multi(keys, **rpc)
    )
    found = {entity.key.name: float(entity["at"]) for entity in entities}
    killed = max(found.get(names[0], 0.0), found.get(names[1], 0.0))
    return killed <= found.get(names[2], 0.0)
