"""Signing in and out: the landing page, the login page, the OpenID Connect round trip.

Login keys the user by the identity the provider asserts, (issuer, ``sub``), and
takes the ``email`` claim as that identity's address only when it is verified
(``verified_email``). Until the provider answers, the login's state (OIDC state,
nonce, PKCE verifier, page to return to) lives in a signed, ten-minute cookie, not
in a session row, so anonymous visits store nothing. Login rotates the session
id, so an id planted before login is worth nothing after it. Logout ends the
provider's session too when it offers RP-initiated logout. Every refusal is
logged (why and the issuer, never a token) and explained with what to do next.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode

import httpx
from authlib.integrations.starlette_client import OAuthError
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from joserfc.errors import JoseError
from starlette.routing import Match

from tokpay.web import wallet
from tokpay.web.context import SignedIn, Web, WebContext, check_csrf
from tokpay.web.session import cookie_value, rotate_session, sign, unsign

LOGIN_COOKIE = "tokpay_login"
LOGIN_COOKIE_PATH = "/auth"
LOGIN_MAX_AGE_SECONDS = 600
_LOGIN_PURPOSE = "oidc-login"

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)


class LoginRefused(Exception):
    """A login that cannot complete: ``reason`` picks the page's words and status."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


# What the person reads, by reason: what happened and what to do next.
_PAGES: dict[str, tuple[int, str]] = {
    "no-issuer": (
        503,
        "This server has no sign-in provider set up yet. Ask whoever runs it to set "
        "TOKPAY_OIDC_ISSUER.",
    ),
    "unreachable": (
        502,
        "Your sign-in provider is not answering right now. Nothing was changed; wait a "
        "minute and start signing in again.",
    ),
    "provider-changed": (
        502,
        "Your sign-in provider answered in a way this server cannot trust (its address "
        "or signing keys changed). Nothing was changed. Start signing in again; if it "
        "happens again, tell whoever runs this server.",
    ),
    "expired": (
        400,
        "This sign-in took too long or was already used. Start signing in again from this page.",
    ),
    "denied": (
        403,
        "The sign-in provider did not let you in (you may have cancelled). Start signing "
        "in again when you are ready.",
    ),
    "unverified-email": (
        403,
        "Your sign-in provider did not confirm that your email address is yours. Verify "
        "your address with the provider (check its confirmation email), then sign in "
        "again; if your provider never confirms addresses, ask whoever runs this server.",
    ),
    "no-email": (
        403,
        "Your sign-in provider did not share an email address. Add one to your account "
        "there, allow TokPay to see it, then sign in again.",
    ),
    "rate-limited": (
        429,
        "Too many sign-in attempts from your network in the last minute. Wait a minute, "
        "then sign in again.",
    ),
}


@router.get("/", response_class=HTMLResponse)
async def landing(request: Request, web: Web) -> Response:
    return web.render(request, "landing.html", user=web.session_user(request))


@router.get("/login", response_class=HTMLResponse)
async def login(request: Request, web: Web) -> Response:
    # Only known reasons are shown: the page never repeats text from its URL.
    _, message = _PAGES.get(request.query_params.get("error", ""), (200, ""))
    return _login_page(request, web, 200, message)


def _login_page(request: Request, web: WebContext, status: int, message: str) -> Response:
    response = web.render(
        request,
        "login.html",
        status,
        next=_local_path(request.query_params.get("next", "")),
        error=message,
        configured=bool(web.settings.oidc_issuer),
        issuer=web.settings.oidc_issuer,
    )
    if status != 200:
        response.delete_cookie(LOGIN_COOKIE, path=LOGIN_COOKIE_PATH)
    return response


def refused(request: Request, web: WebContext, refusal: LoginRefused) -> Response:
    """The login page saying why, logged; the app's handler for every ``LoginRefused``."""
    status, message = _PAGES[refusal.reason]
    log.warning(
        "login refused: %s%s (issuer %s)",
        refusal.reason,
        f": {refusal.detail}" if refusal.detail else "",
        web.settings.oidc_issuer or "none",
    )
    if refusal.reason in {"unreachable", "provider-changed"}:
        web.forget_provider()
    return _login_page(request, web, status, message)


