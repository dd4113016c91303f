"""The API's operations: one table row each, naming the handler that answers it.

A row says the method and path, the ``Handlers`` method that answers (its
docstring is the operation's summary) and what the document promises: the
schema of a success, the body it reads, the refusals its rules can answer.
``_endpoint`` serves every row the same way: handlers first (503 while the gateway
starts, before any body is read), then the JSON body if the row has one, then the
path's ids and the query, as keyword arguments of the handler.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response

from tokpay.api.asgi import read_body
from tokpay.api.deps import LedgerHandlers, respond
from tokpay.api.guard import KEYED_PREFIXES
from tokpay.api.handlers import LIVENESS_BODY, Handlers
from tokpay.api.openapi import HISTORY_QUERY, operation
from tokpay.api.problems import JSON_MEDIA_TYPE, Reply

PROMETHEUS_MEDIA_TYPE = "text/plain; version=0.0.4"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    tag: str
    answer: Callable[..., Awaitable[Reply]]
    out: str | None
    """Schema of a success; None for Prometheus text."""
    body: str | None = None
    refusals: tuple[int, ...] = ()
    created: bool = False
    query: list[dict[str, Any]] | None = None


_WRITE = (403, 404, 409, 429)

# fmt: off
ROUTES = (
    # method  path                                   tag           answered by               success        body          refusals (beyond openapi.operation's own)
    Route("GET",  "/healthz",                            "operations", Handlers.healthz,         "HealthOut"),
    Route("GET",  "/metrics",                            "operations", Handlers.metrics,         None),
    Route("GET",  "/v1/ledger/summary",                  "operations", Handlers.ledger_summary,  "LedgerSummaryOut"),
    Route("POST", "/v1/accounts",                        "accounts",   Handlers.create_account,  "AccountOut",  "AccountIn",  (403, 409, 507), created=True),
    Route("GET",  "/v1/accounts/{account_id}",           "accounts",   Handlers.get_account,     "AccountOut",  None,         (404, 422)),
    Route("GET",  "/v1/accounts/{account_id}/balance",   "balances",   Handlers.get_balance,     "BalanceOut",  None,         (404, 422, 429)),
    Route("POST", "/v1/balances/lookup",                 "balances",   Handlers.lookup,          "LookupOut",   "LookupIn",   (429,)),
    Route("POST", "/v1/transfers",                       "transfers",  Handlers.create_transfer, "TransferOut", "TransferIn", _WRITE, created=True),
    Route("POST", "/v1/topups",                          "transfers",  Handlers.create_topup,    "TransferOut", "TopupIn",    _WRITE, created=True),
    Route("GET",  "/v1/transfers/{transfer_id}",         "transfers",  Handlers.get_transfer,    "TransferOut", None,         (404, 422)),
    Route("GET",  "/v1/accounts/{account_id}/transfers", "transfers",  Handlers.list_transfers,  "HistoryOut",  None,         (404, 422), query=HISTORY_QUERY),
)
# fmt: on


def _endpoint(route: Route) -> Callable[..., Awaitable[Response]]:
    media_type = PROMETHEUS_MEDIA_TYPE if route.out is None else None

    async def endpoint(handlers: LedgerHandlers, request: Request) -> Response:
        arguments: dict[str, Any] = dict(request.path_params)
        if route.body is not None:
            arguments["body"] = await read_body(request.receive, request.scope["headers"])
        if route.query is not None:
            arguments["query"] = dict(parse_qsl(request.url.query, keep_blank_values=True))
        return respond(await route.answer(handlers, **arguments), media_type)

    return endpoint


def _summary(route: Route) -> str:
    return (inspect.getdoc(route.answer) or route.answer.__name__).splitlines()[0].rstrip(".")


async def livez() -> Response:
    # Served here only if the hot-path router is not in front; no ledger call either way.
    return Response(LIVENESS_BODY, 200, media_type=JSON_MEDIA_TYPE)


def build_router() -> APIRouter:
    """``/livez`` (no handlers needed: it answers while the gateway starts) and the table."""
    router = APIRouter()
    liveness = operation(
        "Liveness of this gateway process only", "LivenessOut", v1=False, ledger=False
    )
    router.add_api_route("/livez", livez, methods=["GET"], tags=["operations"], **liveness)
    for route in ROUTES:
        router.add_api_route(
            route.path,
            _endpoint(route),
            methods=[route.method],
            name=route.answer.__name__,
            tags=[route.tag],
            **operation(
                _summary(route),
                route.out,
                body=route.body,
                created=route.created,
                refusals=route.refusals,
                query=route.query,
                v1=route.path.startswith(KEYED_PREFIXES),
            ),
        )
    return router
