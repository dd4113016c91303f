"""What every web page needs: the context (settings, users, templates, OIDC, ledger),
the signed-in user as a FastAPI dependency, and the CSRF and account-ownership checks.

The context lives in ``app.state.web``; pages reach it, and the user in the
server-side session, through the ``Web`` and ``SignedIn`` dependencies.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from authlib.integrations.starlette_client import OAuth
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from tokpay.client.ledger import LedgerClient
from tokpay.settings import Settings
from tokpay.web.money import format_cents
from tokpay.web.people import PeopleStore
from tokpay.web.session import AddressRateLimit
from tokpay.web.store import User, WebStore

PROVIDER_TIMEOUT_SECONDS = 10.0
"""How long the web app waits for the OpenID provider (discovery, keys, tokens)."""
LOGIN_RATE_WINDOW_SECONDS = 60.0

HERE = Path(__file__).parent
# Pages load only this server's own scripts and styles (the vendored htmx and
# Chart.js included; Chart.js sets inline styles on its canvas), and no other
# site may frame them.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def security_headers(issuer: str) -> dict[str, str]:
    """The page headers; forms may also lead to the issuer's origin, where logging out
    sends the browser (a form's redirect counts for ``form-action``)."""
    parts = urlsplit(issuer)
    origin = f" {parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    return SECURITY_HEADERS | {
        "Content-Security-Policy": csp.replace("form-action 'self'", f"form-action 'self'{origin}")
    }


class LoginRequired(Exception):
    pass


class Forbidden(Exception):
    pass


class WebContext:
    """What every web route needs: settings, the user directory, OIDC client, ledger."""

    def __init__(self, settings: Settings, ledger: Callable[[], LedgerClient]) -> None:
        self.settings = settings
        self.ledger = ledger
        self.store = WebStore(settings.web_db_path())
        self.people = PeopleStore(settings.web_db_path())
        self.templates = Jinja2Templates(directory=HERE / "templates")
        self.templates.env.globals["format_cents"] = format_cents
        self.templates.env.globals["dev_login"] = settings.oidc_dev
        self.security_headers = security_headers(settings.oidc_issuer)
        self.signing_key = self.store.signing_key()
        self.login_starts = AddressRateLimit(
            settings.login_starts_per_minute, LOGIN_RATE_WINDOW_SECONDS
        )
        self.oauth = OAuth()
        if settings.oidc_issuer:
            self.oauth.register(
                "tokpay",
                client_id=settings.oidc_client_id,
                client_secret=settings.oidc_client_secret,
                server_metadata_url=settings.oidc_issuer.rstrip("/")
                + "/.well-known/openid-configuration",
                client_kwargs={
                    "scope": "openid email",
                    "code_challenge_method": "S256",
                    "token_endpoint_auth_method": settings.oidc_token_auth_method,
                    "timeout": PROVIDER_TIMEOUT_SECONDS,
                },
            )

    def oidc_client(self) -> Any:
        """Authlib's client for the configured issuer, or None when there is none."""
        return self.oauth.create_client("tokpay")

    def forget_provider(self) -> None:
        """Drop the cached discovery document and signing keys: the next login fetches
        them again (after a key rotation, a moved issuer or an outage)."""
        client = self.oidc_client()
        if client is not None:
            client.server_metadata.clear()

    def session_user(self, request: Request) -> User | None:
        user_id = request.session.get("user_id")
        return self.store.user(user_id) if isinstance(user_id, str) else None

    def render(
        self, request: Request, name: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        context.setdefault("user", None)
        # Only signed-in pages carry forms; anonymous visits do not start a session.
        context["csrf_token"] = csrf_token(request) if context["user"] is not None else ""
        response = self.templates.TemplateResponse(request, name, context, status_code=status)
        response.headers.update(self.security_headers)
        return response


async def _web(request: Request) -> WebContext:
    web: WebContext = request.app.state.web
    return web


# async dependencies run on the event loop, as the page code they stand for did.
Web = Annotated[WebContext, Depends(_web)]


async def _signed_in(request: Request, web: Web) -> User:
    user = web.session_user(request)
    if user is None:
        raise LoginRequired()
    return user


SignedIn = Annotated[User, Depends(_signed_in)]


def csrf_token(request: Request) -> str:
    token: str = request.session.setdefault("csrf", secrets.token_urlsafe(32))
    return token


def check_csrf(request: Request, form: FormData) -> None:
    sent = str(form.get("csrf_token", ""))
    expected = request.session.get("csrf", "")
    if not expected or not secrets.compare_digest(sent.encode(), str(expected).encode()):
        raise Forbidden("the form's security token is missing or stale; reload the page")


def check_account(user: User, named: object) -> None:
    """An account id sent by the browser must be the user's own, or the request is refused."""
    if named not in (None, "", user.account_id):
        raise Forbidden("that account is not yours")


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"
