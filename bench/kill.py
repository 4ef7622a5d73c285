"""Benchmark of kill-by-user through the real local stack.

Run ``.venv/bin/python -m bench.kill`` (add ``--quick`` for a short run).

Everything runs as in production, locally: the Firestore emulator (Datastore
mode), the Pub/Sub emulator pushing to ``kill_user_sessions`` served by
functions-framework, gcloud-tasks-emulator dispatching to ``session_task``,
also served. It reports

1. latency: time from publishing a one-user kill message (a user with 50
   sessions, among other users' sessions) to the last of them being gone,
   p50/p95 over 20 runs (target p50 <= 1 s);
2. kill-all over 100k sessions (``--sessions N``): the time from publishing
   the kill to the epoch's commit (target <= 1 s), how many of a sample of
   200 cookies then load as a guest (target: all), and the time until every
   session is deleted; per-shard counts (from the task steps' summary
   lines), and deletes per second.

gcloud-tasks-emulator sends one task at a time per queue, so the shards run
one after another here; Cloud Tasks runs them in parallel.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from google.cloud import datastore

from devstack.emulators import (
    cloud_tasks,
    functions_framework,
    pubsub,
    pubsub_publish,
    pubsub_push_subscription,
    pubsub_rest,
)
from session_core.clients import datastore_client
from session_core.config import Settings
from session_core.rules import GUEST_USER, hash_key, new_key
from session_core.session import Session
from session_core.store import SessionRecord, SessionStore
from session_core.testing import Emulator, firestore_datastore_mode, free_port

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "session-core-bench"
QUEUE = f"projects/{PROJECT}/locations/local/queues/session-tasks"
TOPIC = f"projects/{PROJECT}/topics/kill-user"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/kill-user-push"


def say(text: str = "") -> None:
    print(text, flush=True)


def publish(host: str, message: dict[str, object]) -> None:
    pubsub_publish(host, TOPIC, json.dumps(message).encode())


def function(target: str, port: int, env: dict[str, str], log_dir: Path, cloudevent: bool = False) -> Emulator:
    return functions_framework(target, ROOT / "main.py", log_dir, env, port=port, cloudevent=cloudevent)


def seed(client: datastore.Client, settings: Settings, users: dict[str, int]) -> dict[str, list[datastore.Key]]:
    store = SessionStore(client, settings)
    now = time.time()
    keys: dict[str, list[datastore.Key]] = {}
    entities = []
    for user, count in users.items():
        records = [SessionRecord(hash_key(new_key()), {"n": 1}, user, "k" * 13, now) for _ in range(count)]
        keys[user] = [store.key(record.key_name) for record in records]
        entities += [store.to_entity(record) for record in records]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(client.put_multi, [entities[i : i + 500] for i in range(0, len(entities), 500)]))
    return keys


def latency_runs(client: datastore.Client, settings: Settings, pubsub_host: str, runs: int) -> list[float]:
    seed(client, settings, {f"bystander-{i}": 5 for i in range(20)} | {GUEST_USER: 200})
    times = []
    for run in range(runs):
        user = f"victim-{run}-{uuid.uuid4().hex[:6]}"
        keys = seed(client, settings, {user: 50})[user]
        started = time.monotonic()
        publish(pubsub_host, {"user": user})
        while client.get_multi(keys):
            if time.monotonic() - started > 30:
                raise AssertionError(f"run {run}: sessions still there after 30 s")
            time.sleep(0.01)
        times.append(time.monotonic() - started)
    return times


@dataclass(frozen=True)
class SignedOut:
    """When a kill of everyone took effect: publish -> epoch commit, and what a sample of cookies then loads as."""

    epoch_s: float
    sampled: int
    guests: int


def sample_cookies(client: datastore.Client, settings: Settings, count: int) -> list[str]:
    """``count`` signed-in sessions of known cookies (the seed keeps no cookies): stored as the app stores them."""
    store = SessionStore(client, settings)
    cookies = [new_key() for _ in range(count)]
    now = time.time()
    client.put_multi([store.to_entity(SessionRecord(hash_key(c), {"n": 1}, "sampled", "k" * 13, now)) for c in cookies])
    return cookies


def signed_out(client: datastore.Client, settings: Settings, cookies: list[str], started: float) -> SignedOut:
    """Wait for the epoch's commit (polled every 10 ms), then load every sampled cookie as a request would."""
    store = SessionStore(client, settings)
    while store.epochs().everyone.counter == 0:
        if time.monotonic() - started > 60:
            raise AssertionError("the epoch was not raised within 60 s")
        time.sleep(0.01)
    epoch_s = time.monotonic() - started
    guests = 0
    for cookie in cookies:
        session = Session(client, settings)
        session.load(_Cookie(settings.cookie_name, cookie))
        guests += session.user == GUEST_USER
    return SignedOut(epoch_s, len(cookies), guests)


