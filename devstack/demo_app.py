"""The local stack's Flask demo page: sessions in the emulator's Datastore, flash messages, Flask-Login.

``python -m devstack.demo_app --port N`` (what ``make run`` starts) with the
stack's environment. Sign in with any name; tick "remember me" for a
permanent session; the kill commands ``make run`` prints log you out.
"""

from __future__ import annotations

import argparse
import os
from html import escape

import flask
import flask_login
from werkzeug.wrappers import Response as WerkzeugResponse

from session_core import Settings
from session_core.clients import datastore_client
from session_core.flask import DatastoreSessionInterface

PAGE = """<!doctype html><title>session_core demo</title>
<h1>session_core demo</h1>
<p id=who>{who}</p>
<ul id=messages>{messages}</ul>
{form}
<p>Your session lives in the emulator's Datastore; its cookie is HttpOnly and holds only a random key.</p>
"""
SIGN_IN = """<form method=post action=/login>
<input name=user placeholder="a user name" required> <label><input type=checkbox name=remember> remember me</label>
<button>Sign in</button></form>"""
SIGN_OUT = "<form method=post action=/logout><button>Sign out</button></form>"


class User(flask_login.UserMixin):  # type: ignore[misc]
    def __init__(self, user_id: str) -> None:
        self.id = user_id


def create_app(settings: Settings) -> flask.Flask:
    app = flask.Flask(__name__)
    app.config.update(SECRET_KEY=os.urandom(16), SESSION_COOKIE_NAME="sid")  # the key signs only Flask-Login's cookie
    app.session_interface = DatastoreSessionInterface(client=datastore_client(settings), settings=settings)
    manager = flask_login.LoginManager(app)
    manager.user_loader(User)

    @app.get("/")
    def home() -> str:
        user = flask_login.current_user
        flashes: list[tuple[str, str]] = flask.get_flashed_messages(with_categories=True)  # type: ignore[assignment]
        return PAGE.format(
            who=f"signed in as {escape(user.get_id())}" if user.is_authenticated else "not signed in",
            messages="".join(f"<li class={escape(c)}>{escape(str(m))}</li>" for c, m in flashes),
            form=SIGN_OUT if user.is_authenticated else SIGN_IN,
        )

    @app.post("/login")
    def login() -> WerkzeugResponse:
        name = flask.request.form.get("user", "").strip()
        if not name:
            flask.flash("a user name, please", "error")
            return flask.redirect("/")
        flask_login.login_user(User(name), remember=bool(flask.request.form.get("remember")))
        flask.session.permanent = bool(flask.request.form.get("remember"))
        flask.flash(f"Welcome, {name}: your session key was rotated on sign-in", "success")
        return flask.redirect("/")

    @app.post("/logout")
    def logout() -> WerkzeugResponse:
        flask_login.logout_user()
        flask.flash("Signed out", "success")
        return flask.redirect("/")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo_app")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    create_app(Settings.from_env(os.environ)).run(host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
