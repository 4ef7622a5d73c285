"""Kill-by-user: end every session of one user, of all guests, or of everyone.

Built by the kill-by-user issue; until then the public name exists and says so.
"""

from __future__ import annotations

from typing import Any


def killSessionByUser(user: str | None = None, **_: Any) -> None:  # noqa: N802 - ViUR's name
    """Invalidate all active sessions of ``user`` ("__guest__": all guests; None: all)."""
    raise NotImplementedError("killSessionByUser is not built yet (see the kill-by-user issue)")
