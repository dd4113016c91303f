"""The gateway's first checks, before any route: the ``Host`` it is called by, and the API
key in front of ``/v1`` and the operator's endpoints (``/metrics``, ``/docs``,
``/openapi.json``)."""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from tokpay.api.asgi import send_reply
from tokpay.api.problems import problem_body

UNAUTHORIZED = 401
BAD_REQUEST = 400

KEYED_PREFIXES = ("/v1", "/metrics", "/docs", "/openapi.json")
"""Paths behind the key: the API, and what tells an outsider how the server runs."""

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
MAX_REMEMBERED_HOSTS = 256
WILDCARD_BINDS = ("0.0.0.0", "::", "")


def served_hosts(bind_host: str, configured: str) -> list[str]:
    """Host names the gateway answers: the loopback names when it listens on loopback (or
    on every interface), the address it is bound to, and the configured ones."""
    hosts: list[str] = []
    if bind_host in LOOPBACK_NAMES or bind_host in WILDCARD_BINDS:
        hosts += LOOPBACK_NAMES
    if bind_host not in WILDCARD_BINDS:
        hosts.append(bind_host)
    hosts += [name.strip().lower() for name in configured.split(",") if name.strip()]
    return list(dict.fromkeys(host.lower() for host in hosts))


def host_of(value: bytes) -> str:
    """The name in a ``Host`` header without its port (``[::1]:80`` -> ``::1``)."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:].split("]", 1)[0]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class TrustedHosts:
    """Answers 400 to a request whose ``Host`` is not one the gateway serves.

    A page on another site can make a browser call this server under the attacker's
    own name (DNS rebinding); it cannot make the browser send one of these names.
    """

    def __init__(self, app: ASGIApp, hosts: Iterable[str]) -> None:
        self.app = app
        names = set(hosts)
        self.any_host = "*" in names
        self.exact = frozenset(n for n in names if not n.startswith("*."))
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))
        self._allowed_headers: set[bytes] = set()
        """``Host`` header values already allowed, as sent: the check on the hot path is
        one set lookup. Bounded by ``MAX_REMEMBERED_HOSTS``; past it, values are parsed."""

    def allows(self, host: str) -> bool:
        if self.any_host or host in self.exact:
            return True
        return bool(self.suffixes) and host.endswith(self.suffixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = b""
            for name, value in scope["headers"]:
                if name == b"host":
                    host = value
                    break
            if host not in self._allowed_headers:
                if not self.allows(host_of(host)):
                    detail = (
                        "this server does not answer to that host name (see TOKPAY_ALLOWED_HOSTS)"
                    )
                    body = problem_body("untrusted_host", BAD_REQUEST, detail, None)
                    await send_reply(send, BAD_REQUEST, body)
                    return
                if len(self._allowed_headers) < MAX_REMEMBERED_HOSTS:
                    self._allowed_headers.add(host)
        await self.app(scope, receive, send)


class ApiKeyGuard:
    """Refuses ``/v1`` (and ``KEYED_PREFIXES``) requests without
    ``Authorization: Bearer <TOKPAY_API_KEY>``.

    With no key configured every such request is refused: that is the state of
    a server reachable beyond loopback, or one not in development mode.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(KEYED_PREFIXES):
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
