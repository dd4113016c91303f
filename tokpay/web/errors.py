"""Error pages in the app's style: 404, 405 and 500 on web pages say in plain words what
happened and where to go; the JSON API's paths keep the API's own error bodies.

The handlers wrap the ones already installed (the API's), deciding by path.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokpay.web.context import WebContext
from tokpay.web.store import User

log = logging.getLogger("tokpay.web")
Handler = Callable[[Request, Exception], Response | Awaitable[Response]]

_PAGES = {
    404: (
        "Page not found",
        "There is no page at this address. It may have moved, or the link has a typo.",
    ),
    405: (
        "That did not work",
        "This address cannot be used that way. Go back and use the page's buttons.",
    ),
}
_REFUSED = (
    "That did not work",
    "This request could not be handled. Nothing was changed; go back and try again.",
)
_UNEXPECTED = (
    "Something went wrong",
    "Something went wrong on our side. Nothing was changed by this request; please try again.",
)


def install_error_pages(api: FastAPI, web: WebContext, api_prefixes: tuple[str, ...]) -> None:
    """HTML error pages for every path but ``api_prefixes``, which keep the handlers before."""
    http_before = api.exception_handlers.get(StarletteHTTPException)
    unexpected_before = api.exception_handlers.get(Exception)

    def is_page(request: Request) -> bool:
        return not request.url.path.startswith(api_prefixes)

    async def http_error(request: Request, error: Exception) -> Response:
        status = error.status_code if isinstance(error, StarletteHTTPException) else 500
        if is_page(request) or http_before is None:
            title, message = _PAGES.get(status, _REFUSED)
            user = web.session_user(request) if "session" in request.scope else None
            page = _page(request, web, status, title, message, user)
            page.headers.update(getattr(error, "headers", None) or {})  # e.g. 405's Allow
            return page
        return await _delegate(http_before, request, error)

    async def unexpected_error(request: Request, error: Exception) -> Response:
        if is_page(request) or unexpected_before is None:
            log.exception("unexpected error on %s", request.url.path, exc_info=error)
            return _page(request, web, 500, *_UNEXPECTED)
        return await _delegate(unexpected_before, request, error)

    api.add_exception_handler(StarletteHTTPException, http_error)
    api.add_exception_handler(Exception, unexpected_error)


def _page(
    request: Request,
    web: WebContext,
    status: int,
    title: str,
    message: str,
    user: User | None = None,
) -> Response:
    """The page; a 500 passes no user (the session may be unreadable), so it has no forms."""
    return web.render(request, "error.html", status, title=title, message=message, user=user)


async def _delegate(handler: Handler, request: Request, error: Exception) -> Response:
    result = handler(request, error)
    return await result if inspect.isawaitable(result) else result


def page_to_return_to(request: Request) -> str:
    """Where login should bring the user back: this page if it was a GET, else the page
    the form was on (never a POST-only address), else the wallet."""
    if request.method == "GET":
        query = request.url.query
        return request.url.path + ("?" + query if query else "")
    referer = urlsplit(request.headers.get("referer", ""))
    if referer.netloc == request.url.netloc and referer.path.startswith("/"):
        return referer.path + ("?" + referer.query if referer.query else "")
    return "/dashboard"
