"""Benchmark of lifecycle events: what they add to a cleanup, and what they weigh.

Run ``.venv/bin/python -m bench.events`` (50,000 expired sessions, about two
minutes) or add ``--quick``.

One Firestore emulator (Datastore mode) and one Pub/Sub emulator. Side by side
in one run, each over a fresh namespace seeded as ``bench.clear`` seeds it
(80 % guests, 20 % users ``user-N``):

(b) ours: ``start_clear_sessions`` with default settings, events off;
(e) the same with ``SESSION_EVENTS_TOPIC`` set: each batch is read, deleted,
    then published. Every event is pulled back from a subscription and
    checked: exactly the expired sessions, each once.

It reports (e)/(b) in deletes per second, and the messages and bytes the
events took per 100,000 deleted sessions (what Pub/Sub bills by).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from google.api_core import exceptions as gexc
from google.cloud import datastore

from bench.clear import Seeded, bench_settings, measure, quiet_logs, say, worker_clear
from devstack.emulators import pubsub, pubsub_pull_subscription
from session_core.clients import datastore_client
from session_core.config import Settings
from session_core.maintenance.events import subscriber_for
from session_core.rules import session_id_of
from session_core.testing import firestore_datastore_mode

TOPIC, SUBSCRIPTION = "bench-events", "bench-events-pull"


def drain(settings: Settings) -> list[bytes]:
    """Every event on the subscription, as the bytes published (pulled and acknowledged)."""
    subscriber = subscriber_for(settings)
    path = f"projects/{settings.project}/subscriptions/{SUBSCRIPTION}"
    raw: list[bytes] = []
    while True:
        try:
            response = subscriber.pull(subscription=path, max_messages=1000, timeout=5)
        except gexc.DeadlineExceeded:
            return raw
        received = list(response.received_messages)
        if not received:
            return raw
        subscriber.acknowledge(subscription=path, ack_ids=[m.ack_id for m in received])
        raw += [m.message.data for m in received]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 sessions instead of 50,000")
    parser.add_argument("--sessions", type=int, help="expired sessions per measurement")
    args = parser.parse_args(argv)
    size = args.sessions or (10_000 if args.quick else 50_000)
    quiet_logs()
    with (
        tempfile.TemporaryDirectory(prefix="bench-events-") as tmp,
        firestore_datastore_mode(Path(tmp)) as datastore,
        pubsub(Path(tmp), bench_settings("-", "-").project) as ps,
    ):
        project = bench_settings("-", "-").project
        pubsub_pull_subscription(
            ps.host, f"projects/{project}/topics/{TOPIC}", f"projects/{project}/subscriptions/{SUBSCRIPTION}"
        )
        say(f"Firestore emulator {datastore.host}, Pub/Sub emulator {ps.host}")
        client = datastore_client(bench_settings(datastore.host, "unused"))

        def with_events(settings: Settings) -> Settings:
            return replace(settings, events_topic=TOPIC, pubsub_emulator_host=ps.host)

        seeded: list[Seeded] = []

        def cleanup_remembering(client: datastore.Client, settings: Settings, seeds: Seeded) -> int:
            seeded.append(seeds)
            return worker_clear(client, settings, seeds)

        off = measure(client, datastore.host, "(b) ours, events off", size, worker_clear)
        on = measure(client, datastore.host, "(e) ours, events on", size, cleanup_remembering, with_events)
        started = time.monotonic()
        raw = drain(with_events(bench_settings(datastore.host, "-")))
        say(f"    pulled {len(raw):,} events in {time.monotonic() - started:.1f}s")
    events = [json.loads(data) for data in raw]
    ids = [s["session_id"] for event in events for s in event["sessions"]]
    expected = {session_id_of(name) for name in seeded[0].expired}
    if len(ids) != len(set(ids)) or set(ids) != expected:
        raise AssertionError(f"events name {len(set(ids)):,} sessions ({len(ids):,} entries), expected {len(expected)}")
    per_100k = 100_000 / len(ids)
    size_bytes = sum(map(len, raw))
    rule = "-" * 88
    say(rule)
    say(f"{'cleanup (bench.events)':<48}{'expired':>10}{'deleted':>10}{'seconds':>9}{'deletes/s':>11}")
    for rate in (off, on):
        say(f"{rate.label:<48}{rate.expired:>10,}{rate.deleted:>10,}{rate.seconds:>9.2f}{rate.per_second:>11,.0f}")
    say(rule)
    say(f"(e)/(b) = {on.per_second / off.per_second:.2f}   deletes/s with events against without, same run")
    say(
        f"events: {len(raw):,} messages for {len(ids):,} sessions ({len(ids) / len(raw):,.0f} a message); "
        f"per 100,000 sessions {len(raw) * per_100k:,.0f} messages, {size_bytes * per_100k / 1e6:,.2f} MB "
        f"({size_bytes / len(ids):.1f} bytes a session)"
    )
    say(f"command: .venv/bin/python -m bench.events {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
