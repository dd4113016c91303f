"""Issue 12's security items outside login: each probe that found a hole, now refused.

Against the shared real server (``tokpay serve``) where the behaviour is the server's,
in-process (``create_app`` without a ledger) where a setting or a client address must
differ from the test server's: API key, Secure cookies, a client's network address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from tests.conftest import ServerProcess
from tests.web.conftest import login_http, new_email
from tokpay.gateway import create_app
from tokpay.settings import Settings
from tokpay.web.money import MAX_PAYMENT_CENTS, AmountError, parse_cents
from tokpay.web.shield import ANON_BURST, MAX_FORM_BYTES, TokenBuckets

PAGE_HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


HTMX = {"HX-Request": "true"}


@pytest.fixture
def member(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        page = login_http(client, new_email("hardening"))
        assert page.url.path == "/dashboard", page.text[:300]
        yield client


def _in_process(
    settings: Settings,
    requests: list[tuple[str, str, dict[str, Any]]],
    client: tuple[str, int] = ("203.0.113.7", 40000),
) -> list[httpx.Response]:
    """Each (method, path, httpx options) against the gateway app with no ledger attached."""
    app = create_app(settings, connect=False)

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            return [
                await http.request(method, path, **options) for method, path, options in requests
            ]

    # A thread of its own: Playwright's sync API may hold this thread's event loop.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, go()).result()


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(data_dir=tmp_path, web_db=tmp_path / "web.sqlite3", **overrides)


# -- 1. DNS rebinding ---------------------------------------------------------------------


def test_only_the_served_host_names_are_answered(server: ServerProcess) -> None:
    """A rebinding page calls the server under its own name: refused before any route."""
    port = urlsplit(server.url).port
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", ""):
            for path in ("/v1/ledger/summary", "/", "/healthz", "/livez", "/metrics"):
                refused = client.get(path, headers={"Host": host})
                assert refused.status_code == 400, (host, path)
                assert refused.json()["code"] == "untrusted_host"
        money = {"id": "rebind-1", "account": "acct", "amount": 100, "currency": "USD"}
        posted = client.post("/v1/topups", json=money, headers={"Host": "evil.example"})
        assert posted.status_code == 400
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
            assert client.get("/v1/ledger/summary", headers={"Host": host}).status_code == 200


def test_allowed_hosts_setting(tmp_path: Path) -> None:
    settings = _settings(tmp_path, allowed_hosts="wallet.example.com, *.corp.example")
    cases = {
        "wallet.example.com": 200,
        "WALLET.example.com:443": 200,
        "pay.corp.example": 200,
        "corp.example": 400,
        "wallet.example.com.evil": 400,
        "localhost:8000": 200,
    }
    answers = _in_process(settings, [("GET", "/livez", {"headers": {"Host": h}}) for h in cases])
    assert [a.status_code for a in answers] == list(cases.values())


# -- 2. 500s found by probing -------------------------------------------------------------


def test_page_number_in_other_digits_is_not_an_error(member: httpx.Client) -> None:
    # Superscript two, Arabic-Indic one, fullwidth five: str.isdigit() says yes, int() no.
    # The list is an htmx fragment; a plain visit is sent to the wallet page with its query.
    for name in ("page", "before"):
        for value in ("\u00b2", "\u0661", "\uff15", "-1", "99999999", "9" * 40, ""):
            fragment = member.get("/transactions", params={name: value}, headers=HTMX)
            assert fragment.status_code == 200, (name, value, fragment.text[:300])
            page = member.get("/transactions", params={name: value}, follow_redirects=True)
            assert page.status_code == 200 and page.url.path == "/dashboard", (name, value)


@pytest.mark.parametrize(
    "typed",
    # Fullwidth 100, Arabic-Indic 3, a fullwidth cent digit, Arabic-Indic thousands, Bengali 1.
    ["\uff11\uff10\uff10", "\u0663", "12.\uff15", "1,\u0660\u0660\u0660", "\u0663.50", "\u09e7"],
)
def test_amounts_in_other_digits_are_refused(typed: str) -> None:
    with pytest.raises(AmountError):
        parse_cents(typed, maximum=MAX_PAYMENT_CENTS)


def test_ascii_amounts_still_parse() -> None:
    assert parse_cents("$1,000.5", maximum=MAX_PAYMENT_CENTS) == 100_050


# -- 3. bounded form bodies ----------------------------------------------------------------


def _raw_post(server: ServerProcess, path: str, headers: str, body: bytes) -> bytes:
    """Send a request by hand (httpx cannot send 200 MB it does not have) and read the reply."""
    url = urlsplit(server.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{headers}\r\n".encode()
    with socket.create_connection((host, port), timeout=20) as connection:
        connection.sendall(head + body)
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    return reply


def test_huge_anonymous_form_is_refused_before_parsing(server: ServerProcess) -> None:
    """200 MB at /logout used to be read and parsed before the session and CSRF checks."""
    form = "Content-Type: application/x-www-form-urlencoded\r\n"
    started = time.monotonic()
    declared = _raw_post(server, "/logout", form + "Content-Length: 209715200\r\n", b"csrf=")
    assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
    assert b"set-cookie" not in declared.lower()  # no session was loaded or made
    assert time.monotonic() - started < 10  # answered without waiting for the 200 MB
    # No Content-Length (chunked): counted as it arrives.
    chunk = b"x" * 4096
    chunks = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * (MAX_FORM_BYTES // len(chunk) + 2)
    chunked = _raw_post(server, "/pay/review", form + "Transfer-Encoding: chunked\r\n", chunks)
    assert chunked.startswith(b"HTTP/1.1 413"), chunked[:200]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        within = b"csrf_token=" + b"x" * (MAX_FORM_BYTES - 100)
        small = client.post("/logout", content=within, headers={"content-type": form[14:-2]})
        assert small.status_code == 403  # within the bound: on to the CSRF check


# -- 4. /docs without a CDN ----------------------------------------------------------------


def test_docs_are_served_from_this_server(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        docs = client.get("/docs")
        assert docs.status_code == 200
        csp = docs.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "http" not in csp and "unsafe" not in csp
        assert "cdn" not in docs.text.lower() and "https://" not in docs.text
        assert client.get("/redoc").status_code == 404  # FastAPI's loads from a CDN
        for asset in ("/static/vendor/swagger-ui-bundle.js", "/static/vendor/swagger-ui.css"):
            assert asset in docs.text
            assert client.get(asset).status_code == 200
        assert client.get("/docs/init.js").status_code == 200


def test_docs_render_with_only_self_allowed(browser: Any, server: ServerProcess) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        problems: list[str] = []
        page.on(
            "console",
            lambda m: problems.append(f"{m.text} {m.location}") if m.type == "error" else None,
        )
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on(
            "request", lambda r: None if r.url.startswith(server.url) else problems.append(r.url)
        )
        page.goto(server.url + "/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=20_000)
        assert "/v1/transfers" in page.inner_text("#swagger-ui")
        assert problems == []
    finally:
        context.close()


# -- 5. security headers -------------------------------------------------------------------


def test_everything_carrying_balances_has_the_headers(member: httpx.Client) -> None:
    for path in ("/dashboard", "/transactions", "/transactions.csv", "/chart.json", "/pay", "/"):
        # "/" and "/login" are rendered for signed-in and anonymous visitors alike;
        # "/transactions" is the list fragment htmx asks for.
        response = member.get(path, headers=HTMX if path == "/transactions" else None)
        assert response.status_code == 200, path
        for name, value in PAGE_HEADERS.items():
            assert response.headers.get(name) == value, (path, name)
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"], path
        assert "strict-transport-security" not in response.headers  # plain http, not Secure
    account = member.get("/v1/ledger/summary")
    assert account.headers["cache-control"] == "no-store"
    assert account.headers["x-content-type-options"] == "nosniff"


def test_hsts_when_cookies_are_secure(tmp_path: Path) -> None:
    secure, plain = (
        _in_process(_settings(tmp_path / name, secure_cookies=on), [("GET", "/", {})])[0]
        for name, on in (("secure", True), ("plain", False))
    )
    assert secure.status_code == plain.status_code == 200
    assert secure.headers["strict-transport-security"].startswith("max-age=31536000")
    assert "strict-transport-security" not in plain.headers


# -- 6. operator endpoints and Ray's exporters -----------------------------------------------


def test_operator_endpoints_need_the_key_beyond_loopback(tmp_path: Path) -> None:
    settings = _settings(tmp_path, bind_host="0.0.0.0", api_key="k")
    paths = ["/metrics", "/docs", "/docs/init.js", "/openapi.json", "/v1/ledger/summary"]
    anonymous = _in_process(settings, [("GET", p, {}) for p in paths])
    assert [a.status_code for a in anonymous] == [401] * len(paths)
    keyed = _in_process(
        settings, [("GET", p, {"headers": {"Authorization": "Bearer k"}}) for p in paths]
    )
    # No ledger is attached in-process: /metrics and /v1 answer 503, the docs 200.
    assert [k.status_code for k in keyed] == [503, 200, 200, 200, 503]
    assert [h.status_code for h in _in_process(settings, [("GET", "/healthz", {})])] == [503]


def test_ray_listens_on_loopback_only(server: ServerProcess) -> None:
    """Ray's metrics exporters (and its other servers) would listen on every interface."""
    assert server.process is not None
    session = os.getsid(server.process.pid)
    listening: list[tuple[str, str, int]] = []
    for process in psutil.process_iter(["name"]):
        try:
            if os.getsid(process.pid) != session:
                continue
            for socket in process.net_connections(kind="inet"):
                if socket.status == psutil.CONN_LISTEN:
                    listening.append((process.info["name"], socket.laddr.ip, socket.laddr.port))
        except (psutil.Error, ProcessLookupError):
            continue
    names = {name for name, _, _ in listening}
    assert any("raylet" in n for n in names) and any("gcs" in n for n in names), names
    exposed = [s for s in listening if not _loopback(s[1])]
    assert exposed == []


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (mapped or ip).is_loopback


