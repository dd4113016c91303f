"""Web-wide protections, in front of every page: bounded bodies, security headers, and a
rate limit on anonymous requests that can create state.

``BodyLimitAndHeaders`` sits outside the session middleware: a form body larger than
``MAX_FORM_BYTES`` is refused (413) before the session is loaded, the form parsed or
the CSRF token compared, and every response (pages, ``/chart.json``, the CSV export)
leaves with the pages' security headers and ``no-store``. ``AnonymousLimit`` sits
inside it, where the session tells a signed-in user from an anonymous client.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokpay.web.context import SECURITY_HEADERS

MAX_FORM_BYTES = 64 * 1024
"""Bytes in one web request body (the largest form, a payment to many people, is a few KiB)."""

HSTS = b"max-age=31536000"
"""One year of https only, for this host alone (subdomains may be other services)."""

ANON_BURST = 60
"""Anonymous state-creating requests one client may make at once..."""
ANON_PER_SECOND = 1.0
"""...and then per second, per gateway process."""
MAX_TRACKED_CLIENTS = 10_000
"""Clients the limiter remembers; the least recently seen is forgotten first."""

_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})
_STATIC = "/static/"

_TOO_LARGE_PAGE = (
    "<!doctype html><html lang=en><meta charset=utf-8><title>Too large · TokPay</title>"
    f"<h1>That was too large</h1><p>TokPay accepts forms of up to {MAX_FORM_BYTES // 1024} KiB. "
    "Go back and shorten what you typed.</p></html>"
).encode()

_PAGE_HEADERS = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]


Headers = list[tuple[bytes, bytes]]


def _with_headers(headers: Headers, *, page: bool, hsts: bool) -> Headers:
    present = {name.lower() for name, _ in headers}
    out = [(n, v) for n, v in headers if not (page and n.lower() == b"cache-control")]
    if page:
        # Pages and everything that carries balances: never stored by a browser or proxy.
        out += [(n, v) for n, v in _PAGE_HEADERS if n == b"cache-control" or n not in present]
    elif b"x-content-type-options" not in present:
        out.append((b"x-content-type-options", b"nosniff"))
    if hsts:
        out.append((b"strict-transport-security", HSTS))
    return out


@dataclass
class BodyLimitAndHeaders:
    """Bounds web request bodies and puts the security headers on every web response."""

    app: ASGIApp
    secure_cookies: bool
    skip_prefixes: tuple[str, ...]
    """The JSON API: it bounds its own bodies and writes its own headers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.skip_prefixes):
            await self.app(scope, receive, send)
            return
        hsts = self.secure_cookies or scope.get("scheme") == "https"
        page = not scope["path"].startswith(_STATIC)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                message = {**message, "headers": _with_headers(headers, page=page, hsts=hsts)}
            await send(message)

        if scope["method"] not in _BODYLESS or _declared_length(scope) is not None:
            body = await _bounded_body(scope, receive)
            if body is None:
                await _too_large(send_with_headers)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send_with_headers)


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else MAX_FORM_BYTES + 1
    return None


async def _bounded_body(scope: Scope, receive: Receive) -> bytes | None:
    """The whole body, or None as soon as it is known to exceed ``MAX_FORM_BYTES``."""
    declared = _declared_length(scope)
    if declared is not None and declared > MAX_FORM_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the app the body already read, then waits for disconnect."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _too_large(send: Send) -> None:
    # The unread rest of the body is still on the connection: it cannot carry a request.
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(_TOO_LARGE_PAGE)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": _TOO_LARGE_PAGE})


@dataclass
class TokenBuckets:
    """Per-client token buckets in a bounded table (least recently seen client evicted)."""

    burst: int = ANON_BURST
    per_second: float = ANON_PER_SECOND
    capacity: int = MAX_TRACKED_CLIENTS
    clock: Callable[[], float] = time.monotonic
    _buckets: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)

    def take(self, client: str) -> float:
        """0 when ``client`` may go ahead (one token taken), else seconds until it may."""
        now = self.clock()
        tokens, last = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.per_second)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.per_second
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.capacity:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass
class AnonymousLimit:
    """429 for a client without a signed-in session past ``ANON_BURST`` requests that can
    create state: any web request but a GET/HEAD, and the login callback (it opens a wallet
    and a session). Signed-in users are not limited here; the JSON API is not either."""

    app: ASGIApp
    refuse: Callable[[Request, int], Response]
    skip_prefixes: tuple[str, ...]
    state_creating_gets: tuple[str, ...] = ("/auth/callback",)
    buckets: TokenBuckets = field(default_factory=TokenBuckets)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._limited(scope):
            client = scope.get("client")
            wait = self.buckets.take(client[0] if client else "")
            if wait > 0:
                response = self.refuse(Request(scope, receive), math.ceil(wait))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _limited(self, scope: Scope) -> bool:
        path: str = scope["path"]
        if path.startswith(self.skip_prefixes) or scope.get("session", {}).get("user_id"):
            return False
        return scope["method"] not in ("GET", "HEAD") or path in self.state_creating_gets
