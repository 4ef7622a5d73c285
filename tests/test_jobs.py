"""One job contract: each maintenance operation is a step type registered by its ``op``, dispatched in one place."""

from __future__ import annotations

import ast
import inspect
import json
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import pytest
from google.auth.transport import requests as auth_requests
from google.cloud import datastore

import session_core
from session_core import Settings, functions
from session_core.errors import ForbiddenError, PayloadError
from session_core.maintenance.auth import CertificateCache
from session_core.maintenance.cleanup import ClearStep
from session_core.maintenance.runs import Run, RunRecorder, step_digest
from session_core.maintenance.steps import (
    Step,
    Work,
    chain_fields,
    exact_fields,
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

    run_id: str  # its cursor, page, started and done are every step's (steps.Chain)

    op = "probe"

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> ProbeStep:
        exact_fields(payload, {"op", "run_id", "cursor", "page", "started", "done"})
        return cls(**chain_fields(payload))

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


# -- a kill, read in a handful of files ----------------------------------------------------------------

KILL = PACKAGE / "maintenance" / "kill.py"


def _imported(path: Path) -> set[str]:
    """The session_core modules ``path`` imports (at the top or inside a function)."""
    return {
        node.module
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("session_core")
    }


def test_a_kill_is_followed_from_its_message_to_its_deletes_in_kill_sweep_and_the_datastore_plumbing() -> None:
    """The Pub/Sub message, the key-range shards, the steps and the queries of a kill are in kill.py and sweep.py.

    kill.py asks the other maintenance modules for one thing each (a run
    record, a pacer, an event batch, the step contract), and none of them
    calls back into it; the message parsing and the shard planning are no
    modules of their own.
    """
    from session_core.maintenance import kill, sweep

    for name in ("parse_pubsub_event", "parse_kill_message", "run_id_for", "plan_shards", "KillStep", "kill_sessions"):
        assert getattr(kill, name).__module__ == "session_core.maintenance.kill", name
    maintenance = {module for module in _imported(KILL) if module.startswith("session_core.maintenance.")}
    assert maintenance == {
        "session_core.maintenance.events",
        "session_core.maintenance.pacing",
        "session_core.maintenance.runs",
        "session_core.maintenance.steps",
        "session_core.maintenance.sweep",
    }
    assert not (PACKAGE / "maintenance" / "messages.py").exists()
    functions_path = PACKAGE / "functions.py"
    assert "session_core.maintenance.messages" not in _imported(functions_path)
    assert "PropertyFilter" not in KILL.read_text()  # every session query is sweep's, filtered there
    assert sweep.session_query.__module__ == "session_core.maintenance.sweep"


def test_every_step_type_reads_what_every_step_carries_through_one_helper() -> None:
    """``chain_fields`` checks run_id, cursor, page, started and done once; each type adds its own fields."""
    payload = {"run_id": "a" * 32, "cursor": None, "page": 3, "started": 12.5, "done": 7}
    assert chain_fields(payload) == payload
    with pytest.raises(PayloadError, match="page out of range"):
        chain_fields(payload | {"page": -1})
    for op in BUILT_IN_OPS:
        kind = step_type(op)
        first = kind.for_chain("b" * 32, _params(op), 1.0, 0).at(None, 2, 5)
        parsed = kind.parse(first.to_json())
        assert parsed == first
        assert {name: getattr(parsed, name) for name in payload} == chain_fields(first.to_json())


def test_every_step_type_declares_its_chain_fields_once_in_the_base_and_sends_them_last() -> None:
    """cursor, page, started and done are steps.Chain's; a payload lists op, the type's own fields, then those."""
    chain = ["cursor", "page", "started", "done"]
    for op in (*BUILT_IN_OPS, "reshard"):
        kind = step_type(op)
        assert not set(chain) & set(inspect.get_annotations(kind))
        own = [f.name for f in fields(kind) if f.name not in chain]
        first = kind.for_chain("b" * 32, _params(op), 1.0, 0).at("CgZDdXJzb3I=", 2, 5)
        assert list(first.to_json()) == ["op", *own, *chain]
        assert own[0] == "run_id"


def test_a_step_enqueued_with_its_fields_in_another_order_is_the_same_step_with_the_same_digest() -> None:
    """0.13.0 put a clear step's cursor and page among its own fields: such a redelivery is still that step."""
    enqueued = (
        b'{"op": "clear", "run_id": "' + b"a" * 32 + b'", "cutoff": 1.0, "cursor": "CgZDdXJzb3I=", "page": 3, '
        b'"dry_run": true, "shard": 2, "lo": 1.0, "hi": 2.0, "started": 5.0, "done": 7, "write_shard": 1}'
    )
    step = parse_step(enqueued)
    assert step == ClearStep("a" * 32, 1.0, True, 2, 1.0, 2.0, 1, cursor="CgZDdXJzb3I=", page=3, started=5.0, done=7)
    resent = json.dumps(step.to_json()).encode()
    assert resent != enqueued and parse_step(resent) == step
    assert step_digest(parse_step(resent)) == step_digest(step)


def _params(op: str) -> dict[str, Any]:
    return {
        "clear": {"cutoff": 100.0, "dry_run": False, "slices": None},
        "kill": {"user": "alice", "except_session": None, "shards": None},
        "rehash": {"delete": False, "dry_run": True},
        "reshard": {"shards": 4},
    }[op]


def test_the_awaitable_forms_are_the_functions_themselves_in_a_worker_thread() -> None:
    """One wrapper makes every awaitable form: the same signature, the same promises (no copied overloads)."""
    from session_core.maintenance import kill

    for name in ("kill_sessions", "list_user_sessions", "end_user_session", "logout_everywhere_else"):
        awaitable = getattr(kill, f"a{name}")
        assert inspect.iscoroutinefunction(awaitable), name
        assert awaitable.__wrapped__ is getattr(kill, name), name
        assert inspect.signature(awaitable) == inspect.signature(getattr(kill, name)), name
