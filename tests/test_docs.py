"""The docs site builds with ``mkdocs build --strict`` (offline); its generated reference says what the code does."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import session_core
from session_core import epochs, errors, logins
from session_core.cli import COMMANDS
from session_core.config import VARIABLES, reference
from session_core.maintenance import events, leases, reshard, runs
from session_core.rules import KEY_LENGTH
from session_core.store import SESSION_PROPERTIES
from session_core.values import TAGS

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


def rows_of(page: Path) -> list[list[str]]:
    """Every table row of a built page, as its cells' text."""
    markup = page.read_text(encoding="utf-8")
    return [
        [" ".join(text_of_html(cell).split()) for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)]
        for row in re.findall(r"<tr>(.*?)</tr>", markup, re.S)
    ]


def test_the_storage_schema_page_has_every_property_of_every_kind_the_code_writes(site: Path) -> None:
    page = site / "reference" / "storage-schema" / "index.html"
    text, rows = " ".join(text_of(page).split()), rows_of(page)
    records = (epochs.RECORD, logins.RECORD, runs.RECORD, leases.RECORD, reshard.RECORD)
    described = [*SESSION_PROPERTIES, *(p for record in records for p in record.properties)]
    assert len(described) == 31  # 11 session properties, 20 of the other kinds
    for p in described:  # name, type, indexed (with one write shard first), present, meaning
        shown = [p.name, p.type, "yes" if p.indexed else "no", p.present, " ".join(p.meaning.replace("`", "").split())]
        assert any([*row[:2], row[2][: len(shown[2])], *row[3:]] == shown for row in rows if len(row) == 5), p.name
    assert next(row for row in rows if row[0] == "lastseen")[2] == "yes; no with N > 1 write shards"
    for record in records:
        assert f"{record.kind} " in text and " ".join(record.names.replace("`", "").split()) in text
    assert "kill:user:<sha256(user)>, login:user:<sha256(user)>, kill:all" in text
    assert "SHA-256 hex of its cookie (64 hex digits)" in text and f"({KEY_LENGTH} letters and digits)" in text
    assert all(f'{{"{tag}":' in text for tag in TAGS)


def test_the_events_page_has_every_attribute_field_and_reason(site: Path) -> None:
    page = site / "reference" / "events" / "index.html"
    rows = rows_of(page)
    for field in (*events.ATTRIBUTES, *events.FIELDS, *events.SESSION_FIELDS):
        assert [field.name, field.type, " ".join(field.meaning.replace("`", "").split())] in rows, field.name
    for reason in events.REASONS:
        assert [reason, events.REASON_MEANINGS[reason].replace("`", "")] in rows
    after = text_of(page).split("Example", 1)[1]
    example, _ = json.JSONDecoder().raw_decode(after[after.index("{") :])
    assert list(example) == [field.name for field in events.FIELDS] and example["reason"] in events.REASONS


def test_the_public_api_page_lists_exactly_all_and_the_deprecated_names(site: Path) -> None:
    markup = (site / "reference" / "public-api" / "index.html").read_text(encoding="utf-8")
    bullets = [text_of_html(item) for item in re.findall(r"<li>(.*?)</li>", markup, re.S)]
    listed = [bullet.split(":", 1)[0] for bullet in bullets if not bullet.startswith("session_core")]
    assert sorted(listed) == sorted(session_core.__all__)
    rows = rows_of(site / "reference" / "public-api" / "index.html")
    assert {row[0] for row in rows[1:]} == set(session_core._DEPRECATED)


def test_every_page_is_in_the_navigation(site: Path) -> None:
    pages = {str(page.relative_to(ROOT / "docs")) for page in (ROOT / "docs").rglob("*.md")}
    generated = {"reference/settings.md", "reference/cli.md", "reference/errors.md", "reference/api.md"}
    generated |= {"reference/storage-schema.md", "reference/events.md", "reference/public-api.md", "changelog.md"}
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:", 1)[1]
    assert {page for page in pages | generated if page not in nav} == set()


def test_the_explanation_pages_state_the_codes_own_constants() -> None:
    from session_core.maintenance.runs import RECENT
    from session_core.rules import REFRESH_AFTER, SHARD_DIGITS
    from session_core.session import INSERT_ATTEMPTS

    pages = {page: (ROOT / "docs" / "explanation" / f"{page}.md").read_text() for page in ("saves", "runs", "security")}
    pages["lastseen"] = " ".join((ROOT / "docs" / "explanation" / "lastseen.md").read_text().split())
    assert f"{INSERT_ATTEMPTS} inserts in all" in pages["saves"]
    assert f"every `min({REFRESH_AFTER.seconds // 60} minutes, lifetime / 2)`" in pages["saves"]
    assert f"of the chain's last {RECENT} steps" in pages["runs"]
    assert f"`{leases.LEASE_NAME}` for the first" in pages["runs"] and leases.LEASE_KIND in pages["runs"]
    assert f"# {SHARD_DIGITS} digits, a colon, 19 digits" in pages["lastseen"]
    assert f"It is {KEY_LENGTH} characters of" in pages["security"].replace("\n", " ")
