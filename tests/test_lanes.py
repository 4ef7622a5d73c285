"""The test lanes (tests/lanes.py): each test is marked by what it uses, so ``make check`` needs no Java."""

from __future__ import annotations

import subprocess

import pytest

from tests import lanes
from tests.conftest import Ctx


def starts_a_process() -> None:
    subprocess.run(["true"], check=True)


def calls_a_helper_that_starts_one() -> None:
    starts_a_process()


class StandIn:
    def run(self) -> None:
        calls_a_helper_that_starts_one()


def builds_a_stand_in() -> StandIn:
    return StandIn()


def nested() -> None:
    def inner() -> None:
        starts_a_process()

    inner()


def pure() -> dict[str, int]:
    return {"a": len(Ctx().headers)}


# Held in a mapping, so that the test below (which only inspects them) does not itself count as starting one.
SAMPLES = {
    "direct": starts_a_process,
    "through a helper": calls_a_helper_that_starts_one,
    "through a class's method": builds_a_stand_in,  # a fixture's shape: it returns what runs the process
    "in a nested function": nested,
}


def test_a_process_is_found_through_helpers_classes_and_nested_functions() -> None:
    assert {name: lanes.spawns(function) for name, function in SAMPLES.items()} == dict.fromkeys(SAMPLES, True)
    assert not lanes.spawns(pure)


def test_every_collected_test_is_marked_by_what_it_uses(request: pytest.FixtureRequest) -> None:
    items = [item for item in request.session.items if isinstance(item, pytest.Function)]
    # Marked by hand: the whole run's log check needs the emulator tests' lines, not an emulator of its own;
    # the pytest plugin's test runs an app's tests that start one in a pytest process of their own.
    by_hand = {
        "tests/test_zz_log_hygiene.py::test_no_log_line_of_the_whole_run_carries_a_secret",
        "tests/test_pytest_plugin.py::test_the_fixtures_give_an_emulator_settings_a_client_and_a_memory_store_beside_the_apps_own",
    }
    for item in items:
        reaches_an_emulator = bool(lanes.EMULATOR_FIXTURES.intersection(item.fixturenames))
        expected = reaches_an_emulator or item.nodeid in by_hand
        assert (item.get_closest_marker("emulator") is not None) == expected, item.nodeid
    pure_session_tests = [item for item in items if item.nodeid.endswith("test_session.py::test_dict_semantics")]
    for item in pure_session_tests:  # dict semantics need a Settings object, not Java
        assert item.get_closest_marker("emulator") is None and item.get_closest_marker("stack") is None


def test_the_check_lane_refuses_a_process_and_names_the_marker() -> None:
    with pytest.raises(AssertionError, match="mark it `stack`"):
        lanes._Guarded(["true"])


def test_hypothesis_runs_the_declared_examples_in_make_test_and_few_in_make_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lanes, "CHECK_LANE", False)
    assert lanes.examples(10_000) == 10_000 and lanes.examples(10) == 10
    monkeypatch.setattr(lanes, "CHECK_LANE", True)
    assert lanes.examples(10_000) == lanes.CHECK_EXAMPLES and lanes.examples(10) == 10
