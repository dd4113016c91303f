"""The /v1 API key rule, in-process: who needs a key, and what a refusal looks like.

Also, with no Ray cluster: every operation of the document lists the 401 the guard
answers and the 503 of a gateway not yet attached to the ledger.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tokpay.api.app import build_api
from tokpay.api.deps import Gateway
from tokpay.api.guard import KEYED_PREFIXES, ApiKeyGuard, host_of, served_hosts
from tokpay.gateway import create_app
from tokpay.settings import Settings


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize(
    ("environment", "host", "key", "required"),
    [
        ("development", "127.0.0.1", "", False),
        ("development", "localhost", "", False),
        ("development", "0.0.0.0", "", True),
        ("production", "127.0.0.1", "", True),
        ("development", "127.0.0.1", "k", True),
    ],
)
def test_who_needs_a_key(environment: str, host: str, key: str, required: bool) -> None:
    settings = Settings(environment=environment, bind_host=host, api_key=key)  # type: ignore[arg-type]
    assert settings.api_key_required() is required


def _get(
    app: Any, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> httpx.Response:
    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.request(method, path, headers=headers or {})

    # A thread of its own: Playwright's sync API may hold this thread's event loop.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, get()).result()


@pytest.mark.parametrize("key", ["secret-key", ""])
def test_v1_refused_without_the_right_bearer(key: str) -> None:
    guard = ApiKeyGuard(_ok, key)
    missing = _get(guard, "/v1/accounts/a/balance")
    assert missing.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["code"] == "unauthorized"
    wrong = _get(guard, "/v1/transfers", {"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    right = _get(guard, "/v1/transfers", {"Authorization": f"Bearer {key}"})
    assert right.status_code == (200 if key else 401)
    assert _get(guard, "/dashboard").status_code == 200
    for operator in ("/metrics", "/docs", "/openapi.json"):
        assert _get(guard, operator).status_code == 401
        assert _get(guard, operator, {"Authorization": f"Bearer {key}"}).status_code == (
            200 if key else 401
        )


@pytest.mark.parametrize(
    ("bind", "configured", "expected"),
    [
        ("127.0.0.1", "", ["127.0.0.1", "localhost", "::1"]),
        ("localhost", "", ["127.0.0.1", "localhost", "::1"]),
        ("0.0.0.0", "", ["127.0.0.1", "localhost", "::1"]),
        ("10.1.2.3", "", ["10.1.2.3"]),
        ("0.0.0.0", "Pay.Example.com, *.corp.example,", [
            "127.0.0.1", "localhost", "::1", "pay.example.com", "*.corp.example",
        ]),
    ],
)  # fmt: skip
def test_served_hosts(bind: str, configured: str, expected: list[str]) -> None:
    assert served_hosts(bind, configured) == expected


@pytest.mark.parametrize(
    ("header", "host"),
    [
        (b"example.com", "example.com"),
        (b"Example.COM:8443", "example.com"),
        (b"[::1]:8000", "::1"),
        (b"[::1]", "::1"),
        (b"", ""),
    ],
)
def test_host_of(header: bytes, host: str) -> None:
    assert host_of(header) == host


def _unattached_answer(path: str, keyed: bool) -> int:
    """What a gateway whose ledger is not attached answers, with or without the key."""
    if path.startswith(KEYED_PREFIXES) and not keyed:
        return 401
    return 200 if path == "/livez" else 503


def test_guard_and_starting_gateway_answers_are_documented(tmp_path: Path) -> None:
    settings = Settings(api_key="k", web_db=tmp_path / "web.sqlite3")
    app = create_app(settings, connect=False)
    document = build_api(Gateway()).openapi()
    for path, operations in document["paths"].items():
        url = path.format(account_id="a", transfer_id="t")
        for method, operation in operations.items():
            for keyed in (False, True):
                headers = {"Authorization": "Bearer k"} if keyed else {}
                response = _get(app, url, headers, method.upper())
                expected = _unattached_answer(path, keyed)
                assert response.status_code == expected, (method, url, keyed)
                documented = operation["responses"][str(expected)]["content"]
                assert response.headers["content-type"].split(";")[0] in documented
