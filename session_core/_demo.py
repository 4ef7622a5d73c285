"""``python -m session_core demo``: the library against a real local emulator, in a few steps."""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import flask
from google.cloud import datastore

from session_core.clients import datastore_client
from session_core.config import Settings
from session_core.cookies import new_key
from session_core.emulators import firestore_datastore_mode
from session_core.flask import DatastoreSessionInterface
from session_core.store import hash_key


def _app(client: datastore.Client, settings: Settings) -> flask.Flask:
    app = flask.Flask("session_core_demo")
    app.session_interface = DatastoreSessionInterface(client=client, settings=settings)

    @app.post("/cart/<item>")
    def add(item: str) -> dict[str, object]:
        flask.session.setdefault("cart", []).append(item)
        return {"cart": flask.session["cart"]}

    @app.get("/cart")
    def show() -> dict[str, object]:
        return {"cart": flask.session.get("cart", [])}

    @app.post("/login/<user>")
    def login(user: str) -> dict[str, object]:
        flask.session.login(user)  # type: ignore[attr-defined]
        return {"user": user}

    return app


def run_demo(environ: dict[str, str] | None = None) -> int:
    """Run the demo; start a Firestore emulator unless one is named. Returns an exit code."""
    environ = dict(os.environ if environ is None else environ)
    with ExitStack() as stack:
        if "DATASTORE_EMULATOR_HOST" not in environ:
            log_dir = Path(tempfile.mkdtemp(prefix="session-core-demo-"))
            emulator = stack.enter_context(firestore_datastore_mode(log_dir))
            environ["DATASTORE_EMULATOR_HOST"] = emulator.host
            print(f"started the Firestore emulator (Datastore mode) on {emulator.host}; log in {log_dir}")
        environ.setdefault("SESSION_COOKIE_SECURE", "false")
        environ.setdefault("SESSION_NAMESPACE", f"demo-{int(time.time())}")
        settings = Settings.from_env(environ)
        client = datastore_client(settings)
        browser = _app(client, settings).test_client()

        def count() -> int:
            query = client.query(kind=settings.kind, namespace=settings.namespace)
            query.keys_only()
            return len(list(query.fetch()))

        steps: list[tuple[str, str]] = []
        browser.get("/cart")
        steps.append(("a visitor reads an empty cart", f"{count()} sessions stored (nothing written)"))
        browser.post("/cart/book")
        browser.post("/cart/pen")
        steps.append(("adds two items", f"cart={browser.get('/cart').json}; {count()} session stored"))
        first = browser.get_cookie(settings.cookie_name)
        browser.post("/login/alice")
        second = browser.get_cookie(settings.cookie_name)
        rotated = first is not None and second is not None and first.value != second.value
        steps.append(("logs in", f"new cookie: {rotated}; cart after login={browser.get('/cart').json}"))

        viur_cookie = new_key()
        entity = datastore.Entity(
            client.key(settings.kind, viur_cookie, namespace=settings.namespace), exclude_from_indexes=["data"]
        )
        entity.update(
            data={"cart": ["from viur"]}, static_security_key="x" * 13, lastseen=time.time() - 600, user="__guest__"
        )
        client.put(entity)
        viur = _app(client, settings).test_client()
        viur.set_cookie(settings.cookie_name, viur_cookie)
        viur.get("/cart")  # older than 5 minutes: refreshed, which moves it to its hashed key
        moved = client.get(client.key(settings.kind, hash_key(viur_cookie), namespace=settings.namespace))
        steps.append(
            (
                "a ViUR-written session is read",
                f"cart={viur.get('/cart').json}; moved to hashed key: {moved is not None}",
            )
        )

        width = max(len(what) for what, _ in steps)
        for what, result in steps:
            print(f"  {what:<{width}}  {result}")
    return 0
