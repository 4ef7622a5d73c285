"""``python -m session_core COMMAND``: the command line (also installed as ``session-core``)."""

import sys

from session_core.cli import main

sys.exit(main())
