"""The public surface: what an app imports from ``session_core``, ViUR's spellings, and the names of 0.12 that moved."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import warnings

import pytest

import session_core
import session_core.maintenance
import session_core.viur
from session_core import errors

# What the top level exported in 0.12.0 (its __all__, verbatim).
EXPORTED_IN_0_12 = [
    "GUEST_USER",
    "AuthError",
    "BadInputError",
    "BodyTooLargeError",
    "ClearResult",
    "ConfigError",
    "DeleteObserver",
    "DependencyUnavailableError",
    "DispatchError",
    "ForbiddenError",
    "KillResult",
    "MisuseError",
    "PayloadError",
    "PoisonMessageError",
    "Session",
    "SessionCoreError",
    "SessionDataError",
    "SessionInfo",
    "SessionRecord",
    "SessionStore",
    "Settings",
    "StoreError",
    "TransientStoreError",
    "UnauthenticatedError",
    "aend_user_session",
    "akillSessionByUser",
    "alist_user_sessions",
    "alogout_everywhere_else",
    "end_user_session",
    "killSessionByUser",
    "list_user_sessions",
    "logout_everywhere_else",
    "start_clear_sessions",
]
# A name of 0.12 that left the top level -> where it is now.
MOVED = {
    "killSessionByUser": "session_core.kill_sessions",
    "akillSessionByUser": "session_core.akill_sessions",
    "start_clear_sessions": "session_core.maintenance.cleanup.start_clear_sessions",
    "ClearResult": "session_core.maintenance.cleanup.ClearResult",
    "DeleteObserver": "session_core.maintenance.DeleteObserver",
    "AuthError": "session_core.maintenance.AuthError",
    "BadInputError": "session_core.maintenance.BadInputError",
    "BodyTooLargeError": "session_core.maintenance.BodyTooLargeError",
    "DependencyUnavailableError": "session_core.maintenance.DependencyUnavailableError",
    "DispatchError": "session_core.maintenance.DispatchError",
    "ForbiddenError": "session_core.maintenance.ForbiddenError",
    "PayloadError": "session_core.maintenance.PayloadError",
    "PoisonMessageError": "session_core.maintenance.PoisonMessageError",
    "TransientStoreError": "session_core.maintenance.TransientStoreError",
    "UnauthenticatedError": "session_core.maintenance.UnauthenticatedError",
}
FUNCTION_ONLY_ERRORS = [name for name in MOVED if name.endswith("Error")]


def resolve(dotted: str) -> object:
    module, _, attribute = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def next_minor(version: str) -> str:
    major, minor, _ = version.split(".")
    return f"{major}.{int(minor) + 1}.0"


def test_the_top_level_exports_what_an_app_uses_in_snake_case() -> None:
    assert sorted(session_core.__all__) == sorted(
        [
            *("Settings", "Session", "GUEST_USER"),
            *("Store", "SessionStore", "SessionRecord"),
            *("kill_sessions", "list_user_sessions", "end_user_session", "logout_everywhere_else"),
            *("akill_sessions", "alist_user_sessions", "aend_user_session", "alogout_everywhere_else"),
            *("KillResult", "SessionInfo"),
            *("SessionCoreError", "ConfigError", "SessionDataError", "MisuseError", "StoreError"),
        ]
    )
    camel_case_functions = [name for name in session_core.__all__ if re.fullmatch(r"[a-z]+[A-Z]\w*", name)]
    assert camel_case_functions == []


def test_every_exported_name_resolves_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = {name: getattr(session_core, name) for name in session_core.__all__}
    assert all(value is not None for value in values.values())
    assert values["Store"] is importlib.import_module("session_core.contract").Store


def test_every_name_of_0_12_is_still_exported_or_has_moved() -> None:
    assert sorted(set(EXPORTED_IN_0_12) - set(session_core.__all__)) == sorted(MOVED)


@pytest.mark.parametrize("name", sorted(MOVED))
def test_a_moved_name_still_resolves_with_a_deprecation_warning_naming_its_new_place(name: str) -> None:
    with pytest.warns(DeprecationWarning) as caught:
        value = getattr(session_core, name)
    [warning, *_] = caught
    assert MOVED[name] in str(warning.message)
    assert f"goes in {next_minor(session_core.__version__)}" in str(warning.message)  # one minor version
    assert warning.filename == __file__  # blamed on the caller, so Python's default filters show it to them
    assert value is resolve(MOVED[name])


@pytest.mark.parametrize("name", sorted(MOVED))
def test_from_session_core_import_a_moved_name_still_works_with_its_warning(name: str) -> None:
    scope: dict[str, object] = {}
    with pytest.warns(DeprecationWarning, match=re.escape(MOVED[name])):
        exec(f"from session_core import {name}", scope)  # the statement an app of 0.12 runs
    assert scope[name] is resolve(MOVED[name])


def test_a_moved_name_is_not_in_dir_or_star_imports_so_new_code_does_not_pick_it_up() -> None:
    assert set(MOVED).isdisjoint(dir(session_core))
    assert set(session_core.__all__) <= set(dir(session_core))


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="killSessionsByUser"):
        _ = session_core.killSessionsByUser  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", FUNCTION_ONLY_ERRORS)
def test_the_cloud_functions_errors_are_exported_by_maintenance_in_the_one_error_tree(name: str) -> None:
    error = getattr(session_core.maintenance, name)
    assert name in session_core.maintenance.__all__
    assert error is getattr(errors, name)  # the very class the library raises, under the one root
    assert issubclass(error, session_core.SessionCoreError)


def test_maintenance_exports_exactly_the_moved_function_names_and_each_resolves() -> None:
    """Its ``__all__`` is derived from ``errors.FUNCTION_ERRORS``: a name added there is importable from it too."""
    assert sorted(session_core.maintenance.__all__) == sorted(["DeleteObserver", *FUNCTION_ONLY_ERRORS])
    namespace: dict[str, object] = {}
    exec("from session_core.maintenance import *", namespace)  # the star import an app may write
    assert sorted(name for name in namespace if name != "__builtins__") == sorted(session_core.maintenance.__all__)


def test_the_errors_an_app_catches_cover_what_the_request_path_raises() -> None:
    """An app that catches the exported errors also catches the maintenance subclasses the same calls may raise."""
    assert issubclass(session_core.maintenance.TransientStoreError, session_core.StoreError)
    assert issubclass(session_core.SessionDataError, session_core.maintenance.BadInputError)
    assert issubclass(session_core.MisuseError, session_core.maintenance.BadInputError)


def test_viur_spellings_are_the_snake_case_functions_themselves() -> None:
    assert session_core.viur.__all__ == [
        "Session",
        "akillSessionByUser",
        "install",
        "killSessionByUser",
        "viur_settings",
    ]
    assert session_core.viur.killSessionByUser is session_core.kill_sessions
    assert session_core.viur.akillSessionByUser is session_core.akill_sessions
    with pytest.raises(AttributeError):
        _ = session_core.viur.kill_sessions  # type: ignore[attr-defined]


def test_importing_the_viur_module_loads_no_viur_core_and_no_maintenance_until_an_alias_is_used() -> None:
    code = (
        "import sys\n"
        "import session_core.viur\n"
        "loaded = [m for m in sys.modules if m == 'viur' or m.startswith(('viur.', 'session_core.maintenance'))]\n"
        "assert loaded == [], loaded\n"
        "from session_core.viur import killSessionByUser\n"
        "assert 'session_core.maintenance.kill' in sys.modules\n"
        "assert not [m for m in sys.modules if m == 'viur' or m.startswith('viur.')]\n"
    )
    subprocess.run([sys.executable, "-W", "error", "-c", code], timeout=60, check=True)
