"""Settings.from_env: defaults, types, and errors that name the variable."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from session_core import ConfigError, Settings, config

EMULATOR = {"DATASTORE_EMULATOR_HOST": "127.0.0.1:1"}


def test_defaults() -> None:
    settings = Settings.from_env({"GOOGLE_CLOUD_PROJECT": "shop"})
    assert settings.project == "shop" and settings.emulator_host is None
    assert settings.database is None and settings.namespace is None
    assert settings.kind == "viur-session"
    assert settings.life_time == timedelta(hours=1)
    assert settings.cookie_name == "viur_cookie_shop"
    assert settings.same_site == "lax" and settings.use_session_cookie is True
    assert settings.persistent_fields_on_login == ("language",)
    assert settings.persistent_fields_on_logout == ("language",)
    assert settings.cookie_secure is True and settings.key_storage == "hashed"


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            **EMULATOR,
            "GOOGLE_CLOUD_PROJECT": "p",
            "SESSION_DATABASE": "sessions",
            "SESSION_NAMESPACE": "ns",
            "SESSION_KIND": "k",
            "SESSION_LIFE_TIME": "600",
            "SESSION_COOKIE_NAME": "sid",
            "SESSION_SAME_SITE": "",
            "SESSION_USE_SESSION_COOKIE": "false",
            "SESSION_PERSISTENT_FIELDS_ON_LOGIN": "language, theme",
            "SESSION_PERSISTENT_FIELDS_ON_LOGOUT": "",
            "SESSION_COOKIE_SECURE": "off",
            "SESSION_KEY_STORAGE": "plain",
        }
    )
    assert settings.emulator_host == "127.0.0.1:1"
    assert (settings.database, settings.namespace, settings.kind) == ("sessions", "ns", "k")
    assert settings.life_time == timedelta(minutes=10)
    assert settings.cookie_name == "sid" and settings.same_site is None
    assert settings.use_session_cookie is False and settings.cookie_secure is False
    assert settings.persistent_fields_on_login == ("language", "theme")
    assert settings.persistent_fields_on_logout == ()
    assert settings.key_storage == "plain"


def test_project_is_optional_only_with_the_emulator() -> None:
    with pytest.raises(ConfigError, match="GOOGLE_CLOUD_PROJECT"):
        Settings.from_env({})
    assert Settings.from_env(EMULATOR).project == "session-core-local"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SESSION_LIFE_TIME", "an hour"),
        ("SESSION_LIFE_TIME", "-5"),
        ("SESSION_SAME_SITE", "sometimes"),
        ("SESSION_USE_SESSION_COOKIE", "maybe"),
        ("SESSION_COOKIE_SECURE", "2"),
        ("SESSION_KEY_STORAGE", "encrypted"),
        ("SESSION_COOKIE_NAME", "bad name;"),
        ("SESSION_BATCH_SIZE", "501"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**EMULATOR, variable: value})
    assert raised.value.variable == variable
    assert variable in str(raised.value) and repr(value) in str(raised.value)


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.kind = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "variable", "value", "raw"),
    [
        ("life_time", "SESSION_LIFE_TIME", timedelta(seconds=59), "59"),
        ("life_time", "SESSION_LIFE_TIME", timedelta(days=3651), str(3651 * 86400)),
        ("clear_grace", "SESSION_CLEAR_GRACE", timedelta(seconds=-1), "-1"),
        ("batch_size", "SESSION_BATCH_SIZE", 501, "501"),
        ("batch_size", "SESSION_BATCH_SIZE", 0, "0"),
        ("page_size", "SESSION_PAGE_SIZE", 20001, "20001"),
        ("time_budget", "SESSION_TIME_BUDGET", timedelta(seconds=1501), "1501"),
        ("lease_ttl", "SESSION_LEASE_TTL", timedelta(0), "0"),
        ("deletes_in_flight", "SESSION_DELETES_IN_FLIGHT", 33, "33"),
        ("shards", "SESSION_SHARDS", 0, "0"),
        ("key_storage", "SESSION_KEY_STORAGE", "encrypted", "encrypted"),
        ("same_site", "SESSION_SAME_SITE", "sometimes", "sometimes"),
        ("cookie_name", "SESSION_COOKIE_NAME", "bad name;", "bad name;"),
        ("tasks_queue", "SESSION_TASKS_QUEUE", "my-queue", "my-queue"),
    ],
)
def test_settings_built_in_code_reject_what_from_env_rejects_naming_the_field(
    field: str, variable: str, value: object, raw: str
) -> None:
    with pytest.raises(ConfigError) as in_code:
        Settings(**{field: value, "task_url": "https://t"})  # type: ignore[arg-type]
    assert in_code.value.setting == field and str(in_code.value).startswith(f"{field}: ")
    with pytest.raises(ConfigError) as from_env:
        Settings.from_env({**EMULATOR, variable: raw, "SESSION_TASK_URL": "https://t"})
    assert from_env.value.setting == variable and repr(raw) in str(from_env.value)


def test_a_bool_is_not_a_number_and_a_number_is_not_a_duration() -> None:
    with pytest.raises(ConfigError, match=r"^batch_size: "):
        Settings(batch_size=True)
    with pytest.raises(ConfigError, match=r"^life_time: "):
        Settings(life_time=3600)  # type: ignore[arg-type]


def test_from_file_reads_the_one_settings_file_the_functions_get(tmp_path: Path) -> None:
    path = tmp_path / "session-settings.json"
    path.write_text('{"GOOGLE_CLOUD_PROJECT": "shop", "SESSION_PERSISTENT_FIELDS_ON_LOGIN": "language,cart"}')
    settings = Settings.from_file(path, {"SESSION_KIND": "from-env", "GOOGLE_CLOUD_PROJECT": "ignored"})
    assert settings.project == "shop" and settings.kind == "from-env"
    assert settings.persistent_fields_on_login == ("language", "cart")  # a comma is just a character here


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[]", "a flat JSON object"),
        ('{"SESSION_BATCH_SIZE": 500}', "a flat JSON object"),
        ('{"SESSION_TYPO": "1"}', "SESSION_TYPO"),
        ("{", "invalid JSON"),
    ],
)
def test_a_bad_settings_file_is_named(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "settings.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=expected) as raised:
        Settings.from_file(path, EMULATOR)
    assert raised.value.setting == str(path)


def test_a_bad_value_in_the_file_names_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text('{"SESSION_LIFE_TIME": "59"}')
    with pytest.raises(ConfigError) as raised:
        Settings.from_file(path, EMULATOR)
    assert raised.value.setting == "SESSION_LIFE_TIME"


def test_the_cookie_path_and_domain_are_read_and_checked() -> None:
    assert (Settings().cookie_path, Settings().cookie_domain) == ("/", None)
    settings = Settings.from_env({**EMULATOR, "SESSION_COOKIE_PATH": "/shop", "SESSION_COOKIE_DOMAIN": ".example.com"})
    assert (settings.cookie_path, settings.cookie_domain) == ("/shop", ".example.com")
    assert Settings.from_env({**EMULATOR, "SESSION_COOKIE_DOMAIN": ""}).cookie_domain is None
    for path in ("shop", "", "/a;b", "/a b", "/a\nb"):
        with pytest.raises(ConfigError) as raised:
            Settings.from_env({**EMULATOR, "SESSION_COOKIE_PATH": path})
        assert raised.value.setting == "SESSION_COOKIE_PATH"
    for domain in ("exa mple.com", "example.com;", "-bad.example", "a..b", "x" * 64 + ".com", "example.com."):
        with pytest.raises(ConfigError) as raised:
            Settings.from_env({**EMULATOR, "SESSION_COOKIE_DOMAIN": domain})
        assert raised.value.setting == "SESSION_COOKIE_DOMAIN"
    with pytest.raises(ConfigError, match=r"^cookie_path: "):
        Settings(cookie_path="shop")
    with pytest.raises(ConfigError, match=r"^cookie_domain: "):
        Settings(cookie_domain="example.com; Secure")


# -- SESSION_EVENTS_TOPIC needs the events extra -----------------------------------------------------

TOPIC_ENV = {**EMULATOR, "SESSION_EVENTS_TOPIC": "session-events"}
EXTRA = "pip install 'session-core[events]'"


@pytest.fixture
def without_the_events_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """google-cloud-pubsub cannot be imported, as in a ``[flask]`` install."""
    monkeypatch.setitem(sys.modules, "google.pubsub_v1", None)


@pytest.mark.usefixtures("without_the_events_extra")
def test_a_topic_without_the_events_extra_is_a_config_error_naming_the_extra(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as from_env:
        Settings.from_env(TOPIC_ENV)
    assert from_env.value.setting == "SESSION_EVENTS_TOPIC" and EXTRA in str(from_env.value)
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps({"SESSION_EVENTS_TOPIC": "session-events"}))
    with pytest.raises(ConfigError, match=re.escape(EXTRA)):
        Settings.from_file(settings_file, EMULATOR)
    with pytest.raises(ConfigError, match=re.escape(EXTRA)) as in_code:
        Settings(events_topic="session-events")
    assert in_code.value.setting == "events_topic"
    assert Settings.from_env(EMULATOR).events_topic is None  # without a topic nothing needs the extra


@pytest.mark.usefixtures("without_the_events_extra")
@pytest.mark.parametrize(
    ("section", "block"),
    [
        ("how-to/flask.md", 0),
        ("how-to/wsgi.md", 0),
        ("how-to/starlette.md", 0),
        ("how-to/starlette.md", 1),
        # appended to the settings.py of a django-admin startproject, which runs as a process of its own
        pytest.param("how-to/django.md", 0, marks=pytest.mark.stack),
    ],
    ids=["flask", "wsgi", "starlette", "fastapi", "django-settings"],
)
def test_each_adapters_start_up_in_the_readme_refuses_a_topic_without_the_extra(
    section: str, block: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The README's start-up code of each adapter stops at its first line of settings, before serving anything.

    Django's settings.py names a function that builds the settings on the first session use (so that
    ``migrate`` needs no Datastore settings): the error is raised there, and ``check --deploy`` reports it.
    """
    from tests.conftest import doc_python_blocks, startproject

    for name, value in {**TOPIC_ENV, "GOOGLE_CLOUD_PROJECT": "shop"}.items():
        monkeypatch.setenv(name, value)
    code = doc_python_blocks(section)[block]
    namespace: dict[str, Any] = {"__name__": "readme_app"}
    if section == "how-to/django.md":  # lines appended to a startproject project's settings.py
        settings_py = startproject(tmp_path)
        code, namespace["__file__"] = settings_py.read_text() + code, str(settings_py)
    with pytest.raises(ConfigError) as refused:
        exec(code, namespace)
        namespace.pop("SESSION_CORE_SETTINGS")()  # Django's: the first session use
    assert refused.value.setting == "SESSION_EVENTS_TOPIC" and EXTRA in str(refused.value)
    assert not {"app", "SESSION_CORE_SETTINGS"} & set(namespace)  # nothing is built with such settings


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SESSION_KIND", "viur-session\nevents\tshop-audit\tgrab"),  # the line injected into the deploy plan
        ("SESSION_NAMESPACE", "shop\r"),
        ("SESSION_DATABASE", "sessions\x1b[2J"),
        ("SESSION_EVENTS_TOPIC", "events\x00"),
        ("SESSION_PERSISTENT_FIELDS_ON_LOGIN", "language,the\tme"),
        ("SESSION_COOKIE_PATH", "/app\u2028"),
        ("SESSION_LIFE_TIME", "3600\x85"),
        ("GOOGLE_CLOUD_PROJECT", "shop\x7f"),
    ],
)
def test_a_control_character_in_any_setting_is_refused_naming_its_variable(
    tmp_path: Path, variable: str, value: str
) -> None:
    environ = {"GOOGLE_CLOUD_PROJECT": "shop", variable: value}
    with pytest.raises(ConfigError, match="control characters") as raised:
        Settings.from_env(environ)
    assert raised.value.setting == variable and raised.value.got == value
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(environ))
    with pytest.raises(ConfigError, match="control characters") as raised:
        Settings.from_file(path)
    assert raised.value.setting == variable


