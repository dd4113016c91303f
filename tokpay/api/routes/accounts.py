"""Account routes: open one, read one with its balance."""

from __future__ import annotations

from fastapi import APIRouter, Response

from tokpay.api.deps import JsonBody, LedgerHandlers, respond
from tokpay.api.openapi import operation

router = APIRouter(tags=["accounts"])


@router.post(
    "/v1/accounts",
    **operation(
        "Open an account", "AccountOut", body="AccountIn", created=True, refusals=(403, 409)
    ),
)
async def create_account(handlers: LedgerHandlers, body: JsonBody) -> Response:
    return respond(await handlers.create_account(body))


@router.get(
    "/v1/accounts/{account_id}",
    **operation("An account with its balance", "AccountOut", refusals=(404, 422)),
)
async def get_account(handlers: LedgerHandlers, account_id: str) -> Response:
    return respond(await handlers.get_account(account_id))
