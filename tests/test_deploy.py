"""deploy/deploy.sh --dry-run and cloudbuild.yaml: the security-relevant flags and the order of things."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROJECT, REGION = "shop-prod", "europe-west3"
URL = f"https://{REGION}-{PROJECT}.cloudfunctions.net"


def dry_run(*args: str, env: dict[str, str] | None = None) -> list[str]:
    done = subprocess.run(
        ["bash", str(ROOT / "deploy" / "deploy.sh"), "--project", PROJECT, "--region", REGION, "--dry-run", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "dry run: nothing was changed"
    return [line[2:] for line in done.stdout.splitlines() if line.startswith("+ ")]


def first(lines: list[str], pattern: str) -> int:
    return next(i for i, line in enumerate(lines) if re.search(pattern, line))


def words(line: str) -> list[str]:
    return shlex.split(line.split(" || ")[-1])


def flag(line: str, name: str) -> str:
    parts = words(line)
    return parts[parts.index(name) + 1]


def test_dry_run_changes_nothing_and_runs_no_gcloud(tmp_path: Path) -> None:
    fake = tmp_path / "gcloud"
    fake.write_text("#!/bin/sh\necho called >> " + str(tmp_path / "calls") + "\n")
    fake.chmod(0o755)
    dry_run(env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert not (tmp_path / "calls").exists()


def test_commands_come_in_dependency_order() -> None:
    lines = dry_run()
    order = [
        first(lines, r"^gcloud services enable"),
        first(lines, r"iam service-accounts create session-functions"),
        first(lines, r"add-iam-policy-binding .*roles/datastore.user"),
        first(lines, r"tasks queues create"),
        first(lines, r"pubsub topics create kill-user "),
        first(lines, r"functions deploy clear_sessions"),
        first(lines, r"add-invoker-policy-binding clear_sessions"),
        first(lines, r"scheduler jobs create http clear-sessions"),
    ]
    assert order == sorted(order)
    assert first(lines, r"functions deploy kill_user_sessions") > first(lines, r"pubsub topics create kill-user ")


def test_every_function_is_private_gen2_within_its_timeout_limit() -> None:
    deploys = [line for line in dry_run() if line.startswith("gcloud functions deploy")]
    assert {words(line)[3] for line in deploys} == {"clear_sessions", "session_task", "kill_user_sessions"}
    for line in deploys:
        parts = words(line)
        assert "--no-allow-unauthenticated" in parts and "--allow-unauthenticated" not in parts
        assert "--gen2" in parts and flag(line, "--runtime") in {"python312", "python313"}
        seconds = int(flag(line, "--timeout").rstrip("s"))
        limit = 540 if "--trigger-topic" in parts else 3600
        assert 0 < seconds <= limit
        assert flag(line, "--service-account") == f"session-functions@{PROJECT}.iam.gserviceaccount.com"
        env = dict(pair.split("=", 1) for pair in flag(line, "--set-env-vars").split(","))
        assert env["SESSION_TASK_URL"] == env["SESSION_TASK_AUDIENCE"] == f"{URL}/session_task"
        assert env["SESSION_TASKS_QUEUE"] == f"projects/{PROJECT}/locations/{REGION}/queues/session-tasks"
    kill = next(line for line in deploys if "kill_user_sessions" in line)
    assert "--retry" in words(kill) and flag(kill, "--trigger-topic") == "kill-user"


def test_least_privilege() -> None:
    lines = dry_run()
    text = "\n".join(lines)
    assert "allUsers" not in text and "allAuthenticatedUsers" not in text
    granted = {flag(line, "--role") for line in lines if "add-iam-policy-binding" in line and "--role" in words(line)}
    assert granted == {
        "roles/datastore.user",
        "roles/cloudtasks.enqueuer",
        "roles/iam.serviceAccountUser",
        "roles/pubsub.publisher",
        "roles/pubsub.subscriber",
    }
    act_as = next(line for line in lines if "roles/iam.serviceAccountUser" in line)
    assert words(act_as)[4] == f"session-tasks@{PROJECT}.iam.gserviceaccount.com"  # on that account only
    invokers = {words(line)[3]: flag(line, "--member") for line in lines if "add-invoker-policy-binding" in line}
    assert invokers["clear_sessions"] == f"serviceAccount:session-scheduler@{PROJECT}.iam.gserviceaccount.com"
    assert invokers["session_task"] == f"serviceAccount:session-tasks@{PROJECT}.iam.gserviceaccount.com"
    assert not any("roles/owner" in line or "roles/editor" in line for line in lines)


def test_queue_has_explicit_rates_below_the_datastore_ramp_up() -> None:
    update = next(line for line in dry_run() if line.startswith("gcloud tasks queues update"))
    assert float(flag(update, "--max-dispatches-per-second")) <= 50  # new steps per second
    assert int(flag(update, "--max-concurrent-dispatches")) <= 4  # steps deleting at once
    assert int(flag(update, "--max-attempts")) > 0 and flag(update, "--min-backoff").endswith("s")


def test_scheduler_uses_oidc_for_the_function_url_and_the_budget_as_deadline() -> None:
    lines = dry_run(env={"SESSION_TIME_BUDGET": "600"})
    job = next(line for line in lines if line.startswith("gcloud scheduler jobs update http clear-sessions"))
    assert flag(job, "--uri") == flag(job, "--oidc-token-audience") == f"{URL}/clear_sessions"
    assert flag(job, "--oidc-service-account-email") == f"session-scheduler@{PROJECT}.iam.gserviceaccount.com"
    assert int(flag(job, "--attempt-deadline").rstrip("s")) >= 600
    assert flag(job, "--http-method") == "POST"
    deploy = next(line for line in lines if "functions deploy clear_sessions" in line)
    assert "SESSION_TIME_BUDGET=600" in flag(deploy, "--set-env-vars")


def test_ttl_policy_only_when_asked() -> None:
    assert not any("ttls update" in line for line in dry_run())
    ttl = next(line for line in dry_run("--ttl") if "ttls update" in line)
    assert flag(ttl, "--collection-group") == "viur-session" and "--enable-ttl" in words(ttl)
    assert words(ttl)[:6] == ["gcloud", "firestore", "fields", "ttls", "update", "expires"]


def test_the_dead_letter_topic_is_attached_to_the_kill_subscription() -> None:
    lines = dry_run()
    assert any("pubsub topics create kill-user-dead-letter" in line for line in lines)
    update = next(line for line in lines if "pubsub subscriptions update" in line)
    assert "--dead-letter-topic kill-user-dead-letter" in update and "--max-delivery-attempts" in update


def test_missing_project_is_a_clear_error() -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "deploy" / "deploy.sh"), "--region", REGION, "--dry-run"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PROJECT": ""},
    )
    assert done.returncode == 2 and "--project (or PROJECT) is required" in done.stderr


# -- cloudbuild.yaml -----------------------------------------------------------------


@pytest.fixture(scope="module")
def build() -> dict[str, object]:
    return yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())  # type: ignore[no-any-return]


def test_cloudbuild_tests_before_it_deploys(build: dict[str, object]) -> None:
    steps = build["steps"]
    assert isinstance(steps, list)
    ids = [step["id"] for step in steps]
    assert ids == ["install", "test", "deploy"]
    assert "test" in steps[2]["waitFor"] and "install" in steps[1]["waitFor"]
    assert "make test" in " ".join(steps[1]["args"])
    assert steps[1]["name"].endswith("google-cloud-cli:emulators")  # has the emulators and Java


def test_every_script_cloudbuild_calls_exists(build: dict[str, object]) -> None:
    steps = build["steps"]
    assert isinstance(steps, list)
    makefile = (ROOT / "Makefile").read_text()
    for step in steps:
        command = " ".join(step["args"])
        for script in re.findall(r"[\w./-]+\.sh", command):
            assert (ROOT / script).is_file(), script
        for target in re.findall(r"make (\w+)", command):
            assert re.search(rf"^{target}:", makefile, re.M), target
    deploy = steps[2]["args"]
    assert deploy[:1] == ["deploy/deploy.sh"] and "$PROJECT_ID" in deploy and "$_REGION" in deploy
