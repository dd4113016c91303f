"""What the API's routes share: the gateway's handlers and how a reply becomes a response.

The gateway holder lives in ``app.state``, so the routes are plain functions of
the request that still reach the ledger client the running process attached to.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Response

from tokpay.api.handlers import Handlers
from tokpay.api.problems import CLOSE_AFTER, NO_STORE, Reply, media_type_of
from tokpay.ledger.errors import ErrorCode, LedgerError


class Gateway:
    """What a running gateway process holds: its handlers, once attached to the ledger."""

    def __init__(self) -> None:
        self.handlers: Handlers | None = None

    def require(self) -> Handlers:
        if self.handlers is None:
            raise LedgerError(ErrorCode.UNAVAILABLE, "the gateway is still starting")
        return self.handlers


def _handlers(request: Request) -> Handlers:
    gateway: Gateway = request.app.state.gateway
    return gateway.require()


LedgerHandlers = Annotated[Handlers, Depends(_handlers)]


def respond(reply: Reply, success_media_type: str | None = None) -> Response:
    """JSON below 400 unless told otherwise; a problem body from 400 up."""
    status, body = reply
    media_type = success_media_type if success_media_type and status < 400 else None
    headers = dict(NO_STORE)
    if status in CLOSE_AFTER:
        headers["connection"] = "close"
    return Response(body, status, headers=headers, media_type=media_type or media_type_of(status))
