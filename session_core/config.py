"""The one typed settings object, built from a mapping such as ``os.environ``.

``Settings.from_env(environ)`` validates every variable at start-up and raises
:class:`~session_core.errors.ConfigError` naming the variable and what it
expects. Nothing else in the library reads the environment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, cast

from session_core.errors import ConfigError

SameSite = Literal["lax", "strict", "none"]
KeyStorage = Literal["hashed", "plain"]

DEFAULT_KIND = "viur-session"
LOCAL_PROJECT = "session-core-local"
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
# RFC 6265 cookie-name token: visible ASCII without separators.
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QUEUE = re.compile(r"projects/[^/]+/locations/[^/]+/queues/[A-Za-z0-9-]+")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _text(env, name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigError(name, "a boolean (true/false, 1/0, yes/no, on/off)", raw)


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = _text(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"a whole number from {low} to {high}", raw) from None
    if not low <= value <= high:
        raise ConfigError(name, f"a whole number from {low} to {high}", raw)
    return value


def _seconds(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> timedelta:
    return timedelta(seconds=_int(env, name, default, low, high))


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value not in choices:
        shown = " or ".join(repr(c) for c in choices)
        raise ConfigError(name, f"one of {shown}", raw)
    return value


def _fields(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None:
        return default
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Everything the library and the functions can be configured with.

    Durations are :class:`~datetime.timedelta`. Build it with :meth:`from_env`
    in entry points, or directly (all fields have defaults) in tests.
    """

    project: str = LOCAL_PROJECT
    emulator_host: str | None = None
    database: str | None = None
    namespace: str | None = None
    kind: str = DEFAULT_KIND
    life_time: timedelta = timedelta(hours=1)
    cookie_name: str = f"viur_cookie_{LOCAL_PROJECT}"
    same_site: SameSite | None = "lax"
    use_session_cookie: bool = True
    persistent_fields_on_login: tuple[str, ...] = ("language",)
    persistent_fields_on_logout: tuple[str, ...] = ("language",)
    cookie_secure: bool = True
    key_storage: KeyStorage = "hashed"
    # Maintenance (cleanup and kill-by-user).
    clear_grace: timedelta = timedelta(seconds=300)
    batch_size: int = 500
    page_size: int = 10000
    time_budget: timedelta = timedelta(seconds=300)
    lease_ttl: timedelta = timedelta(seconds=60)
    deletes_in_flight: int = 4
    shards: int = 16
    # Cloud Tasks continuation.
    tasks_queue: str | None = None
    task_url: str | None = None
    tasks_service_account: str | None = None
    tasks_emulator_host: str | None = None
    task_audience: str | None = None
    task_certs_url: str = GOOGLE_CERTS_URL

    def __post_init__(self) -> None:
        if self.same_site == "none" and not self.cookie_secure:
            raise ConfigError(
                "SESSION_SAME_SITE",
                "'lax', 'strict' or empty when SESSION_COOKIE_SECURE is off "
                "(browsers drop SameSite=None cookies without Secure)",
                "none",
            )
        if not _COOKIE_NAME.fullmatch(self.cookie_name):
            raise ConfigError("SESSION_COOKIE_NAME", "a cookie-name token", self.cookie_name)
        if not 1 <= self.batch_size <= 500:
            raise ConfigError("SESSION_BATCH_SIZE", "a whole number from 1 to 500", str(self.batch_size))
        if self.tasks_queue is not None:
            if not _QUEUE.fullmatch(self.tasks_queue):
                raise ConfigError("SESSION_TASKS_QUEUE", "projects/P/locations/L/queues/Q", self.tasks_queue)
            if self.task_url is None:
                raise ConfigError("SESSION_TASK_URL", "the URL of the session_task function when a queue is set")
        if self.task_audience is not None and self.tasks_service_account is None:
            raise ConfigError(
                "SESSION_TASKS_SERVICE_ACCOUNT",
                "the email whose tokens session_task accepts (SESSION_TASK_AUDIENCE is set)",
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from environment variables; raise ConfigError on bad ones."""
        emulator = _text(environ, "DATASTORE_EMULATOR_HOST")
        project = _text(environ, "GOOGLE_CLOUD_PROJECT")
        if project is None:
            if emulator is None:
                raise ConfigError(
                    "GOOGLE_CLOUD_PROJECT",
                    "the Google Cloud project id (optional only with DATASTORE_EMULATOR_HOST)",
                )
            project = LOCAL_PROJECT
        same_site = _choice(environ, "SESSION_SAME_SITE", "lax", ("lax", "strict", "none", ""))
        return cls(
            project=project,
            emulator_host=emulator,
            database=_text(environ, "SESSION_DATABASE"),
            namespace=_text(environ, "SESSION_NAMESPACE"),
            kind=_text(environ, "SESSION_KIND") or DEFAULT_KIND,
            life_time=_seconds(environ, "SESSION_LIFE_TIME", 3600, 60, 10 * 365 * 86400),
            cookie_name=_text(environ, "SESSION_COOKIE_NAME") or f"viur_cookie_{project}",
            same_site=cast(SameSite, same_site) if same_site else None,
            use_session_cookie=_bool(environ, "SESSION_USE_SESSION_COOKIE", True),
            persistent_fields_on_login=_fields(environ, "SESSION_PERSISTENT_FIELDS_ON_LOGIN", ("language",)),
            persistent_fields_on_logout=_fields(environ, "SESSION_PERSISTENT_FIELDS_ON_LOGOUT", ("language",)),
            cookie_secure=_bool(environ, "SESSION_COOKIE_SECURE", True),
            key_storage=cast(KeyStorage, _choice(environ, "SESSION_KEY_STORAGE", "hashed", ("hashed", "plain"))),
            clear_grace=_seconds(environ, "SESSION_CLEAR_GRACE", 300, 0, 86400),
            batch_size=_int(environ, "SESSION_BATCH_SIZE", 500, 1, 500),
            page_size=_int(environ, "SESSION_PAGE_SIZE", 10000, 1, 20000),
            time_budget=_seconds(environ, "SESSION_TIME_BUDGET", 300, 0, 1500),
            lease_ttl=_seconds(environ, "SESSION_LEASE_TTL", 60, 1, 3600),
            deletes_in_flight=_int(environ, "SESSION_DELETES_IN_FLIGHT", 4, 1, 32),
            shards=_int(environ, "SESSION_SHARDS", 16, 1, 1024),
            tasks_queue=_text(environ, "SESSION_TASKS_QUEUE"),
            task_url=_text(environ, "SESSION_TASK_URL"),
            tasks_service_account=_text(environ, "SESSION_TASKS_SERVICE_ACCOUNT"),
            tasks_emulator_host=_text(environ, "CLOUD_TASKS_EMULATOR_HOST"),
            task_audience=_text(environ, "SESSION_TASK_AUDIENCE"),
            task_certs_url=_text(environ, "SESSION_TASK_CERTS_URL") or GOOGLE_CERTS_URL,
        )