@router.get("/auth/start")
async def auth_start(request: Request, web: Web) -> Response:
    address = request.client.host if request.client else "unknown"
    if not web.login_starts.allow(address):
        raise LoginRefused("rate-limited", f"address {address}")
    client = web.oidc_client()
    if client is None:
        raise LoginRefused("no-issuer")
    redirect_uri = str(request.url_for("auth_callback"))
    async with _provider_errors():
        await _provider_metadata(web, client)
        authorization = await client.create_authorization_url(redirect_uri)
    state = {
        "state": authorization["state"],
        "nonce": authorization["nonce"],
        "code_verifier": authorization["code_verifier"],
        "redirect_uri": redirect_uri,
        "next": _local_path(request.query_params.get("next", "")),
    }
    response = RedirectResponse(authorization["url"], status_code=302)
    value = sign(web.signing_key, _LOGIN_PURPOSE, state)
    secure = web.settings.secure_cookies or request.url.scheme == "https"
    flags = f"Path={LOGIN_COOKIE_PATH}; Max-Age={LOGIN_MAX_AGE_SECONDS}; HttpOnly; SameSite=Lax"
    response.headers.append(
        "set-cookie", f"{LOGIN_COOKIE}={value}; {flags}" + ("; Secure" if secure else "")
    )
    return response


@router.get("/auth/callback", name="auth_callback")
async def auth_callback(request: Request, web: Web) -> Response:
    client = web.oidc_client()
    if client is None:
        raise LoginRefused("no-issuer")
    signed = cookie_value(request.scope, LOGIN_COOKIE)
    pending = unsign(web.signing_key, _LOGIN_PURPOSE, signed or "", LOGIN_MAX_AGE_SECONDS)
    query = request.query_params
    if pending is None or query.get("state") != pending.get("state"):
        raise LoginRefused("expired", "no login cookie or a state that does not match it")
    async with _provider_errors():
        metadata = await _provider_metadata(web, client)
        # RFC 9207: the authorization response names its issuer; a response from
        # another issuer (a mix-up attack) is refused before its code is used.
        iss = query.get("iss")
        if iss is None and metadata.get("authorization_response_iss_parameter_supported"):
            raise LoginRefused("provider-changed", "authorization response without iss")
        if iss is not None and iss != metadata["issuer"]:
            raise LoginRefused("provider-changed", f"authorization response from {iss!r}")
        if "error" in query:
            raise LoginRefused("denied", f"provider said {query['error'][:100]!r}")
        token = await client.fetch_access_token(
            redirect_uri=pending["redirect_uri"],
            code=query.get("code", ""),
            code_verifier=pending["code_verifier"],
        )
        # The id token must be for this client (aud) from this issuer (iss).
        options = {
            "iss": {"essential": True, "values": [metadata["issuer"]]},
            "aud": {"essential": True, "values": [web.settings.oidc_client_id]},
        }
        userinfo = await client.parse_id_token(token, pending["nonce"], claims_options=options)
        claims: dict[str, Any] = dict(userinfo or {})
        if not claims:
            raise LoginRefused("provider-changed", "token response without an id_token")
        if "email" not in claims:
            info = await client.userinfo(token=token)
            if info.get("sub") == claims["sub"]:
                claims = {**info, **claims}
    email = verified_email(claims, trust_unstated=web.settings.oidc_trust_email)
    user = web.store.sign_in(str(metadata["issuer"]), str(claims["sub"]), email)
    await wallet.open_wallet(web.ledger(), user)
    request.session.clear()
    request.session["user_id"] = user.id
    # Kept server-side for RP-initiated logout (the hint names who is logging out).
    request.session["id_token"] = token["id_token"]
    rotate_session(request.scope)
    after_login = _page_to_return_to(request, str(pending.get("next", "")))
    response = RedirectResponse(after_login, status_code=303)
    response.delete_cookie(LOGIN_COOKIE, path=LOGIN_COOKIE_PATH)
    return response