class _Cookie:
    def __init__(self, name: str, value: str) -> None:
        self.cookies = {name: value}

    def get_cookie(self, name: str) -> str | None:
        return self.cookies.get(name)

    def add_header(self, name: str, value: str) -> None:
        pass


def kill_all(
    client: datastore.Client, settings: Settings, pubsub_host: str, task_log: Path, sessions: int
) -> tuple[float, dict[int, int], SignedOut]:
    users = {GUEST_USER: sessions // 2} | {f"user-{i}": (sessions - sessions // 2) // 1000 for i in range(1000)}
    seed(client, settings, users)
    cookies = sample_cookies(client, settings, SAMPLE)
    total = sum(users.values()) + SAMPLE
    offset = len(task_log.read_text()) if task_log.exists() else 0
    started = time.monotonic()
    publish(pubsub_host, {"user": None})
    out = signed_out(client, settings, cookies, started)
    shard_done: dict[int, int] = defaultdict(int)
    finished: set[int] = set()
    while True:
        lines = task_log.read_text()[offset:].splitlines()
        shard_done.clear()
        finished.clear()
        for line in lines:
            if '"event": "kill_sessions"' in line:
                entry = json.loads(line)
                shard_done[entry["shard"]] += entry["deleted"]
                if not entry["continued"]:
                    finished.add(entry["shard"])
        if len(finished) == settings.shards:
            break
        if time.monotonic() - started > 900:
            raise AssertionError("kill-all did not finish in 15 minutes")
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    query = client.query(kind=settings.kind, namespace=settings.namespace)
    query.keys_only()
    left = len(list(query.fetch(limit=10)))
    if left or sum(shard_done.values()) != total:
        raise AssertionError(f"kill-all left {left} sessions; shards deleted {sum(shard_done.values())} of {total}")
    return elapsed, dict(shard_done), out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 latency runs and 10k sessions for kill-all")
    parser.add_argument("--sessions", type=int, help="sessions for kill-all (default 100,000; 10,000 with --quick)")
    args = parser.parse_args(argv)
    runs, sessions = (5, 10_000) if args.quick else (20, 100_000)
    sessions = args.sessions or sessions
    log_dir = Path(tempfile.mkdtemp(prefix="bench-kill-"))
    with ExitStack() as stack:
        datastore_emu = stack.enter_context(firestore_datastore_mode(log_dir))
        pubsub_emu = stack.enter_context(pubsub(log_dir, PROJECT))
        tasks_emu = stack.enter_context(cloud_tasks(log_dir, ROOT / ".venv-tasks" / "bin" / "python", [QUEUE]))
        namespace = f"bench-kill-{uuid.uuid4().hex[:8]}"
        kill_port, task_port = free_port(), free_port()
        env = {
            "DATASTORE_EMULATOR_HOST": datastore_emu.host,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "SESSION_NAMESPACE": namespace,
            "SESSION_TASKS_QUEUE": QUEUE,
            "SESSION_TASK_URL": f"http://127.0.0.1:{task_port}/",
            "CLOUD_TASKS_EMULATOR_HOST": tasks_emu.host,
            "SESSION_TASK_AUTH": "none",  # the emulator-only opt-out: the tasks emulator sends no token
            "SESSION_RAMPUP": "off",  # benchmarks measure speed, not Datastore's ramp-up rule
        }
        stack.enter_context(function("kill_user_sessions", kill_port, env, log_dir, cloudevent=True))
        stack.enter_context(function("session_task", task_port, env, log_dir))
        pubsub_push_subscription(pubsub_emu.host, TOPIC, SUBSCRIPTION, f"http://127.0.0.1:{kill_port}/")
        settings = Settings.from_env(env)
        client = datastore_client(settings)

        say(f"latency: {runs} runs, a user with 50 sessions, publish -> last session gone")
        times = latency_runs(client, settings, pubsub_emu.host, runs)
        p50 = statistics.median(times)
        p95 = sorted(times)[max(0, round(0.95 * len(times)) - 1)]
        say(f"  runs (s): {' '.join(f'{t:.3f}' for t in times)}")

        all_settings = Settings.from_env({**env, "SESSION_NAMESPACE": f"{namespace}-all"})
        say(f"kill-all: {sessions:,} sessions, {all_settings.shards} shards")
        elapsed, shards, out = kill_all_in(client, all_settings, env, pubsub_emu.host, log_dir, stack, sessions)

    say("=" * 78)
    say("kill-by-user benchmark: Firestore, Pub/Sub and Cloud Tasks emulators, functions-framework")
    say(
        f"one-user kill (50 sessions), {runs} runs: p50 {p50:.3f} s, p95 {p95:.3f} s   target p50 <= 1 s: "
        f"{'PASS' if p50 <= 1.0 else 'MISS'}"
    )
    counts = [shards.get(i, 0) for i in range(len(shards))]
    mean = statistics.mean(counts)
    say(
        f"kill-all {sessions:,} sessions: publish -> epoch committed {out.epoch_s:.3f} s (target <= 1 s: "
        f"{'PASS' if out.epoch_s <= 1.0 else 'MISS'}); then {out.guests} of {out.sampled} sampled cookies load "
        f"as a guest; publish -> all deleted {elapsed:.1f} s"
    )
    say(f"kill-all {sessions:,} sessions: {elapsed:.1f} s, {sessions / elapsed:,.0f} deletes/s")
    say(f"  per-shard deleted: {counts}")
    say(f"  largest/mean shard: {max(counts) / mean:.3f}")
    say("  (the tasks emulator runs one task at a time per queue: the shards ran one after another)")
    sized = f" --sessions {args.sessions}" if args.sessions else ""
    say(f"command: .venv/bin/python -m bench.kill{' --quick' if args.quick else ''}{sized}")
    return 0


SAMPLE = 200  # cookies loaded once the epoch is committed


def kill_all_in(
    client: datastore.Client,
    settings: Settings,
    env: dict[str, str],
    pubsub_host: str,
    log_dir: Path,
    stack: ExitStack,
    sessions: int,
) -> tuple[float, dict[int, int], SignedOut]:
    """Kill-all in a namespace of its own, with its own functions (their env names that namespace)."""
    kill_port, task_port = free_port(), free_port()
    own = {**env, "SESSION_NAMESPACE": settings.namespace or "", "SESSION_TASK_URL": f"http://127.0.0.1:{task_port}/"}
    sub_dir = log_dir / "all"
    stack.enter_context(function("kill_user_sessions", kill_port, own, sub_dir, cloudevent=True))
    stack.enter_context(function("session_task", task_port, own, sub_dir))
    pubsub_rest(pubsub_host, "DELETE", SUBSCRIPTION)
    pubsub_push_subscription(pubsub_host, TOPIC, SUBSCRIPTION, f"http://127.0.0.1:{kill_port}/")
    return kill_all(client, settings, pubsub_host, sub_dir / f"session_task-{task_port}.log", sessions)


if __name__ == "__main__":
    raise SystemExit(main())
