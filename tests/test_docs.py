"""The docs site builds with ``mkdocs build --strict`` (offline); its generated reference says what the code does."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from session_core import errors
from session_core.cli import COMMANDS
from session_core.config import VARIABLES, reference

ROOT = Path(__file__).resolve().parent.parent


def text_of_html(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def text_of(page: Path) -> str:
    """A built page's text, without its tags and entities."""
    return text_of_html(page.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once by ``mkdocs build --strict``: a broken link or reference fails the build."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_the_settings_page_lists_every_setting_with_its_default(site: Path) -> None:
    page = (site / "reference" / "settings" / "index.html").read_text(encoding="utf-8")
    rows = {" ".join(text_of_html(row).split()) for row in page.split("<tr>")[2:]}
    assert set(VARIABLES.values()) == {row.variable for row in reference()}
    for row in reference():
        [shown] = [line for line in rows if line.startswith(f"{row.variable} ")]
        assert row.default.replace("`", "") in shown and row.accepts.replace("`", "") in shown, row.variable


def test_the_command_line_page_has_every_command_and_its_help(site: Path) -> None:
    text = " ".join(text_of(site / "reference" / "cli" / "index.html").split())
    for command in COMMANDS:
        assert f"session-core {command.name}" in text
        assert " ".join(command.description.split())[:60] in text  # its help, from the parser


def test_the_errors_page_has_the_whole_error_tree(site: Path) -> None:
    import session_core.cli
    import session_core.testing  # noqa: F401 - their errors join the tree

    text = text_of(site / "reference" / "errors" / "index.html")

    def tree(cls: type[BaseException]) -> list[type[BaseException]]:
        return [cls, *(c for sub in cls.__subclasses__() for c in tree(sub))]

    assert len(tree(errors.SessionCoreError)) >= 5
    assert all(f"{cls.__module__}.{cls.__qualname__}" in text for cls in tree(errors.SessionCoreError))


def test_the_api_page_is_built_from_the_docstrings(site: Path) -> None:
    from session_core.config import Settings

    text = " ".join(text_of(site / "reference" / "api" / "index.html").split())
    assert " ".join((Settings.from_file.__doc__ or "").split()[:12]) in text
