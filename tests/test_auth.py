"""session_task refuses callers without a valid Cloud Tasks OIDC token (real signed tokens)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask.testing import FlaskClient
from google.auth import crypt
from google.cloud import datastore

from session_core import Settings
from tests.conftest import FunctionClient, SigningKey, oidc_task_door, record_run, token
from tests.test_bad_input import VALID_KILL

MAIN = Path(__file__).resolve().parent.parent / "main.py"


@pytest.fixture
def task_endpoint(
    function: FunctionClient, signing_key: SigningKey, client: datastore.Client, settings: Settings
) -> FlaskClient:
    record_run(client, settings, STEP)
    return oidc_task_door(function, signing_key)


STEP = {**VALID_KILL, "user": "nobody"}
Header = Callable[[crypt.Signer], dict[str, str]]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (lambda signer: {}, 401),
        (lambda signer: {"Authorization": "Basic abc"}, 401),
        (lambda signer: {"Authorization": "Bearer not-a-jwt"}, 401),
        (lambda signer: {"Authorization": f"Bearer {token(signer, audience='https://elsewhere.example')}"}, 401),
        (lambda signer: {"Authorization": f"Bearer {token(signer, expires_in=-3600)}"}, 401),
        (lambda signer: {"Authorization": f"Bearer {token(signer, issuer='https://evil.example')}"}, 401),
        (lambda signer: {"Authorization": f"Bearer {token(signer, email='intruder@evil.example')}"}, 403),
        (lambda signer: {"Authorization": f"Bearer {token(signer)}"}, 200),
    ],
    ids=["missing", "not-bearer", "garbage", "other-audience", "expired", "other-issuer", "other-account", "valid"],
)
def test_task_endpoint_checks_the_oidc_token(
    task_endpoint: FlaskClient, signing_key: SigningKey, headers: Header, status: int
) -> None:
    response = task_endpoint.post("/", json=STEP, headers=headers(signing_key.signer))
    assert response.status_code == status


def test_a_token_signed_by_another_key_is_refused(task_endpoint: FlaskClient) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    forged = token(crypt.RSASigner.from_string(pem, key_id="kid-1"))
    assert task_endpoint.post("/", json=STEP, headers={"Authorization": f"Bearer {forged}"}).status_code == 401


def test_the_certificates_are_fetched_once_per_max_age_not_per_task(
    task_endpoint: FlaskClient, signing_key: SigningKey
) -> None:
    before = len(signing_key.fetches)
    header = {"Authorization": f"Bearer {token(signing_key.signer)}"}
    for _ in range(10):
        assert task_endpoint.post("/", json=STEP, headers=header).status_code == 200
    assert len(signing_key.fetches) - before == 1  # Google's Cache-Control: max-age=21600


def test_an_unreachable_certificate_endpoint_gives_503_so_cloud_tasks_retries(
    task_endpoint: FlaskClient, signing_key: SigningKey, capsys: pytest.CaptureFixture[str]
) -> None:
    signing_key.down.set()
    try:
        response = task_endpoint.post("/", json=STEP, headers={"Authorization": f"Bearer {token(signing_key.signer)}"})
    finally:
        signing_key.down.clear()
    assert response.status_code == 503  # a retry, not a refusal: the token may well be valid
    assert '"event": "session_task_failed"' in capsys.readouterr().err
