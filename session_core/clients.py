"""Client factories for entry points. Library code is handed clients; it never builds them."""

from __future__ import annotations

import grpc
from google.auth.credentials import AnonymousCredentials
from google.cloud import datastore, tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from session_core.config import Settings


def datastore_client(settings: Settings) -> datastore.Client:
    """A Datastore client for the settings' project, database and emulator."""
    if settings.emulator_host is None:
        return datastore.Client(project=settings.project, database=settings.database)
    try:
        return datastore.Client(
            project=settings.project,
            database=settings.database,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": f"http://{settings.emulator_host}"},
        )
    except ValueError:
        # DATASTORE_EMULATOR_HOST is also in the process environment: the client
        # then refuses explicit credentials and reads the host from there. Point
        # it at the settings' emulator (its API object is built lazily from this).
        client = datastore.Client(project=settings.project, database=settings.database)
        client._base_url = f"http://{settings.emulator_host}"
        return client


def tasks_client(settings: Settings) -> tasks_v2.CloudTasksClient:
    """A Cloud Tasks client; with CLOUD_TASKS_EMULATOR_HOST an insecure channel to it."""
    if settings.tasks_emulator_host is None:
        return tasks_v2.CloudTasksClient()
    channel = grpc.insecure_channel(settings.tasks_emulator_host)
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
