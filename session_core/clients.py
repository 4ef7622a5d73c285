"""Client factories for entry points. Library code is handed clients; it never builds them."""

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
        # DATASTORE_EMULATOR_HOST is also in the process environment: the
        # client then insists on finding the emulator there itself.
        return datastore.Client(project=settings.project, database=settings.database)
