"""Views of the test project: each does one thing with ``request.session`` or ``django.contrib.auth``."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import auth
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.utils import timezone

from session_core import kill_sessions
from session_core.django import SessionStore, configured


def visits(request: HttpRequest) -> JsonResponse:
    request.session["visits"] = request.session.get("visits", 0) + 1
    return JsonResponse({"visits": request.session["visits"]})


def peek(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"visits": request.session.get("visits")})


def nothing(request: HttpRequest) -> HttpResponse:
    return HttpResponse("")


def expiry(request: HttpRequest, spec: str) -> HttpResponse:
    """``seconds/N``, ``delta/N`` (a timedelta), ``date/N`` (a datetime N seconds ahead) or ``default``."""
    kind, _, amount = spec.partition(":")
    value = {
        "seconds": lambda: int(amount),
        "delta": lambda: timedelta(seconds=int(amount)),
        "date": lambda: timezone.now() + timedelta(seconds=int(amount)),
        "default": lambda: None,
    }[kind]()
    request.session["n"] = 1
    request.session.set_expiry(value)
    return HttpResponse(str(request.session.get_expiry_age()))


def flush(request: HttpRequest) -> HttpResponse:
    request.session.flush()
    return HttpResponse("")


def deleted_meanwhile(request: HttpRequest) -> HttpResponse:
    """Another request (a logout, a kill) deletes this session while this one changes it."""
    request.session["late"] = True
    SessionStore(request.session.session_key).delete()
    return HttpResponse("")


def me(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.user.get_username() if request.user.is_authenticated else "anonymous")


def login(request: HttpRequest, username: str) -> HttpResponse:
    auth.login(request, User.objects.get(username=username))
    return HttpResponse("signed in")


def logout(request: HttpRequest) -> HttpResponse:
    auth.logout(request)
    return HttpResponse("signed out")


def change_password(request: HttpRequest, password: str) -> HttpResponse:
    """Django's documented way: set the password, then keep this session with update_session_auth_hash."""
    user = request.user
    assert isinstance(user, User)
    user.set_password(password)
    user.save()
    auth.update_session_auth_hash(request, user)
    return HttpResponse("changed")


def login_after_a_concurrent_delete(request: HttpRequest, username: str) -> HttpResponse:
    """Another request (a logout elsewhere, a cleanup) deletes this guest session between its load and the login."""
    request.session.get("visits")
    SessionStore(request.session.session_key).delete()
    auth.login(request, User.objects.get(username=username))  # cycle_key
    return HttpResponse("signed in")


def change_password_after_a_kill(request: HttpRequest, password: str) -> HttpResponse:
    """A kill of this user lands between the session's load and update_session_auth_hash's cycle_key."""
    user = request.user
    assert isinstance(user, User)
    settings, client = configured()
    kill_sessions(str(user.pk), client=client, settings=settings)
    user.set_password(password)
    user.save()
    auth.update_session_auth_hash(request, user)
    return HttpResponse("changed")


def login_showing_id(request: HttpRequest, username: str) -> JsonResponse:
    """Sign in, and show the new session's id in the same request."""
    auth.login(request, User.objects.get(username=username))
    return JsonResponse({"session_id": request.session.session_id})


def visits_across_a_kill_of_everyone(request: HttpRequest) -> JsonResponse:
    """The session is loaded, everyone is signed out (the deletes queued, not run yet), then it is saved."""
    visits = request.session.get("visits", 0) + 1
    settings, client = configured()
    kill_sessions(None, client=client, settings=settings, enqueue=lambda step: None)
    request.session["visits"] = visits
    return JsonResponse({"visits": visits})


def sign_out_everywhere_else(request: HttpRequest) -> HttpResponse:
    """The README's view, with the session id to keep taken from the query (so a bad one is misuse)."""
    settings, client = configured()
    keep = request.GET.get("keep", request.session.session_id)
    kill_sessions(str(request.user.pk), client=client, settings=settings, except_session=keep)
    return HttpResponse("signed out everywhere else")


urlpatterns = [
    path("visits/", visits),
    path("peek/", peek),
    path("nothing/", nothing),
    path("expiry/<str:spec>/", expiry),
    path("flush/", flush),
    path("deleted-meanwhile/", deleted_meanwhile),
    path("me/", me),
    path("login/<str:username>/", login),
    path("logout/", logout),
    path("password/<str:password>/", change_password),
    path("login-after-a-concurrent-delete/<str:username>/", login_after_a_concurrent_delete),
    path("password-after-a-kill/<str:password>/", change_password_after_a_kill),
    path("login-showing-id/<str:username>/", login_showing_id),
    path("everywhere-else/", sign_out_everywhere_else),
    path("visits-across-a-kill/", visits_across_a_kill_of_everyone),
]
