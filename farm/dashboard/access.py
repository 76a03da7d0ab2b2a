"""Who may see the dashboard: the same rule as the API's reads.

With ``FARM_PUBLIC_READ`` on (the default) every page is open. With it off, every dashboard page,
chart and engine download needs a token with scope ``read``: sent as ``Authorization: Bearer``
(scripts) or, for a browser, pasted once into the sign-in page, which keeps it in an HttpOnly,
SameSite=Strict cookie. The token is checked against the database on every request, so revoking
it signs the browser out too.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, redirect, render_template, request, url_for

from farm.api.auth import authenticate
from farm.api.errors import ApiError
from farm.app import current_services

TOKEN_COOKIE = "farm_token"
OPEN_ENDPOINTS = frozenset({"dashboard.sign_in", "dashboard.sign_out", "dashboard.static"})
COOKIE_MAX_AGE_S = 12 * 3600


def _safe_next(target: str | None) -> str:
    """Only same-site paths are followed after sign-in (no open redirect)."""
    if not target:
        return url_for("dashboard.overview")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("dashboard.overview")
    return target


def _token_problem(header: str | None) -> str | None:
    """None when ``header`` names a live token with scope read; else why not."""
    try:
        principal = authenticate(current_services().db, header)
    except ApiError as error:
        return str(error.description)
    if principal is None:
        return "sign in with an API token that has scope 'read'"
    if not principal.has("read"):
        return f"token {principal.name!r} lacks scope 'read'"
    return None


def require_read_access() -> Any:
    """``before_request`` hook of the dashboard blueprint."""
    if current_services().settings.public_read or request.endpoint in OPEN_ENDPOINTS:
        return None
    header = request.headers.get("Authorization")
    cookie = request.cookies.get(TOKEN_COOKIE)
    problem = _token_problem(header or (f"Bearer {cookie}" if cookie else None))
    if problem is None:
        return None
    if header:  # a script: answer plainly, no redirect
        return Response(problem + "\n", status=401, mimetype="text/plain")
    return redirect(url_for("dashboard.sign_in", next=request.full_path.rstrip("?")))


def sign_in() -> Any:
    """GET: the sign-in form. POST: check the pasted token and keep it in a cookie."""
    target = _safe_next(request.values.get("next"))
    if request.method == "GET":
        return render_template("dashboard/sign_in.html", next=target, message=None)
    token = request.form.get("token", "").strip()
    problem = _token_problem(f"Bearer {token}" if token else None)
    if problem is not None:
        return render_template("dashboard/sign_in.html", next=target, message=problem), 401
    response = redirect(target)
    response.set_cookie(
        TOKEN_COOKIE,
        token,
        max_age=COOKIE_MAX_AGE_S,
        httponly=True,
        samesite="Strict",
        secure=request.is_secure,
    )
    return response


def sign_out() -> Any:
    """Forget the token cookie."""
    response = redirect(url_for("dashboard.sign_in"))
    response.delete_cookie(TOKEN_COOKIE)
    return response


def install(blueprint: Blueprint) -> None:
    """Attach the access rule and the sign-in/out routes to the dashboard blueprint."""
    blueprint.before_request(require_read_access)
    blueprint.add_url_rule("/sign-in", "sign_in", sign_in, methods=["GET", "POST"])
    blueprint.add_url_rule("/sign-out", "sign_out", sign_out, methods=["POST"])
