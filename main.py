"""Cloud Functions entry points. Each one parses its input, calls session_core, and answers.

The cleanup (``clear_sessions``), kill-by-user (``kill_user_sessions``) and
task (``session_task``) functions are added by their issues.
"""
