"""``python -m bench``: the expired-session cleanup benchmark (see :mod:`bench.clear`)."""

from bench.clear import main

raise SystemExit(main())
