"""Server-side sessions in-process: what the cookie carries and when it changes."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tokpay.web.session import COOKIE_NAME, ServerSessionMiddleware, rotate_session
from tokpay.web.store import WebStore


async def _app(scope: Any, receive: Any, send: Any) -> None:
    """Sets the session from the path: /set/VALUE, /rotate, /clear, /read."""
    session = scope["session"]
    path = scope["path"]
    if path.startswith("/set/"):
        session["value"] = path.removeprefix("/set/")
    elif path == "/rotate":
        rotate_session(scope)
    elif path == "/clear":
        session.clear()
    body = str(session.get("value", "")).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _run(
    store: WebStore, base_url: str, steps: list[str], idle: int = 60
) -> list[tuple[httpx.Response, dict[str, Any] | None]]:
    """Each response, with what the store held for the client's cookie right after it."""
    app = ServerSessionMiddleware(
        _app, store, ttl_seconds=60, idle_seconds=idle, secure=False, skip_prefixes=("/v1",)
    )

    async def go() -> list[tuple[httpx.Response, dict[str, Any] | None]]:
        transport = httpx.ASGITransport(app=app)
        out = []
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            for step in steps:
                response = await client.get(step)
                session_id = client.cookies.get(COOKIE_NAME)
                out.append((response, store.load_session(session_id, 60) if session_id else None))
        return out

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, go()).result()


def test_cookie_is_an_id_and_data_stays_on_the_server(tmp_path: Path) -> None:
    store = WebStore(tmp_path / "web.sqlite3")
    results = _run(
        store,
        "http://t",
        ["/read", "/set/secret-value", "/read", "/rotate", "/read", "/clear", "/read"],
    )
    read_only, first, read, rotated, after, cleared, gone = (r for r, _ in results)
    assert results[1][1] == {"value": "secret-value"}  # the data is in the table
    assert "set-cookie" not in read_only.headers  # nothing stored, no cookie
    cookie = first.headers["set-cookie"]
    assert "secret-value" not in cookie
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    session_id = cookie.split(";", 1)[0].split("=", 1)[1]
    assert read.text == "secret-value" and "set-cookie" not in read.headers
    new_id = rotated.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]
    assert new_id != session_id
    assert store.load_session(session_id, 60) is None
    assert after.text == "secret-value"
    assert f"{COOKIE_NAME}=;" in cleared.headers["set-cookie"]
    assert store.load_session(new_id, 60) is None
    assert gone.text == ""


def test_cookie_is_secure_over_https(tmp_path: Path) -> None:
    store = WebStore(tmp_path / "web.sqlite3")
    ((response, _),) = _run(store, "https://t", ["/set/x"])
    assert "Secure" in response.headers["set-cookie"]
