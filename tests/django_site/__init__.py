"""A small Django project for tests/test_django.py: settings, and views that use ``request.session``."""

from __future__ import annotations

import importlib

import django
from django.conf import settings as django_settings
from django.core.management import call_command


def configure() -> None:
    """Configure Django once per process from ``tests.django_site.settings`` and create its tables."""
    if django_settings.configured:
        return
    site = importlib.import_module("tests.django_site.settings")
    django_settings.configure(**{name: getattr(site, name) for name in dir(site) if name.isupper()})
    django.setup()
    call_command("migrate", verbosity=0)
