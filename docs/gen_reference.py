"""Generate the reference pages from the code at build time (mkdocs-gen-files), so they cannot drift.

settings.md from :func:`session_core.config.reference`, cli.md from the
command line's own parser, errors.md from the classes under
:class:`~session_core.errors.SessionCoreError`, api.md as mkdocstrings
directives over the public modules, storage-schema.md and events.md from the
typed descriptions beside the code that writes and publishes
(:mod:`session_core._schema`; tests/test_schema.py compares them with what the
code really writes), public-api.md from ``session_core.__all__``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import mkdocs_gen_files

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's session_core

import session_core
from session_core import cli, config, epochs, errors, logins, rules, store, values
from session_core._schema import Field, Record, Stored
from session_core.maintenance import events, leases, reshard, runs

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


def markdown(rst: str) -> str:
    """A docstring's reST roles (``:func:`~a.b` ``: `` `b` ``) and literals (````x````) as Markdown code."""
    text = re.sub(r":\w+:`~[\w.]*?(\w+)`", r"`\1`", rst)
    return re.sub(r":\w+:`([^`]+)`", r"`\1`", text).replace("``", "`")


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


def first_paragraph(obj: object) -> str:
    """The first paragraph of ``obj``'s docstring, on one line."""
    return (inspect.getdoc(obj) or "").split("\n\n")[0].replace("\n", " ")


def errors_page() -> str:
    for module in API_MODULES:
        importlib.import_module(module)
    lines = [
        "# Errors",
        "",
        "Every error the library raises derives from `SessionCoreError`. Generated from the classes themselves.",
        "",
    ]

    def walk(cls: type[BaseException], depth: int) -> None:
        lines.append(f"{'    ' * depth}- `{cls.__module__}.{cls.__qualname__}`: {markdown(first_paragraph(cls))}")
        for sub in sorted(cls.__subclasses__(), key=lambda c: c.__qualname__):
            walk(sub, depth + 1)

    walk(errors.SessionCoreError, 0)
    return "\n".join([*lines, ""])


def api_page() -> str:
    lines = ["# Python API", "", "Generated from the docstrings.", ""]
    for module in API_MODULES:
        lines += [f"::: {module}", "    options:", "      show_submodules: false", ""]
    return "\n".join(lines)


def stored_table(properties: tuple[Stored, ...], *, sharded: bool = False) -> list[str]:
    """A table of stored properties; ``sharded``: with the index column of both write-shard layouts."""

    def indexed(p: Stored) -> str:
        one = "yes" if p.indexed else "no"
        if p.sharded is None or p.sharded == p.indexed:
            return one
        return f"{one}; {'yes' if p.sharded else 'no'} with N > 1 write shards"

    head = ["| property | type | indexed | present | meaning |", "|---|---|---|---|---|"]
    return head + [
        f"| `{p.name}` | {cell(p.type)} | {indexed(p)} | {p.present} | {cell(p.meaning)} |" for p in properties
    ]


def record_section(record: Record) -> list[str]:
    return [
        f"### `{record.kind}`",
        "",
        f"{record.meaning[0].upper()}{record.meaning[1:]}. Named {record.names}.",
        "",
        *stored_table(record.properties),
        "",
    ]


