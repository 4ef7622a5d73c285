"""Run by viur-core's own interpreter: does viur-core's Session.load accept each (cookie, now)?

Reads JSON ``[[cookie, now], ...]`` on stdin; prints JSON ``[alive, ...]``. The clock viur-core
reads (``time.time``) is set to each ``now`` in turn. Needs GOOGLE_APPLICATION_CREDENTIALS (any
well-formed service-account file: viur-core asks for one at import), GOOGLE_CLOUD_PROJECT and
DATASTORE_EMULATOR_HOST.
"""

import json
import sys
import types

from viur.core import current
from viur.core import session as viur_session

pairs = json.load(sys.stdin)
answers = []
for cookie, now in pairs:
    request = types.SimpleNamespace(
        request=types.SimpleNamespace(cookies={viur_session.Session.cookie_name: cookie}),
        response=types.SimpleNamespace(unset_cookie=lambda *args, **kwargs: None),
    )
    current.request.set(request)
    viur_session.time.time = lambda now=now: now
    session = viur_session.Session()
    session.load()
    # Loaded, it keeps the presented cookie; too old or unknown, it resets to a fresh random key.
    answers.append(session.cookie_key == cookie)
print(json.dumps(answers))
