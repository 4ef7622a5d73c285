"""Testing helpers for apps that use session_core: a real Datastore for your test suite, or a memory store.

:class:`MemoryStore` keeps the Datastore store's contract in memory: pass it
as ``store=`` (Django: ``SESSION_CORE_STORE``) and an app's own tests run,
and sign users out, without Java.

:class:`DatastoreEmulator` starts Google's Firestore emulator in Datastore
mode (``gcloud emulators firestore start --database-mode=datastore-mode``;
Debian/Ubuntu package ``google-cloud-cli-firestore-emulator`` and Java 17+),
hands out settings and clients pointed at it, and stops it::

    import pytest
    from session_core.testing import DatastoreEmulator

    @pytest.fixture(scope="session")
    def datastore_emulator():
        with DatastoreEmulator() as emulator:
            yield emulator

    @pytest.fixture
    def session_settings(datastore_emulator):
        return datastore_emulator.settings()  # a namespace of its own: tests never see each other

Importing this module starts nothing and registers nothing. Each emulator
runs in a process group of its own: stopping the ``gcloud`` wrapper alone
would leave its Java process running, so :meth:`Emulator.stop` signals the
whole group. Readiness is polled, never slept for.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from google.cloud import datastore
from google.cloud.datastore.helpers import entity_from_protobuf, entity_to_protobuf
from google.cloud.datastore_v1.types import Entity as EntityProto

from session_core.clients import datastore_client
from session_core.config import Settings
from session_core.epochs import EVERYONE as EPOCH_EVERYONE
from session_core.epochs import NAMES as EPOCH_NAMES
from session_core.epochs import Epoch, Epochs
from session_core.errors import SessionCoreError
from session_core.rules import hash_key
from session_core.store import SessionRecord, SessionStore, session_entity


class EmulatorError(SessionCoreError):
    """An emulator could not be started; the message names its log."""


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_ok(url: str) -> Callable[[], bool]:
    """A readiness probe: True once ``url`` answers 200."""

    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - http://127.0.0.1 only
                return int(response.status) == 200
        except (OSError, urllib.error.URLError):
            return False

    return probe


def port_open(port: int) -> Callable[[], bool]:
    """A readiness probe: True once something accepts TCP on the port."""

    def probe() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    return probe


class Emulator:
    """One emulator process group, started and stopped as a context manager."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        ready: Callable[[], bool],
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.ready = ready
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> Emulator:
        if shutil.which(self.argv[0]) is None and not Path(self.argv[0]).exists():
            raise EmulatorError(f"{self.name}: {self.argv[0]!r} is not installed")
        if port_open(self.port)():
            raise EmulatorError(f"{self.name}: port {self.port} is already taken")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=self.env,
            )
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.process.poll() is not None:
                self.stop()
                raise EmulatorError(
                    f"{self.name} exited with {self.process.returncode} before it was ready; "
                    f"see {self.log_path}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise EmulatorError(f"{self.name} not ready after {timeout:.0f}s; see {self.log_path}")
            time.sleep(0.1)
        return self

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the whole process group (the gcloud wrapper and its Java child)."""
        if self.process is None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self.process.poll()  # reap the wrapper so it stops counting
                if not _group_alive(self.process.pid):
                    break
                time.sleep(0.05)
            if not _group_alive(self.process.pid):
                break
        self.process.poll()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# How to install what the Firestore emulator needs, by what is missing.
INSTALL_GCLOUD = (
    "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install; Debian/Ubuntu: apt-get install "
    "google-cloud-cli google-cloud-cli-firestore-emulator)"
)
INSTALL_FIRESTORE_EMULATOR = (
    "install it: apt-get install google-cloud-cli-firestore-emulator, or gcloud components install "
    "cloud-firestore-emulator"
)
INSTALL_JAVA = "install Java 17 or later (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"


def emulator_missing(path: str | None = None) -> str | None:
    """What the Firestore emulator lacks on this machine, and how to install it (one line); None if nothing.

    ``path`` is the ``PATH`` to search (default: this process's). It checks,
    in order, ``gcloud``, gcloud's Firestore emulator component and ``java``;
    it starts nothing.
    """
    gcloud = shutil.which("gcloud", path=path)
    if gcloud is None:
        return f"gcloud is not installed (not on PATH): {INSTALL_GCLOUD}"
    sdk = Path(gcloud).resolve().parent.parent
    if not (sdk / "platform" / "cloud-firestore-emulator").is_dir():
        return f"gcloud's Firestore emulator is not installed (no {sdk}/platform/cloud-firestore-emulator): " + (
            INSTALL_FIRESTORE_EMULATOR
        )
    if shutil.which("java", path=path) is None:
        return f"Java is not installed (no java on PATH), and the Firestore emulator runs on it: {INSTALL_JAVA}"
    return None


def firestore_datastore_mode(log_dir: Path, port: int | None = None, *, import_data: Path | None = None) -> Emulator:
    """The current Datastore emulator: Firestore in Datastore mode.

    ``import_data``: an ``*.overall_export_metadata`` file (see
    :func:`firestore_export`) to start from.
    """
    port = port or free_port()
    argv = [
        "gcloud",
        "emulators",
        "firestore",
        "start",
        "--database-mode=datastore-mode",
        f"--host-port=127.0.0.1:{port}",
        "--quiet",
    ]
    if import_data is not None:
        argv.append(f"--import-data={import_data}")
    return Emulator(
        "firestore emulator (datastore mode)",
        argv,
        port,
        http_ok(f"http://127.0.0.1:{port}/"),
        log_dir / f"firestore-{port}.log",
    )


class DatastoreEmulator:
    """A Firestore emulator in Datastore mode for a test session, with settings and clients for it.

    Use it as a context manager (or call :meth:`start` and :meth:`stop`).
    Logs go to ``log_dir`` (a fresh temporary directory by default).
    """

    def __init__(self, *, project: str = "session-core-test", port: int | None = None, log_dir: Path | None = None):
        self.project = project
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="session-core-emulator-"))
        self.emulator = firestore_datastore_mode(self.log_dir, port)

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, what ``DATASTORE_EMULATOR_HOST`` would say."""
        return self.emulator.host

    def start(self, timeout: float = 90.0) -> DatastoreEmulator:
        """Start the emulator and wait until it answers; EmulatorError names what went wrong."""
        self.emulator.start(timeout)
        return self

    def stop(self) -> None:
        """Stop the emulator's whole process group."""
        self.emulator.stop()

    def settings(self, **overrides: Any) -> Settings:
        """Settings pointed at this emulator, in a namespace of their own (unless ``namespace`` is given)."""
        values: dict[str, Any] = {
            "project": self.project,
            "emulator_host": self.host,
            "namespace": f"test-{uuid.uuid4().hex[:12]}",
            "cookie_name": f"viur_cookie_{self.project}",
        }
        return Settings(**{**values, **overrides})

    def client(self, settings: Settings | None = None) -> datastore.Client:
        """A Datastore client for ``settings`` (default: fresh :meth:`settings`)."""
        return datastore_client(settings or self.settings())

    def __enter__(self) -> DatastoreEmulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class MemoryStore:
    """A session store in memory with the Datastore store's semantics, for an app's own tests (no Java).

    It keeps :class:`~session_core.contract.Store` exactly as
    :class:`~session_core.store.SessionStore` does (the same contract suite
    runs against both): updates never upsert, an insert refuses a taken name,
    moves are all or none, and each session is held as the very entity
    Datastore would store (protobuf bytes, ``lastseen`` encoded as
    :mod:`session_core.rules` says), so lifetimes, data types and size limits
    come back as from Datastore. Thread-safe: one lock. Pass it as
    ``store=`` to :class:`~session_core.session.Session`, the adapters and
    the kill, list and end functions (Django: ``SESSION_CORE_STORE``).
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self._entities: dict[str, bytes] = {}
        self._epochs: dict[str, Epoch] = {}
        self._lock = threading.RLock()

    def _encode(self, record: SessionRecord) -> bytes:
        key = datastore.Key(
            self.settings.kind, record.key_name, project=self.settings.project, namespace=self.settings.namespace
        )
        return bytes(EntityProto.serialize(entity_to_protobuf(session_entity(key, record, self.settings))))

    def _record(self, name: str) -> SessionRecord:
        return SessionStore.from_entity(entity_from_protobuf(EntityProto.deserialize(self._entities[name])))

    def lookup_all(self, cookie_keys: Sequence[str]) -> dict[str, SessionRecord]:
        with self._lock:
            names = {cookie: (hash_key(cookie), cookie) for cookie in cookie_keys}
            found = {cookie: next((n for n in pair if n in self._entities), None) for cookie, pair in names.items()}
            return {cookie: self._record(name) for cookie, name in found.items() if name is not None}

    def lookup_with_epochs(self, cookie_keys: Sequence[str]) -> tuple[dict[str, SessionRecord], Epochs]:
        with self._lock:
            return self.lookup_all(cookie_keys), self.epochs()

    def epochs(self) -> Epochs:
        with self._lock:
            return Epochs.found(dict(self._epochs))

    def raise_epoch(self, name: str, *, at: float, run_id: str, except_session: str | None = None) -> Epoch:
        if name not in EPOCH_NAMES:
            raise ValueError(f"no epoch named {name!r}")
        with self._lock:
            epoch = self._epochs.get(name, Epoch())
            if run_id in epoch.runs:
                return epoch
            epoch = self._epochs[name] = epoch.raised(at, except_session, run_id)
            if except_session is not None and except_session in self._entities:
                record = self._record(except_session)
                if name == EPOCH_EVERYONE:
                    record = replace(record, epoch=epoch.counter)
                else:
                    record = replace(record, guest_epoch=epoch.counter)
                self._entities[except_session] = self._encode(record)
            return epoch

    def insert(self, record: SessionRecord, *, delete: Sequence[str] = ()) -> bool:
        encoded = self._encode(record)
        with self._lock:
            if record.key_name in self._entities:
                return False
            for name in delete:
                self._entities.pop(name, None)
            self._entities[record.key_name] = encoded
            return True

    def update(self, record: SessionRecord) -> bool:
        encoded = self._encode(record)
        with self._lock:
            return self._overwrite(record.key_name, encoded)

    def _overwrite(self, name: str, encoded: bytes) -> bool:
        if name not in self._entities:
            return False
        self._entities[name] = encoded
        return True

    def move(self, record: SessionRecord, old_name: str, *, old: SessionRecord | None = None) -> bool:
        encoded = self._encode(record)
        with self._lock:
            if old_name in self._entities and record.key_name not in self._entities:
                self._entities[record.key_name] = encoded
                del self._entities[old_name]
                return True
            return self.update(record)  # moved already (or killed: then False), as the Datastore store does

    def delete(self, names: Sequence[str]) -> None:
        with self._lock:
            for name in names:
                self._entities.pop(name, None)

    def sessions_of(self, user: str | None) -> list[SessionRecord]:
        with self._lock:
            records = [self._record(name) for name in self._entities]
        return [record for record in records if user is None or record.user == user]
