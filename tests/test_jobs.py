"""One job contract: each maintenance operation is a step type registered by its ``op``, dispatched in one place."""

from __future__ import annotations

import ast
import json
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from google.auth.transport import requests as auth_requests
from google.cloud import datastore

import session_core
from session_core import Settings, functions
from session_core.errors import ForbiddenError, PayloadError
from session_core.maintenance.auth import CertificateCache
from session_core.maintenance.runs import Run, RunRecorder
from session_core.maintenance.steps import (
    Step,
    Work,
    cursor_of,
    exact_fields,
    pace_of,
    page_of,
    parse_step,
    register,
    step_type,
    unregister,
)

PACKAGE = Path(session_core.__file__).parent
REGISTRY = PACKAGE / "maintenance" / "steps.py"
BUILT_IN_OPS = ("clear", "kill", "rehash")


@dataclass(frozen=True)
class Counted:
    """What the probe's step answers."""

    run_id: str
    page: int

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "page": self.page}


RAN: list[Step] = []


@dataclass(frozen=True)
class ProbeStep(Step):
    """A step type of a test's own: two pages per chain, nothing deleted."""

    run_id: str
    cursor: str | None = None
    page: int = 0
    started: float = 0.0
    done: int = 0

    op = "probe"

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> ProbeStep:
        exact_fields(payload, {"op", "run_id", "cursor", "page", "started", "done"})
        started, done = pace_of(payload)
        return cls(payload["run_id"], cursor_of(payload), page_of(payload), started, done)

    @classmethod
    def for_chain(cls, run_id: str, params: Mapping[str, Any], started: float, chain: int) -> ProbeStep:
        return cls(run_id, started=started)

    def run(self, work: Work) -> Counted:
        RAN.append(self)
        RunRecorder(work.client, work.settings).advance(
            self, 0, pages=1, cursor=None, more=self.page == 0, enqueue=work.enqueue
        )
        return Counted(self.run_id, self.page)


@pytest.fixture
def probe() -> Iterator[type[ProbeStep]]:
    """The probe step type, registered for one test."""
    RAN.clear()
    register(ProbeStep)
    yield ProbeStep
    unregister(ProbeStep.op)


def test_the_built_in_operations_are_registered_step_types() -> None:
    for op in BUILT_IN_OPS:
        assert issubclass(step_type(op), Step)
        assert step_type(op).op == op
    with pytest.raises(PayloadError, match="unknown op"):
        step_type("probe")


def test_an_op_is_registered_once(probe: type[ProbeStep]) -> None:
    twin = type("ProbeTwin", (ProbeStep,), {"op": "probe"})
    with pytest.raises(ValueError, match="op 'probe' is taken by ProbeStep"):
        register(twin)
    register(ProbeStep)  # the same type again is a no-op


def test_a_new_step_type_registers_itself_and_is_parsed_checked_and_run_through_the_task_door(
    client: datastore.Client, settings: Settings, probe: type[ProbeStep]
) -> None:
    """No other module changes: the door parses the probe's payload, admits it against its run and runs it."""
    settings = replace(settings, task_auth="none")
    runtime = functions.Runtime(settings, client, None, auth_requests.Request(), CertificateCache("http://unused"))
    now = time.time()
    run = Run(uuid.uuid4().hex, probe.op, {}, now)
    client.put(RunRecorder(client, settings).entity(run))
    first = probe.for_chain(run.run_id, run.params, now, 0)
    assert parse_step(json.dumps(first.to_json()).encode()) == first

    answer = functions.session_task(runtime, json.dumps(first.to_json()).encode(), None)

    assert answer == {"run_id": run.run_id, "page": 0}
    following = first.at(None, 1, 0)
    with pytest.raises(ForbiddenError):  # a forged page: the run expects page 1
        functions.session_task(runtime, json.dumps(first.at(None, 5, 0).to_json()).encode(), None)
    assert functions.session_task(runtime, json.dumps(following.to_json()).encode(), None) == answer | {"page": 1}
    assert [first, following] == RAN
    recorded = RunRecorder(client, settings).get(run.run_id)
    assert recorded is not None and (recorded.status, recorded.steps) == ("done", 2)
    again = functions.session_task(runtime, json.dumps(following.to_json()).encode(), None)
    assert again["skipped"] is True and len(RAN) == 2


def _dispatches_on_op(node: ast.AST) -> bool:
    """A comparison with an ``op`` or a run's ``kind``, or an isinstance test on a step type."""
    if isinstance(node, ast.Compare):
        for side in (node.left, *node.comparators):
            if isinstance(side, ast.Attribute) and side.attr in {"op", "kind"}:
                return True
            if isinstance(side, ast.Subscript) and ast.unparse(side.slice) in {"'op'", "'kind'"}:
                return True
            if isinstance(side, ast.Call) and ast.unparse(side).endswith((".get('op')", ".get('kind')")):
                return True
            if isinstance(side, ast.Constant) and side.value in BUILT_IN_OPS and _near_op(node):
                return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
        return any(name in ast.unparse(node.args[1]) for name in ("ClearStep", "KillStep", "RehashStep"))
    return False


def _near_op(node: ast.Compare) -> bool:
    return any(word in ast.unparse(node) for word in ("op", "kind"))


def test_op_is_dispatched_in_one_place_the_registry() -> None:
    """No module but the registry compares an ``op`` (or a run's kind) or tests a step's type."""
    offenders = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(node)}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != REGISTRY
        for node in ast.walk(ast.parse(path.read_text()))
        if _dispatches_on_op(node)
    ]
    assert offenders == []
