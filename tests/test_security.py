"""Session keys, the security-key check, fixation, and what the store reveals."""

from __future__ import annotations

import hashlib
import math
import secrets
from collections import Counter

import pytest
from google.cloud import datastore

from session_core import Session, Settings
from session_core import rules as cookie_rules
from session_core.rules import KEY_LENGTH, hash_key, new_key
from tests.conftest import Ctx


def test_keys_come_from_secrets_with_at_least_250_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    alphabet = cookie_rules._ALPHABET
    assert len(set(alphabet)) == 62
    assert KEY_LENGTH * math.log2(len(alphabet)) >= 250  # 42 characters of 62: 250.07 bits
    drawn: list[bytes] = []
    token_bytes = secrets.token_bytes

    def spy(n: int) -> bytes:
        chunk = token_bytes(n)
        drawn.append(chunk)
        return chunk

    monkeypatch.setattr(cookie_rules.secrets, "token_bytes", spy)
    key = new_key()
    unbiased = 256 - 256 % len(alphabet)  # bytes at or above this would favour the first characters: dropped
    usable = [alphabet[b % len(alphabet)] for chunk in drawn for b in chunk if b < unbiased]
    assert drawn and key == "".join(usable[:KEY_LENGTH])  # every character from secrets, none biased


def test_key_characters_are_uniform() -> None:
    counts = Counter("".join(new_key() for _ in range(5000)))
    expected = 5000 * KEY_LENGTH / 62
    chi_square = sum((counts[c] - expected) ** 2 / expected for c in cookie_rules._ALPHABET)
    assert chi_square < 130  # 61 degrees of freedom: p < 1e-6 that a uniform source exceeds this


def test_the_stored_name_is_a_one_way_hash_and_nothing_stored_reveals_the_cookie(
    client: datastore.Client, settings: Settings
) -> None:
    session = Session(client, settings)
    session.load(Ctx())
    session["n"] = 1
    session.save(Ctx())
    cookie = session.cookie_key or ""
    assert hash_key(cookie) == hashlib.sha256(cookie.encode()).hexdigest()  # SHA-256 preimage resistance
    [entity] = list(client.query(kind=settings.kind, namespace=settings.namespace).fetch())
    assert entity.key.name == hash_key(cookie) != cookie
    assert cookie not in repr(dict(entity)) and cookie not in repr(entity.key)


def test_security_key_check_is_hmac_compare_digest(
    client: datastore.Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hmac

    from session_core import session as session_module

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(session_module.hmac, "compare_digest", spy)
    session = Session(client, settings)
    assert session.validate_security_key(session.static_security_key)
    assert not session.validate_security_key("x" * 13)
    assert len(calls) == 2


@pytest.mark.parametrize("chosen", [pytest.param(new_key(), id="random"), "A" * 42, "0" * 42])
def test_a_client_chosen_key_in_our_format_never_becomes_a_session(
    client: datastore.Client, settings: Settings, chosen: str
) -> None:
    for _ in range(3):  # even when presented again and again
        session = Session(client, settings)
        session.load(Ctx({settings.cookie_name: chosen}))
        session["owned"] = True
        ctx = Ctx()
        session.save(ctx)
        assert all(chosen not in header for header in ctx.set_cookies)
    names = {entity.key.name for entity in client.query(kind=settings.kind, namespace=settings.namespace).fetch()}
    assert hash_key(chosen) not in names and chosen not in names and len(names) == 3
