"""Django settings of the test project. ``SESSION_CORE_SETTINGS`` and ``SESSION_CORE_CLIENT`` are set per test."""

SECRET_KEY = "tests-only-not-a-secret"  # Django's signing needs one; the sessions do not
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",  # for manage.py clearsessions (its table stays empty)
    "session_core.django.SessionCoreConfig",  # the engine's checks, for manage.py check --deploy
]
MIDDLEWARE = [
    "session_core.django.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
SESSION_ENGINE = "session_core.django"
ROOT_URLCONF = "tests.django_site.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast, for tests only
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