def test_a_control_character_in_a_variable_the_library_does_not_read_is_none_of_its_business() -> None:
    settings = Settings.from_env({"GOOGLE_CLOUD_PROJECT": "shop", "PS1": "\x1b[32m$ \n", "OTHER": "a\tb"})
    assert settings.project == "shop"


# -- the settings reference (docs/reference/settings.md is generated from config.reference()) --


def test_every_setting_has_its_variable_and_description_in_the_table_the_reference_is_built_from() -> None:
    names = [f.name for f in dataclasses.fields(Settings)]
    assert set(config.VARIABLES) == set(names)
    assert set(config.DESCRIPTIONS) == set(names)
    assert [row.field for row in config.reference()] == names
    assert all(row.description.strip() and row.accepts for row in config.reference())


def test_each_default_the_reference_shows_is_the_default_settings_have() -> None:
    """A shown default, read back through the environment, gives the very value ``Settings()`` holds."""
    defaults = Settings()
    checked = 0
    for row in config.reference():
        if not row.default.startswith("`"):
            continue  # unset, or a default that is not one constant (project, cookie name)
        env = {"DATASTORE_EMULATOR_HOST": "127.0.0.1:1", row.variable: row.default.strip("`")}
        read = Settings.from_env(env)
        assert getattr(read, row.field) == getattr(defaults, row.field), row.variable
        checked += 1
    assert checked >= 20
