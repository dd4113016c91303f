"""The web app on a FastAPI app: its pages, static files and server-side sessions.

``install_web`` adds them to the app it is given (the gateway's), with the
handlers that turn a missing login into a redirect and a refusal into a 403
page. Pages find the user through the session only; a form or URL naming any
other account is refused with 403.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from tokpay.client.ledger import LedgerClient
from tokpay.settings import Settings
from tokpay.web import auth, dashboard, payment_requests, payments
from tokpay.web.context import HERE, Forbidden, LoginRequired, WebContext, is_htmx
from tokpay.web.errors import install_error_pages, page_to_return_to
from tokpay.web.session import ServerSessionMiddleware
from tokpay.web.shield import AnonymousLimit, BodyLimitAndHeaders

SKIP_SESSION = ("/v1", "/static", "/livez", "/healthz", "/metrics", "/openapi.json", "/docs")
API_PREFIXES = ("/v1",)
"""The JSON API bounds its own bodies and writes its own headers."""


def install_web(api: FastAPI, settings: Settings, ledger: Callable[[], LedgerClient]) -> None:
    web = WebContext(settings, ledger)
    api.state.web = web
    api.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for pages in (auth.router, dashboard.router, payments.router, payment_requests.router):
        api.include_router(pages)

    def too_many(request: Request, retry_after: int) -> Response:
        message = "Too many attempts from your network. Wait a minute, then try again."
        response = web.render(request, "error.html", 429, message=message)
        response.headers["Retry-After"] = str(retry_after)
        return response

    # Added innermost first: the limiter runs inside the session, the body bound before it.
    api.add_middleware(AnonymousLimit, refuse=too_many, skip_prefixes=SKIP_SESSION)
    install_error_pages(api, web, SKIP_SESSION)
    api.add_middleware(
        ServerSessionMiddleware,
        store=web.store,
        ttl_seconds=settings.session_ttl_seconds,
        idle_seconds=settings.session_idle_seconds,
        secure=settings.secure_cookies,
        skip_prefixes=SKIP_SESSION,
    )
    api.add_middleware(
        BodyLimitAndHeaders, secure_cookies=settings.secure_cookies, skip_prefixes=API_PREFIXES
    )

    @api.exception_handler(auth.LoginRefused)
    async def login_refused(request: Request, refusal: auth.LoginRefused) -> Response:
        return auth.refused(request, web, refusal)

    @api.exception_handler(LoginRequired)
    async def login_required(request: Request, _: LoginRequired) -> Response:
        if is_htmx(request):
            # htmx keeps the page, and what was typed, on an error answer; app.js explains.
            return Response(status_code=401)
        target = "/login?" + urlencode({"next": page_to_return_to(request)})
        return RedirectResponse(target, status_code=303)

    @api.exception_handler(Forbidden)
    async def forbidden(request: Request, error: Forbidden) -> Response:
        user = web.session_user(request)
        return web.render(request, "error.html", 403, message=str(error), user=user)
