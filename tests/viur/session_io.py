"""Run by viur-core's own interpreter: viur-core's Session reads, rewrites or writes sessions; typed JSON out.

argv[1] is the mode; stdin is JSON:

- ``read``: ``[cookie, ...]``; prints ``[data or null, ...]``, each session's data as viur-core's
  ``Session.load`` holds it (null: it did not load);
- ``rewrite``: ``[cookie, ...]``; loads each, sets ``"viur"`` to ``"was here"`` and saves (viur-core
  writes every value back as it read it); prints what it held before;
- ``write``: ``{name: value, ...}`` (typed JSON); a new session holding these, saved; prints its cookie.

Values travel as typed JSON (``typed_json.py``, which ``tests/test_viur_agreement.py`` uses
too); ``bench/viur_cycles.py`` imports :func:`session_for`. Needs GOOGLE_APPLICATION_CREDENTIALS
(any well-formed service-account file), GOOGLE_CLOUD_PROJECT and DATASTORE_EMULATOR_HOST.
"""

import json
import sys
import types

from typed_json import typed, untyped  # beside this script
from viur.core import current
from viur.core import session as viur_session


def session_for(cookie):
    """viur-core's Session, loaded by ``cookie`` (None: a new one) on a stand-in of viur-core's request."""
    request = types.SimpleNamespace(
        request=types.SimpleNamespace(cookies={viur_session.Session.cookie_name: cookie} if cookie else {}),
        response=types.SimpleNamespace(headerlist=[], unset_cookie=lambda *args, **kwargs: None),
        isSSLConnection=True,
    )
    current.request.set(request)
    session = viur_session.Session()
    session.load()
    return session


def main():
    mode, given = sys.argv[1], json.load(sys.stdin)
    if mode == "write":
        session = session_for(None)
        for name, value in given.items():
            session[name] = untyped(value)
        session.save()
        print(json.dumps(session.cookie_key))
    else:
        answers = []
        for cookie in given:
            session = session_for(cookie)
            loaded = session.cookie_key == cookie
            answers.append(typed(dict(session)) if loaded else None)
            if loaded and mode == "rewrite":
                session["viur"] = "was here"
                session.save()
        print(json.dumps(answers))


if __name__ == "__main__":
    main()
