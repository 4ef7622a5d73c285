"""A cleanup run that outlives its budget continues through the real Cloud Tasks emulator.

Everything is real: the Firestore emulator, ``gcloud-tasks-emulator`` (from its own
venv) dispatching HTTP tasks, and ``session_task`` served by functions-framework.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest
from functions_framework import create_app
from google.cloud import datastore

from session_core import Settings
from session_core.maintenance.leases import LEASE_KIND, LEASE_NAME
from session_core.testing import Emulator, free_port
from tests.conftest import LOG_DIR, ROOT, queue_env, serve_function
from tests.test_cleanup import remaining, seed


@pytest.fixture
def chain_env(settings: Settings, tasks_emulator: Emulator) -> Iterator[dict[str, str]]:
    """Settings for a tiny budget (one page per step) with the queue configured, as env vars."""
    port = free_port()
    env = queue_env(settings, tasks_emulator, port, SESSION_PAGE_SIZE="100", SESSION_TIME_BUDGET="0")
    with serve_function("session_task", port, env):
        yield env


def test_a_run_over_budget_continues_in_cloud_tasks_to_the_same_end_state(
    client: datastore.Client,
    settings: Settings,
    chain_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = time.time()
    live = seed(client, settings, 50, now)
    in_grace = seed(client, settings, 30, now - 3600 - 100)
    seed(client, settings, 1050, now - 7 * 86400)
    for name, value in chain_env.items():
        monkeypatch.setenv(name, value)
    sys.modules.pop("main", None)
    scheduler = create_app("clear_sessions", str(ROOT / "main.py")).test_client()

    response = scheduler.post("/")
    assert response.status_code == 200
    body = response.get_json()
    assert body["continued"] is True and body["deleted"] == 100

    lease = client.key(LEASE_KIND, LEASE_NAME, namespace=settings.namespace)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (client.get(lease) is not None or len(remaining(client, settings)) > 80):
        time.sleep(0.2)
    assert remaining(client, settings) == live | in_grace
    assert client.get(lease) is None  # the last step released the lease
    log = (LOG_DIR / f"session_task-{chain_env['SESSION_TASK_URL'].rsplit(':', 1)[1].strip('/')}.log").read_text()
    assert log.count('"event": "clear_sessions"') >= 10  # one summary line per step, each step one page
