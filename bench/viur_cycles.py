"""Run by viur-core's own interpreter (see :mod:`bench.request`): viur-core's Session, N request cycles.

argv: cycles. Each cycle loads the session by its cookie, changes one value
and saves it, as a request does. Prints JSON ``{"cpu": s, "wall": s, "n": last}``.
Needs GOOGLE_APPLICATION_CREDENTIALS (any well-formed service-account file),
GOOGLE_CLOUD_PROJECT and DATASTORE_EMULATOR_HOST.
"""

import json
import sys
import time
import types

from viur.core import current
from viur.core import session as viur_session


def cycle(cookie):
    request = types.SimpleNamespace(
        request=types.SimpleNamespace(cookies={viur_session.Session.cookie_name: cookie} if cookie else {}),
        response=types.SimpleNamespace(headerlist=[], unset_cookie=lambda *args, **kwargs: None),
        isSSLConnection=True,
    )
    current.request.set(request)
    session = viur_session.Session()
    session.load()
    session["n"] = session.get("n", 0) + 1
    session.save()
    return session


cycles = int(sys.argv[1])
cookie = cycle(None).cookie_key  # the session the browser holds
for _ in range(10):  # warm-up
    cycle(cookie)
cpu, wall = time.process_time(), time.perf_counter()
for _ in range(cycles):
    last = cycle(cookie)
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
print(json.dumps({"cpu": cpu, "wall": wall, "n": last["n"]}))
