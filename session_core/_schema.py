"""What the library stores and publishes, one typed line per property, beside the code that writes it.

The record writers build their index exclusions from these lines
(:func:`unindexed`); the session encoder (:func:`session_core.store.session_pb`)
marks each property on its hot path. Tests compare the lines with what the
code really writes on the emulators, and the docs' storage and event
references are generated from them, so the three cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Presence = Literal["always", "when set", "with N > 1 write shards"]


@dataclass(frozen=True)
class Stored:
    """One property of a stored entity: its name, Datastore value type, whether it is indexed, what it holds.

    ``sharded`` is whether it is indexed with N > 1 write shards
    (``SESSION_WRITE_SHARDS``), when that differs from ``indexed``.
    """

    name: str
    type: str
    indexed: bool
    meaning: str
    present: Presence = "always"
    sharded: bool | None = None

    def indexed_with(self, shards: int) -> bool:
        """Whether the property is indexed in the layout of ``shards`` write shards."""
        return self.indexed if shards == 1 or self.sharded is None else self.sharded


@dataclass(frozen=True)
class Record:
    """One kind the library writes besides the sessions: its entities' names, what they are for, their properties."""

    kind: str
    names: str
    meaning: str
    properties: tuple[Stored, ...]


@dataclass(frozen=True)
class Field:
    """One field of a published message (JSON or attribute): its name, JSON type, what it holds."""

    name: str
    type: str
    meaning: str


def unindexed(properties: tuple[Stored, ...], shards: int = 1) -> tuple[str, ...]:
    """The names to exclude from the indexes, in the layout of ``shards`` write shards."""
    return tuple(p.name for p in properties if not p.indexed_with(shards))
