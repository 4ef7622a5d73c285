"""deploy/deploy.sh, its config files and cloudbuild.yaml, checked without a cloud.

Three kinds of check: the dry run's commands (what they say, and that the real
gcloud's parser accepts every one of them), the script's control flow against
a recording gcloud stand-in that keeps what it was told to create, and the
Monitoring files parsed into the Monitoring API's own types.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.cloud.monitoring_dashboard_v1 import Dashboard
from google.cloud.monitoring_v3 import AlertPolicy, ComparisonType

from session_core import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
EXAMPLE = DEPLOY / "settings.example.json"
PROJECT, REGION = "shop-prod", "europe-west3"
SA = "{}@" + PROJECT + ".iam.gserviceaccount.com"
CHANNEL = f"projects/{PROJECT}/notificationChannels/1234"


def script(*args: str, work: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """deploy.sh in a plain environment (plus ``env``), with its generated files in ``work``."""
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    return subprocess.run(
        ["bash", str(DEPLOY / "deploy.sh"), "--project", PROJECT, "--region", REGION, "--work-dir", str(work), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, **(env or {})},
    )


def commands(stdout: str) -> list[str]:
    return [line[2:] for line in stdout.splitlines() if line.startswith("+ ")]


def dry_run(
    work: Path, *args: str, again: bool = False, settings: Path = EXAMPLE, env: dict[str, str] | None = None
) -> list[str]:
    done = script("--settings", str(settings), "--dry-run=again" if again else "--dry-run", *args, work=work, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("dry run: nothing was changed")
    return commands(done.stdout)


def settings_file(tmp_path: Path, **values: str) -> Path:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({**json.loads(EXAMPLE.read_text()), **values}))
    return path


def first(lines: list[str], pattern: str) -> int:
    return next(i for i, line in enumerate(lines) if re.search(pattern, line))


def one(lines: list[str], pattern: str) -> str:
    found = [line for line in lines if re.search(pattern, line)]
    assert len(found) == 1, (pattern, found)
    return found[0]


def words(line: str) -> list[str]:
    return shlex.split(line)


def flag(line: str, name: str) -> str:
    parts = words(line)
    return parts[parts.index(name) + 1]


def uri(function: str) -> str:
    return f"https://{function.replace('_', '-')}-dryrun-{REGION}.a.run.app"


# -- what the dry run says ----------------------------------------------------------------------------


def test_dry_run_changes_nothing_and_runs_no_gcloud(tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "gcloud"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho called >> {tmp_path / 'calls'}\n")
    fake.chmod(0o755)
    for args in ((), ("--ttl",), ("--destroy",)):
        dry_run(tmp_path / "work", *args, env={"PATH": f"{fake.parent}:{os.environ['PATH']}"})
    assert not (tmp_path / "calls").exists()


def test_commands_come_in_dependency_order(tmp_path: Path) -> None:
    lines = dry_run(tmp_path)
    order = [
        first(lines, r"^gcloud services enable"),
        first(lines, r"firestore databases create"),
        first(lines, r"iam service-accounts create session-functions"),
        first(lines, r"add-iam-policy-binding .*roles/datastore.user"),
        first(lines, r"tasks queues create"),
        first(lines, r"pubsub topics create kill-user "),
        first(lines, r"functions deploy session_task"),
        first(lines, r"functions deploy clear_sessions"),
        first(lines, r"add-invoker-policy-binding clear_sessions"),
        first(lines, r"pubsub subscriptions update"),
        first(lines, r"scheduler jobs create http clear-sessions"),
        first(lines, r"logging metrics create"),
        first(lines, r"monitoring policies create"),
        first(lines, r"monitoring dashboards create"),
    ]
    assert order == sorted(order)
    assert first(lines, r"functions deploy kill_user_sessions") > first(lines, r"pubsub topics create kill-user ")
    describes = [i for i, line in enumerate(lines) if re.search(r"functions describe session_task .*uri", line)]
    assert first(lines, r"deploy session_task") < describes[-1] < first(lines, r"deploy clear_sessions")


def test_the_apis_include_iam_resource_manager_and_firestore(tmp_path: Path) -> None:
    enable = words(one(dry_run(tmp_path), r"^gcloud services enable"))
    for api in ("iam", "cloudresourcemanager", "firestore", "datastore", "logging", "monitoring", "eventarc"):
        assert f"{api}.googleapis.com" in enable


def test_the_functions_get_exactly_the_settings_file_and_what_deploy_derives(tmp_path: Path) -> None:
    """A comma in a value survives; the caller's shell SESSION_* variables never reach the functions."""
    settings = settings_file(tmp_path, SESSION_PERSISTENT_FIELDS_ON_LOGIN="language,cart", SESSION_NAMESPACE="shop")
    shell = {"SESSION_KIND": "from-the-shell", "SESSION_MANAGER": "local/desk:@/tmp/.ICE-unix/1,unix/desk:/tmp/x"}
    lines = dry_run(tmp_path / "work", settings=settings, env=shell)
    deploys = [line for line in lines if line.startswith("gcloud functions deploy")]
    assert not any("--set-env-vars" in line or "--update-env-vars" in line for line in lines)
    final = {flag(line, "--env-vars-file") for line in deploys[1:]}
    assert len(final) == 1
    env = json.loads(Path(final.pop()).read_text())
    assert env == {
        **json.loads(settings.read_text()),
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "SESSION_TASKS_QUEUE": f"projects/{PROJECT}/locations/{REGION}/queues/session-tasks",
        "SESSION_TASK_URL": uri("session_task"),
        "SESSION_TASK_AUDIENCE": uri("session_task"),
        "SESSION_TASKS_SERVICE_ACCOUNT": SA.format("session-tasks"),
    }
    assert env["SESSION_PERSISTENT_FIELDS_ON_LOGIN"] == "language,cart"
    assert Settings.from_file(flag(deploys[1], "--env-vars-file")).persistent_fields_on_login == ("language", "cart")


def test_a_first_deploy_learns_session_tasks_url_before_it_names_it(tmp_path: Path) -> None:
    lines = dry_run(tmp_path)
    deploys = [words(line)[3] for line in lines if line.startswith("gcloud functions deploy")]
    assert deploys == ["session_task", "clear_sessions", "session_task", "kill_user_sessions"]
    first_pass = json.loads(Path(flag(one(lines, r"env-first-pass"), "--env-vars-file")).read_text())
    assert first_pass == {**json.loads(EXAMPLE.read_text()), "GOOGLE_CLOUD_PROJECT": PROJECT}
    # Again, session_task's URL is known before anything is deployed: each function once.
    again = dry_run(tmp_path / "again", again=True)
    deploys = [words(line)[3] for line in again if line.startswith("gcloud functions deploy")]
    assert deploys == ["clear_sessions", "session_task", "kill_user_sessions"]


