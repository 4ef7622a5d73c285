"""The command line, run as an operator runs it: a subprocess against the emulator, its output read back."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from google.cloud import datastore

from session_core import SessionRecord, Settings
from session_core._render import Console, Outcome
from session_core.cli import COMMANDS, WHERE
from session_core.config import VARIABLES
from session_core.rules import GUEST_USER, hash_key, new_key
from session_core.store import SessionStore
from tests.conftest import EventsTopic
from tests.test_cleanup import remaining, seed
from tests.test_revocation import seed_users

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    """An operator's environment pointed at this test's emulator namespace."""
    assert settings.emulator_host and settings.namespace
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("SESSION_")},
        "DATASTORE_EMULATOR_HOST": settings.emulator_host,
        "SESSION_NAMESPACE": settings.namespace,
        "GOOGLE_CLOUD_PROJECT": settings.project,
    }


@pytest.fixture
def cli(env: dict[str, str]) -> Run:
    """``cli("clear", "--dry-run")``: the command line in a subprocess (stdin and stderr not a terminal)."""

    def run(*args: str, stdin: str = "", **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "session_core", *args],
            env={**env, **extra},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def summary_of(done: subprocess.CompletedProcess[str]) -> str:
    """The one line on stderr that is not a JSON log line."""
    [line] = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    return line


def log_events(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [json.loads(line)["event"] for line in done.stderr.splitlines() if line.startswith("{")]


def test_a_dry_run_says_would_delete_in_its_summary_and_its_json_and_deletes_nothing(
    cli: Run, client: datastore.Client, settings: Settings
) -> None:
    seed(client, settings, 20, time.time())
    seed(client, settings, 300, time.time() - 86400)
    dry = cli("clear", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    result = json.loads(dry.stdout)  # stdout is exactly one JSON document
    assert (result["dry_run"], result["counted"], result["deleted"]) == (True, 300, 0)
    assert re.fullmatch(ISO, result["cutoff_utc"]) and isinstance(result["cutoff"], float)
    assert re.fullmatch(
        rf"would delete 300 expired sessions \(a dry run: nothing was deleted\); cutoff {ISO} \(\d+\.\d{{3}}\)",
        summary_of(dry),
    )
    assert "clear_sessions" not in log_events(dry)  # one result per run: no step summary besides the command's
    assert len(remaining(client, settings)) == 320


def test_clear_deletes_expired_sessions_and_prints_one_summary_and_one_json(
    cli: Run, client: datastore.Client, settings: Settings
) -> None:
    live = seed(client, settings, 20, time.time())
    seed(client, settings, 300, time.time() - 86400)
    done = cli("clear")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["dry_run"], result["counted"], result["deleted"], result["skipped"]) == (False, 300, 300, False)
    summary = summary_of(done)
    assert re.fullmatch(
        rf"deleted 300 expired sessions in [\d.]+ s \([\d,]+/s, 1 commit\); cutoff {ISO} \(\d+\.\d{{3}}\)", summary
    )
    assert result["cutoff_utc"] in summary and f"{result['cutoff']:.3f}" in summary
    assert log_events(done) == ["progress"]  # not a terminal: progress is a log line; the summary is the command's
    assert remaining(client, settings) == live


def test_bad_settings_fail_with_the_variable_named(cli: Run) -> None:
    done = cli("clear", SESSION_BATCH_SIZE="9000")
    assert done.returncode == 1 and done.stdout == ""
    assert "SESSION_BATCH_SIZE: expected a whole number from 1 to 500; got '9000'" in done.stderr


def test_settings_can_come_from_the_file_the_functions_get(
    cli: Run, client: datastore.Client, settings: Settings, tmp_path: Path
) -> None:
    seed_users(client, settings, {"alice": 3})
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps({"SESSION_NAMESPACE": settings.namespace, "SESSION_LIFE_TIME": "3600"}))
    done = cli("--settings", str(settings_file), "sessions", "alice", SESSION_NAMESPACE="elsewhere")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["sessions"]) == 3  # the file's namespace, not the environment's


def test_kill_user_ends_one_users_sessions_and_keeps_the_one_named(
    cli: Run, client: datastore.Client, settings: Settings
) -> None:
    users = seed_users(client, settings, {"alice": 30, "bob": 4, GUEST_USER: 10})
    done = cli("kill-user", "alice")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["deleted"] == 30
    assert re.fullmatch(
        r"deleted 30 sessions of user 'alice' in [\d.]+ s \([\d,]+/s\); 'alice' has 0 active sessions \(before: 30\)",
        summary_of(done),
    )
    assert json.loads(done.stdout) | {"active_before": 30, "active_after": 0} == json.loads(done.stdout)
    kept = sorted(users["bob"])[0]
    bob = cli("kill-user", "bob", "--except", kept)
    assert json.loads(bob.stdout)["deleted"] == 3
    assert summary_of(bob).endswith(f"; kept session {kept}; 'bob' has 1 active session (before: 4)")
    assert remaining(client, settings) == users[GUEST_USER] | {kept}
    refused = cli("kill-user", "bob", "--except", "not-a-session-id")
    assert refused.returncode == 1 and "except_session must be a session id" in refused.stderr


def test_kill_all_and_guest_need_yes_when_no_one_can_be_asked(
    cli: Run, client: datastore.Client, settings: Settings
) -> None:
    users = seed_users(client, settings, {"alice": 5, GUEST_USER: 10})
    everyone = users["alice"] | users[GUEST_USER]
    for who in ("--all", "--guest", GUEST_USER):
        refused = cli("kill-user", who)  # stdin is not a terminal
        assert refused.returncode == 2 and "needs --yes when not run from a terminal" in refused.stderr
        assert refused.stdout == "" and remaining(client, settings) == everyone
    guests = cli("kill-user", "--guest", "--yes", SESSION_SHARDS="4")
    assert guests.returncode == 0, guests.stderr
    assert json.loads(guests.stdout)["deleted"] == 10 and json.loads(guests.stdout)["shards"] == 4
    assert json.loads(guests.stdout)["epoch"] == 1  # the guests' epoch, raised before any delete
    assert re.fullmatch(
        r"signed out at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(epoch 1, [\d.]+ s after the call\): every session it "
        r"covers loads as a fresh one from then on; deleted 10 guest sessions across 4 shards in [\d.]+ s \([\d,]+/s\)",
        summary_of(guests),
    )
    assert log_events(guests).count("kill_sessions") == 0  # no line per shard: one result per run
    assert remaining(client, settings) == users["alice"]


def in_a_terminal(argv: Sequence[str], env: dict[str, str], answer: str | None = None) -> tuple[int, str, str]:
    """Run with stdin and stderr on a pseudo-terminal (stdout piped), as from an operator's shell.

    ``answer`` is typed once the question appears. Returns (status, stdout, what the terminal showed).
    """
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "session_core", *argv],
        env=env,
        stdin=follower,
        stderr=follower,
        stdout=subprocess.PIPE,
        text=True,
    )
    os.close(follower)
    shown = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            if answer is not None and b"Type 'yes' to go on: " in shown:
                os.write(leader, f"{answer}\n".encode())
                answer = None
        elif process.poll() is not None:
            break
    assert process.stdout is not None
    with process.stdout:
        out = process.stdout.read()
    status = process.wait(timeout=30)
    os.close(leader)
    return status, out, shown.decode(errors="replace")


def test_on_a_terminal_kill_all_asks_first_and_a_no_deletes_nothing(
    env: dict[str, str], client: datastore.Client, settings: Settings
) -> None:
    users = seed_users(client, settings, {"alice": 5, GUEST_USER: 10})
    status, out, shown = in_a_terminal(["kill-user", "--all"], env, answer="no")
    assert status == 1 and json.loads(out) == {"confirmed": False, "deleted": 0}
    assert (
        f"This ends every session (every user's and every guest's) in the emulator at {settings.emulator_host}" in shown
    )
    assert f"namespace {settings.namespace}" in shown and "not confirmed: nothing was deleted" in shown
    assert remaining(client, settings) == users["alice"] | users[GUEST_USER]
    status, out, shown = in_a_terminal(["kill-user", "--all"], env, answer="yes")
    assert status == 0 and json.loads(out)["deleted"] == 15
    assert remaining(client, settings) == set()


def test_on_a_terminal_progress_and_rate_count_every_shard_of_the_whole_run(
    env: dict[str, str], client: datastore.Client, settings: Settings
) -> None:
    seed_users(client, settings, {GUEST_USER: 6000})
    status, out, shown = in_a_terminal(["kill-user", "--guest", "--yes"], {**env, "SESSION_SHARDS": "8"})
    assert status == 0, shown
    result = json.loads(out)
    assert result["deleted"] == 6000 and result["shards"] == 8
    progress = [
        (int(done.replace(",", "")), float(seconds))
        for done, seconds in re.findall(r"deleted ([\d,]+) sessions \([\d,]+/s, ([\d.]+) s\)", shown)
    ]
    assert len(progress) >= 8  # at least one line per shard, each counting on from the shards before
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    assert progress[-1][0] == 6000
    assert progress[-1][1] >= 0.5 * result["elapsed_s"]  # the run's time, not the last shard's
    final = shown.rsplit("\x1b[K", 1)[1]  # the summary replaced the progress line
    [(count, seconds, rate)] = re.findall(
        r"deleted ([\d,]+) guest sessions across 8 shards in ([\d.]+) s \(([\d,]+)/s\)", final
    )
    assert count == "6,000" and float(seconds) == pytest.approx(result["elapsed_s"], abs=0.05)
    assert int(rate.replace(",", "")) == pytest.approx(6000 / result["elapsed_s"], rel=0.01)


def test_the_progress_line_ends_before_a_log_line_and_the_summary_replaces_it() -> None:
    stream = io.StringIO()
    console = Console(stream, tty=True, clock=iter([0.0, 2.0, 4.0]).__next__)
    report = console.progress("deleted")
    report(1000, 0.1)  # the library's step time (a shard's) is not what the rate is over
    console.log_processor(None, "warning", {"event": "datastore_retry"})
    report(3000, 0.1)
    with pytest.raises(structlog.DropEvent):
        console.log_processor(None, "info", {"event": "kill_sessions"})
    console.summary(Outcome("deleted 3,000 sessions", {}))
    assert stream.getvalue() == (
        "\r\x1b[Kdeleted 1,000 sessions (500/s, 2.0 s)\n"  # ended before the log line
        "\r\x1b[Kdeleted 3,000 sessions (750/s, 4.0 s)"
        "\r\x1b[Kdeleted 3,000 sessions\n"
    )


def test_sessions_lists_a_users_devices_and_end_signs_one_out(
    cli: Run, client: datastore.Client, settings: Settings
) -> None:
    store = SessionStore(client, settings)
    now = time.time()
    devices = {
        hash_key(new_key()): ({"ip": "10.0.0.1", "user_agent": "Firefox"}, now - 60),
        hash_key(new_key()): ({"ip": "10.0.0.2"}, now - 10),
        hash_key(new_key()): ({}, now - 30),
    }
    client.put_multi(
        [store.to_entity(SessionRecord(n, data, "frank", "k" * 13, seen)) for n, (data, seen) in devices.items()]
    )
    seed_users(client, settings, {"grace": 2})
    listed = cli("sessions", "frank")
    assert listed.returncode == 0, listed.stderr
    sessions = json.loads(listed.stdout)["sessions"]
    assert [s["session_id"] for s in sessions] == sorted(devices, key=lambda n: devices[n][1], reverse=True)
    assert sessions[0]["ip"] == "10.0.0.2" and sessions[0]["user_agent"] is None
    assert all(re.fullmatch(ISO, s["lastseen_utc"]) for s in sessions)
    lines = listed.stderr.splitlines()
    assert lines[0] == "user 'frank' has 3 active sessions, most recent first:"
    assert lines[3].startswith(f"  {sessions[2]['session_id']}  last seen ") and lines[3].endswith("10.0.0.1  Firefox")

    first = sessions[0]["session_id"]
    ended = cli("end", "frank", first)
    assert ended.returncode == 0
    assert json.loads(ended.stdout) == {
        "user": "frank",
        "session_id": first,
        "ended": True,
        "active_before": 3,
        "active_after": 2,
    }
    assert ended.stderr.strip() == f"ended session {first} of user 'frank'; 'frank' has 2 active sessions (before: 3)"
    again = cli("end", "frank", first)
    assert again.returncode == 1 and json.loads(again.stdout)["ended"] is False
    assert again.stderr.strip() == f"user 'frank' has no session {first}: nothing was ended"
    not_theirs = cli("end", "grace", sessions[1]["session_id"])
    assert not_theirs.returncode == 1  # only the named user's session can be ended
    assert len(json.loads(cli("sessions", "frank").stdout)["sessions"]) == 2
    assert cli("sessions", GUEST_USER).returncode == 2


def test_runs_lists_the_receipts_and_a_dry_run_says_would_delete(
    cli: Run, client: datastore.Client, settings: Settings
) -> None:
    seed(client, settings, 40, time.time() - 86400)
    seed_users(client, settings, {"alice": 3})
    assert cli("clear", "--dry-run").returncode == 0
    assert cli("kill-user", "alice").returncode == 0
    done = cli("runs", "--limit", "5")
    assert done.returncode == 0, done.stderr
    kill, dry = json.loads(done.stdout)["runs"]
    assert (kill["kind"], kill["user"], kill["deleted"], kill["status"]) == ("kill", "alice", 3, "done")
    assert (dry["kind"], dry["dry_run"], dry["counted"], dry["deleted"]) == ("clear", True, 40, 0)
    assert re.fullmatch(ISO, dry["cutoff_utc"])
    lines = done.stderr.splitlines()
    assert lines[0] == "2 runs, newest first:"
    assert re.search(r"kill  +[0-9a-f]{32}  done +deleted +3  user 'alice'$", lines[1])
    assert re.search(rf"clear [0-9a-f]{{32}}  done +would delete +40  cutoff {ISO}$", lines[2])


def test_rehash_counts_then_moves_the_plain_key_sessions_and_refuses_with_plain_storage(
    cli: Run, client: datastore.Client, settings: Settings
) -> None:
    plain = SessionStore(client, dataclasses.replace(settings, key_storage="plain"))
    cookies = [new_key() for _ in range(30)]
    client.put_multi([plain.to_entity(SessionRecord(c, {}, "alice", "k" * 13, time.time())) for c in cookies])
    refused = cli("rehash", SESSION_KEY_STORAGE="plain")
    assert refused.returncode == 1 and "needs SESSION_KEY_STORAGE=hashed" in refused.stderr
    dry = cli("rehash", "--dry-run", SESSION_KEY_STORAGE="hashed")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["handled"] == 30
    assert summary_of(dry) == "found 30 plain-key sessions (a dry run: nothing was changed)"
    assert remaining(client, settings) == set(cookies)
    done = cli("rehash", SESSION_KEY_STORAGE="hashed")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"moved 30 plain-key sessions in [\d.]+ s \([\d,]+/s\)", summary_of(done))
    assert remaining(client, settings) == {hash_key(c) for c in cookies}
    rows = cli("runs", "--limit", "2").stderr.splitlines()
    assert re.search(r"rehash [0-9a-f]{32}  done +moved +30  plain-key sessions$", rows[1])


def test_events_tails_what_the_commands_deleted_one_line_each_and_sums_them_by_reason(
    cli: Run, client: datastore.Client, events_topic: EventsTopic
) -> None:
    settings = events_topic.settings
    assert settings.events_topic and settings.pubsub_emulator_host
    publish = {"SESSION_EVENTS_TOPIC": settings.events_topic, "PUBSUB_EMULATOR_HOST": settings.pubsub_emulator_host}
    seed(client, settings, 30, time.time() - 86400)
    users = seed_users(client, settings, {"alice": 4})
    assert cli("clear", **publish).returncode == 0
    phone = sorted(users["alice"])[0]
    assert cli("end", "alice", phone, **publish).returncode == 0
    assert cli("kill-user", "alice", **publish).returncode == 0
    done = cli("events", events_topic.subscription.rsplit("/", 1)[1], "--wait", "2", **publish)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["counts"] == {"expired": 30, "killed": 3, "ended": 1}
    assert [event["reason"] for event in result["events"]] == ["expired", "ended", "killed"]
    lines = done.stderr.splitlines()
    stamp = ISO[:-1] + r"\.\d{3}Z"
    assert re.fullmatch(rf"  {stamp}  expired +30 sessions  run [0-9a-f]{{32}}  __guest__ \(30\)", lines[0])
    assert re.fullmatch(rf"  {stamp}  ended +1 sessions  run [0-9a-f]{{32}}  alice", lines[1])
    assert lines[-1] == (
        f"3 events from {events_topic.subscription}, sessions by reason: expired 30, killed 3, ended 1"
    )
    assert phone in json.dumps(result["events"][1])  # an opaque session id: the id `sessions` lists
    again = cli("events", events_topic.subscription, "--wait", "1", **publish)
    assert json.loads(again.stdout)["events"] == []  # acknowledged: a tail reads each event once
    missing = cli("events", "no-such-subscription", "--wait", "1", **publish)
    assert missing.returncode == 2 and "there is no subscription" in missing.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command.name)
def test_each_command_takes_its_summary_and_description_from_its_functions_docstring(command: Any) -> None:
    summary, _, description = (command.run.__doc__ or "").strip().partition("\n\n")
    assert command.summary == summary and "\n" not in summary
    assert command.description == " ".join(description.split()) and len(command.description) > len(summary)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command.name)
def test_each_commands_help_gives_its_description_environment_and_an_example(cli: Run, command: Any) -> None:
    done = cli(command.name, "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert " ".join(command.description.split()) in text
    assert all(name in done.stdout for name in command.environment)
    assert "examples:" in done.stdout and command.examples[0] in done.stdout
    assert set(command.environment) <= set(VARIABLES.values())  # only variables the settings really read


def test_the_help_names_every_command_where_the_sessions_are_and_what_is_printed(cli: Run) -> None:
    done = cli("--help")
    assert done.returncode == 0 and "python -m session_core COMMAND" not in done.stdout  # no docstring as help
    assert all(f"    {command.name} " in done.stdout for command in COMMANDS)
    assert all(name in done.stdout for name in WHERE) and set(WHERE) <= set(VARIABLES.values())
    assert "one summary line on stderr; the result as JSON on stdout" in done.stdout


# -- issue 21: what the operator's CLI deletes, prints and fails with ---------------------------------


def test_rehash_delete_needs_yes_when_no_one_can_be_asked(
    cli: Run, client: datastore.Client, settings: Settings
) -> None:
    plain = SessionStore(client, dataclasses.replace(settings, key_storage="plain"))
    cookies = {new_key() for _ in range(5)}
    client.put_multi([plain.to_entity(SessionRecord(c, {}, "alice", "k" * 13, time.time())) for c in cookies])
    refused = cli("rehash", "--delete", SESSION_KEY_STORAGE="hashed")  # stdin is not a terminal
    assert refused.returncode == 2 and refused.stdout == ""
    assert (
        refused.stderr.strip() == "session-core rehash: error: rehash --delete needs --yes when not run from a terminal"
    )
    assert remaining(client, settings) == cookies  # 5 of 5 kept
    assert cli("rehash", "--delete", "--dry-run", SESSION_KEY_STORAGE="hashed").returncode == 0  # counts: no --yes
    done = cli("rehash", "--delete", "--yes", SESSION_KEY_STORAGE="hashed")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["handled"] == 5 and remaining(client, settings) == set()


def test_on_a_terminal_rehash_delete_asks_first_and_a_no_deletes_nothing(
    env: dict[str, str], client: datastore.Client, settings: Settings
) -> None:
    plain = SessionStore(client, dataclasses.replace(settings, key_storage="plain"))
    cookies = {new_key() for _ in range(5)}
    client.put_multi([plain.to_entity(SessionRecord(c, {}, "alice", "k" * 13, time.time())) for c in cookies])
    status, out, shown = in_a_terminal(["rehash", "--delete"], {**env, "SESSION_KEY_STORAGE": "hashed"}, answer="no")
    assert status == 1 and json.loads(out) == {"confirmed": False, "deleted": 0}
    assert "This deletes every plain-key session (their users sign in again) in the emulator at" in shown
    assert remaining(client, settings) == cookies


def test_clear_refuses_when_a_session_it_would_delete_has_not_expired_by_its_stored_expiry(
    cli: Run, client: datastore.Client, settings: Settings
) -> None:
    """The app stores sessions for a day; the operator forgot SESSION_LIFE_TIME (one hour by default)."""
    app = SessionStore(client, dataclasses.replace(settings, life_time=timedelta(days=1)))
    now = time.time()
    seen_2h_ago = {hash_key(new_key()) for _ in range(4)}
    dead = {hash_key(new_key()) for _ in range(6)}
    client.put_multi(
        [app.to_entity(SessionRecord(name, {}, "alice", "k" * 13, now - 7200)) for name in seen_2h_ago]
        + [app.to_entity(SessionRecord(name, {}, GUEST_USER, "k" * 13, now - 3 * 86400)) for name in dead]
    )
    for argv in (["clear"], ["clear", "--dry-run"]):
        refused = cli(*argv)
        assert refused.returncode == 1 and refused.stdout == ""
        [line] = refused.stderr.splitlines()  # one line, no traceback, no progress
        assert line.startswith("error: SESSION_LIFE_TIME: expected the life time the app stores sessions with")
        assert "(about 86,400 s): 4 of the 10 newest sessions this clear would delete have not expired" in line
        assert line.endswith("so nothing was deleted; got '3,600 s'")
        assert remaining(client, settings) == seen_2h_ago | dead  # 4 live sessions kept, and every other one
    done = cli("clear", SESSION_LIFE_TIME="86400")  # the app's life time: only the dead go
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["deleted"] == 6 and remaining(client, settings) == seen_2h_ago


def test_sessions_prints_what_an_app_stored_with_its_control_characters_escaped(
    cli: Run, client: datastore.Client, settings: Settings
) -> None:
    agent = "Mozilla/5.0\x1b]0;pwned\x07\x1b[2J\x1b[31m\x9b1;1H\u202eevil\x1b[0m"  # title, clear, colour, CSI, bidi
    store = SessionStore(client, settings)
    record = SessionRecord(hash_key(new_key()), {"user_agent": agent, "ip": "10.0.0.1\x1b[8m"}, "mallory", "k" * 13, 0)
    client.put(store.to_entity(dataclasses.replace(record, seen=time.time())))
    listed = cli("sessions", "mallory")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["sessions"][0]["user_agent"] == agent  # the data, exactly, as JSON escapes it
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u202e]", listed.stderr.replace("\n", ""))
    row = listed.stderr.splitlines()[1]
    assert row.endswith(r"10.0.0.1\x1b[8m  Mozilla/5.0\x1b]0;pwned\x07\x1b[2J\x1b[31m\x9b1;1H\u202eevil\x1b[0m")


def test_without_the_events_extra_a_topic_is_one_error_line_and_nothing_is_deleted(
    cli: Run, client: datastore.Client, settings: Settings, env: dict[str, str]
) -> None:
    users = seed_users(client, settings, {"alice": 3})
    hidden = "import sys; sys.modules['google.pubsub_v1'] = None; from session_core.cli import main; sys.exit(main())"
    for argv, extra in (
        (["kill-user", "alice"], {"SESSION_EVENTS_TOPIC": "session-events"}),
        (["end", "alice", "0" * 64], {"SESSION_EVENTS_TOPIC": "session-events"}),
        (["events", "session-events-tail"], {}),  # tailing needs the extra too, topic or not
    ):
        done = subprocess.run(
            [sys.executable, "-c", hidden, *argv], env={**env, **extra}, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 1 and done.stdout == ""
        [line] = done.stderr.splitlines()
        assert line.startswith("error: ") and "pip install 'session-core[events]'" in line
    assert remaining(client, settings) == users["alice"]


def test_an_unexpected_error_is_one_error_line_never_a_traceback(env: dict[str, str]) -> None:
    """google-auth's own error (no credentials for Pub/Sub) is no error of ours: still one line, exit 1."""
    without = {k: v for k, v in env.items() if k != "PUBSUB_EMULATOR_HOST"}
    done = subprocess.run(
        [sys.executable, "-m", "session_core", "events", "session-events-tail"],
        env={**without, "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent/key.json"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == ["error: DefaultCredentialsError: File /nonexistent/key.json was not found."]


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["kill-user"], "session-core kill-user: error: one of the arguments user --guest --all is required"),
        (["runs", "--limit", "many"], "session-core runs: error: argument --limit: invalid int value: 'many'"),
    ],
)
def test_a_usage_error_is_one_error_line_with_exit_status_2(cli: Run, argv: list[str], line: str) -> None:
    done = cli(*argv)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"{line} (see session-core {argv[0]} --help)"]


def test_a_log_line_on_a_terminal_shows_stored_control_characters_escaped() -> None:
    console = Console(io.StringIO(), tty=True)
    event = console.log_processor(None, "warning", {"event": "observer_failed", "detail": "agent\x1b]0;pwned\x07"})
    assert event == {"event": "observer_failed", "detail": r"agent\x1b]0;pwned\x07"}


def test_the_command_line_module_holds_the_command_table_and_its_rendering_lives_in_render() -> None:
    """cli.py: commands and arguments; _render.py: summaries, rows, progress and the escaping of stored text."""
    import ast
    import inspect

    from session_core import _render, cli

    for name in ("Console", "Outcome", "printable"):
        assert getattr(cli, name) is getattr(_render, name)
        assert getattr(_render, name).__module__ == "session_core._render"
    tree = ast.parse(inspect.getsource(cli))
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert defined.isdisjoint({"Console", "Outcome", "printable", "_count", "_seconds", "_rate", "_event_row"})
    assert "\\x1b" not in inspect.getsource(cli)  # no terminal control sequence is written by the command table
    assert _render.printable("agent\x1b]0;pwned\x07") == "agent\\x1b]0;pwned\\x07"
