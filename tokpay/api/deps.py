"""What the API's routes share: the gateway's handlers, a request's body, the reply.

The gateway holder lives in ``app.state`` so the routers can be declared once at
import, the way FastAPI's full-stack template declares them, and still reach the
ledger client the running process attached to.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Response

from tokpay.api.asgi import read_body
from tokpay.api.handlers import Handlers
from tokpay.api.problems import Reply, media_type_of
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


async def _json_body(request: Request) -> bytes:
    return await read_body(request.receive, request.scope["headers"])


# Declared before the body wherever both are used: a gateway still starting answers
# 503 without reading the body, as the hot path does.
LedgerHandlers = Annotated[Handlers, Depends(_handlers)]
JsonBody = Annotated[bytes, Depends(_json_body)]


def respond(reply: Reply) -> Response:
    status, body = reply
    return Response(body, status, media_type=media_type_of(status))
