"""The README tells the truth about the settings and the commands."""

from __future__ import annotations

import re
from pathlib import Path

from session_core.config import VARIABLES

ROOT = Path(__file__).resolve().parent.parent


def test_settings_table_names_exactly_the_variables_the_settings_read() -> None:
    section = (ROOT / "README.md").read_text().split("\n## Settings", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", section, re.M))
    assert documented == set(VARIABLES.values())


def test_only_the_entry_points_read_the_environment() -> None:
    readers = {
        str(path.relative_to(ROOT))
        for path in [*(ROOT / "session_core").rglob("*.py"), ROOT / "main.py"]
        if re.search(r"os\.environ|getenv", path.read_text().replace("``os.environ``", ""))  # not in docstrings
    }
    assert readers == {"main.py", "session_core/cli.py"}


def test_the_first_two_commands_are_make_run_and_make_test() -> None:
    commands = re.findall(r"^(make \w+)", (ROOT / "README.md").read_text(), re.M)
    assert commands[:2] == ["make run", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
