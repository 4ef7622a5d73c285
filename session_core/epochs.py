"""Epochs: "sign everyone out" (or every guest) that takes effect on the next request, at any size.

A kill of everyone or of every guest raises an **epoch** before its deletes
start: a small entity of our own (kind :data:`KIND`, outside the sessions'
kind, so the cleanup query and viur-core never see it), named ``all`` or
``guest``, holding a ``counter`` and the time ``at`` it was raised. It is
never deleted; a later kill raises its counter.

Every load looks the two epochs up in the same lookup RPC as the session.
Each session stores the counters it was loaded under (``epoch``,
``guest_epoch``) and writes them again on save; a session whose counter is
lower than its epoch's loads as a fresh one (:func:`ended`). So a request
that holds a session across the kill and saves it afterwards writes nothing
that will load again. A session stored without a counter (before this
feature, or created by a request that carried no cookie and so looked
nothing up) is compared by the time it was last written (``seen``) with the
epoch's ``at``.

The session a kill keeps (``except_session``) is rewritten to the new
counter in the epoch's own commit; the epoch also names it (``kept``), so the
request that ran the kill and still holds that session under the previous
counter does not sign itself out when it saves.

Pure rules here; the stores read and raise epochs (:mod:`session_core.store`,
:mod:`session_core.testing`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from session_core._schema import Record, Stored
from session_core.rules import GUEST_USER

KIND = "session_core-epoch"
EVERYONE = "all"
GUESTS = "guest"
NAMES = (EVERYONE, GUESTS)
RECENT_RUNS = 32  # run ids an epoch remembers, so a redelivered kill message does not raise it twice
RECORD = Record(
    KIND,
    f"`{EVERYONE}` (a kill of everyone), `{GUESTS}` (a kill of every guest)",
    "raised before a kill of everyone (or of every guest) deletes anything; never deleted",
    (
        Stored(
            "counter", "integer", False, "how many times it was raised; a session stored under a lower one is ended"
        ),
        Stored("at", "float (epoch seconds)", False, "when it was last raised"),
        Stored("kept", "string or null", False, "the session id the latest raise kept (`except_session`)"),
        Stored("runs", "array of strings", False, f"the ids of the last {RECENT_RUNS} runs that raised it"),
    ),
)
"""The epoch entities (the stores write them with these properties, all unindexed)."""


@dataclass(frozen=True)
class Epoch:
    """One epoch as stored: its counter, when it was last raised, the session that raise kept, recent runs."""

    counter: int = 0
    at: float = 0.0
    kept: str | None = None
    runs: tuple[str, ...] = ()

    def raised(self, at: float, kept: str | None, run_id: str) -> Epoch:
        """This epoch raised once more by run ``run_id`` at ``at``, keeping ``kept`` (a session id)."""
        return Epoch(self.counter + 1, max(at, self.at), kept, (*self.runs, run_id)[-RECENT_RUNS:])

    def to_properties(self) -> dict[str, Any]:
        return {"counter": self.counter, "at": float(self.at), "kept": self.kept, "runs": list(self.runs)}

    @classmethod
    def from_properties(cls, properties: Any) -> Epoch:
        counter, at, kept, runs = (properties.get(name) for name in ("counter", "at", "kept", "runs"))
        return cls(
            counter=counter if isinstance(counter, int) and not isinstance(counter, bool) else 0,
            at=float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else 0.0,
            kept=kept if isinstance(kept, str) else None,
            runs=tuple(run for run in runs if isinstance(run, str)) if isinstance(runs, list) else (),
        )


@dataclass(frozen=True)
class Epochs:
    """The epoch of everyone and the epoch of guests, as one lookup found them (absent: never raised)."""

    everyone: Epoch = field(default_factory=Epoch)
    guests: Epoch = field(default_factory=Epoch)

    def of(self, name: str) -> Epoch:
        return self.everyone if name == EVERYONE else self.guests

    @classmethod
    def found(cls, by_name: dict[str, Epoch]) -> Epochs:
        return cls(by_name.get(EVERYONE, Epoch()), by_name.get(GUESTS, Epoch()))


def _ended_by(epoch: Epoch, counter: int | None, seen: float, session_id: str) -> bool:
    if epoch.counter == 0:
        return False  # never raised
    if session_id == epoch.kept and (counter is None or counter >= epoch.counter - 1):
        return False  # the session the latest raise kept, saved by the request that ran it
    if counter is None:
        return seen < epoch.at  # stored without a counter: by time
    return counter < epoch.counter


def ended(epochs: Epochs, *, user: str, everyone: int | None, guests: int | None, seen: float, session_id: str) -> bool:
    """Whether a session (stored with these counters, last written at ``seen``) was ended by an epoch.

    Everyone's epoch ends any session; the guests' ends a guest session.
    """
    if _ended_by(epochs.everyone, everyone, seen, session_id):
        return True
    return user == GUEST_USER and _ended_by(epochs.guests, guests, seen, session_id)


def current(epochs: Epochs) -> tuple[int, int]:
    """The counters a session loaded under ``epochs`` stores: everyone's and the guests'."""
    return epochs.everyone.counter, epochs.guests.counter
