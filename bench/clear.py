"""Benchmark of the expired-session cleanup worker: ViUR's pattern, ours, and the delete limit.

Run ``.venv/bin/python -m bench.clear`` (default sizes, several minutes) or add ``--quick``.

One Firestore emulator in Datastore mode serves every measurement. Each measurement
seeds a namespace of its own with expired sessions shaped like
:meth:`SessionStore.to_entity` writes them, plus live ones that must survive (half
seen just now, half expired for readers but still inside the clear grace), and
checks afterwards with a paged keys-only query that exactly the expired ones are gone.

(a) ViUR's ``start_clear_sessions`` / ``DeleteEntitiesIter`` (a ``QueryIter``)
    reimplemented: a full-entity query ``lastseen < cutoff`` with limit 5 per step,
    resumed from the query cursor, one delete RPC per entity. ViUR hands every step to
    a Cloud Task; here the steps run back to back, which flatters ViUR. (a1) runs over
    a small set to the end; (a2) runs a time slice over a set as large as (b)'s, since
    the emulator's query cost grows with the number of entities in the namespace.
(b) ours: ``start_clear_sessions(client, settings)`` with default settings, no
    enqueue (the whole run inline).
(c) the limit: ``client.delete_multi`` over the already-known keys in 500-key chunks
    (no query), sequentially and with 4 commits in flight; the better one counts.

Peak RSS: for each size the worker runs in a fresh process that only creates a client
and calls ``start_clear_sessions`` and reports ``ru_maxrss`` (KiB on Linux) after
imports and client creation (baseline) and at the end (peak). The process is started
through a small forking launcher: a child exec'd straight from this (large) process
would inherit its high-water mark in ``ru_maxrss``.

``--sweep`` also runs our worker over page sizes 2000/5000/10000 x deletes in flight 2/4/8.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import structlog
from google.cloud import datastore
from google.cloud.datastore.query import PropertyFilter

from session_core.clients import datastore_client
from session_core.config import Settings
from session_core.maintenance.cleanup import ClearStep, run_clear_step, start_clear_sessions
from session_core.maintenance.steps import Step
from session_core.maintenance.sweep import page_limit
from session_core.rules import GUEST_USER, cutoff_for, hash_key, new_key, new_security_key
from session_core.store import SessionRecord, SessionStore
from session_core.testing import firestore_datastore_mode

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "session-core-bench"
CHUNK = 500  # entities per put_multi / keys per delete_multi (the commit limit)
SEED_THREADS = 8
LIMIT_IN_FLIGHT = 4
COUNT_PAGE = 1000  # keys per page when counting what is left (the emulator fails responses over 4 MiB)
VIUR_STEP = 5  # entities per QueryIter step, as in ViUR
TARGET_VS_VIUR = 300.0
TARGET_VS_LIMIT = 0.5
TARGET_RSS_RATIO = 1.2
RESULT_MARK = "RSS-RESULT "
SWEEP_PAGES = (2000, 5000, 10000)
SWEEP_IN_FLIGHT = (2, 4, 8)
# Runs ``python ARGS...`` in a forked grandchild, so its ru_maxrss starts from this small process.
_LAUNCHER = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
    "_, status = os.waitpid(pid, 0)\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


@dataclass(frozen=True)
class Sizes:
    """How many expired sessions each measurement seeds."""

    viur: int
    viur_slice_s: float
    worker: int
    rss: tuple[int, int]


DEFAULT_SIZES = Sizes(viur=1_000, viur_slice_s=20.0, worker=50_000, rss=(10_000, 100_000))
QUICK_SIZES = Sizes(viur=300, viur_slice_s=5.0, worker=10_000, rss=(2_000, 20_000))


@dataclass(frozen=True)
class Seeded:
    """The entity names written into one namespace."""

    expired: list[str]
    live: set[str]


@dataclass(frozen=True)
class Rate:
    """One timed delete run."""

    label: str
    expired: int
    deleted: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.deleted / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class Rss:
    """What one RSS worker process reported, in KiB."""

    expired: int
    baseline_kib: int
    peak_kib: int
    deleted: int
    elapsed_s: float


def say(text: str = "") -> None:
    print(text, flush=True)


def quiet_logs() -> None:
    """Keep the worker's per-run info line out of the report; warnings (retries) still show."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def bench_settings(host: str, namespace: str) -> Settings:
    return Settings(project=PROJECT, emulator_host=host, namespace=namespace, rampup=False)  # measure speed, not pacing


