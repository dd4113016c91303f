"""Login against Canaille, a second, independent OpenID provider (``pytest-iam``).

Through a real ``tokpay serve`` (``canaille_server``): the whole flow, users keyed
by (issuer, sub). In this process (the web app alone, ``inproc``): what happens
when the provider misbehaves, refuses, or cannot be reached, where no wallet is
opened and so no ledger is needed.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from joserfc.jwk import JWKRegistry
from starlette.testclient import TestClient

from tests.conftest import ServerProcess
from tests.web.conftest import PASSWORD, Canaille, login_canaille_http
from tokpay.client.ledger import LedgerClient
from tokpay.settings import Settings
from tokpay.web.auth import LOGIN_COOKIE, LoginRefused, verified_email
from tokpay.web.site import install_web
from tokpay.web.store import WebStore

INPROC_CLIENT = "tokpay-inproc"
INPROC_URL = "http://testserver"


# The whole flow through tokpay serve ----------------------------------------------


def _login(server: ServerProcess, canaille: Canaille, user: Any) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        return login_canaille_http(client, user.user_name, PASSWORD)


def _users(server: ServerProcess) -> WebStore:
    return WebStore(server.data_dir / "web.sqlite3")


def test_canaille_login_opens_the_dashboard(
    canaille_server: ServerProcess, canaille: Canaille
) -> None:
    """Canaille sends no email_verified and authenticates clients by client_secret_post
    here: both were refused before (every login failed)."""
    user = canaille.new_user("ada")
    response = _login(canaille_server, canaille, user)
    assert response.url.path == "/dashboard", response.text[:500]
    assert user.emails[0] in response.text


def test_an_email_change_keeps_the_wallet(
    canaille_server: ServerProcess, canaille: Canaille
) -> None:
    user = canaille.new_user("grace")
    old_email = user.emails[0]
    assert _login(canaille_server, canaille, user).url.path == "/dashboard"
    before = _users(canaille_server).user_for_email(old_email)
    assert before is not None
    new_email = f"new-{old_email}"
    canaille.change_email(user, new_email)
    response = _login(canaille_server, canaille, user)
    assert response.url.path == "/dashboard" and new_email in response.text
    after = _users(canaille_server).user_for_email(new_email)
    assert after is not None and after.account_id == before.account_id
    assert _users(canaille_server).user_for_email(old_email) is None


def test_a_reassigned_address_does_not_inherit_the_wallet(
    canaille_server: ServerProcess, canaille: Canaille
) -> None:
    first = canaille.new_user("first")
    address = first.emails[0]
    assert _login(canaille_server, canaille, first).url.path == "/dashboard"
    first_wallet = _users(canaille_server).user_for_email(address)
    canaille.change_email(first, f"moved-{address}")
    second = canaille.new_user("second", email=address)
    assert _login(canaille_server, canaille, second).url.path == "/dashboard"
    second_wallet = _users(canaille_server).user_for_email(address)
    assert first_wallet is not None and second_wallet is not None
    assert second_wallet.account_id != first_wallet.account_id
    # The first person still reaches their own wallet, under their new address.
    assert _login(canaille_server, canaille, first).url.path == "/dashboard"
    moved = _users(canaille_server).user_for_email(f"moved-{address}")
    assert moved is not None and moved.account_id == first_wallet.account_id


def test_browser_login_dashboard_logout_at_canaille(
    canaille_server: ServerProcess, canaille: Canaille, browser: Any
) -> None:
    """Log in at Canaille's own pages, see the dashboard, log out: the provider's
    session ends too, so "Log in" asks for the password again."""
    user = canaille.new_user("browser")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto(canaille_server.url + "/login")
        page.get_by_role("link", name="Continue to sign in").click()
        _canaille_sign_in(page, user.user_name)
        page.wait_for_url(canaille_server.url + "/dashboard")
        page.wait_for_selector(f"text={user.emails[0]}")
        page.get_by_role("button", name="Log out").first.click()
        page.wait_for_url(canaille_server.url + "/")
        page.goto(canaille_server.url + "/login")
        page.get_by_role("link", name="Continue to sign in").click()
        page.wait_for_selector("#loginform")  # asked again, not let straight back in
    finally:
        context.close()


def _canaille_sign_in(page: Any, user_name: str) -> None:
    page.wait_for_selector("#loginform")
    page.fill("#loginform input[name=login]", user_name)
    page.locator("#loginform [type=submit]").first.click()
    page.wait_for_selector("#passwordform")
    page.fill("#passwordform input[name=password]", PASSWORD)
    page.locator("#passwordform [type=submit]").first.click()
    page.wait_for_load_state()
    if page.locator("#consentform").count():
        page.locator("#consentform button[value=accept]").click()


# The web app alone, in this process, against Canaille --------------------------------


def _no_ledger() -> LedgerClient:
    raise AssertionError("these tests never reach the ledger: no login completes")


def _inproc(settings: Settings) -> TestClient:
    app = FastAPI()
    install_web(app, settings, _no_ledger)
    return TestClient(app, base_url=INPROC_URL)


@pytest.fixture
def inproc_client(canaille: Canaille) -> str:
    """A client of its own for each test: Canaille's in-memory store looks an
    authorization code up by code OR client, so a code another test left unused
    could answer for this test's."""
    client_id = f"{INPROC_CLIENT}-{secrets.token_hex(4)}"
    canaille.register(client_id, [INPROC_URL], "client_secret_basic")
    return client_id


