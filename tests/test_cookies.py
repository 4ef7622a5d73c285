"""Cookie rules: the key format we issue and accept, and every Set-Cookie flag combination."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest

from session_core import Settings
from session_core.cookies import clear_cookie_header, parse_cookie_header, set_cookie_header
from session_core.rules import is_valid_key, new_key


def test_new_keys_are_42_alphanumerics_and_unique() -> None:
    keys = {new_key() for _ in range(1000)}
    assert len(keys) == 1000
    assert all(len(k) == 42 and k.isascii() and k.isalnum() for k in keys)
    assert all(is_valid_key(k) for k in keys)


@pytest.mark.parametrize(
    ("secure", "same_site", "session_cookie"),
    [  # SameSite=None without Secure is refused by Settings: see test_samesite_none_needs_secure
        combination
        for combination in itertools.product([True, False], ["lax", "strict", "none", None], [True, False])
        if combination[:2] != (False, "none")
    ],
)
def test_set_cookie_flags(secure: bool, same_site: str | None, session_cookie: bool) -> None:
    settings = Settings(
        cookie_secure=secure,
        same_site=same_site,
        use_session_cookie=session_cookie,  # type: ignore[arg-type]
        life_time=timedelta(seconds=1234),
        cookie_name="sid",
    )
    key = new_key()
    max_age = None if session_cookie else settings.life_time
    parts = set_cookie_header(settings, key, max_age=max_age).split("; ")
    assert parts[0] == f"sid={key}"
    expected = {"Path=/", "HttpOnly"}
    if secure:
        expected.add("Secure")
    if same_site:
        expected.add(f"SameSite={same_site.capitalize()}")
    if not session_cookie:
        expected.add("Max-Age=1234")
    assert set(parts[1:]) == expected


def test_samesite_none_needs_secure() -> None:
    from session_core import ConfigError

    with pytest.raises(ConfigError, match=r"^same_site: "):
        Settings(same_site="none", cookie_secure=False)
    with pytest.raises(ConfigError, match=r"^SESSION_SAME_SITE: "):
        Settings.from_env({"GOOGLE_CLOUD_PROJECT": "p", "SESSION_SAME_SITE": "none", "SESSION_COOKIE_SECURE": "0"})


def test_clear_cookie_expires_the_cookie_now() -> None:
    header = clear_cookie_header(Settings(cookie_name="sid"))
    assert header.startswith("sid=; ") and "Max-Age=0" in header.split("; ")


def test_malformed_key_never_reaches_a_header() -> None:
    with pytest.raises(ValueError):
        set_cookie_header(Settings(), "a" * 41 + "\r")


def test_parse_cookie_header_finds_our_cookie_among_others() -> None:
    header = 'other=1; sid="abc"; broken; sid=second'
    assert parse_cookie_header(header, "sid") == "abc"
    assert parse_cookie_header("x=1", "sid") is None
    assert parse_cookie_header("", "sid") is None


def test_the_cookie_path_and_domain_are_set_and_cleared_alike() -> None:
    settings = Settings(cookie_name="sid", cookie_path="/shop", cookie_domain=".example.com")
    set_parts = set_cookie_header(settings, new_key()).split("; ")[1:]
    clear_parts = clear_cookie_header(settings).split("; ")[1:]
    assert {"Path=/shop", "Domain=.example.com"} <= set(set_parts)
    assert {"Path=/shop", "Domain=.example.com", "Max-Age=0"} <= set(clear_parts)  # or the browser keeps it
    assert not any(part.startswith("Domain") for part in set_cookie_header(Settings(), new_key()).split("; "))
