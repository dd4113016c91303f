"""Operations routes: liveness, health, Prometheus metrics, the ledger's zero-sum check."""

from __future__ import annotations

from fastapi import APIRouter, Response

from tokpay.api.deps import LedgerHandlers, respond
from tokpay.api.handlers import LIVENESS_BODY
from tokpay.api.openapi import operation
from tokpay.api.problems import JSON_MEDIA_TYPE

PROMETHEUS_MEDIA_TYPE = "text/plain; version=0.0.4"

router = APIRouter(tags=["operations"])


@router.get(
    "/livez",
    **operation("Liveness of this gateway process only", "LivenessOut", v1=False, ledger=False),
)
async def livez() -> Response:
    return Response(LIVENESS_BODY, 200, media_type=JSON_MEDIA_TYPE)


@router.get("/healthz", **operation("Liveness and ledger reachability", "HealthOut", v1=False))
async def healthz(handlers: LedgerHandlers) -> Response:
    return respond(await handlers.health())


@router.get("/metrics", **operation("Prometheus metrics", None, v1=False))
async def metrics(handlers: LedgerHandlers) -> Response:
    return Response(await handlers.metrics(), 200, media_type=PROMETHEUS_MEDIA_TYPE)


@router.get(
    "/v1/ledger/summary",
    **operation("Sum of all balances per currency (double entry: always zero)", "LedgerSummaryOut"),
)
async def ledger_summary(handlers: LedgerHandlers) -> Response:
    return respond(await handlers.ledger_summary())