def storage_schema_page() -> str:
    example = rules.shard_lastseen(3, 1_790_000_000.25)
    tags = [
        (values.TUPLE, "[items]", "a tuple (at any depth)"),
        (values.LIST, "[items]", "a list inside a list (a Datastore array cannot hold an array)"),
        (values.MARKUP, '"text"', "a `markupsafe.Markup` (read as a plain str where markupsafe is not installed)"),
        (values.UUID, '"canonical form"', "a `uuid.UUID`"),
        (values.DICT, "{...}", "a dict of yours whose only key is one of these tag names, so it is never misread"),
    ]
    assert {tag for tag, _, _ in tags} == values.TAGS, "a tag of session_core.values is missing here"
    return "\n".join(
        [
            "# Storage schema",
            "",
            "What the library stores in Datastore. Generated from the typed descriptions beside the code that "
            "writes each entity (`SESSION_PROPERTIES` in `session_core/store.py`, `RECORD` in each writer's "
            "module); `tests/test_schema.py` writes each one with the library's own code on the emulator and "
            "compares it with them. Every entity lives in the settings' database (`SESSION_DATABASE`) and "
            "namespace (`SESSION_NAMESPACE`). Why `lastseen` holds what it holds: "
            "[The lastseen encoding](../explanation/lastseen.md).",
            "",
            "## Sessions",
            "",
            f"Kind `{config.DEFAULT_KIND}` (`SESSION_KIND`), one entity per session, in ViUR's layout "
            "plus the properties ViUR does not write. With `SESSION_WRITE_SHARDS` = 1 (the default) "
            "the indexes are ViUR's, byte for byte; with N > 1 `lastseen` is unindexed and "
            f"`{store.SHARD_PROPERTY}` carries it.",
            "",
            *stored_table(store.SESSION_PROPERTIES, sharded=True),
            "",
            "A ViUR-layout entity (no `seen` and `lifetime`) is read as seen at `lastseen` with the lifetime "
            "its `expires` implies, or with `SESSION_LIFE_TIME` if it has none.",
            "",
            f"### `{store.SHARD_PROPERTY}`",
            "",
            f"`<shard>:<lastseen>`: the write shard as {rules.SHARD_DIGITS} digits (from the session id, a "
            "SHA-256, so uniform, and the same under its plain and its hashed name), a colon, and the stored "
            f"`lastseen` as whole microseconds plus {rules._LASTSEEN_OFFSET_US:,}, as {rules._LASTSEEN_DIGITS} "
            "digits, so that string order is numeric order. "
            f"Shard 3, `lastseen` 1790000000.25: `{example}`.",
            "",
            "## Key names",
            "",
            "With `SESSION_KEY_STORAGE=hashed` (the default) a session is named by the SHA-256 hex of its "
            "cookie (64 hex digits), which is also its opaque session id; with `plain`, by the cookie value "
            f"itself ({rules.KEY_LENGTH} letters and digits), as ViUR names it. A lookup tries both names in "
            "one RPC, so either loads; a plain-named session moves to its hashed name on its next save under "
            "`hashed` storage. `SESSION_PLAIN_KEYS=off` (once `session-core rehash` has finished) looks up the "
            "hashed name alone.",
            "",
            "## Values in `data`",
            "",
            "What viur-core writes and reads is stored natively, in its exact layout: None, bool, int "
            "(64-bit), float (NaN and infinities included), str, bytes, datetime, a Key or GeoPoint, flat "
            "lists, dicts with string keys (embedded entities, every property unindexed). What Datastore "
            "cannot hold natively is an embedded entity with exactly one property named by a tag:",
            "",
            "| value | stored as |",
            "|---|---|",
            *(f'| {meaning} | `{{"{tag}": {inner}}}` |' for tag, inner, meaning in tags),
            "",
            "Datetimes: an aware one comes back as the same instant in UTC; a naive one is taken as UTC and "
            "comes back aware (as Flask's own serializer and the Datastore client do). Refused with "
            "`SessionDataError` before any RPC, naming the path: other types (sets, objects, Decimal, date, "
            "subclasses whose type would be lost), dict keys that are not strings, empty, `__reserved__` or "
            f"over {values.MAX_NAME_BYTES:,} bytes, ints beyond 64 bits, strings with lone surrogates, nesting "
            f"deeper than {values.MAX_DEPTH} levels (the `data` entity is the first; tags count), a value that "
            f"contains itself, and a session over {values.MAX_ENTITY_BYTES:,} bytes (Datastore's 1 MiB entity "
            "limit, measured as Datastore measures storage size). A ViUR session's embedded entity with a key "
            '(viur-core keeps the user entity in `data["user"]`) keeps its key.',
            "",
            "## Other kinds",
            "",
            "Small entities of the library's own, outside the sessions' kind, so neither the cleanup's query "
            "nor viur-core ever sees them.",
            "",
            *record_section(epochs.RECORD),
            *record_section(logins.RECORD),
            "Names of 0.12 and earlier (`kill:<sha256>`, `login:<sha256>`, `kill:*`) are still read, never written.",
            "",
            *record_section(runs.RECORD),
            *record_section(leases.RECORD),
            *record_section(reshard.RECORD),
            "## Indexes",
            "",
            "No composite index is needed (`deploy/` has no `index.yaml`): the library does key lookups, and "
            "every query filters on one property (`lastseen <`, a range of `shard_lastseen`, or `user =` "
            "with a `__key__` range), which Datastore's built-in indexes serve.",
            "",
        ]
    )