def test_every_function_is_private_gen2_within_its_timeout_limit(tmp_path: Path) -> None:
    deploys = [line for line in dry_run(tmp_path) if line.startswith("gcloud functions deploy")]
    for line in deploys:
        parts = words(line)
        assert "--no-allow-unauthenticated" in parts and "--allow-unauthenticated" not in parts
        assert "--gen2" in parts and flag(line, "--runtime") in {"python312", "python313"}
        seconds = int(flag(line, "--timeout").rstrip("s"))
        assert 0 < seconds <= (540 if "--trigger-topic" in parts else 3600)
        assert flag(line, "--service-account") == SA.format("session-functions")
        assert flag(line, "--build-service-account") == f"projects/{PROJECT}/serviceAccounts/" + SA.format(
            "session-builder"
        )
        assert flag(line, "--ignore-file") == "deploy/functions.gcloudignore"
        assert flag(line, "--source") == str(ROOT)
    kill = one(deploys, "kill_user_sessions")
    assert "--retry" in words(kill) and flag(kill, "--trigger-topic") == "kill-user"
    assert flag(kill, "--trigger-service-account") == SA.format("session-functions")


def test_least_privilege(tmp_path: Path) -> None:
    lines = dry_run(tmp_path, settings=settings_file(tmp_path, SESSION_DATABASE="sessions"))
    text = "\n".join(lines)
    assert "allUsers" not in text and "allAuthenticatedUsers" not in text
    assert "roles/owner" not in text and "roles/editor" not in text
    grants = {
        (flag(line, "--member"), flag(line, "--role")): flag(line, "--condition")
        for line in lines
        if "add-iam-policy-binding" in line and line.startswith("gcloud projects")
    }
    functions, builder = (
        "serviceAccount:" + SA.format("session-functions"),
        "serviceAccount:" + SA.format("session-builder"),
    )
    # Datastore on the sessions' database only; the builder on the functions' images and sources only.
    assert grants == {
        (functions, "roles/datastore.user"): (
            f'expression=resource.name == "projects/{PROJECT}/databases/sessions",title=session_core datastore.user'
        ),
        (builder, "roles/logging.logWriter"): "None",
        (builder, "roles/artifactregistry.writer"): (
            f'expression=resource.name.startsWith("projects/{PROJECT}/locations/{REGION}/repositories/gcf-artifacts")'
            ",title=session_core artifactregistry.writer"
        ),
        (builder, "roles/storage.objectViewer"): (
            'expression=resource.name.startsWith("projects/_/buckets/gcf-v2-sources-")'
            ",title=session_core storage.objectViewer"
        ),
    }
    assert "cloudbuild.builds.builder" not in text.replace("remove-iam-policy-binding", "")
    # Enqueue on the session-tasks queue only.
    enqueue = words(one(lines, "roles/cloudtasks.enqueuer"))
    assert enqueue[:5] == ["gcloud", "tasks", "queues", "add-iam-policy-binding", "session-tasks"]
    assert flag(" ".join(enqueue), "--member") == functions
    act_as = one(lines, "roles/iam.serviceAccountUser")
    assert words(act_as)[4] == SA.format("session-tasks")  # on that account only
    invokers = {words(line)[3]: flag(line, "--member") for line in lines if "add-invoker-policy-binding" in line}
    assert invokers == {
        "clear_sessions": "serviceAccount:" + SA.format("session-scheduler"),
        "session_task": "serviceAccount:" + SA.format("session-tasks"),
        "kill_user_sessions": functions,
    }


