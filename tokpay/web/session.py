"""Server-side sessions: the cookie carries only a random id, the data lives in SQLite.

An ASGI middleware in the place of Starlette's ``SessionMiddleware`` (whose cookie
holds the data, signed but readable): it fills ``scope["session"]`` from the
store, writes it back when it changed, and issues a new id when asked to rotate
(at login, so an id planted before login is worth nothing after it).
"""

from __future__ import annotations

import json
import secrets
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
    secure: bool
    """Mark the cookie Secure even when this process sees plain http (TLS in front)."""
    skip_prefixes: tuple[str, ...]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.skip_prefixes):
            await self.app(scope, receive, send)
            return
        old_id = _cookie(scope, COOKIE_NAME)
        data = self.store.load_session(old_id) if old_id else None
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
                self.store.save_session(old_id, data, self.ttl_seconds)
            return None
        if old_id is not None:
            self.store.delete_session(old_id)
        new_id = secrets.token_urlsafe(32)
        self.store.save_session(new_id, data, self.ttl_seconds)
        return _cookie_header(new_id, self.ttl_seconds, secure)


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
