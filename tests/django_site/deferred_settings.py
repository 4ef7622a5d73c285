"""The test project as a deployment would write it: ``SESSION_CORE_SETTINGS`` built on first use, from the environment.

Used by ``python -m django ... --settings=tests.django_site.deferred_settings``
(tests/test_django.py runs it without any Google Cloud variable).
"""

import os

from session_core import Settings
from tests.django_site.settings import (  # noqa: F401 - Django reads them from this module
    ALLOWED_HOSTS,
    DATABASES,
    DEBUG,
    DEFAULT_AUTO_FIELD,
    INSTALLED_APPS,
    MIDDLEWARE,
    PASSWORD_HASHERS,
    ROOT_URLCONF,
    SECRET_KEY,
    SESSION_ENGINE,
    USE_TZ,
)

SESSION_CORE_SETTINGS = lambda: Settings.from_env(os.environ)  # noqa: E731 - the README's one-liner
