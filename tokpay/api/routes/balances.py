"""Balance routes: one account's committed balance (a hot path), many in one call."""

from __future__ import annotations

from fastapi import APIRouter, Response

from tokpay.api.deps import JsonBody, LedgerHandlers, respond
from tokpay.api.openapi import operation

router = APIRouter(tags=["balances"])


@router.get(
    "/v1/accounts/{account_id}/balance",
    **operation(
        "Committed balance of one account (hot path)", "BalanceOut", refusals=(404, 422, 429)
    ),
)
async def get_balance(handlers: LedgerHandlers, account_id: str) -> Response:
    return respond(await handlers.get_balance(account_id))


@router.post(
    "/v1/balances/lookup",
    **operation(
        "Balances of many accounts in one call, in request order",
        "LookupOut",
        body="LookupIn",
        refusals=(429,),
    ),
)
async def lookup(handlers: LedgerHandlers, body: JsonBody) -> Response:
    return respond(await handlers.lookup_balances(body))
