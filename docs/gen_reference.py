"""Generate the reference pages from the code at build time (mkdocs-gen-files), so they cannot drift.

settings.md from :func:`session_core.config.reference`, cli.md from the
command line's own parser, errors.md from the classes under
:class:`~session_core.errors.SessionCoreError`, api.md as mkdocstrings
directives over the public modules.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path

import mkdocs_gen_files

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's session_core

from session_core import cli, config, errors

# The modules whose docstrings make the Python API page (and whose errors join the error tree).
API_MODULES = (
    "session_core",
    "session_core.config",
    "session_core.session",
    "session_core.flask",
    "session_core.wsgi",
    "session_core.asgi",
    "session_core.django",
    "session_core.viur",
    "session_core.store",
    "session_core.contract",
    "session_core.testing",
    "session_core.errors",
)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def settings_page() -> str:
    rows = [
        f"| `{row.variable}` | {cell(row.description)} | {cell(row.default)} | {cell(row.accepts)} |"
        for row in config.reference()
    ]
    return "\n".join(
        [
            "# Settings",
            "",
            "Every setting, read from the environment by `Settings.from_env(os.environ)` or from a JSON file by "
            "`Settings.from_file(path)` (the same variables), or passed to `Settings(...)` by field name. "
            "Generated from `session_core/config.py`.",
            "",
            "| Variable | What it does | Default | Accepts |",
            "| --- | --- | --- | --- |",
            *rows,
            "",
        ]
    )


def cli_page() -> str:
    parser = cli.build_parser()
    [commands] = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    lines = ["# Command line", "", "Generated from the parser of `session-core` (`python -m session_core`).", ""]
    lines += ["```text", parser.format_help().rstrip(), "```", ""]
    for name, sub in commands.choices.items():
        lines += [f"## `session-core {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def errors_page() -> str:
    for module in API_MODULES:
        importlib.import_module(module)
    importlib.import_module("session_core.cli")
    lines = [
        "# Errors",
        "",
        "Every error the library raises derives from `SessionCoreError`. Generated from the classes themselves.",
        "",
    ]

    def walk(cls: type[BaseException], depth: int) -> None:
        doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
        lines.append(f"{'    ' * depth}- `{cls.__module__}.{cls.__qualname__}`: {doc}")
        for sub in sorted(cls.__subclasses__(), key=lambda c: c.__qualname__):
            walk(sub, depth + 1)

    walk(errors.SessionCoreError, 0)
    return "\n".join([*lines, ""])


def api_page() -> str:
    lines = ["# Python API", "", "Generated from the docstrings.", ""]
    for module in API_MODULES:
        lines += [f"::: {module}", "    options:", "      show_submodules: false", ""]
    return "\n".join(lines)


for path, text in {
    "reference/settings.md": settings_page(),
    "reference/cli.md": cli_page(),
    "reference/errors.md": errors_page(),
    "reference/api.md": api_page(),
    "changelog.md": (Path(__file__).resolve().parent.parent / "CHANGELOG.md").read_text(),
}.items():
    with mkdocs_gen_files.open(path, "w") as page:
        page.write(text)