def field_table(fields: tuple[Field, ...]) -> list[str]:
    return ["| field | type | meaning |", "|---|---|---|"] + [
        f"| `{f.name}` | {cell(f.type)} | {cell(f.meaning)} |" for f in fields
    ]


def events_page() -> str:
    at = datetime(2026, 11, 26, 9, 40, 0, 123000, tzinfo=UTC).timestamp()
    example = events.event_message("expired", "3f1c0e", at, [(rules.hash_key("x" * rules.KEY_LENGTH), "alice")])
    return "\n".join(
        [
            "# Event schema",
            "",
            "The lifecycle events the library publishes to `SESSION_EVENTS_TOPIC` (off when it is unset; "
            "[how to use them](../how-to/events.md)). Generated from `session_core/maintenance/events.py`; "
            "`tests/test_schema.py` publishes one to the Pub/Sub emulator and compares it with these tables.",
            "",
            "One message per commit batch, published after the commit. Delivery is best-effort: a publish is "
            f"retried for at most {events.PUBLISH_DEADLINE_S:g} s, a failure is logged (`session_events_lost`) "
            "and never fails the deletes; a retried step can publish a batch twice, so consumers dedupe on "
            "`session_id`.",
            "",
            "## Attributes",
            "",
            *field_table(events.ATTRIBUTES),
            "",
            "## Data (JSON)",
            "",
            *field_table(events.FIELDS),
            "",
            "Each entry of `sessions`:",
            "",
            *field_table(events.SESSION_FIELDS),
            "",
            "## Reasons",
            "",
            "| reason | when |",
            "|---|---|",
            *(f"| `{reason}` | {cell(events.REASON_MEANINGS[reason])} |" for reason in events.REASONS),
            "",
            "## Example",
            "",
            "```json",
            example.decode(),
            "```",
            "",
        ]
    )


def public_api_page() -> str:
    def summary(name: str) -> str:
        obj = getattr(session_core, name)
        if isinstance(obj, str):
            return f'the constant `"{obj}"`'
        return cell(markdown(first_paragraph(obj)))

    order = ("config", "session", "store", "contract", "rules", "errors", "maintenance.kill")
    by_module: dict[str, list[str]] = {f"session_core.{module}": [] for module in order}
    for name in session_core.__all__:
        obj = getattr(session_core, name)
        module = "session_core.rules" if isinstance(obj, str) else obj.__module__
        by_module.setdefault(module, []).append(name)
    by_module = {module: names for module, names in by_module.items() if names}
    lines = [
        "# Public API",
        "",
        "What `session_core` exports (`__all__`), generated from it and the docstrings. Everything else is "
        "internal, except the adapter modules `session_core.flask`, `session_core.wsgi`, `session_core.asgi` "
        "and `session_core.django`, the client factory `session_core.clients`, the testing helper "
        "`session_core.testing`, `session_core.cookies.RequestContext`, ViUR's spellings in "
        "`session_core.viur` (`killSessionByUser`, `akillSessionByUser`: the same functions as "
        "`kill_sessions`, `akill_sessions`), and what only the Cloud Functions' side uses, in "
        "`session_core.maintenance`. The maintenance names load on first use, so a web app that never calls "
        "them never loads them. Import each from `session_core`; they are grouped below by the module that "
        "defines them. Every name in full: [Python API](api.md).",
        "",
    ]
    for module, names in by_module.items():
        lines += [f"## `{module}`", ""]
        lines += [f"- `{name}`: {summary(name)}" for name in names]
        lines += [""]
    deprecated = session_core._DEPRECATED
    lines += [
        "## Deprecated names",
        "",
        "The names the top level exported before 0.13.0 still resolve until 0.14.0, with a "
        "`DeprecationWarning` naming their new place:",
        "",
        "| name | now |",
        "|---|---|",
        *(f"| `{name}` | `{module}.{attr}` |" for name, (module, attr) in deprecated.items()),
        "",
    ]
    return "\n".join(lines)


for path, text in {
    "reference/settings.md": settings_page(),
    "reference/cli.md": cli_page(),
    "reference/errors.md": errors_page(),
    "reference/api.md": api_page(),
    "reference/storage-schema.md": storage_schema_page(),
    "reference/events.md": events_page(),
    "reference/public-api.md": public_api_page(),
    "changelog.md": (Path(__file__).resolve().parent.parent / "CHANGELOG.md").read_text(),
}.items():
    with mkdocs_gen_files.open(path, "w") as page:
        page.write(text)