def test_a_redeploy_removes_the_project_wide_grants_of_earlier_versions(gcloud: StandIn) -> None:
    member = "serviceAccount:" + SA.format("session-functions")
    for role in ("roles/datastore.user", "roles/cloudtasks.enqueuer"):
        gcloud.seed(f"binding:{member}:{role}")  # unconditioned, as 0.12 granted them
    gcloud.seed(f"binding:serviceAccount:{SA.format('session-builder')}:roles/cloudbuild.builds.builder")
    done, calls = gcloud.run("--settings", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    removed = {call[call.index("--role") + 1] for call in calls if "remove-iam-policy-binding" in call}
    assert removed == {"roles/datastore.user", "roles/cloudtasks.enqueuer", "roles/cloudbuild.builds.builder"}
    assert f"binding:{member}:roles/cloudtasks.enqueuer" not in gcloud.resources()
    assert f"binding:{member}:roles/datastore.user:conditioned" in gcloud.resources()


@pytest.mark.parametrize(
    ("topic", "project"), [("session-events", PROJECT), ("projects/shop-audit/topics/session-events", "shop-audit")]
)
def test_the_functions_may_publish_lifecycle_events_to_their_topic_and_no_other(
    tmp_path: Path, topic: str, project: str
) -> None:
    assert not any("session-events" in line for line in dry_run(tmp_path / "off"))  # off by default
    lines = dry_run(tmp_path / "on", settings=settings_file(tmp_path, SESSION_EVENTS_TOPIC=topic))
    created = words(one(lines, r"pubsub topics create session-events"))
    assert created == ["gcloud", "pubsub", "topics", "create", "session-events", "--project", project]
    grant = one(lines, r"topics add-iam-policy-binding session-events")
    assert flag(grant, "--project") == project
    assert (flag(grant, "--member"), flag(grant, "--role")) == (
        "serviceAccount:" + SA.format("session-functions"),
        "roles/pubsub.publisher",
    )
    deploy = [line for line in lines if line.startswith("gcloud functions deploy")][-1]
    assert json.loads(Path(flag(deploy, "--env-vars-file")).read_text())["SESSION_EVENTS_TOPIC"] == topic
    assert first(lines, r"topics add-iam-policy-binding session-events") < first(lines, r"functions deploy")


@pytest.mark.parametrize(
    ("values", "concurrency"),
    [
        ({}, 16),
        ({"SESSION_SHARDS": "64"}, 64),
        ({"SESSION_SHARDS": "2"}, 4),
        ({"SESSION_CLEAR_SHARDS": "40"}, 40),
        ({"SESSION_WRITE_SHARDS": "8", "SESSION_CLEAR_SHARDS": "4"}, 32),  # a cleanup's chains: 8 x 4
    ],
)
def test_the_queue_lets_every_shard_of_a_run_dispatch_at_once(
    tmp_path: Path, values: dict[str, str], concurrency: int
) -> None:
    update = one(dry_run(tmp_path, settings=settings_file(tmp_path, **values)), r"^gcloud tasks queues update")
    assert int(flag(update, "--max-concurrent-dispatches")) == concurrency
    assert float(flag(update, "--max-dispatches-per-second")) <= 50  # new steps per second, below the ramp-up
    assert int(flag(update, "--max-attempts")) > 0 and flag(update, "--min-backoff").endswith("s")


def test_the_scheduler_calls_clear_sessions_own_url_and_retries_within_one_period(tmp_path: Path) -> None:
    lines = dry_run(tmp_path, "--schedule", "*/10 * * * *", settings=settings_file(tmp_path, SESSION_TIME_BUDGET="600"))
    job = one(lines, r"^gcloud scheduler jobs create http clear-sessions")
    assert lines.index(job) > first(lines, r"functions describe clear_sessions .*serviceConfig.uri")
    assert flag(job, "--uri") == flag(job, "--oidc-token-audience") == uri("clear_sessions")
    assert flag(job, "--oidc-service-account-email") == SA.format("session-scheduler")
    assert flag(job, "--http-method") == "POST" and flag(job, "--headers") == "Content-Type=application/json"
    assert 600 <= int(flag(job, "--attempt-deadline").rstrip("s")) <= 1800
    assert int(flag(job, "--max-retry-attempts")) >= 1
    assert flag(job, "--max-retry-duration") == "600s"  # the period of */10
    assert int(flag(job, "--max-backoff").rstrip("s")) <= 600


def test_a_second_deploy_updates_the_job_with_update_headers(tmp_path: Path) -> None:
    lines = dry_run(tmp_path, again=True)
    update = one(lines, r"^gcloud scheduler jobs update http clear-sessions")
    assert "--headers" not in words(update) and flag(update, "--update-headers") == "Content-Type=application/json"
    assert not any(" create" in line for line in lines)


def test_the_database_is_checked_and_created_in_datastore_mode_at_an_explicit_location(tmp_path: Path) -> None:
    create = one(dry_run(tmp_path), r"firestore databases create")
    assert flag(create, "--type") == "datastore-mode" and flag(create, "--location") == REGION
    elsewhere = one(dry_run(tmp_path, "--database-location", "eur3"), r"firestore databases create")
    assert flag(elsewhere, "--location") == "eur3"
    named = one(dry_run(tmp_path, settings=settings_file(tmp_path, SESSION_DATABASE="sessions")), r"databases create")
    assert flag(named, "--database") == "sessions"


def test_ttl_policy_only_when_asked_on_the_sessions_and_the_run_receipts(tmp_path: Path) -> None:
    assert not any("ttls update" in line for line in dry_run(tmp_path))
    ttls = [line for line in dry_run(tmp_path, "--ttl") if "ttls update" in line]
    assert all(words(ttl)[:6] == ["gcloud", "firestore", "fields", "ttls", "update", "expires"] for ttl in ttls)
    assert all("--enable-ttl" in words(ttl) for ttl in ttls)
    assert sorted(flag(ttl, "--collection-group") for ttl in ttls) == ["session_core-run", "viur-session"]


def test_dead_letters_go_to_the_subscription_of_the_functions_own_trigger_and_are_kept(tmp_path: Path) -> None:
    lines = dry_run(tmp_path)
    describe = one(lines, r"functions describe kill_user_sessions .*eventTrigger.trigger")
    trigger = one(lines, r"eventarc triggers describe")
    assert lines.index(describe) < lines.index(trigger)
    assert words(trigger)[4] == f"projects/{PROJECT}/locations/{REGION}/triggers/kill-user-sessions-dryrun"
    update = one(lines, r"pubsub subscriptions update")
    assert words(update)[4] == f"projects/{PROJECT}/subscriptions/eventarc-{REGION}-kill-user-sessions-dryrun-sub"
    assert flag(update, "--dead-letter-topic") == "kill-user-dead-letter" and flag(update, "--max-delivery-attempts")
    keep = one(lines, r"pubsub subscriptions create kill-user-dead-letter")
    assert flag(keep, "--topic") == "kill-user-dead-letter" and flag(keep, "--message-retention-duration") == "7d"


def test_alerts_notify_the_channels_given_and_follow_the_schedule(tmp_path: Path) -> None:
    lines = dry_run(tmp_path, "--schedule", "0 */2 * * *", "--notification-channel", CHANNEL)
    files = [Path(flag(line, "--policy-from-file")) for line in lines if "policies create" in line]
    assert len(files) == 4
    policies = {json.loads(file.read_text())["displayName"]: json.loads(file.read_text()) for file in files}
    assert all(policy["notificationChannels"] == [CHANNEL] for policy in policies.values())
    absent = next(p for p in policies.values() if "conditionAbsent" in p["conditions"][0])
    assert absent["conditions"][0]["conditionAbsent"]["duration"] == f"{3 * 7200}s"


@pytest.mark.parametrize(
    ("settings", "args", "message"),
    [
        (None, (), "--settings FILE is required"),
        ({"SESSION_TASK_URL": "https://elsewhere"}, (), "SESSION_TASK_URL is set by deploy.sh"),
        ({"GOOGLE_CLOUD_PROJECT": "other"}, (), "GOOGLE_CLOUD_PROJECT is other, not shop-prod"),
        ({"SESSION_SHARDS": 16}, (), "flat JSON object whose values are all strings"),
        ({"DATASTORE_EMULATOR_HOST": "localhost:1"}, (), "not a setting the functions read"),
        ({"SESSION_LIFETIME": "3600"}, (), "SESSION_LIFETIME is not a setting the functions read"),  # a misspelling
        ({"SESSION_SHARDS": "many"}, (), "SESSION_SHARDS must be a whole number"),
        ({"SESSION_TASK_AUTH": "none"}, (), "SESSION_TASK_AUTH must be oidc"),
        ({}, ("--schedule", "*/7 * * * *"), "--schedule '*/7 * * * *'"),
        ({}, ("--notification-channel", "email-me"), "expected projects/P/notificationChannels/ID"),
        ({"SESSION_EVENTS_TOPIC": "goog-events"}, (), "SESSION_EVENTS_TOPIC must be a topic id"),
    ],
)
def test_bad_input_is_refused_before_any_command(
    tmp_path: Path, settings: dict[str, object] | None, args: tuple[str, ...], message: str
) -> None:
    given: tuple[str, ...] = ()
    if settings is not None:
        path = tmp_path / "settings.json"
        path.write_text(json.dumps(settings))
        given = ("--settings", str(path))
    done = script(*given, *args, "--dry-run", work=tmp_path / "work")
    assert done.returncode == 2 and message in done.stderr
    assert commands(done.stdout) == []


INJECTION = "viur-session\nevents\tshop-audit\tgrab"  # a newline and a line of the old plan format


@pytest.mark.parametrize(
    "values",
    [{"SESSION_KIND": INJECTION}, {"SESSION_NAMESPACE": "shop\r"}, {"SESSION_DATABASE": "sessions\u2028x"}],
    ids=["newline", "carriage-return", "line-separator"],
)
def test_a_setting_with_a_control_character_is_refused_before_any_command(
    tmp_path: Path, values: dict[str, str]
) -> None:
    (name,) = values
    done = script("--settings", str(settings_file(tmp_path, **values)), "--dry-run", work=tmp_path / "work")
    assert done.returncode == 2 and "control character" in done.stderr and name in done.stderr
    assert commands(done.stdout) == []
    assert "grab" not in done.stdout and "shop-audit" not in done.stdout


def load_render() -> Any:
    spec = importlib.util.spec_from_file_location("render", DEPLOY / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_value_with_a_newline_cannot_add_a_plan_line(tmp_path: Path) -> None:
    """Even past the refusal, the plan is JSON read value by value: a newline stays inside its value."""
    render = load_render()
    plan = render.plan({"SESSION_KIND": INJECTION}, PROJECT)
    assert plan == {
        "kind": INJECTION,
        "database": "(default)",
        "budget": "300",
        "shards": "16",
        "events_project": "",
        "events_topic": "",
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    done = subprocess.run(
        [sys.executable, str(DEPLOY / "render.py"), "get", str(path), *plan],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, "".join(value + "\0" for value in plan.values()))
    # deploy.sh's own reading of such a plan (past render.py's refusal): the kind whole, no events topic.
    done = script(
        "--settings", str(EXAMPLE), "--dry-run", "--ttl", work=tmp_path / "work", env=planning(tmp_path, plan)
    )
    assert done.returncode == 0, done.stderr
    assert f"--collection-group '{INJECTION}' --enable-ttl" in done.stdout
    assert "topics create grab" not in done.stdout and "--project shop-audit" not in done.stdout


def planning(tmp_path: Path, plan: dict[str, str]) -> dict[str, str]:
    """A PATH whose python3 answers `render.py settings` with ``plan`` as is (and runs everything else)."""
    (tmp_path / "plan-as-is.json").write_text(json.dumps(plan))
    fake = tmp_path / "fake-bin" / "python3"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(
        f'#!/bin/sh\nif [ "$2" = settings ]; then cp "{tmp_path / "plan-as-is.json"}" "$5"; exit 0; fi\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    fake.chmod(0o755)
    return {"PATH": f"{fake.parent}:{os.environ['PATH']}"}


def test_the_shipped_settings_file_is_one_the_app_can_load() -> None:
    settings = Settings.from_file(EXAMPLE, {"GOOGLE_CLOUD_PROJECT": PROJECT})
    assert settings.kind == "viur-session" and settings.key_storage == "hashed"


# -- the real gcloud's parser -------------------------------------------------------------------------


def every_dry_run_command(work: Path) -> dict[str, list[str]]:
    """Each mode's printed commands: first deploy, re-deploy, each with --ttl, and --destroy."""
    modes: dict[str, list[str]] = {}
    for again in (False, True):
        for extra in ((), ("--ttl",), ("--destroy",)):
            name = ("again" if again else "first") + "".join(extra)
            modes[name] = dry_run(work / name, *extra, "--notification-channel", CHANNEL, again=again)
    work.mkdir(parents=True, exist_ok=True)
    events = settings_file(work, SESSION_EVENTS_TOPIC="session-events")
    modes["first+events"] = dry_run(work / "events", settings=events)
    return modes


def gcloud_env(config: Path) -> dict[str, str]:
    # No account at all: not even the one a Google Cloud machine's metadata server offers (Cloud Build's).
    return {**os.environ, "CLOUDSDK_CONFIG": str(config), "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false"}


def parse_with_gcloud(line: str, config: Path) -> str:
    """What gcloud says to the command with an empty configuration: '' when only the account is missing."""
    done = subprocess.run(words(line), capture_output=True, text=True, timeout=120, env=gcloud_env(config))
    return "" if "You do not currently have an active account selected" in done.stderr else done.stderr[-600:]


def parse_all_with_gcloud(lines: list[str], config: Path) -> dict[str, str]:
    """:func:`parse_with_gcloud` for many commands, in one process of gcloud's own Python (tests/gcloud_parse.py).

    That process runs each command through gcloud's CLI as ``gcloud WORDS`` does, loading the command tree
    once: seconds for 150 commands instead of about one second of CPU each.
    """
    info = subprocess.run(
        ["gcloud", "info", "--format=json(basic.python_location,installation.sdk_root)"],
        capture_output=True,
        text=True,
        timeout=120,
        env=gcloud_env(config),
        check=True,
    )
    where = json.loads(info.stdout)
    done = subprocess.run(
        [where["basic"]["python_location"], str(ROOT / "tests" / "gcloud_parse.py"), where["installation"]["sdk_root"]],
        input="".join(json.dumps(words(line)) + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=600,
        env=gcloud_env(config),
        check=True,
    )
    verdicts = [json.loads(answer) for answer in done.stdout.splitlines()]
    assert len(verdicts) == len(lines), done.stderr[-2000:]
    return {line: "" if said["valid"] else said["stderr"] for line, said in zip(lines, verdicts, strict=True)}


def same_files(line: str, work: Path) -> str:
    """The command with each mode's copy of a generated file replaced by the first deploy's same-named one.

    The modes write the same files (env.json, alert-*.json, dashboard.json) into work directories of
    their own; gcloud's parser reads one as well as the other, so commands that differ only there are one.
    """
    first = work / "first"
    for path in set(re.findall(rf"{re.escape(str(work))}/[^/\s']+/([^\s']+)", line)):
        if (first / path).is_file():
            line = re.sub(rf"{re.escape(str(work))}/[^/\s']+/{re.escape(path)}", str(first / path), line)
    return line


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcloud") is None, reason="needs Google's Cloud SDK (gcloud) installed")
def test_every_printed_command_passes_the_real_gcloud_parser(tmp_path: Path) -> None:
    modes = every_dry_run_command(tmp_path)
    assert {name: len(lines) > 5 for name, lines in modes.items()} == dict.fromkeys(modes, True)
    # And deploy/build.sh's: the build accounts, and the two builds it submits.
    modes["build.sh"] = [shlex.join(argv) for argv in build_sh("--accounts", tmp_path=tmp_path)]
    settings = str(EXAMPLE.relative_to(ROOT))
    modes["build.sh"] += [
        shlex.join(argv) for argv in build_sh("--region", REGION, "--settings", settings, tmp_path=tmp_path)
    ]
    unique = sorted({same_files(line, tmp_path) for lines in modes.values() for line in lines})
    config = tmp_path / "gcloud-config"
    config.mkdir(exist_ok=True)
    # The old mistake stays caught: update has no --headers.
    wrong = one(modes["again"], r"scheduler jobs update").replace("--update-headers", "--headers")
    verdicts = parse_all_with_gcloud([*unique, wrong], config)  # gcloud's own CLI, loaded once
    assert "unrecognized arguments" in verdicts.pop(wrong)
    rejected = {line: why for line, why in verdicts.items() if why}
    assert rejected == {}
    # The one process says what a `gcloud` process of its own says, of a valid command and of a wrong one.
    valid = one(modes["first"], r"scheduler jobs create")
    assert parse_with_gcloud(valid, config) == "" == verdicts[same_files(valid, tmp_path)]
    assert "unrecognized arguments" in parse_with_gcloud(wrong, config)


# -- what each upload carries -------------------------------------------------------------------------


def uploaded(tree: Path) -> set[str]:
    done = subprocess.run(
        ["gcloud", "meta", "list-files-for-upload", str(tree)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CLOUDSDK_CONFIG": str(tree.parent / "gcloud-config")},
        check=True,
    )
    return {line.strip() for line in done.stdout.splitlines() if line.strip()}


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the checkout with what a developer's tree also holds: virtualenvs and caches."""
    tree = tmp_path / "tree"
    skip = shutil.ignore_patterns(".git", ".venv*", "__pycache__", ".*_cache", ".local", ".hypothesis")
    shutil.copytree(ROOT, tree, ignore=skip)
    for junk in (".venv/bin/python", ".venv-tasks/bin/python", "tests/__pycache__/t.pyc", ".git/HEAD", ".local/x"):
        (tree / junk).parent.mkdir(parents=True, exist_ok=True)
        (tree / junk).write_text("")
    return tree


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="needs Google's Cloud SDK (gcloud) installed")
def test_builds_submit_uploads_what_the_build_runs_and_reads(checkout: Path) -> None:
    files = uploaded(checkout)
    for needed in (
        "Makefile",
        "README.md",
        "deploy/deploy.sh",
        "deploy/render.py",
        "cloudbuild.yaml",
        ".ci/run",
        "cloudbuild.test.yaml",
        "locks/dev.txt",
        "locks/tasks-emulator.txt",
    ):
        assert needed in files
    assert {"tests/test_deploy.py", "tests/conftest.py", "main.py", "requirements-dev.txt"} <= files
    assert not any(f.startswith((".venv", ".git/", ".local/")) or "__pycache__" in f for f in files)


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="needs Google's Cloud SDK (gcloud) installed")
def test_the_functions_upload_carries_only_the_code_they_run(checkout: Path) -> None:
    shutil.copy(checkout / "deploy" / "functions.gcloudignore", checkout / ".gcloudignore")  # what --ignore-file does
    files = uploaded(checkout)
    assert {"main.py", "requirements.txt", "session_core/__init__.py", "session_core/maintenance/kill.py"} <= files
    assert {f for f in files if not f.startswith("session_core/")} == {"main.py", "requirements.txt"}
    assert not any("__pycache__" in f for f in files)


# -- control flow against a recording gcloud stand-in ------------------------------------------------

STAND_IN = r"""
import json, os, sys
from pathlib import Path

state_file = Path(os.environ["FAKE_STATE"])
state = json.loads(state_file.read_text()) if state_file.exists() else {"resources": {}, "failures": {}}
args = sys.argv[1:]
with open(os.environ["FAKE_CALLS"], "a") as calls:
    calls.write(json.dumps(["gcloud", *args]) + "\n")

def save():
    state_file.write_text(json.dumps(state))

def opt(name, default=None):
    return args[args.index(name) + 1] if name in args else default

line = " ".join(args)
fail = os.environ.get("FAKE_FAIL", "")
if fail and fail in line:
    count = state["failures"].get(fail, 0) + 1
    state["failures"][fail] = count
    save()
    if count <= int(os.environ.get("FAKE_FAIL_TIMES", "1000")):
        sys.exit(os.environ.get("FAKE_FAIL_MESSAGE", "ERROR: PERMISSION_DENIED: the stand-in says no"))

words = [a for a in args if a not in ("alpha", "beta")]
VERBS = ("describe", "create", "delete", "deploy", "update", "list", "pause", "resume", "purge", "enable",
         "get-iam-policy")
verb_at = next((i for i, w in enumerate(words) if w in VERBS or "policy-binding" in w), len(words))
group, verb = " ".join(words[:verb_at]), words[verb_at] if verb_at < len(words) else ""
rest = [w for w in words[verb_at + 1:] if w != "http"]
name = rest[0] if rest and not rest[0].startswith("--") else ""
project, region = opt("--project"), opt("--region") or opt("--location")
if group == "iam service-accounts":
    name = name.split("@")[0]
elif group == "firestore databases":
    name = opt("--database")
elif group == "firestore fields ttls":
    name = opt("--collection-group")
elif group in ("monitoring policies", "monitoring dashboards") and verb in ("create", "list"):
    name = json.loads(Path(opt("--policy-from-file") or opt("--config-from-file")).read_text())["displayName"] \
        if verb == "create" else opt("--filter").split('"')[1]
elif group in ("monitoring policies", "monitoring dashboards"):
    name = next((k.split(":", 1)[1] for k, v in state["resources"].items() if v.get("name") == name), name)
key = f"{group}:{name}"
resources = state["resources"]

def created():
    fields = {"name": name}
    if group == "functions":
        fields["serviceConfig.uri"] = f"https://{name.replace('_', '-')}-x7q-ey.a.run.app"
        if "--trigger-topic" in args:
            trigger = f"projects/{project}/locations/{region}/triggers/{name.replace('_', '-')}-123"
            fields["eventTrigger.trigger"] = trigger
            resources[f"eventarc triggers:{trigger}"] = {
                "transport.pubsub.subscription": os.environ.get(
                    "FAKE_SUBSCRIPTION", f"projects/{project}/subscriptions/eventarc-{region}-sub-123"
                )
            }
    if group == "firestore databases":
        fields.update(type="DATASTORE_MODE", concurrencyMode="PESSIMISTIC")
    if group == "iam service-accounts":
        fields["email"] = f"{name}@{project}.iam.gserviceaccount.com"
    if group == "tasks queues":
        fields["state"] = "RUNNING"
    if group in ("monitoring policies", "monitoring dashboards"):
        fields["name"] = f"projects/{project}/{group.split()[1]}/{len(resources)}"
        fields["etag"] = "etag-1"
    return fields

if verb in ("describe", "list") and group != "projects":
    if key not in resources:
        if verb == "list":
            sys.exit(0)
        sys.exit(f"ERROR: (gcloud.{group.replace(' ', '.')}.describe) NOT_FOUND: {name} not found")
    fields = opt("--format", "value(name)")[len("value("):-1].split(",")
    print("\t".join(str(resources[key].get(field, "")) for field in fields))
elif group == "projects" and verb == "describe":
    print("424242")
elif group == "projects" and verb == "get-iam-policy":
    # Keys: binding:MEMBER:ROLE, plus ":conditioned" for a binding with a condition.
    member, only_unconditioned, _ = opt("--filter").split("=", 1)[1].partition(" AND NOT bindings.condition:*")
    held = [k.split(":", 3)[3] for k in resources if k.startswith(f"binding:{member}:")]
    held = [role for role in held if not (only_unconditioned and role.endswith(":conditioned"))]
    print("\n".join(role.removesuffix(":conditioned") for role in held))
elif group == "tasks queues" and "policy" in verb:
    key = f"queue-binding:{name}:{opt('--member', '')}:{opt('--role', '')}"
    if verb == "get-iam-policy":
        member = opt("--filter").split("=", 1)[1]
        print("\n".join(k.split(":", 4)[4] for k in resources if k.startswith(f"queue-binding:{name}:{member}:")))
    elif verb == "add-iam-policy-binding":
        resources[key] = {}
    elif resources.pop(key, None) is None:
        sys.exit("ERROR: Policy binding with the specified principal and role not found!")
elif group == "projects" and verb == "add-iam-policy-binding":
    conditioned = ":conditioned" if opt("--condition") != "None" else ""
    resources[f"binding:{opt('--member')}:{opt('--role')}{conditioned}"] = {}
elif group == "projects" and verb == "remove-iam-policy-binding":
    key = f"binding:{opt('--member')}:{opt('--role')}"
    found = [k for k in (key, key + ":conditioned") if k in resources and ("--all" in args or k == key)]
    if not found:
        sys.exit("ERROR: Policy binding with the specified principal, role, and condition not found!")
    for k in found:
        resources.pop(k)
elif verb in ("create", "deploy") or (group == "firestore fields ttls" and "--enable-ttl" in args):
    resources[key] = {**resources.get(key, {}), **created()}
elif verb == "delete" or (group == "firestore fields ttls" and "--disable-ttl" in args):
    resources.pop(key, None)
    if group == "functions":
        for other in [k for k in resources if k.startswith("eventarc triggers:") and name.replace("_", "-") in k]:
            resources.pop(other)
elif verb in ("pause", "resume"):
    resources[key]["state"] = "PAUSED" if verb == "pause" else "RUNNING"
save()
"""


class StandIn:
    """A gcloud on PATH that records every call and keeps what it was told to create."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        (root / "gcloud.py").write_text(textwrap.dedent(STAND_IN))
        gcloud = self.bin / "gcloud"
        gcloud.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{root / "gcloud.py"}" "$@"\n')
        sleep = self.bin / "sleep"  # retries wait without waiting
        sleep.write_text(f'#!/bin/sh\necho "$*" >> {root / "sleeps"}\n')
        for path in (gcloud, sleep):
            path.chmod(0o755)
        self.state = root / "state.json"
        self.calls = root / "calls.jsonl"

    def seed(self, key: str, **fields: str) -> None:
        state = json.loads(self.state.read_text()) if self.state.exists() else {"resources": {}, "failures": {}}
        state["resources"][key] = fields
        self.state.write_text(json.dumps(state))

    def resources(self) -> set[str]:
        return set(json.loads(self.state.read_text())["resources"]) if self.state.exists() else set()

    def run(self, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
        self.calls.unlink(missing_ok=True)
        done = script(
            *args,
            work=self.root / "work",
            env={
                "PATH": f"{self.bin}:{os.environ['PATH']}",
                "FAKE_STATE": str(self.state),
                "FAKE_CALLS": str(self.calls),
                **env,
            },
        )
        calls = [json.loads(line) for line in self.calls.read_text().splitlines()] if self.calls.exists() else []
        return done, calls


@pytest.fixture
def gcloud(tmp_path: Path) -> Iterator[StandIn]:
    yield StandIn(tmp_path / "stand-in")


def verbs(calls: list[list[str]], verb: str) -> list[str]:
    return [" ".join(call[1:]) for call in calls if verb in call]


def test_a_first_run_creates_everything_and_a_second_only_updates(gcloud: StandIn) -> None:
    done, calls = gcloud.run("--settings", str(EXAMPLE), "--notification-channel", CHANNEL)
    assert done.returncode == 0, done.stderr
    made = gcloud.resources()
    for thing in (
        "firestore databases:(default)",
        "iam service-accounts:session-builder",
        "tasks queues:session-tasks",
        "pubsub topics:kill-user",
        "pubsub subscriptions:kill-user-dead-letter",
        "functions:kill_user_sessions",
        "scheduler jobs:clear-sessions",
        "logging metrics:session_core_sessions_deleted",
        "monitoring policies:session_core: a run failed 3 times",
        "monitoring dashboards:session_core",
    ):
        assert thing in made
    assert len(verbs(calls, "create")) == 1 + 4 + 1 + 3 + 1 + 5 + 4 + 1  # db, accounts, queue, pubsub, job, ...
    assert "deployed: clear_sessions https://clear-sessions-x7q-ey.a.run.app" in done.stdout
    # The functions learn session_task's real URL, and the scheduler calls clear_sessions' one.
    env = json.loads((gcloud.root / "work" / "env.json").read_text())
    assert env["SESSION_TASK_URL"] == env["SESSION_TASK_AUDIENCE"] == "https://session-task-x7q-ey.a.run.app"
    job = next(call for call in calls if call[1:4] == ["scheduler", "jobs", "create"])
    assert job[job.index("--uri") + 1] == "https://clear-sessions-x7q-ey.a.run.app"
    subscription = next(call for call in calls if call[1:4] == ["pubsub", "subscriptions", "update"])
    assert subscription[4] == f"projects/{PROJECT}/subscriptions/eventarc-{REGION}-sub-123"

    again, calls = gcloud.run("--settings", str(EXAMPLE), "--notification-channel", CHANNEL)
    assert again.returncode == 0, again.stderr
    assert verbs(calls, "create") == [] and verbs(calls, "delete") == []
    assert len(verbs(calls, "deploy")) == 3
    assert {" ".join(call[1:4]) for call in calls if "update" in call} >= {
        "tasks queues update",
        "scheduler jobs update",
        "logging metrics update",
        "alpha monitoring policies",
        "monitoring dashboards update",
    }
    assert gcloud.resources() == made


def test_a_failing_step_stops_the_script_and_names_it(gcloud: StandIn) -> None:
    done, calls = gcloud.run("--settings", str(EXAMPLE), FAKE_FAIL="functions deploy clear_sessions")
    assert done.returncode != 0
    assert 'error: step "functions" failed: gcloud functions deploy clear_sessions' in done.stderr
    assert calls[-1][1:4] == ["functions", "deploy", "clear_sessions"]  # nothing after it ran
    assert "functions:clear_sessions" not in gcloud.resources()


def test_a_lookup_that_fails_for_another_reason_than_not_found_stops(gcloud: StandIn) -> None:
    done, calls = gcloud.run("--settings", str(EXAMPLE), FAKE_FAIL="tasks queues describe")
    assert done.returncode != 0 and 'step "queue" failed' in done.stderr and "PERMISSION_DENIED" in done.stderr
    assert not any(call[1:4] == ["tasks", "queues", "create"] for call in calls)


def test_bindings_on_new_accounts_are_retried_a_bounded_number_of_times(gcloud: StandIn) -> None:
    done, _ = gcloud.run("--settings", str(EXAMPLE), FAKE_FAIL="roles/datastore.user", FAKE_FAIL_TIMES="2")
    assert done.returncode == 0, done.stderr
    assert (gcloud.root / "sleeps").read_text().split() == ["5", "10"]
    done, calls = gcloud.run("--settings", str(EXAMPLE), FAKE_FAIL="roles/cloudtasks.enqueuer")
    assert done.returncode != 0 and "(6 attempts)" in done.stderr
    assert len([call for call in calls if "roles/cloudtasks.enqueuer" in call]) == 6


def test_a_native_mode_database_is_refused(gcloud: StandIn) -> None:
    gcloud.seed("firestore databases:(default)", type="FIRESTORE_NATIVE", concurrencyMode="PESSIMISTIC")
    done, calls = gcloud.run("--settings", str(EXAMPLE))
    assert done.returncode != 0 and "is in Native mode" in done.stderr
    assert not verbs(calls, "create")


def test_ttl_is_refused_for_optimistic_with_entity_groups(gcloud: StandIn) -> None:
    gcloud.seed("firestore databases:(default)", type="DATASTORE_MODE", concurrencyMode="OPTIMISTIC_WITH_ENTITY_GROUPS")
    done, _ = gcloud.run("--settings", str(EXAMPLE), "--ttl")
    assert done.returncode != 0 and "'optimistic with entity groups'" in done.stderr
    done, _ = gcloud.run("--settings", str(EXAMPLE))
    assert done.returncode == 0, done.stderr


def test_an_empty_trigger_subscription_stops_with_a_clear_message(gcloud: StandIn) -> None:
    done, calls = gcloud.run("--settings", str(EXAMPLE), FAKE_SUBSCRIPTION="")
    assert done.returncode != 0
    assert 'step "dead letters" failed: gcloud eventarc triggers describe' in done.stderr
    assert "printed nothing" in done.stderr
    assert not any(call[1:4] == ["pubsub", "subscriptions", "update"] for call in calls)


def test_destroy_removes_what_the_first_run_created_and_keeps_the_sessions(gcloud: StandIn) -> None:
    done, _ = gcloud.run("--settings", str(EXAMPLE), "--ttl")
    assert done.returncode == 0, done.stderr
    made = gcloud.resources()
    done, calls = gcloud.run("--destroy")
    assert done.returncode == 0, done.stderr
    assert gcloud.resources() == {"firestore databases:(default)", "tasks queues:session-tasks"}  # no binding left
    assert made - gcloud.resources() == {key for key in made if not key.startswith(("firestore d", "tasks"))}
    queue_calls = [
        call for call in calls if call[1:3] == ["tasks", "queues"] and call[3] not in ("describe", "get-iam-policy")
    ]
    assert [" ".join(call[1:4]) for call in queue_calls] == [
        "tasks queues remove-iam-policy-binding",
        "tasks queues pause",
        "tasks queues purge",
    ]
    assert "kept: database (default) and its sessions" in done.stdout
    # Destroying twice is fine, and a deploy afterwards resumes the paused queue.
    assert gcloud.run("--destroy")[0].returncode == 0
    done, calls = gcloud.run("--settings", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    assert any(call[1:4] == ["tasks", "queues", "resume"] for call in calls)


# -- the Monitoring files -----------------------------------------------------------------------------

POLICY_FILES = sorted((DEPLOY / "alerts").glob("*.json"))
METRIC_FILES = sorted((DEPLOY / "metrics").glob("*.json"))


def rendered_policies(tmp_path: Path) -> list[Path]:
    lines = dry_run(tmp_path, "--notification-channel", CHANNEL)
    return [Path(flag(line, "--policy-from-file")) for line in lines if "policies create" in line]


def test_there_are_the_four_alerts_the_issue_names() -> None:
    assert [path.stem for path in POLICY_FILES] == ["dead-letters", "failed-runs", "no-cleanup", "task-errors"]


@pytest.mark.parametrize("source", [True, False], ids=["deploy-files", "rendered"])
def test_alert_policies_parse_as_the_apis_alert_policy_and_say_what_they_watch(source: bool, tmp_path: Path) -> None:
    for path in POLICY_FILES if source else rendered_policies(tmp_path):
        policy = AlertPolicy.from_json(path.read_text())  # unknown fields or bad types raise
        assert policy.display_name.startswith("session_core: "), path
        assert policy.combiner != AlertPolicy.ConditionCombinerType.COMBINE_UNSPECIFIED, path
        assert policy.documentation.content, path
        assert len(policy.conditions) >= 1, path
        for condition in policy.conditions:
            kind = condition._pb.WhichOneof("condition")
            assert kind in ("condition_threshold", "condition_absent"), path
            rule = getattr(condition, kind)
            assert condition.display_name and rule.filter and "metric.type=" in rule.filter, path
            assert "duration" in rule, path
            if kind == "condition_threshold":
                assert rule.comparison != ComparisonType.COMPARISON_UNSPECIFIED, path
        if not source:
            assert list(policy.notification_channels) == [CHANNEL]


def test_the_no_cleanup_alert_waits_three_schedule_periods_and_one_failure_alert_needs_three() -> None:
    absent = AlertPolicy.from_json((DEPLOY / "alerts" / "no-cleanup.json").read_text()).conditions[0].condition_absent
    assert absent.duration.total_seconds() == 3 * 15 * 60  # the default */15 schedule
    # One series across revisions, or every re-deploy would look like an absence.
    assert absent.aggregations[0].cross_series_reducer.name == "REDUCE_SUM"
    failed = AlertPolicy.from_json((DEPLOY / "alerts" / "failed-runs.json").read_text()).conditions[0]
    rule = failed.condition_threshold
    assert rule.comparison == ComparisonType.COMPARISON_GT and rule.threshold_value == 2
    dead = AlertPolicy.from_json((DEPLOY / "alerts" / "dead-letters.json").read_text()).conditions[0]
    assert 'subscription_id="kill-user-dead-letter"' in dead.condition_threshold.filter
    assert dead.condition_threshold.threshold_value == 0
    errors = AlertPolicy.from_json((DEPLOY / "alerts" / "task-errors.json").read_text()).conditions[0]
    assert 'service_name="session-task"' in errors.condition_threshold.filter
    assert 'response_code_class="5xx"' in errors.condition_threshold.filter


def test_the_dashboard_parses_as_the_apis_dashboard_and_charts_every_metric(tmp_path: Path) -> None:
    dashboard = Dashboard.from_json((DEPLOY / "dashboard.json").read_text())
    assert dashboard.display_name == "session_core" and dashboard.grid_layout.widgets
    text = (DEPLOY / "dashboard.json").read_text()
    for path in METRIC_FILES:
        assert path.stem in text, path.stem
    assert "kill-user-dead-letter" in text and "session-task" in text
    again = dry_run(tmp_path, again=True)
    update = one(again, r"monitoring dashboards update")
    assert json.loads(Path(flag(update, "--config-from-file")).read_text())["etag"] == "dry-run-etag"
    Dashboard.from_json(Path(flag(update, "--config-from-file")).read_text())


def metric(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def test_log_based_metrics_count_the_summary_lines_and_never_label_a_run_id() -> None:
    names = {path.stem for path in METRIC_FILES}
    assert names == {
        "session_core_sessions_deleted",
        "session_core_clear_runs",
        "session_core_failed_runs",
        "session_core_steps_rejected",
        "session_core_kill_messages_rejected",
    }
    for path in METRIC_FILES:
        config = metric(path)
        assert 'resource.type="cloud_run_revision"' in config["filter"] and "jsonPayload.event" in config["filter"]
        assert config["metricDescriptor"]["metricKind"] == "DELTA"
        assert "run_id" not in json.dumps(config.get("labelExtractors", {}))
        labels = {label["key"] for label in config["metricDescriptor"].get("labels", [])}
        assert labels == set(config.get("labelExtractors", {})) and "run_id" not in labels
    deleted = metric(DEPLOY / "metrics" / "session_core_sessions_deleted.json")
    assert deleted["valueExtractor"] == "EXTRACT(jsonPayload.deleted)"
    assert "jsonPayload.dry_run=false" in deleted["filter"] and "jsonPayload.skipped=false" in deleted["filter"]
    assert deleted["metricDescriptor"]["valueType"] == "DISTRIBUTION"
    every_policy = "".join(path.read_text() for path in POLICY_FILES)
    assert "user/session_core_clear_runs" in every_policy and "user/session_core_failed_runs" in every_policy


@pytest.mark.parametrize(
    ("event", "counted_by"),
    [
        ("clear_sessions_failed", "session_core_failed_runs"),
        ("session_task_misconfigured", "session_core_failed_runs"),
        ("kill_message_failed", "session_core_failed_runs"),
        ("session_task_refused", "session_core_steps_rejected"),
        ("clear_sessions_rejected", "session_core_steps_rejected"),
        ("kill_message_rejected", "session_core_kill_messages_rejected"),
    ],
)
def test_each_failure_line_main_py_logs_is_counted_by_one_metric(event: str, counted_by: str) -> None:
    main = (ROOT / "main.py").read_text()
    prefix, suffix = event.rsplit("_", 1)
    assert f'"{prefix}"' in main and f'"{suffix}"' in main  # main.py logs f"{name}_{suffix}"
    matching = set()
    for path in METRIC_FILES:
        event_filter = metric(path)["filter"]
        regex = re.search(r'jsonPayload\.event=~"([^"]+)"', event_filter)
        exact = re.findall(r'jsonPayload\.event="([^"]+)"', event_filter)
        if (regex and re.search(regex[1], event)) or event in exact:
            matching.add(path.stem)
    assert matching == {counted_by}


# -- cloudbuild.yaml ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def build() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def test_build() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "cloudbuild.test.yaml").read_text())  # type: ignore[no-any-return]


def account(plan: dict[str, Any]) -> str:
    return str(plan["serviceAccount"]).rsplit("/", 1)[1].split("@")[0]


# What installs or runs third-party test code: pip, a venv, make's test targets, pytest.
RUNS_TEST_CODE = re.compile(r"\bpip\b|make (venv|test|lint|check|bench|run)\b|pytest|requirements-dev|locks/dev")
# Roles that neither deploy nor change IAM: all a build that runs test code may hold.
HARMLESS = {"roles/logging.logWriter"}


def build_sh(*args: str, tmp_path: Path) -> list[list[str]]:
    done = subprocess.run(
        ["bash", str(DEPLOY / "build.sh"), "--project", PROJECT, *args, "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CLOUDSDK_CONFIG": str(tmp_path / "gcloud-config"), "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    return [words(line) for line in commands(done.stdout)]


def roles_held(tmp_path: Path) -> dict[str, set[str]]:
    """Each build account's roles, as `deploy/build.sh --accounts` grants them."""
    held: dict[str, set[str]] = {}
    for argv in build_sh("--accounts", tmp_path=tmp_path):
        if argv[1:3] == ["projects", "add-iam-policy-binding"]:
            member = argv[argv.index("--member") + 1].split(":")[1].split("@")[0]
            held.setdefault(member, set()).add(argv[argv.index("--role") + 1])
    return held


def test_tests_run_in_a_build_of_their_own_as_an_account_that_may_only_write_logs(
    build: dict[str, Any], test_build: dict[str, Any], tmp_path: Path
) -> None:
    """A compromised dev dependency must not reach an account that can deploy or change IAM."""
    assert [step["id"] for step in test_build["steps"]] == ["install", "test"]
    assert "make test" in " ".join(test_build["steps"][1]["args"])
    assert test_build["steps"][1]["name"].endswith("google-cloud-cli:emulators")  # has the emulators and Java
    held = roles_held(tmp_path)
    assert held["session-tester"] == HARMLESS
    assert "roles/resourcemanager.projectIamAdmin" in held["session-deployer"]
    running_test_code = []
    for plan in (build, test_build):
        assert plan["options"]["logging"] == "CLOUD_LOGGING_ONLY"  # a named account needs a logging choice
        for step in plan["steps"]:
            if RUNS_TEST_CODE.search(" ".join(step["args"])):
                running_test_code.append(step["id"])
                assert held[account(plan)] <= HARMLESS, (step["id"], account(plan))
    assert running_test_code == ["install", "test"]
    # The deploy build installs nothing at all, and the deploy never grants the tester anything.
    assert not any(re.search(r"install|make ", " ".join(step["args"])) for step in build["steps"])
    lines = [*dry_run(tmp_path / "first"), *dry_run(tmp_path / "again", again=True)]
    assert not any("session-tester" in line for line in lines)


def test_build_sh_submits_the_test_build_then_the_deploy_build_of_one_archive(tmp_path: Path) -> None:
    settings = str(EXAMPLE.relative_to(ROOT))
    submits = build_sh("--region", REGION, "--settings", settings, tmp_path=tmp_path)
    assert [argv[argv.index("--config") + 1] for argv in submits] == ["cloudbuild.test.yaml", "cloudbuild.yaml"]
    archive = {argv[3] for argv in submits}
    assert len(archive) == 1 and Path(archive.pop()).is_file()  # one archive, tested then deployed
    assert f"~_SETTINGS={settings}~" in submits[1][-1] and "~_SOURCE_SHA256=" in submits[1][-1]


def test_cloudbuild_deploys_as_a_named_account_with_its_settings_file(build: dict[str, Any]) -> None:
    deployer = "session-deployer@$PROJECT_ID.iam.gserviceaccount.com"
    assert build["serviceAccount"] == f"projects/$PROJECT_ID/serviceAccounts/{deployer}"
    deploy = " ".join(build["steps"][-1]["args"])
    assert "deploy/deploy.sh" in deploy and "--settings" in deploy and "$_SETTINGS" in deploy
    assert "$_REGION" in deploy and "$PROJECT_ID" in deploy
    assert deploy.index('test -f "$_SETTINGS"') < deploy.index("deploy/deploy.sh")  # a missing file says so


def test_what_the_builds_install_comes_from_locks_with_a_hash_for_every_requirement() -> None:
    locks = sorted((ROOT / "locks").glob("*.txt"))
    assert {lock.stem for lock in locks} == {"pip", "runtime", "dev", "tasks-emulator", "sources", "viur-core"}
    for lock in locks:
        entries = re.sub(r"\\\n", " ", lock.read_text())
        requirements = [line for line in entries.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        assert requirements, lock
        for line in requirements:
            assert re.match(r"^[A-Za-z0-9_.\-]+==\S+", line), (lock.name, line)
            assert re.search(r"--hash=sha256:[0-9a-f]{64}", line), (lock.name, line)

    # Each lock holds exactly the pins it is made from.
    def pinned(path: Path) -> dict[str, str]:
        return {n.lower(): v for n, v in re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", path.read_text(), re.M)}

    for source, lock in (
        ("requirements.txt", "runtime"),
        ("requirements-dev.txt", "dev"),
        ("requirements-tasks-emulator.txt", "tasks-emulator"),
        ("locks/sources.in", "sources"),
        ("locks/viur-core.in", "viur-core"),
        ("locks/pip.in", "pip"),
    ):
        wanted = pinned(ROOT / source) | (pinned(ROOT / "requirements.txt") if source == "requirements-dev.txt" else {})
        got = pinned(ROOT / "locks" / f"{lock}.txt")
        assert {name: got.get(name) for name in wanted} == wanted, lock


def test_the_makefile_installs_every_venv_with_require_hashes_from_a_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installs = [line.strip() for line in makefile.splitlines() if "pip install" in line]
    assert installs == [  # one macro: pip and uv from their hashed lock, then the venv's own lock with uv
        "$(1)/bin/pip install --quiet --require-hashes -r locks/pip.txt",
        "$(1)/bin/uv pip install --quiet --python $(1)/bin/python --require-hashes -r $(2)",
    ]
    venvs = re.findall(r"\$\(call install-lock,([^,]+),(locks/[\w-]+\.txt)\)", makefile)
    assert venvs == [
        ("$(VENV)", "locks/dev.txt"),
        ("$(TASKS_VENV)", "locks/tasks-emulator.txt"),
        ("$(VENV313)", "locks/dev.txt"),
    ]


def seconds(value: str) -> int:
    assert value.endswith("s"), value
    return int(value[:-1])


def test_cloudbuild_timeout_leaves_room_above_the_test_suite(test_build: dict[str, Any]) -> None:
    """The test step may take as long as CI gives a whole run; the build adds the other steps and room."""
    ci_limit = 5400  # seconds CI allows `.ci/run` (make test and more) on the same 2-core machine size
    steps = {step["id"]: seconds(step["timeout"]) for step in test_build["steps"]}
    assert steps["test"] >= ci_limit
    assert seconds(test_build["timeout"]) >= sum(steps.values()) + 600


def test_every_script_and_make_target_cloudbuild_calls_exists(
    build: dict[str, Any], test_build: dict[str, Any]
) -> None:
    makefile = (ROOT / "Makefile").read_text()
    for step in [*build["steps"], *test_build["steps"]]:
        command = " ".join(step["args"])
        for name in re.findall(r"[\w./-]+\.sh", command):
            assert (ROOT / name).is_file(), name
        for target in re.findall(r"make (\w+)", command):
            assert re.search(rf"^{target}:", makefile, re.M), target
