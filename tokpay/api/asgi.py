"""The API's raw ASGI plumbing: a bounded JSON body in, a status and bytes out.

The hot-path router, the FastAPI routes and the API key guard all read bodies
and send replies through here, so the 413/415 rules and the content type of a
reply are written once. The ASGI aliases themselves are Starlette's
(``starlette.types``), which the web package imports too: one declaration, in the
library both already stand on.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import Receive, Send

from tokpay.api.problems import CLOSE_AFTER, JSON_MEDIA_TYPE, NO_STORE, media_type_of
from tokpay.ledger.errors import ErrorCode, LedgerError
from tokpay.ledger.limits import MAX_BODY_BYTES

Header = tuple[bytes, bytes]

_JSON = JSON_MEDIA_TYPE.encode()
_NO_STORE = [(name.encode(), value.encode()) for name, value in NO_STORE]


def _too_large() -> LedgerError:
    return LedgerError(ErrorCode.BODY_TOO_LARGE, f"bodies are limited to {MAX_BODY_BYTES} bytes")


async def read_body(receive: Receive, headers: Iterable[Header]) -> bytes:
    """The request body, refused with 415/413 before it can grow past MAX_BODY_BYTES."""
    content_type = b""
    for name, value in headers:
        if name == b"content-type":
            content_type = value.split(b";", 1)[0].strip().lower()
        elif name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
            raise _too_large()
    if content_type != _JSON:
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
            raise _too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_reply(
    send: Send, status: int, body: bytes, extra_headers: Iterable[Header] = ()
) -> None:
    """Answer with ``body`` as JSON (below 400) or as a problem (400 and up)."""
    headers = [
        (b"content-type", media_type_of(status).encode()),
        (b"content-length", str(len(body)).encode()),
        *_NO_STORE,
        *extra_headers,
    ]
    if status in CLOSE_AFTER:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
