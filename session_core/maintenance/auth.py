"""Who may call ``session_task``: Cloud Tasks, as our tasks service account, with a Google-signed OIDC token.

``SESSION_TASK_AUTH`` is ``oidc`` (the default): every request must carry
``Authorization: Bearer <ID token>`` signed by Google (issuer
``https://accounts.google.com``), for ``SESSION_TASK_AUDIENCE``, whose
verified email is ``SESSION_TASKS_SERVICE_ACCOUNT``. With no audience set the
door stays closed: every step is refused as a misconfiguration (500). ``none``
is accepted only next to an emulator, and logs a warning on every step.
Production deploys also keep the function private with IAM.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping

import structlog
from google.auth import exceptions as auth_exceptions
from google.auth import jwt
from google.auth.transport import Request

from session_core.config import Settings
from session_core.errors import ConfigError, DependencyUnavailableError, ForbiddenError, UnauthenticatedError

GOOGLE_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
DEFAULT_MAX_AGE = 300.0  # when the certificate endpoint names no max-age
_MAX_AGE = re.compile(r"max-age=(\d+)")
log = structlog.get_logger("session_core.auth")


class CertificateCache:
    """Google's token-signing certificates, fetched once and kept as long as their ``Cache-Control`` allows.

    One GET per ``max-age`` (Google serves about six hours), not one per
    task. An endpoint that does not answer raises DependencyUnavailableError:
    the task is retried, not refused.
    """

    def __init__(self, url: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.clock = clock
        self._certs: Mapping[str, str] | None = None
        self._until = 0.0

    def get(self, request: Request) -> Mapping[str, str]:
        if self._certs is not None and self.clock() < self._until:
            return self._certs
        try:
            response = request(self.url, method="GET")
        except auth_exceptions.TransportError as exc:
            raise DependencyUnavailableError("token certificates", exc) from exc
        if response.status != 200:
            raise DependencyUnavailableError("token certificates", RuntimeError(f"HTTP {response.status}"))
        try:
            certs: dict[str, str] = json.loads(response.data)
        except ValueError as exc:
            raise DependencyUnavailableError("token certificates", exc) from exc
        found = _MAX_AGE.search(str(response.headers.get("Cache-Control", "")))
        self._certs = certs
        self._until = self.clock() + (float(found.group(1)) if found else DEFAULT_MAX_AGE)
        return certs


def verify_task_caller(
    authorization: str | None, settings: Settings, request: Request, certificates: CertificateCache
) -> None:
    """Return only if the caller may run a step; raise otherwise.

    UnauthenticatedError: no token, a malformed, expired or forged one, another
    audience or issuer. ForbiddenError: a valid token of another account.
    ConfigError: ``oidc`` without an audience (the door stays closed).
    DependencyUnavailableError: the certificates could not be fetched (retry).
    """
    if settings.task_auth == "none":
        log.warning("session_task_unauthenticated", reason="SESSION_TASK_AUTH=none: emulator only")
        return
    if settings.task_audience is None:
        raise ConfigError(
            "SESSION_TASK_AUDIENCE", "the audience session_task checks tokens for (SESSION_TASK_AUTH is oidc)"
        )
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthenticatedError("missing bearer token")
    certs = certificates.get(request)
    try:
        claims = jwt.decode(  # type: ignore[no-untyped-call]
            token.strip(), certs=certs, audience=settings.task_audience, clock_skew_in_seconds=10
        )
    except (ValueError, auth_exceptions.GoogleAuthError) as exc:
        raise UnauthenticatedError(f"invalid token: {type(exc).__name__}") from None
    if claims.get("iss") not in GOOGLE_ISSUERS:
        raise UnauthenticatedError("token is not issued by Google")
    if claims.get("email") != settings.tasks_service_account or claims.get("email_verified") is not True:
        raise ForbiddenError("token is not from the tasks service account")
