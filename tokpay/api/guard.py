"""The ``/v1`` API key check, in front of every ``/v1`` route (hot paths included)."""

from __future__ import annotations

import secrets

from starlette.types import ASGIApp, Receive, Scope, Send

from tokpay.api.asgi import send_reply
from tokpay.api.problems import problem_body

UNAUTHORIZED = 401


class ApiKeyGuard:
    """Refuses ``/v1`` requests without ``Authorization: Bearer <TOKPAY_API_KEY>``.

    With no key configured every ``/v1`` request is refused: that is the state of
    a server reachable beyond loopback, or one not in development mode.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            presented = dict(scope["headers"]).get(b"authorization", b"")
            if self.expected is None or not secrets.compare_digest(presented, self.expected):
                await _refuse(send, scope["path"], self.expected is None)
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, path: str, unconfigured: bool) -> None:
    detail = (
        "the /v1 API needs TOKPAY_API_KEY on a server that is not a loopback-only dev server"
        if unconfigured
        else "send Authorization: Bearer <API key>"
    )
    body = problem_body("unauthorized", UNAUTHORIZED, detail, path)
    challenge = (b"www-authenticate", b'Bearer realm="tokpay"')
    await send_reply(send, UNAUTHORIZED, body, [challenge])
