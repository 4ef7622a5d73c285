"""session_task refuses callers without a valid Cloud Tasks OIDC token (real signed tokens)."""

from __future__ import annotations

import datetime
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from flask.testing import FlaskClient
from google.auth import crypt, jwt

from tests.conftest import FunctionClient
from tests.test_bad_input import VALID_KILL

MAIN = Path(__file__).resolve().parent.parent / "main.py"
AUDIENCE = "https://europe-west3-session-core-test.cloudfunctions.net/session_task"
TASKS_ACCOUNT = "session-tasks@session-core-test.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def signing_key() -> Iterator[tuple[crypt.Signer, str]]:
    """A throwaway RSA key, and a local URL serving its certificate the way Google serves its own."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "throwaway")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    certs = json.dumps({"kid-1": cert.public_bytes(serialization.Encoding.PEM).decode()}).encode()

    class Certs(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(certs)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Certs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        yield crypt.RSASigner.from_string(pem, key_id="kid-1"), f"http://127.0.0.1:{server.server_port}/certs"
    finally:
        server.shutdown()
        server.server_close()


def token(signer: crypt.Signer, *, audience: str = AUDIENCE, email: str = TASKS_ACCOUNT, expires_in: int = 600) -> str:
    now = int(time.time())
    claims = {
        "iss": "https://accounts.google.com",
        "aud": audience,
        "sub": "1234",
        "email": email,
        "email_verified": True,
        "iat": now - 60,
        "exp": now + expires_in,
    }
    return jwt.encode(signer, claims).decode()


@pytest.fixture
def task_endpoint(function: FunctionClient, signing_key: tuple[crypt.Signer, str]) -> FlaskClient:
    return function(
        "session_task",
        SESSION_TASK_AUDIENCE=AUDIENCE,
        SESSION_TASKS_SERVICE_ACCOUNT=TASKS_ACCOUNT,
        SESSION_TASK_CERTS_URL=signing_key[1],
    )


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
        (lambda signer: {"Authorization": f"Bearer {token(signer, email='intruder@evil.example')}"}, 403),
        (lambda signer: {"Authorization": f"Bearer {token(signer)}"}, 200),
    ],
    ids=["missing", "not-bearer", "garbage", "other-audience", "expired", "other-account", "valid"],
)
def test_task_endpoint_checks_the_oidc_token(
    task_endpoint: FlaskClient, signing_key: tuple[crypt.Signer, str], headers: Header, status: int
) -> None:
    response = task_endpoint.post("/", json=STEP, headers=headers(signing_key[0]))
    assert response.status_code == status


def test_a_token_signed_by_another_key_is_refused(task_endpoint: FlaskClient) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    forged = token(crypt.RSASigner.from_string(pem, key_id="kid-1"))
    assert task_endpoint.post("/", json=STEP, headers={"Authorization": f"Bearer {forged}"}).status_code == 401
