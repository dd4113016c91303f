"""Server-side sessions: the cookie carries only a random id, the data lives in SQLite.

An ASGI middleware in the place of Starlette's ``SessionMiddleware`` (whose cookie
holds the data, signed but readable): it fills ``scope["session"]`` from the
store, writes it back when it changed, and issues a new id when asked to rotate
(at login, so an id planted before login is worth nothing after it). A session
ends after ``ttl_seconds`` at the latest, or ``idle_seconds`` after its last use.

Also here: short-lived signed values for cookies that hold no session (the
pre-login OIDC state), and the bounded per-address rate limit of login starts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from dataclasses import KW_ONLY, dataclass
from http.cookies import SimpleCookie
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokpay.web.store import WebStore

COOKIE_NAME = "tokpay_session"
ROTATE_KEY = "tokpay.session.rotate"


def rotate_session(scope: Scope) -> None:
    """Ask the middleware for a fresh session id on this response."""
    scope[ROTATE_KEY] = True


@dataclass
class ServerSessionMiddleware:
    """Sessions for every path but ``skip_prefixes`` (the API, static files, probes)."""

    app: ASGIApp
    store: WebStore
    _: KW_ONLY
    ttl_seconds: int
    idle_seconds: int
    secure: bool
    """Mark the cookie Secure even when this process sees plain http (TLS in front)."""
    skip_prefixes: tuple[str, ...]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.skip_prefixes):
            await self.app(scope, receive, send)
            return
        old_id = _cookie(scope, COOKIE_NAME)
        data = self.store.load_session(old_id, self.idle_seconds) if old_id else None
        if data is None:
            old_id = None
            data = {}
        scope["session"] = data
        before = json.dumps(data, sort_keys=True)
        secure = self.secure or scope.get("scheme") == "https"

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                header = self._commit(scope, old_id, before, secure)
                if header is not None:
                    message.setdefault("headers", [])
                    message["headers"] = [*message["headers"], (b"set-cookie", header)]
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def _commit(self, scope: Scope, old_id: str | None, before: str, secure: bool) -> bytes | None:
        data: dict[str, Any] = scope["session"]
        rotate = scope.get(ROTATE_KEY, False)
        changed = json.dumps(data, sort_keys=True) != before
        if not data:
            if old_id is None:
                return None
            self.store.delete_session(old_id)
            return _cookie_header("", 0, secure)
        if old_id is not None and not rotate:
            if changed:
                self.store.save_session(old_id, data, self.ttl_seconds, self.idle_seconds)
            return None
        if old_id is not None:
            self.store.delete_session(old_id)
        new_id = secrets.token_urlsafe(32)
        self.store.save_session(new_id, data, self.ttl_seconds, self.idle_seconds)
        return _cookie_header(new_id, self.ttl_seconds, secure)


def cookie_value(scope: Scope, name: str) -> str | None:
    """The value of cookie ``name`` in the request, if it sent one."""
    return _cookie(scope, name)


def _cookie(scope: Scope, name: str) -> str | None:
    for key, value in scope["headers"]:
        if key == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:
                return None
            if name in jar:
                return jar[name].value
    return None


def _cookie_header(value: str, max_age: int, secure: bool) -> bytes:
    parts = [f"{COOKIE_NAME}={value}", "Path=/", f"Max-Age={max_age}", "HttpOnly", "SameSite=Lax"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts).encode("latin-1")


def sign(key: bytes, purpose: str, value: dict[str, Any]) -> str:
    """``value`` as a cookie-safe string that only holders of ``key`` can make, for
    ``purpose`` only, stamped with the time it was made (readable, not secret)."""
    body = _b64(json.dumps({"p": purpose, "t": int(time.time()), "v": value}).encode())
    return f"{body}.{_b64(_mac(key, body))}"


def unsign(key: bytes, purpose: str, signed: str, max_age_seconds: int) -> dict[str, Any] | None:
    """The value ``sign`` made, or None if forged, for another purpose, or too old."""
    body, _, mac = signed.partition(".")
    try:
        valid = hmac.compare_digest(base64.urlsafe_b64decode(mac + "=="), _mac(key, body))
        payload = json.loads(base64.urlsafe_b64decode(body + "==")) if valid else None
    except ValueError:
        return None
    if not isinstance(payload, dict) or payload.get("p") != purpose:
        return None
    age = time.time() - float(payload.get("t", 0))
    value = payload.get("v")
    if not 0 <= age <= max_age_seconds or not isinstance(value, dict):
        return None
    return value


def _mac(key: bytes, body: str) -> bytes:
    return hmac.new(key, body.encode(), hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class AddressRateLimit:
    """At most ``limit`` events per client address in each ``window_seconds``, in this
    process, remembering at most ``max_addresses`` addresses (the least recently seen
    are forgotten first, so a flood of addresses cannot grow it)."""

    def __init__(self, limit: int, window_seconds: float, max_addresses: int = 10_000) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self.max_addresses = max_addresses
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def allow(self, address: str, now: float | None = None) -> bool:
        """Count one event for ``address``; False when it is over its limit."""
        now = time.monotonic() if now is None else now
        started, count = self._seen.pop(address, (now, 0))
        if now - started >= self.window_seconds:
            started, count = now, 0
        count += 1
        self._seen[address] = (started, count)
        while len(self._seen) > self.max_addresses:
            self._seen.popitem(last=False)
        return count <= self.limit
