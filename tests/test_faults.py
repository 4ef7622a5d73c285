"""Faults production will bring: transient errors, a dying task handler, a restarting Datastore.

Real emulators and real processes throughout; errors are injected at the gRPC
boundary of the client, not by faking Datastore.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from functions_framework import create_app
from google.cloud import datastore
from google.cloud.datastore_v1.services.datastore.client import DatastoreClient
from google.cloud.datastore_v1.services.datastore.transports import DatastoreGrpcTransport

from devstack.emulators import firestore_export
from session_core import Settings
from session_core.clients import datastore_client
from session_core.maintenance.cleanup import start_clear_sessions
from session_core.testing import Emulator, firestore_datastore_mode, free_port
from tests.conftest import LOG_DIR, ROOT, queue_env, serve_function
from tests.test_cleanup import remaining, seed

pytestmark = pytest.mark.slow  # fault and whole-stack runs: make test runs them, the 3.13 pass does not

NOW = 2_000_000_000.0


class InjectedError(grpc.RpcError, grpc.Call, grpc.Future):  # type: ignore[misc]
    """What a failed gRPC call looks like to the client library (as grpc's own inactive call)."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"injected {self._code.name}"

    def initial_metadata(self) -> None:
        return None

    def trailing_metadata(self) -> None:
        return None

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> BaseException:
        return self

    def traceback(self, timeout: float | None = None) -> None:
        return None

    def done(self) -> bool:
        return True

    def running(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def add_done_callback(self, fn: Any) -> None:
        fn(self)


class Faults(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Fails every ``every``-th non-transactional Commit and RunQuery with the next code of a cycle.

    Some Commits fail after they were applied (the answer is lost), as a
    deadline can in production.
    """

    CODES = (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

    def __init__(self, every: int = 3) -> None:
        self.every = every
        self.calls: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.codes = itertools.cycle(self.CODES)
        self.lock = threading.Lock()

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        method = details.method.rsplit("/", 1)[-1]
        if method not in ("Commit", "RunQuery") or getattr(request, "transaction", b""):
            return continuation(details, request)
        with self.lock:
            self.calls[method] += 1
            fail = self.calls[method] % self.every == 0
            code = next(self.codes) if fail else None
            if fail:
                self.injected[method] += 1
        if code is None:
            return continuation(details, request)
        if method == "Commit" and code is grpc.StatusCode.DEADLINE_EXCEEDED:
            continuation(details, request).result()  # applied, then the answer is lost
        return InjectedError(code)


def client_on_a_new_connection(settings: Settings) -> datastore.Client:
    """A client whose channel shares no connection state with this process's others.

    gRPC shares subchannels between the channels of a process: after a restart on the same port, a
    new channel would inherit the old connection's reconnect backoff and fail fast until it expires.
    """
    channel = grpc.insecure_channel(settings.emulator_host, options=[("grpc.use_local_subchannel_pool", 1)])
    return client_on(settings, channel)


def client_on(settings: Settings, channel: grpc.Channel) -> datastore.Client:
    """A Datastore client for ``settings`` that sends its RPCs over ``channel``."""
    client = datastore_client(settings)
    client._datastore_api_internal = DatastoreClient(transport=DatastoreGrpcTransport(channel=channel))
    return client


def faulty_client(settings: Settings, faults: Faults) -> datastore.Client:
    return client_on(settings, grpc.intercept_channel(grpc.insecure_channel(settings.emulator_host), faults))


def test_transient_errors_are_retried_and_nothing_is_lost(
    client: datastore.Client, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    life = settings.life_time.total_seconds()
    live = seed(client, settings, 300, NOW - 10)
    seed(client, settings, 6000, NOW - life - 3600)
    faults = Faults(every=3)
    settings = replace(settings, page_size=500)
    from session_core.logging import configure_logging

    configure_logging(json=True)
    result = start_clear_sessions(faulty_client(settings, faults), settings, now=NOW)
    assert remaining(client, settings) == live
    assert result.deleted == 6000  # a commit retried after a lost answer is counted once
    assert faults.injected["Commit"] >= 3 and faults.injected["RunQuery"] >= 3
    retries = [json.loads(line) for line in capsys.readouterr().err.splitlines() if "datastore_retry" in line]
    assert len(retries) == sum(faults.injected.values())
    assert {entry["error"] for entry in retries} == {"Aborted", "ServiceUnavailable", "DeadlineExceeded"}


# -- a task handler killed mid-step ------------------------------------------------------


def test_task_handler_killed_mid_chain_is_redelivered_to_an_exact_end_state(
    client: datastore.Client, settings: Settings, tasks_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal

    now = time.time()
    live = seed(client, settings, 500, now)
    seed(client, settings, 16_000, now - 7 * 86400)  # 8 steps of 2,000
    port = free_port()
    env = queue_env(settings, tasks_emulator, port, SESSION_PAGE_SIZE="2000", SESSION_TIME_BUDGET="0")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    handler = serve_function("session_task", port, env).start()
    try:
        sys.modules.pop("main", None)
        assert create_app("clear_sessions", str(ROOT / "main.py")).test_client().post("/").status_code == 200
        while len(remaining(client, settings)) > 12_500:  # the chain is running in session_task
            time.sleep(0.05)
        assert handler.process is not None
        os.killpg(handler.process.pid, signal.SIGKILL)  # mid-step: no goodbye
        handler.stop()
        killed_at = len(remaining(client, settings))
        time.sleep(1)
        handler = serve_function("session_task", port, env).start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and remaining(client, settings) != live:
            time.sleep(0.25)
    finally:
        handler.stop()
    assert 500 < killed_at < 16_500
    assert remaining(client, settings) == live


# -- the Datastore restarting mid-run -------------------------------------------------------


@pytest.fixture
def restartable() -> Iterator[Emulator]:
    """A Firestore emulator of this test's own: it gets killed."""
    emulator = firestore_datastore_mode(LOG_DIR).start()
    try:
        yield emulator
    finally:
        emulator.stop()


def test_datastore_restart_during_cleanup_fails_cleanly_and_a_retry_finishes(
    restartable: Emulator,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    emulator = restartable
    settings = replace(settings, emulator_host=emulator.host)
    client = datastore_client(settings)
    now = time.time()
    live = seed(client, settings, 1_000, now)
    expired = seed(client, settings, 12_000, now - 7 * 86400)
    probe = client.key(settings.kind, sorted(expired)[2_000], namespace=settings.namespace)  # deleted in key order
    env = {
        "DATASTORE_EMULATOR_HOST": emulator.host,
        "GOOGLE_CLOUD_PROJECT": settings.project,
        "SESSION_NAMESPACE": settings.namespace or "",
        "SESSION_PAGE_SIZE": "500",  # a long run: the kill lands mid-way
        "SESSION_DELETES_IN_FLIGHT": "1",
        "SESSION_LEASE_TTL": "5",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    sys.modules.pop("main", None)
    scheduler = create_app("clear_sessions", str(ROOT / "main.py")).test_client()
    answers: list[Any] = []
    run = threading.Thread(target=lambda: answers.append(scheduler.post("/")))
    run.start()
    while client.get(probe) is not None:  # about 2,000 deleted: the run is in full swing, 10,000 to go
        time.sleep(0.02)
    snapshot = firestore_export(emulator.host, settings.project, tmp_path / "export")  # what it keeps
    emulator.stop()  # the Datastore goes away mid-run
    run.join(timeout=120)
    assert answers and answers[0].status_code == 503
    assert '"event": "clear_sessions_failed"' in capsys.readouterr().err

    restarted = firestore_datastore_mode(LOG_DIR, port=emulator.port, import_data=snapshot).start()
    client = client_on_a_new_connection(settings)  # the old connection may still be backing off from the refusals
    try:
        left = remaining(client, settings)
        assert live <= left and 0 < len(left & expired) < 12_000  # it comes back part-way through
        for _ in range(15):  # Cloud Scheduler retries a 5xx with backoff
            retry = scheduler.post("/")
            if retry.status_code == 200 and not retry.get_json()["skipped"]:
                break
            time.sleep(2)
        assert retry.status_code == 200 and not retry.get_json()["skipped"]
        assert remaining(client, settings) == live  # 0 live sessions lost, 0 expired left
    finally:
        restarted.stop()
