"""The HTTP gateway: FastAPI for the API and its docs, a lean router for the hot paths.

``GET /v1/accounts/{id}/balance`` and ``POST /v1/transfers`` are answered by
``HotPathRouter`` straight from the ASGI scope, skipping FastAPI's routing,
dependency injection and response classes; FastAPI still declares them, so they
appear in ``/openapi.json`` and ``/docs``, and would serve them if the router
were removed. Both paths call the same functions in ``handlers``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import ray
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokpay.actors.deploy import connect_ledger
from tokpay.actors.naming import CONTROLLER_NAME, COORDINATOR_NAME, NAMESPACE
from tokpay.api import schemas
from tokpay.api.handlers import Handlers, Reply, problem
from tokpay.api.metrics import BATCH_SIZE, observe_request, render
from tokpay.client.ledger import LedgerClient
from tokpay.ledger.errors import ErrorCode, LedgerError
from tokpay.ledger.limits import MAX_BODY_BYTES
from tokpay.settings import Settings
from tokpay.web.guard import ApiKeyGuard
from tokpay.web.site import install_web

log = logging.getLogger("tokpay.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"
PROBLEM = b"application/problem+json"
BALANCE_PREFIX = "/v1/accounts/"
BALANCE_SUFFIX = "/balance"


class Gateway:
    """What a running gateway process holds: its ledger client and handlers."""

    def __init__(self) -> None:
        self.handlers: Handlers | None = None

    def require(self) -> Handlers:
        if self.handlers is None:
            raise LedgerError(ErrorCode.UNAVAILABLE, "the gateway is still starting")
        return self.handlers


async def read_body(receive: Receive, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The request body, refused with 415/413 before it can grow past MAX_BODY_BYTES."""
    content_type = b""
    for name, value in headers:
        if name == b"content-type":
            content_type = value.split(b";", 1)[0].strip().lower()
        elif name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
            raise LedgerError(
                ErrorCode.BODY_TOO_LARGE, f"bodies are limited to {MAX_BODY_BYTES} bytes"
            )
    if content_type != JSON:
        raise LedgerError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "send the body as application/json")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise LedgerError(ErrorCode.INVALID_BODY, "client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise LedgerError(
                ErrorCode.BODY_TOO_LARGE, f"bodies are limited to {MAX_BODY_BYTES} bytes"
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_reply(send: Send, status: int, body: bytes) -> None:
    kind = JSON if status < 400 else PROBLEM
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


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
            await _send_reply(send, status, body)
        elif path == "/livez":
            # Liveness of this gateway process alone: no ledger call. Also the
            # benchmarks' same-run ceiling (what the server does with no work).
            route = "/livez"
            status, body = 200, b'{"status":"ok"}'
            await _send_reply(send, status, body)
        elif method == "POST" and path == "/v1/transfers":
            route = "/v1/transfers"

            async def submit(handlers: Handlers) -> Reply:
                return await handlers.create_transfer(await read_body(receive, scope["headers"]))

            status, body = await self._answer(submit, path)
            await _send_reply(send, status, body)
        else:
            captured: dict[str, int] = {}

            async def capture(message: Message) -> None:
                if message["type"] == "http.response.start":
                    captured["status"] = message["status"]
                await send(message)

            await self.api(scope, receive, capture)
            status = captured.get("status", 500)
            found = scope.get("route")
            route = getattr(found, "path", "unmatched")
        observe_request(route, status, time.perf_counter() - started)

    async def _answer(self, run: Callable[[Handlers], Awaitable[Reply]], path: str) -> Reply:
        try:
            return await run(self.gateway.require())
        except LedgerError as error:
            return problem(error, path)
        except Exception:
            log.exception("unexpected error on %s", path)
            detail = "unexpected server error; retry with the same id"
            return problem(LedgerError(ErrorCode.INTERNAL_ERROR, detail), path)


def get_coordinator() -> Any:
    return ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)


def find_controller() -> Any:
    """The replicated cluster's controller, or None on the single-node default."""
    try:
        return ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        return None


def _schema_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(name: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _schema_ref(name)}},
        }
    }


def _responses(ok: int, name: str, *failures: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {
        ok: {
            "description": "Success",
            "content": {"application/json": {"schema": _schema_ref(name)}},
        }
    }
    for status in (*failures, 422, 429, 503):
        out[status] = {
            "description": "Problem (RFC 9457) with a stable `code`",
            "content": {"application/problem+json": {"schema": _schema_ref("Problem")}},
        }
    return out


def _reply(reply: Reply) -> Response:
    status, body = reply
    return Response(
        body, status, media_type="application/json" if status < 400 else "application/problem+json"
    )


def create_app(
    settings: Settings | None = None, *, connect: bool = True
) -> HotPathRouter | ApiKeyGuard:
    """The gateway's ASGI app; with ``connect`` it attaches to the Ray cluster on startup.

    The web app (``tokpay.web``) shares the FastAPI app; ``/v1`` sits behind the API
    key guard unless this is a development server bound only to loopback.
    """
    settings = settings or Settings()
    gateway = Gateway()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if connect:
            if not ray.is_initialized():
                ray.init(
                    address=settings.ray_address,
                    namespace=NAMESPACE,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
            # The cluster's own shard count, not a setting that could disagree with it.
            controller = find_controller()
            if controller is not None:
                shard_count = await controller.shard_count.remote()
                client = LedgerClient.for_cluster(shard_count)
            else:
                shard_count = await get_coordinator().shard_count.remote()
                client = LedgerClient(connect_ledger(shard_count))
            client.batch_observer = BATCH_SIZE.observe
            gateway.handlers = Handlers(client)
            log.info("gateway attached to %d shards", shard_count)
        yield

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
    )
    _install_error_handlers(api)
    _install_routes(api, gateway)
    _install_schemas(api)
    install_web(api, settings, lambda: gateway.require().ledger)
    router = HotPathRouter(api, gateway)
    return ApiKeyGuard(router, settings.api_key) if settings.api_key_required() else router


def _install_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(LedgerError)
    async def ledger_error(request: Request, error: LedgerError) -> Response:
        return _reply(problem(error, request.url.path))

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}.get(
            error.status_code, ErrorCode.INVALID_BODY
        )
        return _reply(problem(LedgerError(code, str(error.detail)), request.url.path))

    @api.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path, exc_info=error)
        detail = "unexpected server error; nothing was changed by this request"
        return _reply(problem(LedgerError(ErrorCode.INTERNAL_ERROR, detail), request.url.path))

    @api.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        return _reply(
            problem(LedgerError(ErrorCode.INVALID_BODY, str(error.errors())), request.url.path)
        )


