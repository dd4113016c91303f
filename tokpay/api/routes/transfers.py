"""Transfer routes: pay (a hot path), top up, read one, list an account's history."""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response

from tokpay.api.deps import JsonBody, LedgerHandlers, respond
from tokpay.api.openapi import HISTORY_QUERY, operation

router = APIRouter(tags=["transfers"])

_WRITE_REFUSALS = (403, 404, 409, 429)


@router.post(
    "/v1/transfers",
    **operation(
        "Pay one or more accounts from one account (hot path)",
        "TransferOut",
        body="TransferIn",
        created=True,
        refusals=_WRITE_REFUSALS,
    ),
)
async def create_transfer(handlers: LedgerHandlers, body: JsonBody) -> Response:
    return respond(await handlers.create_transfer(body))


@router.post(
    "/v1/topups",
    **operation(
        "Add money to an account from its currency's funding account",
        "TransferOut",
        body="TopupIn",
        created=True,
        refusals=_WRITE_REFUSALS,
    ),
)
async def create_topup(handlers: LedgerHandlers, body: JsonBody) -> Response:
    return respond(await handlers.create_topup(body))


@router.get(
    "/v1/transfers/{transfer_id}",
    **operation("One transfer", "TransferOut", refusals=(404, 422)),
)
async def get_transfer(handlers: LedgerHandlers, transfer_id: str) -> Response:
    return respond(await handlers.get_transfer(transfer_id))


@router.get(
    "/v1/accounts/{account_id}/transfers",
    **operation(
        "An account's transfers, newest first, with the signed effect on it",
        "HistoryOut",
        refusals=(404, 422),
        query=HISTORY_QUERY,
    ),
)
async def list_transfers(handlers: LedgerHandlers, request: Request, account_id: str) -> Response:
    query = dict(parse_qsl(request.url.query, keep_blank_values=True))
    return respond(await handlers.list_transfers(account_id, query))
