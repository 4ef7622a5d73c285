"""Repository tooling: the local stack (``make run``) and the emulators the tests and benchmarks share.

Not part of the installed package: it finds the repository's files (``main.py``,
``.venv-tasks``) from its own place in the repository.
"""
