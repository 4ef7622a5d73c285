"""A minimal viur-core app, served by viur-core's own WSGI app and driven by webob's test client.

Run by viur-core's interpreter. ``app.py ours`` applies ``session_core.viur.install()`` (settings
from the environment), ``app.py stock`` runs viur-core's own Session. Reads JSON commands, one a
line, on stdin; answers each with one line ``@@`` + JSON on stdout (viur-core prints a banner):

- ``{"path": "/counter", "cookie": "...", "headers": {...}}``: a request; the answer has
  ``status``, ``headers`` (a list of pairs) and ``body``;
- ``{"periodic": true}``: the names of viur-core's periodic tasks;
- ``{"defaults": true}`` (``ours``): viur-core's persistent login fields, and the cookie header the
  installed Session sends off the dev server.

Needs GOOGLE_APPLICATION_CREDENTIALS, GOOGLE_CLOUD_PROJECT, DATASTORE_EMULATOR_HOST and
GAE_ENV=localdev (viur-core's dev server), and session_core on PYTHONPATH.
"""

import http.server
import json
import os
import sys
import threading
import types


class NoBuckets(http.server.BaseHTTPRequestHandler):
    """Cloud Storage for viur-core's file module, which looks its bucket up at import: there is none."""

    def do_GET(self):
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": {"code": 404, "message": "no buckets here"}}')

    def log_message(self, *args):
        pass


storage = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoBuckets)
threading.Thread(target=storage.serve_forever, daemon=True).start()
os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{storage.server_address[1]}"
sys.modules["skeletons"] = types.ModuleType("skeletons")  # viur-core's setup() imports the app's models
import google.auth  # noqa: E402
from google.auth.credentials import AnonymousCredentials  # noqa: E402

# viur-core's file module builds its Storage client from these at import: no token to fetch.
google.auth.default = lambda *args, **kwargs: (AnonymousCredentials(), os.environ["GOOGLE_CLOUD_PROJECT"])

from viur.core import Module, conf, current, exposed, securitykey, setup, tasks  # noqa: E402
from webob import Request  # noqa: E402

conf.valid_application_ids = [os.environ["GOOGLE_CLOUD_PROJECT"]]
conf.file_hmac_key = b"test"  # else setup() reads it from the Datastore
if sys.argv[1] == "ours":
    import session_core.viur
    from session_core import Settings
    from session_core.clients import datastore_client

    # SESSIONS_HOST: a Datastore for the sessions alone (a frozen one), viur-core's own stays answering.
    host = os.environ.get("SESSIONS_HOST") or os.environ["DATASTORE_EMULATOR_HOST"]
    session_core.viur.install(
        client=datastore_client(Settings(project=conf.instance.project_id, emulator_host=host)), environ=os.environ
    )


class counter(Module):  # noqa: N801 - viur-core routes by class name
    html = True

    @exposed
    def index(self):
        session = current.session.get()
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    @exposed
    def meanwhile(self):
        """Count, after the session this request holds was deleted (killed, cleared) by someone else."""
        from viur.core import db

        session = current.session.get()
        db.delete(db.Key(session.kindName, session.session_id))
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])


class user(Module):  # noqa: N801
    """The app's user module: where viur-core's save takes the user key from (``getCurrentUser()["key"]``)."""

    html = vi = True

    def getCurrentUser(self):
        session, request = current.session.get(), current.request.get()
        if session and (session.loaded or request.is_deferred) and (found := session.get("user")):
            return found
        return None

    @exposed
    def login(self, name):
        session = current.session.get()
        session.reset()  # what viur-core's authenticateUser does
        session["user"] = {"key": f"user-{name}", "name": name}
        return "ok"

    @exposed
    def me(self):
        found = self.getCurrentUser()
        return found["name"] if found else "guest"

    @exposed
    def logout(self):
        current.session.get().clear()  # what viur-core's logout does
        return "bye"

    @exposed
    def others(self):
        import session_core

        return str(session_core.logout_everywhere_else(current.session.get()))


class csrf(Module):  # noqa: N801
    html = True

    @exposed
    def create(self):
        return securitykey.create()

    @exposed
    def check(self, skey):
        return "valid" if securitykey.validate(skey) else "invalid"


modules = types.SimpleNamespace(counter=counter, user=user, csrf=csrf)
app = setup(modules)

for line in sys.stdin:
    command = json.loads(line)
    if command.get("defaults"):  # what an app left at viur-core's defaults gets, in place
        from session_core.cookies import set_cookie_header
        from session_core.viur import Session as Installed

        answer = {
            "persistent_fields_on_login": list(conf.user.session_persistent_fields_on_login),
            "life_time": conf.user.session_life_time.total_seconds(),
            "production_cookie": set_cookie_header(Installed._settings, "A" * 42),  # off the dev server
        }
    elif command.get("periodic"):
        answer = {
            "periodic": sorted(task.periodicTaskName for queue in tasks._periodicTasks.values() for task in queue)
        }
    else:
        headers = dict(command.get("headers") or {})
        if command.get("cookie"):
            headers["Cookie"] = command["cookie"]
        request = Request.blank(command["path"], base_url="https://localhost", headers=headers)
        response = request.get_response(app)
        answer = {"status": response.status_code, "headers": response.headerlist, "body": response.text}
    print("@@" + json.dumps(answer), flush=True)
