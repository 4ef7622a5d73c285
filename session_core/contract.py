"""The store contract: what a :class:`~session_core.session.Session` and kill-by-user need from a store.

:class:`~session_core.store.SessionStore` (Datastore) is the one production
implementation; :class:`session_core.testing.MemoryStore` keeps the very same
contract for an app's own tests, without Java. ``tests/test_store_contract.py``
runs one suite against both, so they cannot drift.

The semantics every store keeps:

- **No upsert.** :meth:`Store.insert` refuses a taken name (False, and
  nothing else in that call happens); :meth:`Store.update` refuses a missing
  one (False). A request therefore never re-creates a session that was
  killed or cleared while it held it.
- **Moves are all or none** (see :meth:`Store.move`).
- **Records as stored:** a record is read back with its own lifetime (a
  record written with ``lifetime=None`` reads back with the global one) and
  its ``seen``; expired records are still returned (the caller decides, with
  :func:`session_core.rules.is_expired`).
- Data that Datastore would refuse raises SessionDataError before anything
  is written.
- **Epochs** (:mod:`session_core.epochs`): a lookup can bring both epochs
  along (:meth:`Store.lookup_with_epochs`); a raise is one all-or-none write
  that also rewrites the kept session to the new counter, and a run that
  raised an epoch already raises nothing. Epochs are never deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from session_core.config import Settings
from session_core.epochs import Epoch, Epochs
from session_core.store import SessionRecord


@runtime_checkable
class Store(Protocol):
    """A session store: five writes and reads for :class:`~session_core.session.Session`, one query for users.

    ``settings`` are the store's own (kind, namespace, global life time).
    """

    settings: Settings

    def lookup_all(self, cookie_keys: Sequence[str]) -> dict[str, SessionRecord]:
        """The stored sessions of these cookie values, each found under its hashed name or else its plain one."""
        ...

    def lookup_with_epochs(self, cookie_keys: Sequence[str]) -> tuple[dict[str, SessionRecord], Epochs]:
        """:meth:`lookup_all` and both epochs, read together (Datastore: in the same one lookup RPC)."""
        ...

    def epochs(self) -> Epochs:
        """Both epochs, as stored now (one never raised reads as counter 0)."""
        ...

    def raise_epoch(self, name: str, *, at: float, run_id: str, except_session: str | None = None) -> Epoch:
        """Raise epoch ``name`` ("all" or "guest") at ``at``, all or none with ``except_session`` rewritten to it.

        ``except_session`` (a session id) is stored with the new counter, so it
        survives. A ``run_id`` that raised it already raises nothing. The
        epoch as stored afterwards.
        """
        ...

    def insert(self, record: SessionRecord, *, delete: Sequence[str] = ()) -> bool:
        """Create ``record`` and delete ``delete`` (names), all or none; False (nothing done) if the name is taken."""
        ...

    def update(self, record: SessionRecord) -> bool:
        """Overwrite the stored session of ``record.key_name``; False (nothing written) if there is none."""
        ...

    def move(self, record: SessionRecord, old_name: str, *, old: SessionRecord | None = None) -> bool:
        """Re-home a session from ``old_name`` to ``record.key_name`` (a ViUR plain name to its hash, or a new key).

        ``old`` is what the old name may hold until it is deleted (default:
        ``record``): a key rotation passes the session as it was, so the old
        credential never holds what the new one does.

        Old there and new free: ``record`` is written under the new name and
        the old one deleted. Otherwise (moved already by a concurrent request,
        or killed) it is an :meth:`update` of the new name: True if that
        exists, else False and nothing is written.
        """
        ...

    def delete(self, names: Sequence[str]) -> None:
        """Delete sessions by stored name; absent names are fine."""
        ...

    def sessions_of(self, user: str | None) -> list[SessionRecord]:
        """Every stored session of ``user`` (``"__guest__"``: every guest; None: everyone), expired ones too."""
        ...
