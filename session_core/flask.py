"""Flask integration: ``app.session_interface = DatastoreSessionInterface(...)``.

Works for any Flask app and for functions-framework (which is Flask). The
session is loaded when Flask opens it and saved when Flask finishes the
response; changes made while a streamed body is generated are not saved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask.sessions import SessionInterface, SessionMixin
from google.cloud import datastore

from session_core.config import Settings
from session_core.session import Session

if TYPE_CHECKING:
    from flask import Flask, Request, Response


class FlaskSession(Session, SessionMixin):
    """A :class:`Session` that is also what Flask expects of ``flask.session``."""


class WerkzeugContext:
    """:class:`~session_core.cookies.RequestContext` over a Werkzeug request/response."""

    def __init__(self, request: Request | None = None, response: Response | None = None) -> None:
        self.request = request
        self.response = response

    def get_cookie(self, name: str) -> str | None:
        return None if self.request is None else self.request.cookies.get(name)

    def add_header(self, name: str, value: str) -> None:
        if self.response is None:
            raise RuntimeError("no response to add a header to")
        self.response.headers.add(name, value)
        if name.lower() == "set-cookie":
            self.response.vary.add("Cookie")


class DatastoreSessionInterface(SessionInterface):
    """Flask ``SessionInterface`` storing sessions in Datastore.

    ``client`` is the only Datastore client it uses. A bad or expired cookie
    gives a fresh session, never an error.
    """

    def __init__(self, *, client: datastore.Client, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    def open_session(self, app: Flask, request: Request) -> FlaskSession:
        session = FlaskSession(self.client, self.settings)
        session.load(WerkzeugContext(request=request))
        return session

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if isinstance(session, Session):
            session.save(WerkzeugContext(response=response))
