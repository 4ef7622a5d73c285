"""docs/how-to/adapters.md: its table of defaults is what each adapter, left at its defaults, does on the emulator.

Each adapter is built with nothing set but the project (Flask's config, Django's own settings, our
``Settings`` defaults), asked to store a session, then to log it in; the ``Set-Cookie`` it sends, the
lifetime the stored session carries, and the fields left after the login are compared with the
page's row for it. The ViUR row is checked against viur-core itself in tests/test_viur_inplace.py.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flask
import pytest
from google.cloud import datastore
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from werkzeug.test import Client as WerkzeugClient

from session_core import Settings
from session_core.store import SessionStore

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "how-to" / "adapters.md"
SECONDS = {"hour": 3600, "hours": 3600, "day": 86400, "days": 86400}


@dataclass(frozen=True)
class Defaults:
    cookie: str
    secure: bool
    same_site: str | None  # None: no SameSite attribute
    lifetime: float  # seconds the stored session lives without a request
    max_age: float | None  # the cookie's Max-Age; None: until the browser closes
    survives: frozenset[str] | None  # the fields a login keeps; None: all of them


def duration(cell: str) -> float:
    match = re.match(r"(\d+) (hours?|days?)\b", cell)
    assert match, f"no duration at the start of {cell!r}"
    return int(match[1]) * SECONDS[match[2]]


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def documented(project: str) -> dict[str, Defaults]:
    """The page's defaults table, one Defaults per adapter (``<project>`` filled in)."""
    text = PAGE.read_text()
    table = text[text.index("| adapter | cookie name |") :].split("\n\n")[0].splitlines()[2:]
    rows: dict[str, Defaults] = {}
    for line in table:
        adapter, cookie, secure, same_site, lifetime, max_age, survives = (
            c.strip() for c in line.strip("|").split("|")
        )
        rows[adapter] = Defaults(
            cookie=code_spans(cookie)[0].replace("<project>", project),
            secure={"yes": True, "no": False}[secure.split(maxsplit=1)[0].rstrip(",")],
            same_site=code_spans(same_site)[0] if same_site.startswith("`") else None,
            lifetime=duration(lifetime),
            max_age=None if max_age.startswith("until the browser closes") else duration(max_age),
            survives=None if survives.startswith("everything") else frozenset(code_spans(survives.split("(")[0])),
        )
    return rows


def set_cookie(headers: list[str], name: str) -> tuple[str, dict[str, str]]:
    """The value and attributes (lower-cased names) of the ``Set-Cookie`` header for ``name``."""
    [header] = [h for h in headers if h.startswith(f"{name}=")]
    first, *rest = (part.strip() for part in header.split(";"))
    attributes = {key.lower(): value for key, _, value in (part.partition("=") for part in rest)}
    return first.split("=", 1)[1], attributes


def stored_lifetime(client: datastore.Client, settings: Settings, cookie: str) -> float:
    record = SessionStore(client, settings).lookup_all([cookie])[cookie]
    return record.idle_expires(settings.life_time) - record.seen


def measured_from_cookie(
    name: str, attributes: dict[str, str], lifetime: float, survives: frozenset[str] | None
) -> Defaults:
    return Defaults(
        cookie=name,
        secure="secure" in attributes,
        same_site=attributes.get("samesite"),
        lifetime=lifetime,
        max_age=float(attributes["max-age"]) if "max-age" in attributes else None,
        survives=survives,
    )


FILLED = {"language": "de", "cart": ["book"]}  # a persistent field, and one that is not


def flask_defaults(client: datastore.Client, settings: Settings) -> Defaults:
    app = flask.Flask(__name__)
    from session_core.flask import DatastoreSessionInterface

    app.session_interface = DatastoreSessionInterface(client=client, settings=settings)

    @app.post("/fill")
    def fill() -> str:
        flask.session.update(FILLED)
        return ""

    @app.post("/login")
    def login() -> list[str]:
        flask.session.login("alice")
        return sorted(flask.session.keys())

    @app.post("/permanent")
    def permanent() -> str:
        flask.session.permanent = True
        return ""

    browser = app.test_client()
    name = app.config["SESSION_COOKIE_NAME"]
    value, attributes = set_cookie(browser.post("/fill").headers.getlist("Set-Cookie"), name)
    lifetime = stored_lifetime(client, settings, value)
    kept = frozenset(browser.post("/login").json or [])
    _, made_permanent = set_cookie(browser.post("/permanent").headers.getlist("Set-Cookie"), name)
    assert float(made_permanent["max-age"]) == app.permanent_session_lifetime.total_seconds()  # "... once permanent"
    assert (attributes["path"], "httponly" in attributes, "domain" in attributes) == ("/", True, False)
    return measured_from_cookie(name, attributes, lifetime, kept)