def _install_routes(api: FastAPI, gateway: Gateway) -> None:
    async def body_of(request: Request) -> bytes:
        return await read_body(request.receive, request.scope["headers"])

    @api.get("/livez", tags=["operations"], summary="Liveness of this gateway process only")
    async def livez() -> Response:
        return Response(b'{"status":"ok"}', 200, media_type="application/json")

    @api.get("/healthz", tags=["operations"], summary="Liveness and ledger reachability")
    async def healthz() -> Response:
        handlers = gateway.require()
        stats = await handlers.ledger.shard_stats()
        body = {"status": "ok", "shards": len(stats), "accounts": sum(s.accounts for s in stats)}
        return Response(msgspec.json.encode(body), 200, media_type="application/json")

    @api.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def metrics() -> Response:
        handlers = gateway.require()
        stats = await handlers.ledger.shard_stats()
        coordinator = await handlers.ledger.coordinator_stats()
        return Response(render(stats, coordinator), 200, media_type="text/plain; version=0.0.4")

    @api.get(
        "/v1/ledger/summary",
        tags=["operations"],
        summary="Sum of all balances per currency (double entry: always zero)",
    )
    async def ledger_summary() -> Response:
        return _reply(await gateway.require().ledger_summary())

    @api.post(
        "/v1/accounts",
        tags=["accounts"],
        summary="Open an account",
        status_code=201,
        openapi_extra=_body("AccountIn"),
        responses=_responses(201, "AccountOut", 409),
    )
    async def create_account(request: Request) -> Response:
        return _reply(await gateway.require().create_account(await body_of(request)))

    @api.get(
        "/v1/accounts/{account_id}",
        tags=["accounts"],
        summary="An account with its balance",
        responses=_responses(200, "AccountOut", 404),
    )
    async def get_account(account_id: str) -> Response:
        return _reply(await gateway.require().get_account(account_id))

    @api.get(
        "/v1/accounts/{account_id}/balance",
        tags=["balances"],
        summary="Committed balance of one account (hot path)",
        responses=_responses(200, "BalanceOut", 404),
    )
    async def get_balance(account_id: str) -> Response:
        return _reply(await gateway.require().get_balance(account_id))

    @api.post(
        "/v1/balances/lookup",
        tags=["balances"],
        summary="Balances of many accounts in one call, in request order",
        openapi_extra=_body("LookupIn"),
        responses=_responses(200, "LookupOut"),
    )
    async def lookup(request: Request) -> Response:
        return _reply(await gateway.require().lookup_balances(await body_of(request)))

    @api.post(
        "/v1/transfers",
        tags=["transfers"],
        summary="Pay one or more accounts from one account (hot path)",
        status_code=201,
        openapi_extra=_body("TransferIn"),
        responses=_responses(201, "TransferOut", 404, 409),
    )
    async def create_transfer(request: Request) -> Response:
        return _reply(await gateway.require().create_transfer(await body_of(request)))

    @api.post(
        "/v1/topups",
        tags=["transfers"],
        summary="Add money to an account from its currency's funding account",
        status_code=201,
        openapi_extra=_body("TopupIn"),
        responses=_responses(201, "TransferOut", 404, 409),
    )
    async def create_topup(request: Request) -> Response:
        return _reply(await gateway.require().create_topup(await body_of(request)))

    @api.get(
        "/v1/transfers/{transfer_id}",
        tags=["transfers"],
        summary="One transfer",
        responses=_responses(200, "TransferOut", 404),
    )
    async def get_transfer(transfer_id: str) -> Response:
        return _reply(await gateway.require().get_transfer(transfer_id))

    @api.get(
        "/v1/accounts/{account_id}/transfers",
        tags=["transfers"],
        summary="An account's transfers, newest first, with the signed effect on it",
        responses=_responses(200, "HistoryOut", 404),
    )
    async def list_transfers(request: Request, account_id: str) -> Response:
        query = dict(parse_qsl(request.url.query, keep_blank_values=True))
        return _reply(await gateway.require().list_transfers(account_id, query))


def _install_schemas(api: FastAPI) -> None:
    _, components = msgspec.json.schema_components(
        [
            schemas.AccountIn,
            schemas.AccountOut,
            schemas.BalanceOut,
            schemas.LookupIn,
            schemas.LookupOut,
            schemas.TransferIn,
            schemas.TransferOut,
            schemas.TopupIn,
            schemas.HistoryOut,
            schemas.Problem,
        ],
        ref_template="#/components/schemas/{name}",
    )
    original = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            document = original()
            document.setdefault("components", {}).setdefault("schemas", {}).update(components)
            api.openapi_schema = document
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]


def app_from_environment() -> HotPathRouter | ApiKeyGuard:
    """Factory for ASGI servers started with one import string (uvicorn/granian workers)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return create_app(Settings())
