"""Per-session lifetimes: each session dies at its own expiry, for readers and for the one cleanup query alike."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from google.cloud import datastore

from session_core import MisuseError, Session, Settings
from session_core.maintenance.cleanup import start_clear_sessions
from session_core.rules import hash_key, needs_refresh, refresh_interval
from tests.conftest import Ctx, RpcCounter
from tests.test_cleanup import remaining

T0 = 2_000_000_000.0
MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0


def cookie_of(ctx: Ctx) -> str:
    [header] = ctx.set_cookies
    return header.split(";")[0].split("=", 1)[1]


def saved(client: datastore.Client, settings: Settings, lifetime: float | None, at: float = T0) -> str:
    """A session saved at ``at`` with its own lifetime (None: the default); its cookie."""
    session = Session(client, settings, clock=lambda: at)
    session.load(Ctx())
    session["n"] = 1
    session.set_expiry(lifetime)
    ctx = Ctx()
    session.save(ctx)
    return cookie_of(ctx)


def viur_saved(client: datastore.Client, settings: Settings, at: float = T0) -> str:
    """A session exactly as viur-core writes it: plain name, no expires, seen or lifetime."""
    from session_core.rules import new_key

    cookie = new_key()
    entity = datastore.Entity(client.key(settings.kind, cookie, namespace=settings.namespace), ["data"])
    entity.update(data=datastore.Entity(), static_security_key="k" * 13, lastseen=at, user="__guest__")
    client.put(entity)
    return cookie


def alive_for_the_reader(client: datastore.Client, settings: Settings, cookie: str, now: float) -> bool:
    return Session(client, settings, clock=lambda: now).load(Ctx({settings.cookie_name: cookie}))


def stored(cookie: str) -> str:
    return hash_key(cookie)


def test_each_lifetime_dies_at_its_own_expiry_for_readers_and_cleanup_at_every_boundary(
    client: datastore.Client, settings: Settings
) -> None:
    """1 minute, 1 hour (the default), 30 days and a ViUR-layout session, side by side under a moved clock."""
    grace = settings.clear_grace.total_seconds()
    lifetimes = {"1 minute": MINUTE, "1 hour": HOUR, "30 days": 30 * DAY}
    cookies = {name: saved(client, settings, life) for name, life in lifetimes.items()}
    cookies["ViUR layout"] = viur_saved(client, settings)
    lifetimes["ViUR layout"] = settings.life_time.total_seconds()
    names = {name: stored(cookie) if name != "ViUR layout" else cookie for name, cookie in cookies.items()}
    steps = sorted(
        {T0 + life + extra + delta for life in lifetimes.values() for extra in (0, grace) for delta in (-1, 0, 1)}
    )
    for now in steps:
        # Cleanup at ``now`` deletes exactly the sessions a reader saw dead at ``now - grace``.
        dead_a_grace_ago = {
            name for name, cookie in cookies.items() if not alive_for_the_reader(client, settings, cookie, now - grace)
        }
        present_before = remaining(client, settings)
        start_clear_sessions(client, settings, now=now)
        deleted = {name for name in cookies if names[name] in present_before - remaining(client, settings)}
        gone = {name for name in cookies if names[name] not in remaining(client, settings)}
        expected_gone = {name for name, life in lifetimes.items() if T0 + life < now - grace}
        assert gone == expected_gone, now - T0
        assert deleted <= dead_a_grace_ago and gone == dead_a_grace_ago, now - T0
        # And nothing a reader sees alive at ``now`` is ever gone.
        for name, cookie in cookies.items():
            if name not in gone:
                assert alive_for_the_reader(client, settings, cookie, now) == (T0 + lifetimes[name] >= now), name


def test_lastseen_is_shifted_so_that_viur_and_older_versions_see_the_right_expiry(
    client: datastore.Client, settings: Settings
) -> None:
    life = settings.life_time.total_seconds()
    for lifetime in (MINUTE, None, 30 * DAY):
        cookie = saved(client, settings, lifetime)
        entity = client.get(client.key(settings.kind, hash_key(cookie), namespace=settings.namespace))
        assert entity is not None
        own = life if lifetime is None else lifetime
        assert entity["seen"] == T0 and entity["lifetime"] == own
        assert entity["expires"].timestamp() == T0 + own
        assert entity["lastseen"] == T0 + own - life  # what viur-core's `lastseen < now - life` needs


def test_a_session_written_by_an_earlier_version_keeps_the_lifetime_it_was_written_with(
    client: datastore.Client, settings: Settings
) -> None:
    cookie = saved(client, settings, None)
    key = client.key(settings.kind, hash_key(cookie), namespace=settings.namespace)
    entity = client.get(key)
    assert entity is not None
    del entity["seen"], entity["lifetime"]  # 0.2's layout: lastseen and expires only
    client.put(entity)
    assert alive_for_the_reader(client, settings, cookie, T0 + HOUR)
    assert not alive_for_the_reader(client, settings, cookie, T0 + HOUR + 1)


def test_a_short_session_in_use_never_expires_and_a_long_one_is_rewritten_at_most_every_five_minutes(
    client: datastore.Client, settings: Settings, rpcs: RpcCounter
) -> None:
    assert refresh_interval(1.0) == 0.5 and refresh_interval(HOUR) == 300
    assert not needs_refresh(T0, T0 + 300, HOUR) and needs_refresh(T0, T0 + 300.5, HOUR)
    cookie = saved(client, settings, 1.0)
    for request in range(1, 30):  # a request every 0.4 s for 11.6 s: ten times its lifetime
        now = T0 + request * 0.4
        session = Session(client, settings, clock=lambda now=now: now)
        assert session.load(Ctx({settings.cookie_name: cookie})), request
        session.save(Ctx())
    rpcs.reset()
    hourly = saved(client, settings, HOUR)
    writes = 0
    for minute in range(1, 31):
        session = Session(client, settings, clock=lambda minute=minute: T0 + minute * MINUTE)
        session.load(Ctx({settings.cookie_name: hourly}))
        before = rpcs.calls["commit"]
        session.save(Ctx())
        writes += rpcs.calls["commit"] - before
    assert writes == 5  # minutes 6, 12, 18, 24, 30: each more than 5 minutes after the last write


@pytest.mark.parametrize("bad", [0, -1, 3651 * DAY, "60", True, timedelta(0)])
def test_set_expiry_refuses_what_is_not_a_positive_lifetime_of_at_most_ten_years(
    offline_client: datastore.Client, offline_settings: Settings, bad: object
) -> None:
    with pytest.raises(MisuseError):
        Session(offline_client, offline_settings).set_expiry(bad)  # type: ignore[arg-type]


def test_set_expiry_writes_only_a_real_change_and_drives_max_age(
    client: datastore.Client, settings: Settings, rpcs: RpcCounter
) -> None:
    persistent = replace(settings, use_session_cookie=False)
    cookie = saved(client, persistent, None, at=T0)
    session = Session(client, persistent, clock=lambda: T0 + 1)
    session.load(Ctx({persistent.cookie_name: cookie}))
    session.set_expiry(settings.life_time)  # the same lifetime: nothing to write
    rpcs.reset()
    session.save(Ctx())
    assert rpcs.total == 0
    session.set_expiry(timedelta(days=30))
    ctx = Ctx()
    session.save(ctx)
    assert rpcs.calls["commit"] == 1 and "Max-Age=2592000" in ctx.set_cookies[0]
    again = Session(client, persistent, clock=lambda: T0 + 2)
    assert again.load(Ctx({persistent.cookie_name: cookie})) and again.lifetime == timedelta(days=30)
    assert again.expires == T0 + 1 + 30 * DAY
