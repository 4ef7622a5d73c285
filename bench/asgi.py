"""Benchmark of the ASGI middleware: the same Starlette app through uvicorn, three ways.

Run ``.venv/bin/python -m bench.asgi`` (about a minute) or add ``--quick``.

One Firestore emulator in Datastore mode. The app (:func:`build`) has a session
route, ``POST /count`` (read a counter from the session, add one, store it),
and a session-free ``GET /ping``. uvicorn serves it in a process of its own
(one worker, asyncio, h11), with

- ``ours``: :class:`session_core.asgi.SessionMiddleware` (a lookup and a commit
  per counted request, in worker threads);
- ``starlette``: Starlette's cookie ``SessionMiddleware`` (the counter lives in
  a signed cookie; no store);
- ``none``: no session middleware (``/count`` answers without a session).

The load comes from this process: asyncio with one httpx client (its own
cookie jar) per browser. For each variant it reports

1. ``/count`` throughput and latency: ``--browsers`` browsers (50) send
   ``--requests`` requests (20) each, one after another, all browsers at once;
   requests per second and p50/p99. Each browser's last answer must equal its
   number of requests (a lost write fails the run).
2. ``/ping`` under load: the same browsers keep 50 ``/count`` requests in
   flight while one more client sends ``--pings`` (300) ``/ping`` requests in
   sequence; p50/p99 of those pings.

Before them, the emulator is warmed up and the store alone is measured: the
same session work (:class:`Session` load, change, commit) from as many
threads as the middleware uses, without HTTP: the ceiling for ``ours``.
Everything (emulator, server, load) shares this machine's cores, so the
figures are noisy; compare the variants of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware as CookieSessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from session_core.asgi import SessionMiddleware
from session_core.clients import datastore_client
from session_core.config import Settings
from session_core.session import Session
from session_core.testing import Emulator, firestore_datastore_mode, free_port, http_ok

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "session-core-bench"
VARIANTS = ("ours", "starlette", "none")
THREADS = 10  # SessionMiddleware's default pool


# -- the app (what uvicorn imports, in its own process) --------------------------------------


async def count(request: Request) -> JSONResponse:
    if "session" not in request.scope:  # the variant without sessions: the same answer, nothing stored
        return JSONResponse({"n": 1})
    request.session["n"] = request.session.get("n", 0) + 1
    return JSONResponse({"n": request.session["n"]})


async def ping(request: Request) -> PlainTextResponse:
    return PlainTextResponse("pong")


def build(variant: str, settings: Settings) -> Starlette:
    """The benchmark app with ``variant``'s session middleware."""
    middleware = {
        "ours": [Middleware(SessionMiddleware, client=datastore_client(settings), settings=settings)],
        "starlette": [Middleware(CookieSessionMiddleware, secret_key=secrets.token_hex(32), max_age=None)],
        "none": [],
    }[variant]
    return Starlette(routes=[Route("/count", count, methods=["POST"]), Route("/ping", ping)], middleware=middleware)


def app_from_env() -> Starlette:
    """uvicorn's ``--factory`` entry: the variant named by ``BENCH_VARIANT``, settings from the environment."""
    return build(os.environ["BENCH_VARIANT"], Settings.from_env(os.environ))


# -- the load ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    variant: str
    requests: int
    elapsed_s: float
    count_p50_ms: float
    count_p99_ms: float
    ping_p50_ms: float
    ping_p99_ms: float
    in_flight_rps: float

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s


