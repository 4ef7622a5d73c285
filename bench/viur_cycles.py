"""Run by viur-core's own interpreter (see :mod:`bench.request`): viur-core's Session, N request cycles.

argv: cycles. Each cycle loads the session by its cookie, on the stand-in
request of ``tests/viur/session_io.py``, changes one value and saves it, as a
request does. Prints JSON ``{"cpu": s, "wall": s, "n": last}``. Needs
GOOGLE_APPLICATION_CREDENTIALS (any well-formed service-account file),
GOOGLE_CLOUD_PROJECT and DATASTORE_EMULATOR_HOST.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "viur"))
from session_io import session_for  # viur-core's Session on the stand-in request the agreement tests use


def cycle(cookie):
    session = session_for(cookie)
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
