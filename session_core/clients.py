"""The Datastore client factory, for entry points. Library code is handed clients; it never builds them."""

from __future__ import annotations

from google.auth.credentials import AnonymousCredentials
from google.cloud import datastore

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