def percentile(seconds: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of durations in seconds, in milliseconds."""
    ordered = sorted(seconds)
    return 1000 * ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def timed_count(http: httpx.AsyncClient, latencies: list[float]) -> int:
    started = time.perf_counter()
    response = await http.post("/count")
    latencies.append(time.perf_counter() - started)
    response.raise_for_status()
    n: int = response.json()["n"]
    return n


async def measure(variant: str, url: str, browsers: int, requests: int, pings: int) -> Figures:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(base_url=url, limits=limits, timeout=60) for _ in range(browsers)]
    try:
        for http in clients:  # warm-up: every browser gets its session (and the server its connections)
            await timed_count(http, [])

        latencies: list[float] = []

        async def browse(http: httpx.AsyncClient) -> int:
            last = 0
            for _ in range(requests):
                last = await timed_count(http, latencies)
            return last

        started = time.perf_counter()
        lasts = await asyncio.gather(*(browse(http) for http in clients))
        elapsed = time.perf_counter() - started
        expected = 1 if variant == "none" else requests + 1
        if set(lasts) != {expected}:
            raise SystemExit(
                f"{variant}: browsers ended at {sorted(set(lasts))}, expected {expected}: a write was lost"
            )

        done = asyncio.Event()
        under_load: list[float] = []

        async def keep_busy(http: httpx.AsyncClient) -> None:
            while not done.is_set():
                await timed_count(http, under_load)

        busy = [asyncio.create_task(keep_busy(http)) for http in clients]
        await asyncio.sleep(0.5)  # every browser has a request in flight
        ping_times: list[float] = []
        load_started, load_before = time.perf_counter(), len(under_load)
        async with httpx.AsyncClient(base_url=url, timeout=60) as pinger:
            for _ in range(pings):
                started = time.perf_counter()
                (await pinger.get("/ping")).raise_for_status()
                ping_times.append(time.perf_counter() - started)
        in_flight_rps = (len(under_load) - load_before) / (time.perf_counter() - load_started)
        done.set()
        await asyncio.gather(*busy)
    finally:
        for http in clients:
            await http.aclose()
    return Figures(
        variant=variant,
        requests=len(latencies),
        elapsed_s=elapsed,
        count_p50_ms=percentile(latencies, 0.50),
        count_p99_ms=percentile(latencies, 0.99),
        ping_p50_ms=percentile(ping_times, 0.50),
        ping_p99_ms=percentile(ping_times, 0.99),
        in_flight_rps=in_flight_rps,
    )


class Browser:
    """The cookie a browser holds (a :class:`~session_core.cookies.RequestContext` for the store-alone run)."""

    def __init__(self) -> None:
        self.cookie: str | None = None

    def get_cookie(self, name: str) -> str | None:
        return self.cookie

    def add_header(self, name: str, value: str) -> None:
        pass


def store_alone(emulator: Emulator, browsers: int, requests: int) -> float:
    """Requests per second of the session work alone (load, count, commit) from THREADS threads, no HTTP."""
    settings = Settings(project=PROJECT, emulator_host=emulator.host, namespace=f"bench-store-{uuid.uuid4().hex[:8]}")
    client = datastore_client(settings)

    def visit(browser: Browser) -> None:
        session = Session(client, settings)
        session.load(browser)
        session["n"] = session.get("n", 0) + 1
        session.commit()
        browser.cookie = session.cookie_key

    def browse(browser: Browser) -> None:
        for _ in range(requests):
            visit(browser)

    everyone = [Browser() for _ in range(browsers)]
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(visit, everyone))
        started = time.perf_counter()
        list(pool.map(browse, everyone))
        return browsers * requests / (time.perf_counter() - started)


def serve(variant: str, emulator: Emulator, log_dir: Path) -> Emulator:
    """uvicorn serving ``variant`` in a process group of its own (start it with ``with``)."""
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "BENCH_VARIANT": variant,
        "DATASTORE_EMULATOR_HOST": emulator.host,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "SESSION_NAMESPACE": f"bench-{variant}-{uuid.uuid4().hex[:8]}",
        "SESSION_COOKIE_SECURE": "false",  # plain http on 127.0.0.1
    }
    argv = [
        *(sys.executable, "-m", "uvicorn", "bench.asgi:app_from_env", "--factory"),
        *("--host", "127.0.0.1", "--port", str(port), "--loop", "asyncio", "--http", "h11"),
        *("--log-level", "warning", "--no-access-log"),
    ]
    return Emulator(
        f"uvicorn ({variant})", argv, port, http_ok(f"http://127.0.0.1:{port}/ping"), log_dir / f"{variant}.log", env
    )


def say(text: str = "") -> None:
    print(text, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.asgi", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 browsers, 5 requests each, 50 pings")
    parser.add_argument("--browsers", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--pings", type=int, default=300)
    args = parser.parse_args(argv)
    browsers, requests, pings = (10, 5, 50) if args.quick else (args.browsers, args.requests, args.pings)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-asgi-"))
    results: list[Figures] = []
    with firestore_datastore_mode(log_dir) as emulator:
        store_alone(emulator, browsers, requests)  # warm-up: the emulator's JVM is slow at first
        store_rps = store_alone(emulator, browsers, requests)
        say("  store alone: done")
        for variant in VARIANTS:
            with serve(variant, emulator, log_dir) as server:
                url = f"http://127.0.0.1:{server.port}"
                results.append(asyncio.run(measure(variant, url, browsers, requests, pings)))
            say(f"  {variant}: done")
    say("=" * 96)
    say(f"ASGI sessions through uvicorn: {browsers} browsers x {requests} POST /count, then {pings} GET /ping")
    say(f"while {browsers} /count requests are in flight; one Firestore emulator; logs in {log_dir}")
    say("-" * 96)
    header = f"  {'variant':<10} {'/count req/s':>12} {'p50 ms':>8} {'p99 ms':>8}   {'/ping p50 ms':>12} {'p99 ms':>8}"
    say(f"{header}   {'/count req/s meanwhile':>22}")
    for figures in results:
        say(
            f"  {figures.variant:<10} {figures.rps:>12,.0f} {figures.count_p50_ms:>8.1f} {figures.count_p99_ms:>8.1f}"
            f"   {figures.ping_p50_ms:>12.1f} {figures.ping_p99_ms:>8.1f}   {figures.in_flight_rps:>22,.0f}"
        )
    say(f"  {'store alone':<10} {store_rps:>12,.0f}   (Session load and commit from {THREADS} threads, no HTTP)")
    by_name = {figures.variant: figures for figures in results}
    ratio = by_name["ours"].ping_p99_ms / by_name["starlette"].ping_p99_ms
    say("-" * 96)
    say(f"  /ping p99, ours / Starlette's cookie middleware: {ratio:.2f} (target <= 2)")
    say(f"  command: .venv/bin/python -m bench.asgi{' --quick' if args.quick else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
