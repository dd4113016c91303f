"""Web fixtures: log in through a real OpenID provider (the dev provider that
``tokpay serve`` starts, or Canaille run by ``pytest-iam``), by HTTP or in Chromium."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from html import unescape
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from tests.conftest import ServerProcess
from tokpay.testing.localserver import LocalServer

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


def login_canaille_http(
    client: httpx.Client, user_name: str, password: str, start: str = "/auth/start"
) -> httpx.Response:
    """The authorization-code flow by hand at Canaille: our /auth/start, Canaille's
    login and password forms (and consent, if it asks), back to our callback."""
    response = client.get(start, follow_redirects=True)
    for form_id, fields in (
        ("loginform", {"login": user_name}),
        ("passwordform", {"password": password}),
        ("consentform", {"answer": "accept"}),
    ):
        if f'id="{form_id}"' not in response.text:
            continue
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', response.text)
        data = {**fields, "csrf_token": csrf.group(1) if csrf else ""}
        response = client.post(str(response.url), data=data, follow_redirects=True)
    return response


@dataclass
class Canaille:
    """A Canaille OpenID provider (in this process, ``pytest-iam``) and the TokPay
    client registered at it."""

    iam: Any
    client_id: str
    client_secret: str

    @property
    def issuer(self) -> str:
        return str(self.iam.url).rstrip("/")

    def register(self, client_id: str, base_urls: list[str], auth_method: str) -> None:
        client = self.iam.models.Client(
            client_id=client_id,
            client_secret=self.client_secret,
            client_name="TokPay",
            client_uri=base_urls[0],
            redirect_uris=[f"{url}/auth/callback" for url in base_urls],
            post_logout_redirect_uris=[f"{url}/" for url in base_urls],
            grant_types=["authorization_code"],
            response_types=["code"],
            token_endpoint_auth_method=auth_method,
            scope=["openid", "email", "profile"],
        )
        self.iam.backend.save(client)
        # An id token's audience is the client itself (Canaille's own registration
        # does this; a client made from the model alone would get an empty one).
        self.iam.backend.update(client, audience=[client])
        self.iam.backend.save(client)

    def new_user(self, name: str, email: str | None = None) -> Any:
        user_name = f"{name}-{secrets.token_hex(4)}"
        user = self.iam.models.User(
            user_name=user_name,
            emails=[email or f"{user_name}@example.org"],
            password=PASSWORD,
        )
        self.iam.backend.save(user)
        return user

    def change_email(self, user: Any, email: str) -> None:
        self.iam.backend.update(user, emails=[email])
        self.iam.backend.save(user)


PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
def canaille(iam_server: Any) -> Canaille:
    return Canaille(iam=iam_server, client_id="tokpay-web", client_secret=secrets.token_urlsafe(24))


@pytest.fixture(scope="session")
def canaille_server(
    canaille: Canaille, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A second ``tokpay serve`` whose issuer is Canaille: a client that authenticates
    with ``client_secret_post`` and trusts Canaille's (unstated) verified addresses."""
    process = LocalServer(tmp_path_factory.mktemp("canaille") / "data", shards=2)
    base_urls = [f"http://{host}:{process.port}" for host in ("127.0.0.1", "localhost")]
    canaille.register(canaille.client_id, base_urls, "client_secret_post")
    environment = {
        "TOKPAY_OIDC_ISSUER": canaille.issuer,
        "TOKPAY_OIDC_CLIENT_ID": canaille.client_id,
        "TOKPAY_OIDC_CLIENT_SECRET": canaille.client_secret,
        "TOKPAY_OIDC_TOKEN_AUTH_METHOD": "client_secret_post",
        "TOKPAY_OIDC_TRUST_EMAIL": "true",
    }
    # The child process takes the environment as it is when it starts.
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        process.start()
    try:
        yield process
    finally:
        process.stop()


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
