"""The JSON API's ASGI app: FastAPI for the routes and docs, a lean router for the hot paths.

``GET /v1/accounts/{id}/balance`` and ``POST /v1/transfers`` are answered by
``HotPathRouter`` straight from the ASGI scope, skipping FastAPI's routing,
dependency injection and response classes; FastAPI still declares them, so they
appear in ``/openapi.json`` and ``/docs``, and would serve them if the router
were removed. Both paths call the same functions in ``handlers``.

``build_api`` makes the FastAPI app (other parts, such as the web app, may add
their routes to it); ``serve_api`` puts the hot-path router and the API key guard
in front. The process that composes them is ``tokpay.gateway``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokpay.api import openapi
from tokpay.api.asgi import read_body, send_reply
from tokpay.api.deps import Gateway, respond
from tokpay.api.guard import ApiKeyGuard, TrustedHosts, served_hosts
from tokpay.api.handlers import LIVENESS_BODY, Handlers
from tokpay.api.metrics import observe_request
from tokpay.api.problems import Reply, problem
from tokpay.api.routes import build_router
from tokpay.ledger.errors import ErrorCode, LedgerError
from tokpay.settings import Settings

log = logging.getLogger("tokpay.api")

BALANCE_PREFIX = "/v1/accounts/"
BALANCE_SUFFIX = "/balance"

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


class HotPathRouter:
    """ASGI app answering the two hot routes itself and passing the rest to FastAPI."""

    def __init__(self, api: FastAPI, gateway: Gateway) -> None:
        self.api = api
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        if (
            method == "GET"
            and path.startswith(BALANCE_PREFIX)
            and path.endswith(BALANCE_SUFFIX)
            and path.count("/") == 4
        ):
            route = "/v1/accounts/{account_id}/balance"
            account_id = path[len(BALANCE_PREFIX) : -len(BALANCE_SUFFIX)]
            status, body = await self._answer(lambda h: h.get_balance(account_id), path)
            await send_reply(send, status, body)
        elif path == "/livez":
            # Liveness of this gateway process alone: no ledger call. Also the
            # benchmarks' same-run ceiling (what the server does with no work).
            route = "/livez"
            status = 200
            await send_reply(send, status, LIVENESS_BODY)
        elif method == "POST" and path == "/v1/transfers":
            route = "/v1/transfers"

            async def submit(handlers: Handlers) -> Reply:
                return await handlers.create_transfer(await read_body(receive, scope["headers"]))

            status, body = await self._answer(submit, path)
            await send_reply(send, status, body)
        else:
            status, route = await self._pass_on(scope, receive, send)
        observe_request(route, status, time.perf_counter() - started)

    async def _pass_on(self, scope: Scope, receive: Receive, send: Send) -> tuple[int, str]:
        """Let FastAPI answer; the status and matched route template are for the metrics."""
        captured: dict[str, int] = {}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
            await send(message)

        await self.api(scope, receive, capture)
        found = scope.get("route")
        return captured.get("status", 500), getattr(found, "path", "unmatched")

    async def _answer(self, run: Callable[[Handlers], Awaitable[Reply]], path: str) -> Reply:
        try:
            return await run(self.gateway.require())
        except LedgerError as error:
            return problem(error, path)
        except Exception:
            log.exception("unexpected error on %s", path)
            detail = "unexpected server error; retry with the same id"
            return problem(LedgerError(ErrorCode.INTERNAL_ERROR, detail), path)


def build_api(
    gateway: Gateway, lifespan: Lifespan | None = None, *, docs_assets: str | None = None
) -> FastAPI:
    """The FastAPI app of the JSON API: routes, problem bodies for every error, the document.

    ``docs_assets`` is the URL the Swagger UI files are served under (by whoever serves
    static files); without it there is no ``/docs``. FastAPI's own ``/docs`` and ``/redoc``
    load their scripts from a CDN, so they are off.
    """
    api = FastAPI(
        title="TokPay",
        version="0.1.0",
        summary="Wallet-and-ledger API: balances, top-ups, payments to one or many accounts.",
        description=(
            "Amounts are integers in minor units (cents). Every error is an RFC 9457 "
            "`application/problem+json` body with a stable `code`. Transfer ids are "
            "idempotency keys: the same id and body returns the original result (200), "
            "the same id with another body is `transfer_id_conflict` (409)."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    api.state.gateway = gateway
    _install_error_handlers(api)
    api.include_router(build_router())
    openapi.install(api)
    if docs_assets is not None:
        openapi.install_docs(api, docs_assets)
    return api


def serve_api(api: FastAPI, gateway: Gateway, settings: Settings) -> ASGIApp:
    """The app an ASGI server runs: only the served host names, ``/v1`` (and the operator's
    endpoints) behind the key when required, then the hot paths.

    The key is not needed only on a development server bound to loopback alone.
    """
    app: ASGIApp = HotPathRouter(api, gateway)
    if settings.api_key_required():
        app = ApiKeyGuard(app, settings.api_key)
    return TrustedHosts(app, served_hosts(settings.bind_host, settings.allowed_hosts))


def _install_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(LedgerError)
    async def ledger_error(request: Request, error: LedgerError) -> Response:
        return respond(problem(error, request.url.path))

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}.get(
            error.status_code, ErrorCode.INVALID_BODY
        )
        return respond(problem(LedgerError(code, str(error.detail)), request.url.path))

    @api.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path, exc_info=error)
        detail = "unexpected server error; nothing was changed by this request"
        return respond(problem(LedgerError(ErrorCode.INTERNAL_ERROR, detail), request.url.path))

    @api.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        return respond(
            problem(LedgerError(ErrorCode.INVALID_BODY, str(error.errors())), request.url.path)
        )
