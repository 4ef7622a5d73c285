"""Maintenance: what keeps the store healthy. Web apps never import this package.

- :mod:`.sweep`: the one pager and deleter that cleanup and kill share;
- :mod:`.cleanup`: expired sessions, with a lease (what Cloud Scheduler starts);
- :mod:`.kill`: kill-by-user, a user's devices, logout everywhere else;
- :mod:`.shards`: key ranges for parallel chains;
- :mod:`.steps` and :mod:`.messages`: the task payloads and kill messages, parsed strictly;
- :mod:`.dispatch`: Cloud Tasks; :mod:`.auth`: who may call ``session_task``.
"""
