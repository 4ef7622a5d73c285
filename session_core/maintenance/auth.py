"""OIDC check for the task endpoint: only Cloud Tasks, as our service account, may call it.

With ``SESSION_TASK_AUDIENCE`` set, every request must carry
``Authorization: Bearer <Google-signed ID token>`` whose audience is that
value and whose verified email is ``SESSION_TASKS_SERVICE_ACCOUNT``.
Production deploys also keep the function private with IAM.
"""

from __future__ import annotations

from google.auth import exceptions as auth_exceptions
from google.auth.transport import requests as auth_requests
from google.oauth2 import id_token

from session_core.config import Settings
from session_core.errors import ForbiddenError, UnauthenticatedError


def verify_task_caller(authorization: str | None, settings: Settings, request: auth_requests.Request) -> None:
    """Raise UnauthenticatedError or ForbiddenError unless the token is valid for our audience and account.

    No-op when ``SESSION_TASK_AUDIENCE`` is unset. One certificate fetch from
    ``SESSION_TASK_CERTS_URL`` per call (``request`` may cache it).
    """
    if settings.task_audience is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthenticatedError("missing bearer token")
    try:
        claims = id_token.verify_token(
            token.strip(), request, audience=settings.task_audience, certs_url=settings.task_certs_url
        )
    except (ValueError, auth_exceptions.GoogleAuthError) as exc:
        raise UnauthenticatedError(f"invalid token: {type(exc).__name__}") from None
    if claims.get("email") != settings.tasks_service_account or claims.get("email_verified") is not True:
        raise ForbiddenError("token is not from the tasks service account")
