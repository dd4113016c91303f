"""Signing in and out: the landing page, the login page, the OpenID Connect round trip.

Login enrols a verified e-mail address (opening its wallet on first sight) and
rotates the session id, so an id planted before login is worth nothing after it.
"""

from __future__ import annotations

from urllib.parse import urlencode

from authlib.integrations.starlette_client import OAuthError
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tokpay.web import wallet
from tokpay.web.context import Web, check_csrf
from tokpay.web.session import rotate_session

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def landing(request: Request, web: Web) -> Response:
    return web.render(request, "landing.html", user=web.session_user(request))


@router.get("/login", response_class=HTMLResponse)
async def login(request: Request, web: Web) -> Response:
    error = request.query_params.get("error", "")
    return web.render(
        request,
        "login.html",
        next=_local_path(request.query_params.get("next", "")),
        error=error,
        configured=bool(web.settings.oidc_issuer),
        issuer=web.settings.oidc_issuer,
    )


@router.get("/auth/start")
async def auth_start(request: Request, web: Web) -> Response:
    client = web.oauth.create_client("tokpay")
    if client is None:
        return RedirectResponse("/login?error=no-issuer", status_code=303)
    request.session["after_login"] = _local_path(request.query_params.get("next", ""))
    redirect_uri = str(request.url_for("auth_callback"))
    response: Response = await client.authorize_redirect(request, redirect_uri)
    return response


@router.get("/auth/callback", name="auth_callback")
async def auth_callback(request: Request, web: Web) -> Response:
    client = web.oauth.create_client("tokpay")
    if client is None:
        return RedirectResponse("/login?error=no-issuer", status_code=303)
    try:
        token = await client.authorize_access_token(request)
        claims = token.get("userinfo") or {}
        if "email" not in claims:
            claims = await client.userinfo(token=token)
    except OAuthError as error:
        return RedirectResponse(
            "/login?" + urlencode({"error": error.error or "login failed"}), status_code=303
        )
    email = wallet.normalise_email(str(claims.get("email", "")))
    if not wallet.is_email(email) or claims.get("email_verified") is not True:
        return RedirectResponse("/login?error=unverified-email", status_code=303)
    user = web.store.enrol(email)
    await wallet.open_wallet(web.ledger(), user)
    after_login = _local_path(str(request.session.get("after_login", "")))
    request.session.clear()
    request.session["user_id"] = user.id
    rotate_session(request.scope)
    return RedirectResponse(after_login, status_code=303)


@router.post("/logout")
async def logout(request: Request) -> Response:
    check_csrf(request, await request.form())
    request.session.clear()
    return RedirectResponse("/", status_code=303)


def _local_path(path: str) -> str:
    """A page of this site to return to after login; anything else is the dashboard."""
    if path.startswith("/") and not path.startswith(("//", "/\\")) and path.isprintable():
        return path
    return "/dashboard"
