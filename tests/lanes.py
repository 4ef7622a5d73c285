"""Test lanes: what each test needs, marked at collection, so that ``make check`` runs what needs nothing.

Three markers say what a test needs (``pyproject.toml`` declares them; strict markers are on):

- ``emulator``: a real emulator (Firestore in Datastore mode, Pub/Sub, Cloud Tasks), found from the
  fixtures the test uses, however indirectly (``settings``, ``client``, ``function``, ...);
- ``stack``: processes of its own (functions-framework servers, the whole local stack, a browser, gcloud,
  pip, a script), found from the code of the test and of the helpers and fixtures it calls;
- ``slow``: long fault, load and whole-stack runs, marked by hand.

A test written tomorrow is marked the same way without anyone editing it. ``make check`` runs
``-m "not emulator and not stack and not slow"`` with :data:`CHECK_LANE` set: there a test that starts
a process anyway fails and names the marker it lacks, so the fast lane never needs Java by accident.

Hypothesis runs each property with the count it declares in ``make test`` (profile ``full``) and with at
most :data:`CHECK_EXAMPLES` examples in ``make check`` (profile ``check``, chosen by the same variable):
properties declare ``max_examples=examples(10_000)``.
"""

from __future__ import annotations

import os
import subprocess
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

CHECK_LANE = os.environ.get("SESSION_CORE_TEST_LANE") == "check"
CHECK_EXAMPLES = 25

# The session fixtures that start an emulator: a test whose fixture closure holds one needs Java or Python's.
EMULATOR_FIXTURES = frozenset({"datastore_emulator", "pubsub_emulator", "tasks_emulator"})
# Names whose use in a test's code (or a helper or fixture it calls) means it starts a process.
SPAWNING_NAMES = frozenset(
    {
        "subprocess",
        "Popen",
        "serve_function",
        "Emulator",
        "DatastoreEmulator",
        "firestore_datastore_mode",
        "webdriver",
        "executable",
        "which",
    }
)
# Modules whose functions start processes (the local stack and its emulators).
SPAWNING_MODULES = ("devstack",)

hypothesis_settings.register_profile("full")  # Hypothesis' defaults, and each property's declared count
hypothesis_settings.register_profile("check", max_examples=CHECK_EXAMPLES)
hypothesis_settings.load_profile("check" if CHECK_LANE else "full")


def examples(declared: int) -> int:
    """A property's example count: as declared in ``make test``, at most :data:`CHECK_EXAMPLES` in ``make check``."""
    return min(declared, CHECK_EXAMPLES) if CHECK_LANE else declared


def _names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)


def spawns(function: Callable[..., Any], seen: set[int] | None = None) -> bool:
    """True if ``function``, or a function of the test suite it names, starts a process (found from its code)."""
    seen = set() if seen is None else seen
    function = getattr(function, "__wrapped__", function)
    code = getattr(function, "__code__", None)
    if code is None or id(code) in seen:
        return False
    seen.add(id(code))
    scope = getattr(function, "__globals__", {})
    for name in set(_names(code)):
        if name in SPAWNING_NAMES:
            return True
        value = scope.get(name)
        module = getattr(value, "__module__", None) or ""
        if module.startswith(SPAWNING_MODULES):
            return True
        if not module.startswith("tests"):
            continue
        if isinstance(value, type):  # a helper class: any of its methods
            if any(spawns(method, seen) for method in vars(value).values() if callable(method)):
                return True
        elif callable(value) and spawns(value, seen):
            return True
    return False


def lane_markers(item: pytest.Item) -> list[str]:
    """The markers ``item`` earns from what it uses (``emulator``, ``stack``); ``slow`` is set by hand."""
    if not isinstance(item, pytest.Function):
        return []
    markers = []
    if EMULATOR_FIXTURES.intersection(item.fixturenames):
        markers.append("emulator")
    fixtures = [
        definition.func
        for name, definitions in item._fixtureinfo.name2fixturedefs.items()
        if name not in EMULATOR_FIXTURES  # they start processes too, and are marked `emulator` above
        for definition in definitions
    ]
    if any(spawns(function) for function in [item.obj, *fixtures]):
        markers.append("stack")
    return markers


def mark_lanes(items: list[pytest.Item]) -> None:
    for item in items:
        for name in lane_markers(item):
            if item.get_closest_marker(name) is None:
                item.add_marker(name)


class _Guarded(subprocess.Popen):  # type: ignore[type-arg]
    """``subprocess.Popen`` in ``make check``: a test that starts a process is in the wrong lane."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError(
            "this test starts a process, which `make check` does not run: "
            "mark it `stack` (or `emulator`), or see tests/lanes.py for why it was not marked"
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """In ``make check``, a test that starts a process fails (the marker it lacks is named)."""
    if not CHECK_LANE:
        return (yield)
    original, subprocess.Popen = subprocess.Popen, _Guarded  # type: ignore[misc]
    try:
        return (yield)
    finally:
        subprocess.Popen = original  # type: ignore[misc]