@pytest.fixture
def inproc_settings(tmp_path: Path, canaille: Canaille, inproc_client: str) -> Settings:
    return Settings(
        oidc_issuer=canaille.issuer,
        oidc_client_id=inproc_client,
        oidc_client_secret=canaille.client_secret,
        web_db=tmp_path / "web" / "web.sqlite3",
    )


@pytest.fixture
def signed_in_at_canaille(canaille: Canaille) -> Iterator[Any]:
    """A Canaille user with an open session there (no login form), consenting."""
    user = canaille.new_user("inproc")
    canaille.iam.login(user)
    canaille.iam.consent(user)
    try:
        yield user
    finally:
        canaille.iam.logout()


def _callback_url(app: TestClient) -> str:
    """/auth/start, then the provider's answer: the callback URL it sends back to."""
    start = app.get("/auth/start", follow_redirects=False)
    assert start.status_code == 302, start.text
    with httpx.Client(timeout=30) as provider:
        answer = provider.get(start.headers["location"], follow_redirects=False)
    location = answer.headers["location"]
    assert location.startswith(INPROC_URL + "/auth/callback"), location
    return location


def _refusal(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("text/html")
    assert words in response.text
    assert "try again" not in response.text.lower()


def test_unverified_email_is_refused_with_what_to_do_and_logged(
    inproc_settings: Settings,
    signed_in_at_canaille: Any,
    canaille: Canaille,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without TOKPAY_OIDC_TRUST_EMAIL, Canaille's address (no email_verified) is not
    taken: a plain page says what to do, and the log says why, for which issuer."""
    app = _inproc(inproc_settings)
    with caplog.at_level(logging.WARNING, logger="tokpay.web.auth"):
        response = app.get(_callback_url(app))
    _refusal(response, 403, "Verify your address with the provider")
    (record,) = [r for r in caplog.records if r.name == "tokpay.web.auth"]
    assert "unverified-email" in record.getMessage()
    assert "email_verified absent" in record.getMessage()
    assert canaille.issuer in record.getMessage()
    assert "eyJ" not in caplog.text  # no token in the log


def test_an_authorization_response_from_another_issuer_is_refused(
    inproc_settings: Settings, signed_in_at_canaille: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 9207: the ``iss`` of the authorization response must be our issuer."""
    app = _inproc(inproc_settings)
    for forged_iss in ("https://evil.example", None):
        callback = urlsplit(_callback_url(app))
        query = dict(parse_qsl(callback.query))
        assert "iss" in query  # Canaille sends it (and says so in its metadata)
        del query["iss"]
        if forged_iss is not None:
            query["iss"] = forged_iss
        with caplog.at_level(logging.WARNING, logger="tokpay.web.auth"):
            response = app.get(f"/auth/callback?{urlencode(query)}")
        _refusal(response, 502, "cannot trust")
    assert "authorization response" in caplog.text


def test_an_unreachable_provider_gets_a_plain_page(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        oidc_issuer="http://127.0.0.1:9",  # discard port: nothing listens
        oidc_client_secret="x",
        web_db=tmp_path / "web.sqlite3",
    )
    app = _inproc(settings)
    with caplog.at_level(logging.WARNING, logger="tokpay.web.auth"):
        response = app.get("/auth/start")
    _refusal(response, 502, "not answering right now")
    assert "unreachable" in caplog.text and "127.0.0.1:9" in caplog.text


def test_a_changed_issuer_is_refused_and_discovery_fetched_again(
    inproc_settings: Settings, signed_in_at_canaille: Any, canaille: Canaille
) -> None:
    """The provider starts calling itself by another name mid-login: the id token's
    issuer no longer matches, the page says so, and the cached discovery document is
    dropped, so the next start sees the new name (and refuses it) instead of going on
    with the old document; once the provider is back, login starts again."""
    app = _inproc(inproc_settings)
    callback = _callback_url(app)  # discovery cached
    config = canaille.iam.app.config
    config["PREFERRED_URL_SCHEME"] = "https"
    try:
        _refusal(app.get(callback), 502, "cannot trust")
        _refusal(app.get("/auth/start"), 502, "cannot trust")
    finally:
        config["PREFERRED_URL_SCHEME"] = "http"
    assert app.get("/auth/start", follow_redirects=False).status_code == 302


def test_a_changed_signing_key_fails_once_then_is_fetched_again(
    inproc_settings: Settings, signed_in_at_canaille: Any, canaille: Canaille
) -> None:
    """The provider replaced its key under the same key id: the cached key set makes
    the id token's signature fail; the page says so, and the next login refetches the
    keys and gets past the signature (to the address rule, which refuses it)."""
    app = _inproc(inproc_settings)
    first = app.get(_callback_url(app))
    _refusal(first, 403, "Verify your address")  # keys now cached
    oidc_config = canaille.iam.app.config["CANAILLE_OIDC"]
    original = oidc_config["ACTIVE_JWKS"]
    replacement = JWKRegistry.generate_key("RSA", 2048, parameters={"kid": original[0]["kid"]})
    oidc_config["ACTIVE_JWKS"] = [replacement.as_dict(private=True)]
    try:
        _refusal(app.get(_callback_url(app)), 502, "signing keys changed")
        _refusal(app.get(_callback_url(app)), 403, "Verify your address")
    finally:
        oidc_config["ACTIVE_JWKS"] = original


def test_an_id_token_for_another_client_is_refused(
    inproc_settings: Settings, signed_in_at_canaille: Any, canaille: Canaille
) -> None:
    """The id token's audience must be this client: one the provider issued for
    another client of the same issuer is refused (it was taken before)."""
    other = canaille.iam.backend.get(canaille.iam.models.Client, client_id=canaille.client_id)
    ours = canaille.iam.backend.get(
        canaille.iam.models.Client, client_id=inproc_settings.oidc_client_id
    )
    canaille.iam.backend.update(ours, audience=[other])
    canaille.iam.backend.save(ours)
    app = _inproc(inproc_settings)
    _refusal(app.get(_callback_url(app)), 502, "cannot trust")


def test_anonymous_login_starts_store_nothing_and_are_rate_limited(
    inproc_settings: Settings,
) -> None:
    """Pre-login state is a signed cookie, not a session row; an address that starts
    too many logins in a minute gets a plain 429 page."""
    settings = inproc_settings.model_copy(update={"login_starts_per_minute": 5})
    app = _inproc(settings)
    for _ in range(5):
        response = app.get("/auth/start", follow_redirects=False)
        assert response.status_code == 302
        assert LOGIN_COOKIE in response.cookies
        assert "tokpay_session" not in response.cookies
    assert WebStore(settings.web_db_path()).session_count() == 0
    _refusal(app.get("/auth/start"), 429, "Wait a minute")


def test_a_callback_without_its_login_cookie_is_refused(
    inproc_settings: Settings, signed_in_at_canaille: Any
) -> None:
    app = _inproc(inproc_settings)
    callback = _callback_url(app)
    app.cookies.clear()
    _refusal(app.get(callback), 400, "Start signing in again")


# The e-mail rule ---------------------------------------------------------------------


@pytest.mark.parametrize("stated", [True, "true", "TRUE"])
def test_a_verified_address_is_taken(stated: object) -> None:
    claims = {"email": " Ada@Example.org ", "email_verified": stated}
    assert verified_email(claims, trust_unstated=False) == "ada@example.org"


@pytest.mark.parametrize("stated", [False, "false", "yes", 1, None])
def test_an_unverified_address_is_refused(stated: object) -> None:
    claims: dict[str, object] = {"email": "ada@example.org"}
    if stated is not None:
        claims["email_verified"] = stated
    with pytest.raises(LoginRefused) as refused:
        verified_email(claims, trust_unstated=False)
    assert refused.value.reason == "unverified-email"


def test_trusting_the_issuer_takes_only_an_unstated_address() -> None:
    assert verified_email({"email": "a@example.org"}, trust_unstated=True) == "a@example.org"
    with pytest.raises(LoginRefused):
        verified_email({"email": "a@example.org", "email_verified": False}, trust_unstated=True)
    with pytest.raises(LoginRefused) as refused:
        verified_email({"email_verified": True}, trust_unstated=True)
    assert refused.value.reason == "no-email"
