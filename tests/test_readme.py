"""The README tells the truth about the settings and the commands."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_settings_table_names_exactly_the_variables_the_code_reads() -> None:
    code = "\n".join(path.read_text() for path in (ROOT / "session_core").glob("*.py")) + (ROOT / "main.py").read_text()
    read = set(re.findall(r'"((?:SESSION|GOOGLE_CLOUD|DATASTORE|CLOUD_TASKS)_[A-Z_]+)"', code))
    section = (ROOT / "README.md").read_text().split("## Settings", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", section, re.M))
    assert documented == read


def test_the_first_two_commands_are_make_run_and_make_test() -> None:
    commands = re.findall(r"^(make \w+)", (ROOT / "README.md").read_text(), re.M)
    assert commands[:2] == ["make run", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
