"""The other local emulators and processes of the stack: Pub/Sub, Cloud Tasks, functions-framework.

Repository tooling for ``make run``, the test suite and the benchmarks; it is
not part of the installed package. The Datastore emulator is the package's
public testing helper, :mod:`session_core.testing`; everything here builds on
its :class:`~session_core.testing.Emulator` process groups.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from session_core.testing import Emulator, free_port, http_ok, port_open

ROOT = Path(__file__).resolve().parent.parent
TASKS_PYTHON = ROOT / ".venv-tasks" / "bin" / "python"


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


def pubsub_topic(host: str, topic: str) -> None:
    """Create ``topic`` (a full name) if it is missing."""
    try:
        pubsub_rest(host, "PUT", topic)
    except urllib.error.HTTPError as exc:
        if exc.code != 409:  # 409: the topic exists already
            raise


def pubsub_push_subscription(host: str, topic: str, subscription: str, endpoint: str) -> None:
    """Create ``topic`` (if missing) and a push subscription delivering it to ``endpoint`` (full names)."""
    pubsub_topic(host, topic)
    pubsub_rest(host, "PUT", subscription, {"topic": topic, "pushConfig": {"pushEndpoint": endpoint}})


def pubsub_pull_subscription(host: str, topic: str, subscription: str) -> None:
    """Create ``topic`` (if missing) and a pull subscription of it (full names)."""
    pubsub_topic(host, topic)
    pubsub_rest(host, "PUT", subscription, {"topic": topic, "ackDeadlineSeconds": 60})


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