def django_defaults(client: datastore.Client, settings: Settings) -> Defaults:
    """Django's own defaults: the test project (tests/django_site) sets no SESSION_COOKIE_* of Django's."""
    from tests.django_site import configure

    configure()
    from django.conf import settings as django_settings
    from django.contrib.auth.models import User
    from django.test import Client as DjangoClient
    from django.test import override_settings

    name = django_settings.SESSION_COOKIE_NAME
    with override_settings(SESSION_CORE_SETTINGS=settings, SESSION_CORE_CLIENT=client):
        browser = DjangoClient()
        response = browser.get("/visits/")
        morsel = response.cookies[name]
        attributes = {key: str(morsel[key]) for key in ("max-age", "samesite", "path") if morsel[key]}
        attributes.update({flag: "" for flag in ("secure", "httponly") if morsel[flag]})
        lifetime = stored_lifetime(client, settings, morsel.value)
        user = User.objects.create_user(f"ada-{uuid.uuid4().hex[:8]}")
        browser.get(f"/login/{user.username}/")
        kept = browser.get("/peek/").json() == {"visits": 1}  # a field no setting names: kept, so all are
    assert (attributes["path"], "httponly" in attributes) == ("/", True)
    return measured_from_cookie(name, attributes, lifetime, None if kept else frozenset())


def asgi_defaults(client: datastore.Client, settings: Settings) -> Defaults:
    from session_core.asgi import SessionMiddleware, session_of

    async def fill(request: Request) -> JSONResponse:
        request.session.update(FILLED)
        return JSONResponse("")

    async def login(request: Request) -> JSONResponse:
        session_of(request).login("alice")
        return JSONResponse(sorted(request.session))

    app = Starlette(
        routes=[Route("/fill", fill, methods=["POST"]), Route("/login", login, methods=["POST"])],
        middleware=[Middleware(SessionMiddleware, client=client, settings=settings)],
    )
    browser = TestClient(app, base_url="https://testserver")
    value, attributes = set_cookie(browser.post("/fill").headers.get_list("set-cookie"), settings.cookie_name)
    lifetime = stored_lifetime(client, settings, value)
    kept = frozenset(browser.post("/login").json())
    assert (attributes["path"], "httponly" in attributes, "domain" in attributes) == ("/", True, False)
    return measured_from_cookie(settings.cookie_name, attributes, lifetime, kept)


def wsgi_defaults(client: datastore.Client, settings: Settings) -> Defaults:
    import json

    from session_core.wsgi import ENVIRON_KEY, SessionMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ[ENVIRON_KEY]
        if environ["PATH_INFO"] == "/fill":
            session.update(FILLED)
        else:
            session.login("alice")
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(sorted(session.keys())).encode()]

    browser = WerkzeugClient(SessionMiddleware(app, client=client, settings=settings))
    value, attributes = set_cookie(browser.post("/fill").headers.getlist("Set-Cookie"), settings.cookie_name)
    lifetime = stored_lifetime(client, settings, value)
    kept = frozenset(browser.post("/login").json or [])
    assert (attributes["path"], "httponly" in attributes, "domain" in attributes) == ("/", True, False)
    return measured_from_cookie(settings.cookie_name, attributes, lifetime, kept)


ADAPTERS = {
    "Flask": flask_defaults,
    "Django": django_defaults,
    "Starlette / FastAPI": asgi_defaults,
    "WSGI": wsgi_defaults,
}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_the_defaults_table_row_is_what_the_adapter_does_at_its_defaults(adapter: str, settings: Settings) -> None:
    assert settings.emulator_host and settings.namespace
    defaults = Settings.from_env(  # nothing set but the project (and where the emulator and the test's data are)
        {
            "GOOGLE_CLOUD_PROJECT": "shop",
            "DATASTORE_EMULATOR_HOST": settings.emulator_host,
            "SESSION_NAMESPACE": settings.namespace,
        }
    )
    from session_core.clients import datastore_client

    measured = ADAPTERS[adapter](datastore_client(defaults), defaults)
    assert measured == documented("shop")[adapter]


def test_the_table_has_a_row_for_each_adapter_and_the_page_is_in_the_nav() -> None:
    assert set(documented("p")) == {*ADAPTERS, "ViUR (in place)"}
    assert "how-to/adapters.md" in (ROOT / "mkdocs.yml").read_text()
    for page in ("flask", "starlette", "django", "wsgi", "viur"):
        assert "(adapters.md)" in (ROOT / "docs" / "how-to" / f"{page}.md").read_text(), page
