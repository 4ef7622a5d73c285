"""Benchmark of the request path: load by cookie, change one value, save. Four ways, side by side, one run.

Run ``.venv/bin/python -m bench.request`` (about a minute; ``--cycles`` sets
the 300 cycles). One Firestore emulator in Datastore mode; each variant runs
its cycles one after another on one session, after ten warm-up cycles,
in alternating rounds (``--rounds``, 3), and each variant's best round counts:

- ``ours``: :class:`session_core.session.Session` (load by cookie, one change,
  save) over :class:`~session_core.store.SessionStore`, with
  ``SESSION_PLAIN_KEYS=off`` (one key a lookup), and ``ours (plain keys on)``,
  the default (two keys a lookup);
- ``floor``: the raw protobuf messages alone (a Lookup of the one key, and an
  update Commit of the entity it returned with one value changed), on a plain
  gRPC channel: what no library can beat;
- ``library``: google-cloud-datastore doing the same (``get``, then an update
  mutation), with proto-plus marshalling;
- ``viur-core``: viur-core 3.9.3's own ``Session`` in its Python 3.12 venv
  (``.local/viur-venv``, built by ``tests/test_viur_agreement.py``); skipped,
  with a note, when that venv is missing.

It reports CPU (``time.process_time``, this process or viur-core's) and wall
time per cycle, and the ratios of ours to the floor and to viur-core. The
emulator shares this machine's cores: compare variants of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.cloud import datastore

from session_core import _wire
from session_core._datastore import commit
from session_core.clients import datastore_client
from session_core.config import Settings
from session_core.rules import hash_key
from session_core.session import Session
from session_core.testing import Emulator, firestore_datastore_mode

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "session-core-bench"  # viur-core reads its project's default namespace: so do all variants
VIUR_PYTHON = ROOT / ".local" / "viur-venv" / "bin" / "python"
WARM_UP = 10


@dataclass(frozen=True)
class Figures:
    variant: str
    cycles: int
    cpu_s: float
    wall_s: float

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu_s / self.cycles

    @property
    def wall_ms(self) -> float:
        return 1000 * self.wall_s / self.cycles


class Ctx:
    """A request: one cookie in, headers out."""

    def __init__(self, cookie: str | None) -> None:
        self.cookie = cookie
        self.headers: list[tuple[str, str]] = []

    def get_cookie(self, name: str) -> str | None:
        return self.cookie

    def add_header(self, name: str, value: str) -> None:
        self.headers.append((name, value))


def timed(variant: str, cycles: int, cycle: Callable[[], object]) -> Figures:
    for _ in range(WARM_UP):
        cycle()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(cycles):
        cycle()
    return Figures(variant, cycles, time.process_time() - cpu, time.perf_counter() - wall)


def ours(settings: Settings, cycles: int, variant: str) -> Figures:
    client = datastore_client(settings)
    first = Session(client, settings)
    first["n"] = 0
    ctx = Ctx(None)
    first.save(ctx)
    cookie = first.cookie_key

    def cycle() -> None:
        ctx = Ctx(cookie)
        session = Session(client, settings)
        session.load(ctx)
        session["n"] = session.get("n", 0) + 1
        session.save(ctx)

    figures = timed(variant, cycles, cycle)
    check = Session(client, settings)
    check.load(Ctx(cookie))
    assert check["n"] == cycles + WARM_UP, check["n"]
    return figures


def seeded(settings: Settings) -> tuple[datastore.Client, datastore.Key]:
    """A client and the key of a session entity written by ours (the floor and the library read and update it)."""
    client = datastore_client(settings)
    session = Session(client, settings)
    session["n"] = 0
    session.save(Ctx(None))
    assert session.cookie_key is not None
    return client, client.key(settings.kind, hash_key(session.cookie_key))


def floor(settings: Settings, cycles: int) -> Figures:
    _, key = seeded(settings)
    channel = grpc.insecure_channel(settings.emulator_host or "")
    lookup = channel.unary_unary(
        "/google.datastore.v1.Datastore/Lookup",
        request_serializer=_wire.LookupRequest.SerializeToString,
        response_deserializer=_wire.LookupResponse.FromString,
    )
    commit_rpc = channel.unary_unary(
        "/google.datastore.v1.Datastore/Commit",
        request_serializer=_wire.CommitRequest.SerializeToString,
        response_deserializer=_wire.CommitResponse.FromString,
    )
    key_pb = key.to_protobuf()._pb

    def cycle() -> None:
        found = lookup(_wire.LookupRequest(project_id=settings.project, keys=[key_pb]), timeout=5).found[0].entity
        n = found.properties["data"].entity_value.properties["n"]
        n.integer_value += 1
        request = _wire.CommitRequest(project_id=settings.project, mode=_wire.NON_TRANSACTIONAL)
        request.mutations.add().update.CopyFrom(found)
        commit_rpc(request, timeout=5)

    try:
        return timed("floor", cycles, cycle)
    finally:
        channel.close()


def library(settings: Settings, cycles: int) -> Figures:
    client, key = seeded(settings)

    def cycle() -> None:
        entity = client.get(key)
        assert entity is not None
        entity["data"]["n"] += 1
        commit(client, update=[entity])

    return timed("library", cycles, cycle)


def viur_core(emulator: Emulator, cycles: int, scratch: Path) -> Figures | str:
    """viur-core's Session in its own interpreter, or why it was skipped."""
    if not VIUR_PYTHON.exists():
        return f"viur-core skipped: no venv at {VIUR_PYTHON} (run tests/test_viur_agreement.py once to build it)"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    account = scratch / "service-account.json"
    account.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": PROJECT,
                "private_key_id": "throwaway",
                "private_key": pem.decode(),
                "client_email": f"bench@{PROJECT}.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    env = {
        "PATH": os.environ["PATH"],
        "GOOGLE_APPLICATION_CREDENTIALS": str(account),
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "DATASTORE_EMULATOR_HOST": emulator.host,
    }
    script = [str(VIUR_PYTHON), str(ROOT / "bench" / "viur_cycles.py"), str(cycles)]
    done = subprocess.run(script, capture_output=True, text=True, env=env, timeout=600, check=False)
    if done.returncode != 0:
        return f"viur-core failed: {done.stderr[-2000:]}"
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["n"] == cycles + WARM_UP + 1, answer
    return Figures("viur-core", cycles, answer["cpu"], answer["wall"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.request", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; each variant's best is shown")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="bench-request-"))
    with firestore_datastore_mode(scratch) as emulator:
        settings = Settings(project=PROJECT, emulator_host=emulator.host, cookie_name=f"viur_cookie_{PROJECT}")
        hashed_only = replace(settings, plain_keys=False)
        runs: list[Callable[[], Figures]] = [
            lambda: ours(hashed_only, args.cycles, "ours"),
            lambda: floor(settings, args.cycles),
            lambda: library(settings, args.cycles),
            lambda: ours(settings, args.cycles, "ours (plain keys on)"),
        ]
        rounds = [[run() for run in runs] for _ in range(args.rounds)]  # alternating: the load shifts over time
        rows = [min(column, key=lambda row: row.cpu_s) for column in zip(*rounds, strict=True)]
        viurs = [viur_core(emulator, args.cycles, scratch) for _ in range(args.rounds)]
        viur = min(viurs, key=lambda row: row.cpu_s if isinstance(row, Figures) else 0.0)
    if isinstance(viur, Figures):
        rows.append(viur)
    print(f"{args.cycles} cycles each (load by cookie, change one value, save), best of {args.rounds} rounds:\n")
    print("| variant | CPU per cycle | wall per cycle |")
    print("|---|---:|---:|")
    for row in rows:
        print(f"| {row.variant} | {row.cpu_ms:.3f} ms | {row.wall_ms:.3f} ms |")
    mine, by_name = rows[0], {row.variant: row for row in rows}
    print()
    for other in ("floor", "library", "viur-core"):
        if other in by_name:
            base = by_name[other]
            print(f"ours / {other}: CPU {mine.cpu_s / base.cpu_s:.2f}x, wall {mine.wall_s / base.wall_s:.2f}x")
    if not isinstance(viur, Figures):
        print(f"\nNote: {viur}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
