"""Web fixtures: log in through the real dev OpenID provider, by HTTP or in Chromium."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from html import unescape
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from tests.conftest import ServerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
_FORM = re.compile(r'<form[^>]*action="([^"]+)"', re.I)


def new_email(name: str) -> str:
    return f"{name}-{secrets.token_hex(4)}@example.com"


def login_http(client: httpx.Client, email: str, start: str = "/auth/start") -> httpx.Response:
    """The authorization-code flow by hand: our /auth/start, the provider's login and
    consent forms, back to our callback. Returns the final (dashboard) response."""
    response = client.get(start, follow_redirects=True)
    for prompt, fields in (("login", {"login": email, "password": "any"}), ("consent", {})):
        match = _FORM.search(response.text)
        if match is None or f'value="{prompt}"' not in response.text:
            continue
        action = urljoin(str(response.url), unescape(match.group(1)))
        response = client.post(action, data={"prompt": prompt, **fields}, follow_redirects=True)
    return response


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    if match is None:
        raise AssertionError("page has no CSRF token")
    return match.group(1)


def field_of(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    if match is None:
        raise AssertionError(f"page has no field {name}")
    return match.group(1)


@pytest.fixture(autouse=True)
def books_balance(server: ServerProcess) -> Iterator[None]:
    """After every web test, however money moved, the sum of all balances is zero."""
    yield
    summary = httpx.get(f"{server.url}/v1/ledger/summary", timeout=30).json()
    for currency, figures in summary["currencies"].items():
        assert figures["sum_of_balances"] == 0, currency


@pytest.fixture
def web(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