def verified_email(claims: dict[str, Any], *, trust_unstated: bool) -> str:
    """The ``email`` claim, normalised, if the provider vouches for it.

    ``email_verified`` true (the boolean, or the string "true" some providers send)
    vouches; false or anything else refuses. When the claim is absent, the address
    is accepted only if this server is set to trust its issuer's addresses
    (``TOKPAY_OIDC_TRUST_EMAIL``).
    """
    email = wallet.normalise_email(str(claims.get("email") or ""))
    if not wallet.is_email(email):
        raise LoginRefused("no-email", "no usable email claim")
    stated = claims.get("email_verified")
    if stated is True or (isinstance(stated, str) and stated.strip().lower() == "true"):
        return email
    if stated is None and trust_unstated:
        return email
    detail = "email_verified absent" if stated is None else f"email_verified is {stated!r}"
    raise LoginRefused("unverified-email", detail)


@router.post("/logout")
async def logout(request: Request, web: Web) -> Response:
    check_csrf(request, await request.form())
    return await _end_session(request, web)


@router.post("/logout/everywhere", name="logout_everywhere")
async def logout_everywhere(request: Request, web: Web, user: SignedIn) -> Response:
    """End every session of the user, on every device, then this one at the provider."""
    check_csrf(request, await request.form())
    ended = web.store.delete_user_sessions(user.id)
    log.info("user %s logged out everywhere (%d sessions)", user.id, ended)
    return await _end_session(request, web)


async def _end_session(request: Request, web: WebContext) -> Response:
    """Clear this session and send the browser to the provider's end-session endpoint
    (when it has one) so that the next login asks for credentials again."""
    id_token = request.session.get("id_token")
    request.session.clear()
    client = web.oidc_client()
    if client is None or not isinstance(id_token, str):
        return RedirectResponse("/", status_code=303)
    try:
        metadata = await _provider_metadata(web, client)
    except LoginRefused as refusal:
        log.warning("logout: provider session not ended (%s %s)", refusal.reason, refusal.detail)
        web.forget_provider()
        return RedirectResponse("/", status_code=303)
    if not metadata.get("end_session_endpoint"):
        return RedirectResponse("/", status_code=303)
    # No state: the provider would append it to the landing page's address.
    query = urlencode(
        {
            "id_token_hint": id_token,
            "post_logout_redirect_uri": str(request.url_for("landing")),
            "client_id": web.settings.oidc_client_id,
        }
    )
    endpoint = str(metadata["end_session_endpoint"])
    separator = "&" if "?" in endpoint else "?"
    return RedirectResponse(f"{endpoint}{separator}{query}", status_code=303)


async def _provider_metadata(web: WebContext, client: Any) -> dict[str, Any]:
    """The provider's discovery document, checked to name the configured issuer."""
    async with _provider_errors():
        metadata: dict[str, Any] = await client.load_server_metadata()
    configured = web.settings.oidc_issuer.rstrip("/")
    if str(metadata.get("issuer", "")).rstrip("/") != configured:
        raise LoginRefused("provider-changed", f"discovery names issuer {metadata.get('issuer')!r}")
    return metadata


class _provider_errors:
    """Turns what can go wrong talking to the provider into a ``LoginRefused``."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, error: Any, tb: Any) -> bool:
        if error is None or isinstance(error, LoginRefused):
            return False
        if isinstance(error, httpx.HTTPStatusError) and error.response.status_code < 500:
            raise LoginRefused("provider-changed", str(error)) from error
        if isinstance(error, httpx.HTTPError):
            raise LoginRefused("unreachable", f"{type(error).__name__}: {error}") from error
        if isinstance(error, OAuthError):
            raise LoginRefused(
                "provider-changed", f"token endpoint said {error.error!r}"
            ) from error
        if isinstance(error, (JoseError, ValueError, KeyError, RuntimeError)):
            raise LoginRefused("provider-changed", f"{type(error).__name__}: {error}") from error
        return False


def _page_to_return_to(request: Request, path: str) -> str:
    """``path`` if it is a page of this site that answers GET (never a form's POST-only
    address, which would greet the person with 405); else the dashboard."""
    path = _local_path(path)
    scope = {"type": "http", "method": "GET", "path": path.split("?", 1)[0], "root_path": ""}
    for route in request.app.router.routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return path
    return "/dashboard"


def _local_path(path: str) -> str:
    """A page of this site to return to after login; anything else is the dashboard."""
    if path.startswith("/") and not path.startswith(("//", "/\\")) and path.isprintable():
        return path
    return "/dashboard"
