"""A real browser (headless Chromium through selenium) against a Flask app with our sessions and Flask-Login.

``make test`` installs Debian's ``chromium`` and ``chromium-driver`` when it runs
as root and they are missing. Under ``CI=true`` a missing browser fails the run;
elsewhere these tests skip, saying why.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import flask
import flask_login
import pytest
from google.cloud import datastore
from werkzeug.serving import make_server

from session_core import Settings, kill_sessions
from session_core.flask import DatastoreSessionInterface

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not try the network
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",  # this machine's network is closed: no calls home
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium() -> Path:
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return CHROMIUM
    why = "Debian's chromium and chromium-driver are not installed (make test installs them when run as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


class User(flask_login.UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


def make_app(client: datastore.Client, settings: Settings) -> flask.Flask:
    app = flask.Flask(__name__)
    app.config.update(SECRET_KEY="flask-login signs its remember cookie", SESSION_COOKIE_NAME="sid")
    app.session_interface = DatastoreSessionInterface(client=client, settings=settings)
    flask_login.LoginManager(app).user_loader(User)

    @app.get("/flash")
    def flash() -> flask.Response:
        flask.flash("Saved!", "success")
        return flask.redirect("/page")

    @app.get("/page")
    def page() -> str:
        shown = " | ".join(f"{c}: {m}" for c, m in flask.get_flashed_messages(with_categories=True))
        return f"<p id=messages>{shown or '-'}</p>"

    @app.get("/login/<user>")
    def login(user: str) -> flask.Response:
        flask_login.login_user(User(user))
        flask.session.permanent = flask.request.args.get("permanent") == "1"
        return flask.redirect("/whoami")

    @app.get("/whoami")
    def whoami() -> str:
        return f"<p id=who>{flask_login.current_user.get_id() or 'anonymous'}</p>"

    return app


@pytest.fixture
def site(client: datastore.Client, settings: Settings) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, make_app(client, settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


class Browser:
    """One Chromium profile that can be closed and opened again, as a user restarts their browser."""

    def __init__(self, binary: Path, profile: Path) -> None:
        self.binary, self.profile = binary, profile
        self.driver = self._start()

    def _start(self) -> object:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = str(self.binary)
        for flag in [*FLAGS, f"--user-data-dir={self.profile}"]:
            options.add_argument(flag)
        return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)

    def text(self, url: str, element: str) -> str:
        self.driver.get(url)  # type: ignore[attr-defined]
        return str(self.driver.find_element("id", element).text)  # type: ignore[attr-defined]

    def restart(self) -> None:
        self.driver.quit()  # type: ignore[attr-defined]
        self.driver = self._start()

    def quit(self) -> None:
        self.driver.quit()  # type: ignore[attr-defined]


@pytest.fixture
def browser(chromium: Path, tmp_path: Path) -> Iterator[Browser]:
    opened = Browser(chromium, tmp_path / "profile")
    yield opened
    opened.quit()


def test_flash_messages_survive_a_redirect(browser: Browser, site: str) -> None:
    assert browser.text(f"{site}/flash", "messages") == "success: Saved!"
    assert browser.text(f"{site}/page", "messages") == "-"  # shown once


def test_a_permanent_login_survives_a_browser_restart_and_a_non_permanent_one_does_not(
    browser: Browser, site: str
) -> None:
    assert browser.text(f"{site}/login/alice?permanent=1", "who") == "alice"
    browser.restart()
    assert browser.text(f"{site}/whoami", "who") == "alice"
    assert browser.text(f"{site}/login/bob?permanent=0", "who") == "bob"
    browser.restart()
    assert browser.text(f"{site}/whoami", "who") == "anonymous"


def test_scripts_cannot_read_the_session_cookie(browser: Browser, site: str) -> None:
    assert browser.text(f"{site}/login/alice", "who") == "alice"
    cookies = {cookie["name"]: cookie for cookie in browser.driver.get_cookies()}  # type: ignore[attr-defined]
    assert cookies["sid"]["httpOnly"] is True
    assert "sid=" not in browser.driver.execute_script("return document.cookie")  # type: ignore[attr-defined]


def test_a_kill_logs_the_browser_out(browser: Browser, site: str, client: datastore.Client, settings: Settings) -> None:
    assert browser.text(f"{site}/login/alice?permanent=1", "who") == "alice"
    kill_sessions("alice", client=client, settings=settings)
    assert browser.text(f"{site}/whoami", "who") == "anonymous"
