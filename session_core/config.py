"""The one typed settings object.

``Settings(...)`` validates itself: a value out of range raises
:class:`~session_core.errors.ConfigError` naming the field.
``Settings.from_env(environ)`` reads environment variables (any mapping, so
tests pass a plain dict) and raises the same errors naming the variable.
Nothing else in the library reads the environment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any, Literal

from session_core.errors import ConfigError

SameSite = Literal["lax", "strict", "none"]
KeyStorage = Literal["hashed", "plain"]
TaskAuth = Literal["oidc", "none"]

DEFAULT_KIND = "viur-session"
LOCAL_PROJECT = "session-core-local"
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
TEN_YEARS = timedelta(days=3650)
MAX_CLEAR_CHAINS = 256  # a cleanup run's chains: SESSION_WRITE_SHARDS x SESSION_CLEAR_SHARDS at most
# RFC 6265 cookie-name token: visible ASCII without separators.
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# An RFC 6265 path-value starting with "/" (visible ASCII but ";"); a host name (a leading dot is allowed).
_COOKIE_PATH = re.compile(r"/[\x21-\x3a\x3c-\x7e]*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_COOKIE_DOMAIN = re.compile(rf"\.?{_LABEL}(?:\.{_LABEL})*")
_QUEUE = re.compile(r"projects/[^/]+/locations/[^/]+/queues/[A-Za-z0-9-]+")
# A Pub/Sub topic id (3-255 characters, starting with a letter, not "goog"), bare or as projects/P/topics/T.
_TOPIC_ID = r"(?!goog)[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}"
_TOPIC = re.compile(rf"(?:projects/[a-z][a-z0-9\-:.]*[a-z0-9]/topics/)?{_TOPIC_ID}")
# What publishing lifecycle events needs, and how to get it.
EVENTS_MODULE = "google.pubsub_v1"
EVENTS_EXTRA = "pip install 'session-core[events]'"
# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators: never part of a setting.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

# Every field and the environment variable it is read from.
VARIABLES: dict[str, str] = {
    "project": "GOOGLE_CLOUD_PROJECT",
    "emulator_host": "DATASTORE_EMULATOR_HOST",
    "database": "SESSION_DATABASE",
    "namespace": "SESSION_NAMESPACE",
    "kind": "SESSION_KIND",
    "life_time": "SESSION_LIFE_TIME",
    "absolute_life_time": "SESSION_ABSOLUTE_LIFE_TIME",
    "cookie_name": "SESSION_COOKIE_NAME",
    "cookie_path": "SESSION_COOKIE_PATH",
    "cookie_domain": "SESSION_COOKIE_DOMAIN",
    "same_site": "SESSION_SAME_SITE",
    "use_session_cookie": "SESSION_USE_SESSION_COOKIE",
    "persistent_fields_on_login": "SESSION_PERSISTENT_FIELDS_ON_LOGIN",
    "persistent_fields_on_logout": "SESSION_PERSISTENT_FIELDS_ON_LOGOUT",
    "cookie_secure": "SESSION_COOKIE_SECURE",
    "key_storage": "SESSION_KEY_STORAGE",
    "plain_keys": "SESSION_PLAIN_KEYS",
    "clear_grace": "SESSION_CLEAR_GRACE",
    "batch_size": "SESSION_BATCH_SIZE",
    "page_size": "SESSION_PAGE_SIZE",
    "time_budget": "SESSION_TIME_BUDGET",
    "lease_ttl": "SESSION_LEASE_TTL",
    "deletes_in_flight": "SESSION_DELETES_IN_FLIGHT",
    "shards": "SESSION_SHARDS",
    "tasks_queue": "SESSION_TASKS_QUEUE",
    "task_url": "SESSION_TASK_URL",
    "tasks_service_account": "SESSION_TASKS_SERVICE_ACCOUNT",
    "tasks_emulator_host": "CLOUD_TASKS_EMULATOR_HOST",
    "task_audience": "SESSION_TASK_AUDIENCE",
    "task_certs_url": "SESSION_TASK_CERTS_URL",
    "request_timeout": "SESSION_REQUEST_TIMEOUT",
    "task_auth": "SESSION_TASK_AUTH",
    "clear_shards": "SESSION_CLEAR_SHARDS",
    "write_shards": "SESSION_WRITE_SHARDS",
    "rampup": "SESSION_RAMPUP",
    "rampup_start": "SESSION_RAMPUP_START",
    "rampup_period": "SESSION_RAMPUP_PERIOD",
    "rampup_kill": "SESSION_RAMPUP_KILL",
    "events_topic": "SESSION_EVENTS_TOPIC",
    "pubsub_emulator_host": "PUBSUB_EMULATOR_HOST",
}
# What each setting means, by field: the settings reference (docs/reference/settings.md) is generated from this,
# with each variable from VARIABLES, its default from Settings and its accepted values from the bounds below.
# A new setting is a field of Settings, an entry in VARIABLES and one here (tests/test_config.py checks all three).
DESCRIPTIONS: dict[str, str] = {
    "project": "The Google Cloud project id. Required outside an emulator; with `DATASTORE_EMULATOR_HOST` it defaults "
    f"to `{LOCAL_PROJECT}`.",
    "emulator_host": "`host:port` of a Datastore emulator (such as `session-core emulator` prints) instead of the "
    "project's database.",
    "database": "The Firestore database id; unset: the default database.",
    "namespace": "The Datastore namespace; unset: the default namespace.",
    "kind": "The sessions' kind name.",
    "life_time": "Seconds a session lives without a request; also the reference every stored `lastseen` is encoded "
    "against, so the app and the functions must agree on it.",
    "absolute_life_time": "Seconds a session lives after its login (or creation), however busy: OWASP's absolute "
    "timeout. `off`, `0` or empty: none.",
    "cookie_name": "The cookie's name. A `__Host-` name (such as `__Host-sid`) needs Secure, `Path=/` and no Domain; "
    "a `__Secure-` name needs Secure: the settings refuse one without them.",
    "cookie_path": "The cookie's `Path`: a path starting with `/`.",
    "cookie_domain": "The cookie's `Domain` (`example.com` also sends it to its subdomains); unset: only the host "
    "that set it gets it back.",
    "same_site": "The cookie's `SameSite`: `lax`, `strict`, `none` (needs Secure), or empty for no attribute (then a "
    "cross-site form can post with the cookie: protect state-changing requests with a CSRF token).",
    "use_session_cookie": "`true`: no `Max-Age`, the cookie dies with the browser.",
    "persistent_fields_on_login": "Comma-separated session keys that survive a login.",
    "persistent_fields_on_logout": "Comma-separated session keys that survive a logout.",
    "cookie_secure": "Send the cookie with `Secure`. Turn it off (`false`) only for plain-HTTP local development.",
    "key_storage": "How sessions are named in Datastore: `hashed` (the cookie's SHA-256) or `plain` (ViUR's names).",
    "plain_keys": "Whether a load also looks a cookie up under its plain (ViUR) name. `off`: one entity read less "
    "per request; needs `hashed` key storage, once `session-core rehash` has moved every plain-named session.",
    "request_timeout": "Seconds a web request gives Datastore for a load, and for a save, retries included; past it "
    "the adapters answer 503 with `Retry-After`.",
    "clear_grace": "Seconds past a session's expiry before cleanup deletes it.",
    "batch_size": "Keys per delete commit.",
    "page_size": "Keys per query page (also capped so that a response stays under 2 MiB).",
    "time_budget": "Seconds one invocation or task step may run before it continues in a task.",
    "lease_ttl": "Seconds a cleanup run's lease lasts without renewal (it is renewed every page): a crashed run "
    "blocks the next one for at most this long.",
    "deletes_in_flight": "Delete commits running while the next page is fetched.",
    "shards": "Key-range shards for killing every guest or every session.",
    "clear_shards": "Parallel cleanup chains in each write shard, each over one slice of the expired sessions' "
    "`lastseen`; 1: one chain.",
    "write_shards": "Index ranges session writes spread over (`shard_lastseen`), past one range's 500 writes/s "
    "(about 150,000 active sessions); 1: ViUR's layout, indexed `lastseen`. Change it, then run the reshard.",
    "rampup": "`on`: cleanup and rehash follow Datastore's ramp-up rule for new load; `off`: no pacing (tests, the "
    "local stack, benchmarks).",
    "rampup_start": "Deletes a second a run may make in its first period, shared by its chains.",
    "rampup_period": "Seconds after which the allowed delete rate grows by half.",
    "rampup_kill": "`on`: kills are paced too (off by default: an incident wants speed).",
    "tasks_queue": "The Cloud Tasks queue, `projects/P/locations/L/queues/Q`; unset: continuations run inline.",
    "task_url": "The URL of the `session_task` function (required with a queue).",
    "tasks_service_account": "The service account whose OIDC token Cloud Tasks attaches (and `session_task` accepts).",
    "tasks_emulator_host": "`host:port` of a Cloud Tasks emulator (insecure gRPC).",
    "task_audience": "The audience `session_task` checks tokens for (`deploy.sh` sets it to the function's URL).",
    "task_certs_url": "Where token-signing certificates are fetched.",
    "task_auth": "`oidc`: `session_task` runs a step only with a Google-signed OIDC token for the task audience from "
    "the tasks service account; `none`: no check, accepted only with an emulator (`deploy.sh` refuses it).",
    "events_topic": "The Pub/Sub topic for lifecycle events: a topic id (in the project) or `projects/P/topics/T`; "
    "unset: none are published and google-cloud-pubsub is never imported.",
    "pubsub_emulator_host": "`host:port` of a Pub/Sub emulator (insecure gRPC).",
}
# Defaults that are not one constant, as the reference shows them.
_DEFAULTS_SHOWN: dict[str, str] = {
    "project": f"required (`{LOCAL_PROJECT}` with an emulator)",
    "cookie_name": "the project's: `viur_cookie_<project>`",
}
# Inclusive bounds: whole numbers, and durations in seconds.
_NUMBERS: dict[str, tuple[int, int]] = {
    "batch_size": (1, 500),
    "page_size": (1, 20000),
    "deletes_in_flight": (1, 32),
    "shards": (1, 1024),
    "clear_shards": (1, 256),
    "write_shards": (1, 256),
    "rampup_start": (1, 1_000_000),
}
_DURATIONS: dict[str, tuple[int, int]] = {
    "life_time": (60, int(TEN_YEARS.total_seconds())),
    "clear_grace": (0, 86400),
    "time_budget": (0, 1500),
    "lease_ttl": (1, 3600),
    "request_timeout": (1, 60),
    "rampup_period": (1, 86400),
}
# Durations that may be off (None): "off", "0" or empty in the environment.
_OPTIONAL_DURATIONS: dict[str, tuple[int, int]] = {
    "absolute_life_time": (60, int(TEN_YEARS.total_seconds())),
}
_CHOICES: dict[str, tuple[str | None, ...]] = {
    "same_site": ("lax", "strict", "none", None),
    "key_storage": ("hashed", "plain"),
    "task_auth": ("oidc", "none"),
}


@dataclass(frozen=True)
class Settings:
    """Everything the library and the functions can be configured with.

    Durations are :class:`~datetime.timedelta`. Build it with :meth:`from_env`
    in entry points, or directly (every field has a default) in code and tests;
    both validate the same way.
    """

    project: str = LOCAL_PROJECT
    emulator_host: str | None = None
    database: str | None = None
    namespace: str | None = None
    kind: str = DEFAULT_KIND
    life_time: timedelta = timedelta(hours=1)
    # OWASP's absolute timeout: a session ends this long after its login (or creation), however busy. None: off.
    absolute_life_time: timedelta | None = None
    cookie_name: str = f"viur_cookie_{LOCAL_PROJECT}"
    cookie_path: str = "/"
    cookie_domain: str | None = None
    same_site: SameSite | None = "lax"
    use_session_cookie: bool = True
    persistent_fields_on_login: tuple[str, ...] = ("language",)
    persistent_fields_on_logout: tuple[str, ...] = ("language",)
    cookie_secure: bool = True
    key_storage: KeyStorage = "hashed"
    # Whether a load also looks a cookie up under its plain (ViUR) name. Off only with hashed storage, once
    # ``rehash`` has renamed every plain entity: each lookup then carries one key less.
    plain_keys: bool = True
    # A web request's Datastore deadline for a load, and for a save, retries included.
    request_timeout: timedelta = timedelta(seconds=5)
    # Maintenance (cleanup and kill-by-user).
    clear_grace: timedelta = timedelta(seconds=300)
    batch_size: int = 500
    page_size: int = 10000
    time_budget: timedelta = timedelta(seconds=300)
    lease_ttl: timedelta = timedelta(seconds=60)
    deletes_in_flight: int = 4
    shards: int = 16
    clear_shards: int = 1
    # Index ranges the session writes spread over (1: ViUR's indexed ``lastseen``; N > 1: see store.py).
    write_shards: int = 1
    # Datastore's ramp-up rule: at most start * 1.5 ** floor(t / period) deletes a second, t seconds into a run.
    rampup: bool = True
    rampup_start: int = 500
    rampup_period: timedelta = timedelta(seconds=300)
    rampup_kill: bool = False
    # Cloud Tasks continuation.
    tasks_queue: str | None = None
    task_url: str | None = None
    tasks_service_account: str | None = None
    tasks_emulator_host: str | None = None
    task_audience: str | None = None
    task_certs_url: str = GOOGLE_CERTS_URL
    task_auth: TaskAuth = "oidc"
    # Lifecycle events (off while unset): the Pub/Sub topic, a bare id or projects/P/topics/T.
    events_topic: str | None = None
    pubsub_emulator_host: str | None = None

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from one JSON file: a flat object of strings, keyed by the variables of :meth:`from_env`.

        The same file is what ``deploy/deploy.sh --settings FILE`` hands the
        functions (``--env-vars-file``), so the app and the functions agree.
        ``environ`` (such as ``os.environ``) supplies what the file does not
        name, for example ``DATASTORE_EMULATOR_HOST`` in development. A file
        that is not such an object, or that names a variable this library does
        not read, raises ConfigError naming the file.
        """
        where = os.fspath(path)
        try:
            with open(where, encoding="utf-8") as handle:
                loaded = json.load(handle)
        except OSError as exc:
            raise ConfigError(where, "a readable settings file", exc.strerror) from None
        except ValueError as exc:
            raise ConfigError(where, "a JSON object of strings", f"invalid JSON: {exc}") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
            raise ConfigError(where, "a flat JSON object whose values are all strings", type(loaded).__name__)
        unknown = sorted(set(loaded) - set(VARIABLES.values()))
        if unknown:
            raise ConfigError(where, "only the variables of docs/reference/settings.md", ", ".join(unknown))
        return cls.from_env({**(environ or {}), **loaded})

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from environment variables; a bad one raises ConfigError naming it."""
        for variable in VARIABLES.values():
            if _CONTROL.search(environ.get(variable, "")):
                raise ConfigError(
                    variable, "a value without control characters (no newline, tab or escape)", environ[variable]
                )
        emulator = _text(environ, "DATASTORE_EMULATOR_HOST")
        project = _text(environ, "GOOGLE_CLOUD_PROJECT")
        if project is None:
            if emulator is None:
                raise ConfigError(
                    "GOOGLE_CLOUD_PROJECT",
                    "the Google Cloud project id (optional only with DATASTORE_EMULATOR_HOST)",
                )
            project = LOCAL_PROJECT
        values: dict[str, Any] = {"project": project, "emulator_host": emulator}
        for field in fields(cls):
            variable = VARIABLES[field.name]
            if field.name in values or variable not in environ:
                continue
            values[field.name] = _parse(field.name, variable, environ)
        values.setdefault("cookie_name", f"viur_cookie_{project}")
        try:
            return cls(**values)
        except ConfigError as exc:
            variable = VARIABLES.get(exc.setting, exc.setting)
            raise ConfigError(variable, exc.expected, environ.get(variable)) from None


def _text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    return value.strip() or None


def _parse(field: str, variable: str, env: Mapping[str, str]) -> Any:
    """The typed value of one variable that is present in ``env`` (ranges are checked by the type)."""
    raw = env[variable]
    text = raw.strip()
    if field in _OPTIONAL_DURATIONS:
        if text.lower() in ("", *_FALSE):
            return None
        low, high = _OPTIONAL_DURATIONS[field]
        try:
            return timedelta(seconds=int(text))
        except ValueError:
            raise ConfigError(variable, f"a whole number from {low} to {high}, or off", raw) from None
    if field in _NUMBERS or field in _DURATIONS:
        low, high = _NUMBERS.get(field) or _DURATIONS[field]
        try:
            number = int(text)
        except ValueError:
            raise ConfigError(variable, f"a whole number from {low} to {high}", raw) from None
        return timedelta(seconds=number) if field in _DURATIONS else number
    if field in ("use_session_cookie", "cookie_secure", "rampup", "rampup_kill", "plain_keys"):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(variable, "a boolean (true/false, 1/0, yes/no, on/off)", raw)
    if field in ("persistent_fields_on_login", "persistent_fields_on_logout"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if field in _CHOICES:
        return text.lower() or None
    return text or None


def _validate(settings: Settings) -> None:
    """Raise ConfigError, naming the field, for the first value out of its range."""
    for name, (low, high) in _NUMBERS.items():
        value = getattr(settings, name)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ConfigError(name, f"a whole number from {low} to {high}", str(value))
    for name, (low, high) in _DURATIONS.items():
        value = getattr(settings, name)
        if not isinstance(value, timedelta) or not low <= value.total_seconds() <= high:
            shown = f"{value.total_seconds():g} s" if isinstance(value, timedelta) else str(value)
            raise ConfigError(name, f"a duration from {low} to {high} seconds", shown)
    for name, (low, high) in _OPTIONAL_DURATIONS.items():
        value = getattr(settings, name)
        if value is not None and (not isinstance(value, timedelta) or not low <= value.total_seconds() <= high):
            shown = f"{value.total_seconds():g} s" if isinstance(value, timedelta) else str(value)
            raise ConfigError(name, f"a duration from {low} to {high} seconds, or None (off)", shown)
    for name, choices in _CHOICES.items():
        if getattr(settings, name) not in choices:
            shown = " or ".join("empty" if c is None else repr(c) for c in choices)
            raise ConfigError(name, f"one of {shown}", str(getattr(settings, name)))
    if settings.write_shards * settings.clear_shards > MAX_CLEAR_CHAINS:
        raise ConfigError(
            "clear_shards",
            f"at most {MAX_CLEAR_CHAINS // settings.write_shards} with {settings.write_shards} write shards "
            f"(a cleanup runs write shards x clear shards chains, at most {MAX_CLEAR_CHAINS})",
            str(settings.clear_shards),
        )
    if not settings.plain_keys and settings.key_storage != "hashed":
        raise ConfigError(
            "plain_keys", "on with plain key storage (sessions are stored under their plain names)", "off"
        )
    if not settings.project:
        raise ConfigError("project", "a Google Cloud project id", str(settings.project))
    if not settings.kind:
        raise ConfigError("kind", "a kind name", str(settings.kind))
    if not isinstance(settings.cookie_name, str) or not _COOKIE_NAME.fullmatch(settings.cookie_name):
        raise ConfigError("cookie_name", "a cookie-name token", str(settings.cookie_name))
    if not isinstance(settings.cookie_path, str) or not _COOKIE_PATH.fullmatch(settings.cookie_path):
        raise ConfigError(
            "cookie_path", "a URL path starting with '/' (no ';', spaces or controls)", str(settings.cookie_path)
        )
    domain = settings.cookie_domain
    if domain is not None and not (isinstance(domain, str) and len(domain) <= 254 and _COOKIE_DOMAIN.fullmatch(domain)):
        raise ConfigError("cookie_domain", "a host name such as example.com or .example.com, or unset", str(domain))
    lowered = settings.cookie_name.lower()  # browsers match the prefixes case-insensitively
    if lowered.startswith(("__host-", "__secure-")) and not settings.cookie_secure:
        name = settings.cookie_name
        raise ConfigError("cookie_secure", f"true for a cookie named {name} (browsers drop it)", "false")
    if lowered.startswith("__host-") and (settings.cookie_path != "/" or domain is not None):
        raise ConfigError(
            "cookie_path",
            f"'/' and no cookie_domain for a cookie named {settings.cookie_name} (browsers drop it otherwise)",
            f"{settings.cookie_path} with domain {domain}",
        )
    if settings.same_site == "none" and not settings.cookie_secure:
        raise ConfigError(
            "same_site",
            "'lax', 'strict' or empty when the cookie is not Secure "
            "(browsers drop SameSite=None cookies without Secure)",
            "none",
        )
    if settings.tasks_queue is not None:
        if not _QUEUE.fullmatch(settings.tasks_queue):
            raise ConfigError("tasks_queue", "projects/P/locations/L/queues/Q", settings.tasks_queue)
        if settings.task_url is None:
            raise ConfigError("task_url", "the URL of the session_task function when a queue is set")
    if settings.events_topic is not None and not _TOPIC.fullmatch(settings.events_topic):
        raise ConfigError(
            "events_topic",
            "a Pub/Sub topic id (3-255 letters, digits and -_.~+%, starting with a letter) or projects/P/topics/T",
            settings.events_topic,
        )
    if settings.events_topic is not None and not events_installed():
        raise ConfigError(
            "events_topic",
            f"unset, or google-cloud-pubsub installed to publish to the topic: {EVENTS_EXTRA}",
            settings.events_topic,
        )
    if settings.task_auth == "none" and settings.emulator_host is None:
        raise ConfigError(
            "task_auth", "'oidc' (the default): 'none' opens session_task and is only for an emulator", "none"
        )
    if settings.task_audience is not None and settings.tasks_service_account is None:
        raise ConfigError(
            "tasks_service_account",
            "the email whose tokens session_task accepts (a task audience is set)",
        )


def events_installed() -> bool:
    """Whether google-cloud-pubsub (the ``events`` extra) can be imported: found without importing it."""
    try:
        return importlib.util.find_spec(EVENTS_MODULE) is not None
    except (ImportError, ValueError):  # a parent package that cannot be imported, or one hidden in sys.modules
        return False


@dataclass(frozen=True)
class SettingDoc:
    """One row of the settings reference: a setting as the environment (and a settings file) names it."""

    variable: str
    field: str
    default: str  # as the reference shows it
    accepts: str  # the values the settings accept, from the bounds the type checks
    description: str


def _shown(value: object) -> str:
    """A default as one would write it in the environment."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, timedelta):
        return f"`{value.total_seconds():.0f}`"
    if isinstance(value, tuple):
        return f"`{','.join(value)}`" if value else "empty"
    return f"`{value}`"