# -- 7. anonymous requests that create state ------------------------------------------------


def test_anonymous_state_creating_requests_are_limited(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    form = {"data": {"csrf_token": "stale"}}
    # Twice the burst: the allowance refills by ANON_PER_SECOND while these run.
    answers = _in_process(settings, [("POST", "/logout", form)] * (2 * ANON_BURST))
    assert {a.status_code for a in answers[:ANON_BURST]} == {403}  # the CSRF check
    assert sum(a.status_code == 429 for a in answers) >= ANON_BURST // 2
    limited = answers[-1]
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert "try again" in limited.text and limited.headers["cache-control"] == "no-store"
    # Reading pages is not limited; another client has its own allowance.
    assert _in_process(settings, [("GET", "/", {})] * 3)[-1].status_code == 200
    other = _in_process(settings, [("POST", "/logout", form)], client=("198.51.100.1", 1))
    assert other[0].status_code == 403


def test_limiter_table_is_bounded() -> None:
    now = [0.0]
    buckets = TokenBuckets(burst=2, per_second=1.0, capacity=3, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 1.0]
    for client in ("b", "c", "d"):
        buckets.take(client)
    assert len(buckets) == 3  # "a", the least recently seen, was forgotten
    assert buckets.take("a") == 0.0  # ...and starts again with a full allowance
    now[0] += 1.0
    assert buckets.take("b") == 0.0
