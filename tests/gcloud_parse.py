"""Run by gcloud's own Python (``gcloud info``'s ``python_location``): gcloud's parser on many commands, one process.

gcloud is a Python program: ``lib/gcloud.py`` puts ``lib`` and ``lib/third_party`` on the path and runs
``googlecloudsdk.gcloud_main``'s CLI. This does the same once, then hands each command of its input (one JSON
list of words per line, ``gcloud`` first) to that CLI's ``Execute``, exactly what ``gcloud WORDS`` runs, and
writes one JSON line per command: the end of what gcloud wrote to stderr, and whether it stopped only for the
missing account (what a valid command does with an empty ``CLOUDSDK_CONFIG``). One process instead of one per
command: gcloud loads its command tree once (about 1 s of CPU each time otherwise).
"""

import contextlib
import io
import json
import os
import sys

SDK_ROOT = sys.argv[1]
sys.path[:0] = [os.path.join(SDK_ROOT, "lib", "third_party"), os.path.join(SDK_ROOT, "lib")]

from googlecloudsdk import gcloud_main  # noqa: E402
from googlecloudsdk.core import log  # noqa: E402

NO_ACCOUNT = "You do not currently have an active account selected"
cli = gcloud_main.CreateCLI([])
for line in sys.stdin:
    words = json.loads(line)
    assert words[0] == "gcloud", words
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        log.Reset()
        try:
            cli.Execute(words[1:])
        except SystemExit:
            pass  # what gcloud exits with after writing its error
        except Exception as exc:  # reported, as gcloud would print it
            print(f"{type(exc).__name__}: {exc}", file=said)
    text = said.getvalue()
    print(json.dumps({"valid": NO_ACCOUNT in text, "stderr": text[-600:]}), flush=True)