def _accepts(name: str, default: object) -> str:
    if name in _NUMBERS:
        low, high = _NUMBERS[name]
        return f"a whole number from {low:,} to {high:,}"
    if name in _DURATIONS or name in _OPTIONAL_DURATIONS:
        low, high = _DURATIONS.get(name) or _OPTIONAL_DURATIONS[name]
        return f"seconds, from {low:,} to {high:,}" + (", or `off`" if name in _OPTIONAL_DURATIONS else "")
    if name in _CHOICES:
        return ", ".join("empty" if c is None else f"`{c}`" for c in _CHOICES[name])
    if isinstance(default, bool):
        return "a boolean: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`"
    if isinstance(default, tuple):
        return "comma-separated names"
    return "text"


def reference() -> list[SettingDoc]:
    """Every setting, in the order of :class:`Settings`: what the settings reference page lists.

    Built from :data:`VARIABLES`, :data:`DESCRIPTIONS`, the defaults of
    :class:`Settings` and the bounds its validation checks, so the page
    cannot say other than the code.
    """
    defaults = Settings()
    return [
        SettingDoc(
            variable=VARIABLES[f.name],
            field=f.name,
            default=_DEFAULTS_SHOWN.get(f.name) or _shown(getattr(defaults, f.name)),
            accepts=_accepts(f.name, getattr(defaults, f.name)),
            description=DESCRIPTIONS[f.name],
        )
        for f in fields(Settings)
    ]
