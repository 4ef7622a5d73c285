"""The package's layers point one way, and a web app loads no maintenance code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import session_core

PACKAGE = Path(session_core.__file__).parent
# Lower numbers are lower layers. A module may import only modules of its own layer or below.
RANK = {
    "errors": 0,
    "_schema": 0,  # the typed description of what is stored and published
    "logging": 0,
    "config": 1,
    "rules": 2,
    "epochs": 3,  # kill-all and kill-guests: the pure epoch rules
    "values": 3,
    "cookies": 3,
    "clients": 3,
    "_datastore": 3,
    "_wire": 3,  # the request path's raw protobufs
    "store": 4,
    "contract": 4,
    "logins": 4,
    "_observers": 4,
    "session": 5,
    "flask": 6,
    "wsgi": 6,
    "asgi": 6,
    "_answers": 6,  # the adapters' 503 and 400
    "testing": 6,
    "pytest_plugin": 6,  # the fixtures over testing, for an app's own tests
    "maintenance": 7,
    "maintenance.steps": 7,
    "maintenance.auth": 7,
    "maintenance.sweep": 7,
    "maintenance.shards": 8,
    "maintenance.dispatch": 8,
    "maintenance.runs": 8,
    "maintenance.pacing": 7,
    "maintenance.leases": 7,
    "maintenance.events": 7,
    "maintenance.rehash": 9,
    "maintenance.reshard": 9,  # the write-shard layout: the cleanup reads what it recorded
    "maintenance.cleanup": 9,
    "maintenance.kill": 9,
    "functions": 10,
    "_render": 10,  # what the command line prints
    "cli": 10,
    # An adapter, but clear_expired() (manage.py clearsessions) runs the cleanup: imported there, lazily.
    "django": 10,
    # ViUR's spellings of the top level's names; the kill aliases load maintenance on first use.
    "viur": 10,
    "__main__": 11,
}
# What a web app imports must not load these (nor anything under them).
NOT_FOR_WEB_APPS = (
    "google.cloud.tasks_v2",
    "google.cloud.pubsub",
    "google.cloud.pubsub_v1",
    "google.pubsub_v1",
    "functions_framework",
    "google.oauth2.id_token",
    "session_core.maintenance",
    "session_core.functions",
    "session_core.cli",
    "session_core.testing",
    "session_core.pytest_plugin",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def imports_of(path: Path) -> set[str]:
    """Every session_core module this file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "session_core":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("session_core."):
                found.add(node.module.removeprefix("session_core."))
        elif isinstance(node, ast.Import):
            found.update(
                alias.name.removeprefix("session_core.")
                for alias in node.names
                if alias.name.startswith("session_core.")
            )
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in PACKAGE.rglob("*.py")}


def test_every_module_has_a_layer() -> None:
    assert set(graph()) - {"__init__"} == set(RANK)


def test_no_module_imports_a_higher_layer_not_even_inside_a_function() -> None:
    upward = [
        f"{module} ({RANK[module]}) imports {target} ({RANK[target]})"
        for module, targets in graph().items()
        if module != "__init__"
        for target in targets
        if RANK[target] > RANK[module]
    ]
    assert upward == []


def test_there_is_no_import_cycle() -> None:
    edges = graph()
    edges.pop("__init__")  # its maintenance names load lazily, on first use
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges.get(module, ())):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def is_under(name: str, packages: tuple[str, ...]) -> bool:
    """``name`` is one of ``packages`` or a module inside one ("session_core.cli" is not "session_core.clients")."""
    return any(name == package or name.startswith(f"{package}.") for package in packages)


@pytest.mark.parametrize(
    "statement",
    [
        "import session_core",
        "import session_core.flask",
        "import session_core.wsgi",
        "import session_core.django",
        "import session_core.asgi",
        "from session_core import Session, Settings, SessionDataError, GUEST_USER",
    ],
)
def test_a_web_app_loads_no_maintenance_tasks_or_functions_code(statement: str) -> None:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = done.stdout.split()
    assert [name for name in loaded if is_under(name, NOT_FOR_WEB_APPS)] == []


def test_maintenance_names_load_on_first_use() -> None:
    code = (
        "import sys, session_core\n"
        "assert 'session_core.maintenance.kill' not in sys.modules\n"
        "from session_core import kill_sessions\n"
        "assert kill_sessions.__module__ == 'session_core.maintenance.kill'\n"
        "assert 'google.cloud.tasks_v2' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], timeout=60, check=True)