def new_namespace(label: str) -> str:
    return f"bench-{label}-{uuid.uuid4().hex[:8]}"


def live_count(expired: int) -> int:
    return max(20, expired // 50)


# --- seeding and checking -------------------------------------------------------------


def _record(rng: random.Random, lastseen: float) -> SessionRecord:
    user = GUEST_USER if rng.random() < 0.8 else f"user-{rng.randrange(1_000_000)}"
    data = {
        "language": rng.choice(("de", "en", "fr")),
        "last_path": f"/shop/item/{rng.randrange(100_000)}",
        "cart": [{"sku": f"SKU-{rng.randrange(10_000)}", "qty": rng.randrange(1, 4)} for _ in range(rng.randrange(3))],
    }
    return SessionRecord(
        key_name=hash_key(new_key()),
        data=data,
        user=user,
        static_security_key=new_security_key(),
        seen=lastseen,
    )


def _put_chunk(
    client: datastore.Client, settings: Settings, count: int, lastseen: Callable[[random.Random], float], seed: int
) -> list[str]:
    rng = random.Random(seed)
    store = SessionStore(client, settings)
    records = [_record(rng, lastseen(rng)) for _ in range(count)]
    client.put_multi([store.to_entity(record) for record in records])
    return [record.key_name for record in records]


def _chunk_sizes(total: int) -> list[int]:
    return [min(CHUNK, total - start) for start in range(0, total, CHUNK)]


def seed(client: datastore.Client, settings: Settings, expired: int) -> Seeded:
    """Write ``expired`` expired sessions and ``live_count(expired)`` live ones, in parallel chunks."""
    life = settings.life_time.total_seconds()
    grace = settings.clear_grace.total_seconds()
    old_cutoff = cutoff_for(time.time(), settings)

    def old(rng: random.Random) -> float:  # expired a day to a month before the cutoff
        return old_cutoff - 86_400 - rng.uniform(0, 30 * 86_400)

    def fresh(rng: random.Random) -> float:
        return time.time()

    def in_grace(rng: random.Random) -> float:  # dead for readers, not yet due for cleanup
        return time.time() - life - rng.uniform(0.0, 0.2) * grace

    live = live_count(expired)
    with ThreadPoolExecutor(max_workers=SEED_THREADS, thread_name_prefix="seed") as pool:
        expired_jobs = [
            pool.submit(_put_chunk, client, settings, size, old, index)
            for index, size in enumerate(_chunk_sizes(expired))
        ]
        # Submitted last, so their lastseen is taken as late as possible.
        live_jobs = [
            pool.submit(_put_chunk, client, settings, size, fresh if index % 2 == 0 else in_grace, -1 - index)
            for index, size in enumerate(_chunk_sizes(live // 2) + _chunk_sizes(live - live // 2))
        ]
        expired_names = [name for job in expired_jobs for name in job.result()]
        live_names = {name for job in live_jobs for name in job.result()}
    return Seeded(expired=expired_names, live=live_names)


def remaining(client: datastore.Client, settings: Settings) -> set[str]:
    """Names of all session entities left in the namespace (keys only, paged by cursor)."""
    names: set[str] = set()
    cursor: bytes | str | None = None
    while True:
        query = client.query(kind=settings.kind, namespace=settings.namespace)
        query.keys_only()
        iterator = query.fetch(limit=COUNT_PAGE, start_cursor=cursor)
        page = [str(entity.key.name) for entity in iterator]
        names.update(page)
        cursor = iterator.next_page_token
        if len(page) < COUNT_PAGE or cursor is None:
            return names


def verify(
    client: datastore.Client, settings: Settings, seeded: Seeded, label: str, deleted: int | None = None
) -> None:
    """Raise AssertionError unless exactly the expired sessions are gone (or ``deleted`` of them, for a slice)."""
    left = remaining(client, settings)
    expired_left = len(left & set(seeded.expired))
    expected_left = 0 if deleted is None else len(seeded.expired) - deleted
    live_gone = len(seeded.live - left)
    unknown = len(left - seeded.live - set(seeded.expired))
    if expired_left != expected_left or live_gone or unknown:
        raise AssertionError(
            f"{label}: {expired_left} expired sessions left (expected {expected_left}), {live_gone} live sessions "
            f"deleted, {unknown} unknown entities in namespace {settings.namespace}"
        )
    gone = len(seeded.expired) - expired_left
    say(f"    check: {gone:,} of {len(seeded.expired):,} expired gone as expected, all {len(seeded.live):,} live kept")


# --- the three ways to delete ---------------------------------------------------------


def viur_clear(client: datastore.Client, settings: Settings, seeded: Seeded, seconds: float | None = None) -> int:
    """ViUR's QueryIter over ``lastseen < cutoff``: 5 full entities a step, one delete RPC each.

    With ``seconds``, stops after the first step that ends past that time slice.
    """
    deadline = None if seconds is None else time.monotonic() + seconds
    cutoff = cutoff_for(time.time(), settings)
    cursor: bytes | str | None = None
    deleted = 0
    while deadline is None or time.monotonic() < deadline:  # one iteration = one QueryIter step (a Cloud Task in ViUR)
        query = client.query(kind=settings.kind, namespace=settings.namespace)
        query.add_filter(filter=PropertyFilter("lastseen", "<", cutoff))
        iterator = query.fetch(limit=VIUR_STEP, start_cursor=cursor)
        count = 0
        for entity in iterator:
            client.delete(entity.key)  # DeleteEntitiesIter.handleEntry: db.Delete(entry.key)
            count += 1
        deleted += count
        cursor = iterator.next_page_token
        if count < VIUR_STEP or cursor is None:
            break
    return deleted


def viur_slice(seconds: float) -> Callable[[datastore.Client, Settings, Seeded], int]:
    def run(client: datastore.Client, settings: Settings, seeded: Seeded) -> int:
        return viur_clear(client, settings, seeded, seconds)

    return run


def worker_clear(client: datastore.Client, settings: Settings, seeded: Seeded) -> int:
    result = start_clear_sessions(client, settings)
    if result.skipped or result.continued:
        raise AssertionError(f"worker did not run to the end: {result}")
    return result.deleted


def sharded_clear(shards: int) -> Callable[[datastore.Client, Settings, Seeded], int]:
    """Ours with ``shards`` chains (``SESSION_CLEAR_SHARDS``), each in a thread of its own, as Cloud Tasks would."""

    def run(client: datastore.Client, settings: Settings, seeded: Seeded) -> int:
        sliced = replace(settings, clear_shards=shards)
        queued: list[Step] = []
        started = start_clear_sessions(client, sliced, enqueue=queued.append)  # plans the slices, queues the chains
        if started.skipped or len(queued) != shards:
            raise AssertionError(f"expected {shards} chains: {started}")
        with ThreadPoolExecutor(max_workers=shards, thread_name_prefix="chain") as pool:
            steps = [step for step in queued if isinstance(step, ClearStep)]
            chains = pool.map(lambda step: run_clear_step(client, sliced, step, chains=shards).deleted, steps)
            return sum(chains)

    return run


def known_keys_clear(threads: int) -> Callable[[datastore.Client, Settings, Seeded], int]:
    """``delete_multi`` over the seeded expired keys in 500-key chunks, ``threads`` commits in flight."""

    def run(client: datastore.Client, settings: Settings, seeded: Seeded) -> int:
        store = SessionStore(client, settings)
        keys = [store.key(name) for name in seeded.expired]
        chunks = [keys[start : start + CHUNK] for start in range(0, len(keys), CHUNK)]
        if threads == 1:
            for chunk in chunks:
                client.delete_multi(chunk)
        else:
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="limit") as pool:
                list(pool.map(client.delete_multi, chunks))
        return len(keys)

    return run


def measure(
    client: datastore.Client,
    host: str,
    label: str,
    expired: int,
    action: Callable[[datastore.Client, Settings, Seeded], int],
    settings_change: Callable[[Settings], Settings] = lambda settings: settings,
    *,
    partial: bool = False,
) -> Rate:
    """Seed a fresh namespace, time ``action`` over it, check the outcome.

    With ``partial`` (a time slice) the action may leave expired sessions; they are
    purged afterwards, untimed, so they do not slow the emulator's later queries.
    """
    settings = settings_change(bench_settings(host, new_namespace(label.split()[0].strip("()"))))
    started = time.monotonic()
    seeded = seed(client, settings, expired)
    say(f"{label}: seeded {expired:,} expired + {len(seeded.live):,} live in {time.monotonic() - started:.1f}s")
    started = time.monotonic()
    deleted = action(client, settings, seeded)
    rate = Rate(label, expired, deleted, time.monotonic() - started)
    say(f"    deleted {deleted:,} in {rate.seconds:.2f}s = {rate.per_second:,.0f}/s")
    verify(client, settings, seeded, label, deleted if partial else None)
    if partial:
        known_keys_clear(LIMIT_IN_FLIGHT)(client, settings, seeded)
        verify(client, settings, seeded, f"{label} (purged)")
    return rate


# --- peak RSS in a fresh process ------------------------------------------------------


def _maxrss_kib() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def rss_worker(expired: int, host: str, namespace: str) -> int:
    """The child: create a client, run the worker, report ru_maxrss as one JSON line."""
    quiet_logs()
    settings = bench_settings(host, namespace)
    client = datastore_client(settings)
    baseline = _maxrss_kib()
    started = time.monotonic()
    result = start_clear_sessions(client, settings)
    report = {
        "expired": expired,
        "baseline_kib": baseline,
        "peak_kib": _maxrss_kib(),
        "deleted": result.deleted,
        "elapsed_s": round(time.monotonic() - started, 3),
    }
    say(RESULT_MARK + json.dumps(report))
    return 0 if result.deleted == expired else 1


def measure_rss(client: datastore.Client, host: str, expired: int) -> Rss:
    settings = bench_settings(host, new_namespace("rss"))
    started = time.monotonic()
    seeded = seed(client, settings, expired)
    say(f"RSS {expired:,}: seeded {expired:,} expired + {len(seeded.live):,} live in {time.monotonic() - started:.1f}s")
    child = [sys.executable, "-c", _LAUNCHER, "-m", "bench.clear", "--rss-worker", str(expired)]
    child += ["--host", host, "--namespace", str(settings.namespace)]
    done = subprocess.run(child, cwd=ROOT, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"RSS worker failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    report = json.loads(lines[-1][len(RESULT_MARK) :])
    rss = Rss(**report)
    say(
        f"    worker process: baseline {rss.baseline_kib / 1024:.1f} MiB, peak {rss.peak_kib / 1024:.1f} MiB, "
        f"deleted {rss.deleted:,} in {rss.elapsed_s:.1f}s"
    )
    verify(client, settings, seeded, f"RSS {expired}")
    return rss


# --- settings sweep -------------------------------------------------------------------


def sweep(client: datastore.Client, host: str, expired: int) -> list[tuple[Settings, Rate]]:
    """Our worker over ``expired`` sessions for each page size and deletes-in-flight pair."""
    results: list[tuple[Settings, Rate]] = []
    for page_size in SWEEP_PAGES:
        for in_flight in SWEEP_IN_FLIGHT:
            label = f"(sweep) page {page_size} in-flight {in_flight}"

            def change(settings: Settings, page: int = page_size, flight: int = in_flight) -> Settings:
                return replace(settings, page_size=page, deletes_in_flight=flight)

            rate = measure(client, host, label, expired, worker_clear, change)
            results.append((change(bench_settings(host, "x")), rate))
    return results


# --- report ---------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(
    argv: Sequence[str],
    defaults: Settings,
    viur: tuple[Rate, Rate],
    ours: Rate,
    ours4: Rate,
    limits: tuple[Rate, Rate],
    rss: tuple[Rss, Rss],
    swept: list[tuple[Settings, Rate]],
) -> None:
    viur_small, viur_big = viur
    limit_seq, limit_par = limits
    limit = max(limits, key=lambda rate: rate.per_second)
    vs_limit = ours.per_second / limit.per_second
    small, large = rss
    rss_ratio = large.peak_kib / small.peak_kib
    rule = "-" * 100
    say()
    say("=" * 100)
    say("Expired-session cleanup benchmark: one Firestore emulator (Datastore mode) for all runs")
    say(
        f"our settings: page_size {defaults.page_size} (page_limit {page_limit(defaults)}), "
        f"batch_size {defaults.batch_size}, deletes_in_flight {defaults.deletes_in_flight}, no enqueue (inline)"
    )
    say("(a) runs its 5-entity steps back to back: no Cloud Task hop between steps as ViUR has, so it is flattered.")
    loads = " ".join(f"{load:.2f}" for load in os.getloadavg())
    say(f"load average at the end (1/5/15 min): {loads} on {os.cpu_count()} CPUs (other work skews the rates)")
    say(rule)
    say(f"{'figure':<66}{'expired':>10}{'deleted':>10}{'seconds':>9}{'deletes/s':>11}")
    rows = [
        ("(a1) ViUR QueryIter, 5 full entities/step, 1 delete RPC each", viur_small),
        ("(a2) the same, time slice over a set as large as (b)'s", viur_big),
        ("(b)  ours: start_clear_sessions, default settings", ours),
        ("(b4) ours with SESSION_CLEAR_SHARDS=4, four chains at once", ours4),
        ("(c1) delete_multi of the known keys, 500/commit, sequential", limit_seq),
        (f"(c2) delete_multi of the known keys, 500/commit, {LIMIT_IN_FLIGHT} in flight", limit_par),
    ]
    for title, rate in rows:
        say(f"{title:<66}{rate.expired:>10,}{rate.deleted:>10,}{rate.seconds:>9.2f}{rate.per_second:>11,.0f}")
    say(f"(c)  limit = the better of (c1) and (c2): {limit.label.split()[0]}")
    say(rule)
    for name, base in (("(a1)", viur_small), ("(a2)", viur_big)):
        ratio = ours.per_second / base.per_second
        say(f"(b)/{name} = {ratio:9.1f}   target >= {TARGET_VS_VIUR:g}   {verdict(ratio >= TARGET_VS_VIUR)}")
    say(f"(b)/(c)  = {vs_limit:9.2f}   target >= {TARGET_VS_LIMIT:g}   {verdict(vs_limit >= TARGET_VS_LIMIT)}")
    say(
        f"(b4)/(b) = {ours4.per_second / ours.per_second:9.2f}   the emulator is one CPU-bound process on a 2-core"
        " machine: this is not the production speed-up (bench.capacity models that)"
    )
    say(rule)
    say(f"{'worker peak RSS (fresh process, ru_maxrss)':<50}{'baseline MiB':>14}{'peak MiB':>12}{'growth MiB':>12}")
    for item in rss:
        growth = (item.peak_kib - item.baseline_kib) / 1024
        title = f"{item.expired:,} expired"
        say(f"{title:<50}{item.baseline_kib / 1024:>14.1f}{item.peak_kib / 1024:>12.1f}{growth:>12.1f}")
    title = f"RSS({large.expired:,})/RSS({small.expired:,})"
    say(f"{title} = {rss_ratio:.3f}   target <= {TARGET_RSS_RATIO:g}   {verdict(rss_ratio <= TARGET_RSS_RATIO)}")
    if swept:
        say(rule)
        say(f"sweep of our worker over {swept[0][1].expired:,} expired (batch_size {defaults.batch_size}):")
        say(f"{'page_size':>10}{'in flight':>10}{'deletes/s':>12}{'vs (c)':>8}")
        for settings, rate in swept:
            say(
                f"{settings.page_size:>10}{settings.deletes_in_flight:>10}{rate.per_second:>12,.0f}"
                f"{rate.per_second / limit.per_second:>8.2f}"
            )
        best, fastest = max(swept, key=lambda item: item[1].per_second)
        say(
            f"best: page_size {best.page_size}, deletes_in_flight {best.deletes_in_flight}: {fastest.per_second:,.0f}/s"
        )
    say(rule)
    say("command: " + shlex.join([os.path.relpath(sys.executable, ROOT), "-m", "bench.clear", *argv]))
    say("=" * 100)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.clear", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a fast check")
    parser.add_argument("--viur", type=int, help="expired sessions for (a1)")
    parser.add_argument("--viur-seconds", type=float, help="time slice for (a2), over as many sessions as (b)")
    parser.add_argument("--worker", type=int, help="expired sessions for (b) and (c)")
    parser.add_argument("--rss", type=int, nargs=2, metavar=("SMALL", "LARGE"), help="expired sessions for RSS")
    parser.add_argument("--sweep", action="store_true", help="also run our worker over page sizes x in-flight")
    parser.add_argument("--sweep-size", type=int, help="expired sessions per sweep run (default: as (b))")
    parser.add_argument("--rss-worker", type=int, metavar="N", help=argparse.SUPPRESS)
    parser.add_argument("--host", help=argparse.SUPPRESS)
    parser.add_argument("--namespace", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.rss_worker is not None:
        if not args.host or not args.namespace:
            raise SystemExit("--rss-worker needs --host and --namespace")
        return rss_worker(args.rss_worker, args.host, args.namespace)
    base = QUICK_SIZES if args.quick else DEFAULT_SIZES
    sizes = Sizes(
        viur=args.viur or base.viur,
        viur_slice_s=args.viur_seconds or base.viur_slice_s,
        worker=args.worker or base.worker,
        rss=(args.rss[0], args.rss[1]) if args.rss else base.rss,
    )
    quiet_logs()
    with tempfile.TemporaryDirectory(prefix="bench-clear-") as tmp, firestore_datastore_mode(Path(tmp)) as emulator:
        say(f"Firestore emulator (Datastore mode) on {emulator.host}")
        host = emulator.host
        client = datastore_client(bench_settings(host, "unused"))
        viur = measure(client, host, "(a1) ViUR whole set", sizes.viur, viur_clear)
        viur_big = measure(
            client,
            host,
            f"(a2) ViUR {sizes.viur_slice_s:g}s slice",
            sizes.worker,
            viur_slice(sizes.viur_slice_s),
            partial=True,
        )
        ours = measure(client, host, "(b) ours", sizes.worker, worker_clear)
        ours4 = measure(client, host, "(b4) ours, 4 chains", sizes.worker, sharded_clear(4))
        limit_seq = measure(client, host, "(c1) limit sequential", sizes.worker, known_keys_clear(1))
        limit_par = measure(client, host, "(c2) limit in flight", sizes.worker, known_keys_clear(LIMIT_IN_FLIGHT))
        rss = (measure_rss(client, host, sizes.rss[0]), measure_rss(client, host, sizes.rss[1]))
        swept = sweep(client, host, args.sweep_size or sizes.worker) if args.sweep else []
    report(argv, bench_settings("-", "-"), (viur, viur_big), ours, ours4, (limit_seq, limit_par), rss, swept)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
