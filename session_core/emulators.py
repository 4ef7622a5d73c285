"""Start and stop Google's local emulators: for tests, benchmarks and ``make run``.

Each emulator runs in a process group of its own: stopping the ``gcloud``
wrapper alone would leave its Java process running, so :meth:`Emulator.stop`
signals the whole group. Readiness is polled, never slept for.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from session_core.errors import SessionCoreError

_RUNNING: set[Emulator] = set()


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
        _RUNNING.add(self)
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
        _RUNNING.discard(self)
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


@atexit.register
def _stop_all() -> None:
    for emulator in list(_RUNNING):
        emulator.stop()


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


def firestore_export(host: str, project: str, directory: Path) -> Path:
    """Export the Firestore emulator's data now; returns the metadata file to import."""
    directory.mkdir(parents=True, exist_ok=True)
    before = set(directory.glob("*/*.overall_export_metadata"))
    body = json.dumps({"database": f"projects/{project}/databases/", "export_directory": str(directory)}).encode()
    request = urllib.request.Request(
        f"http://{host}/emulator/v1/projects/{project}:export",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120):  # noqa: S310
        pass
    [metadata] = set(directory.glob("*/*.overall_export_metadata")) - before
    return metadata


def pubsub_rest(host: str, method: str, path: str, body: object = None) -> None:
    """One call of the Pub/Sub emulator's REST API (``path`` after ``/v1/``)."""
    request = urllib.request.Request(
        f"http://{host}/v1/{path}",
        method=method,
        data=json.dumps(body or {}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10):  # noqa: S310
        pass


def pubsub_push_subscription(host: str, topic: str, subscription: str, endpoint: str) -> None:
    """Create ``topic`` (if missing) and a push subscription delivering it to ``endpoint`` (full names)."""
    try:
        pubsub_rest(host, "PUT", topic)
    except urllib.error.HTTPError as exc:
        if exc.code != 409:  # 409: the topic exists already
            raise
    pubsub_rest(host, "PUT", subscription, {"topic": topic, "pushConfig": {"pushEndpoint": endpoint}})


def pubsub_publish(host: str, topic: str, data: bytes) -> None:
    """Publish one message with ``data``, as an app's publisher client does."""
    pubsub_rest(host, "POST", f"{topic}:publish", {"messages": [{"data": base64.b64encode(data).decode()}]})


def legacy_datastore(log_dir: Path, port: int | None = None, project: str = "session-core-local") -> Emulator:
    """The legacy Datastore emulator, strongly consistent and in memory."""
    port = port or free_port()
    return Emulator(
        "legacy datastore emulator",
        [
            "gcloud",
            "beta",
            "emulators",
            "datastore",
            "start",
            "--no-store-on-disk",
            "--consistency=1.0",
            f"--project={project}",
            f"--host-port=127.0.0.1:{port}",
            "--quiet",
        ],
        port,
        http_ok(f"http://127.0.0.1:{port}/"),
        log_dir / f"datastore-{port}.log",
    )


def _is_queue_path(queue: str) -> bool:
    parts = queue.split("/")
    return len(parts) == 6 and parts[0::2] == ["projects", "locations", "queues"] and all(parts[1::2])


def tasks_ready(port: int, queues: Sequence[str] = ()) -> Callable[[], bool]:
    """A readiness probe: True once the Cloud Tasks emulator answers ListQueues over gRPC and lists ``queues``."""

    def probe() -> bool:
        import importlib

        from google.api_core.exceptions import GoogleAPICallError
        from google.cloud import tasks_v2
        from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

        grpc = importlib.import_module("grpc")  # grpcio ships no type stubs
        parents = sorted({queue.rsplit("/queues/", 1)[0] for queue in queues}) or ["projects/-/locations/-"]
        listed: set[str] = set()
        with tasks_v2.CloudTasksClient(
            transport=CloudTasksGrpcTransport(channel=grpc.insecure_channel(f"127.0.0.1:{port}"))
        ) as client:
            try:
                for parent in parents:
                    listed.update(queue.name for queue in client.list_queues(parent=parent, retry=None, timeout=1))
            except (GoogleAPICallError, grpc.RpcError):
                return False
        return set(queues) <= listed

    return probe


def cloud_tasks(log_dir: Path, python: Path, queues: Sequence[str] = (), port: int | None = None) -> Emulator:
    """The Cloud Tasks emulator (PyPI ``gcloud-tasks-emulator``), run by the interpreter of its own venv.

    It pins protobuf<5, so ``python`` is that venv's interpreter (``.venv-tasks/bin/python``).
    ``queues`` are full paths, ``projects/P/locations/L/queues/Q``, created at start.
    Connect with an insecure gRPC channel to :attr:`Emulator.host`. The emulator POSTs
    each HTTP task to its exact URL without any OIDC token, does not deduplicate task
    names, and retries a failed task about every 0.1 s for ever.
    """
    bad = [queue for queue in queues if not _is_queue_path(queue)]
    if bad:
        raise ValueError(f"not a queue path (projects/P/locations/L/queues/Q): {', '.join(bad)}")
    port = port or free_port()
    return Emulator(
        "cloud tasks emulator",
        [str(python), "-u", "-m", "gcloud_tasks_emulator", "start", f"--port={port}"]
        + [f"--default-queue={queue}" for queue in queues],
        port,
        tasks_ready(port, queues),
        log_dir / f"cloud-tasks-{port}.log",
    )


def pubsub(log_dir: Path, project: str, port: int | None = None) -> Emulator:
    """The Pub/Sub emulator for ``project``; its HTTP root answers 200 "Ok" once it is ready."""
    port = port or free_port()
    return Emulator(
        "pubsub emulator",
        [
            "gcloud",
            "beta",
            "emulators",
            "pubsub",
            "start",
            f"--host-port=127.0.0.1:{port}",
            f"--project={project}",
            "--quiet",
        ],
        port,
        http_ok(f"http://127.0.0.1:{port}/"),
        log_dir / f"pubsub-{port}.log",
    )


def functions_framework(
    target: str,
    source: Path,
    log_dir: Path,
    env: dict[str, str],
    *,
    port: int | None = None,
    cloudevent: bool = False,
    executable: Path | None = None,
) -> Emulator:
    """functions-framework serving one function of ``source`` as its own process.

    ``env`` is added to this process's environment. The executable defaults to
    the one beside the running interpreter (the project's venv).
    """
    port = port or free_port()
    binary = executable or Path(sys.executable).parent / "functions-framework"
    argv = [str(binary), f"--target={target}", f"--source={source}", "--host=127.0.0.1", f"--port={port}"]
    if cloudevent:
        argv.append("--signature-type=cloudevent")
    return Emulator(
        f"functions-framework {target}",
        argv,
        port,
        port_open(port),
        log_dir / f"{target}-{port}.log",
        env={**os.environ, **env},
    )
