"""What the tests download is checked against locks/ too: one pinned entry, with its hashes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

LOCKS = ROOT / "locks"


def locked(lock: str, name: str, version: str, into: Path) -> Path:
    """A requirements file of ``name==version`` and its hashes from ``locks/<lock>.txt`` (for --require-hashes)."""
    text = (LOCKS / f"{lock}.txt").read_text(encoding="utf-8")
    entry = re.search(
        rf"^{re.escape(name)}=={re.escape(version)}(?: ;[^\\\n]*)? \\\n(?:\s+--hash=\S+(?: \\)?\n)+", text, re.M | re.I
    )
    if entry is None:
        pytest.fail(f"{name}=={version} is not in locks/{lock}.txt: pin it in locks/{lock}.in and run locks/compile.sh")
    into.mkdir(parents=True, exist_ok=True)
    path = into / f"{name}-{version}.txt"
    path.write_text(entry[0], encoding="utf-8")
    return path
