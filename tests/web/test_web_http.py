"""Session and authorization rules of the web app, over plain HTTP against a real server."""

from __future__ import annotations

import httpx

from tests.conftest import ServerProcess
from tests.web.conftest import csrf_of, field_of, login_http, new_email

COOKIE = "tokpay_session"


def _balance(client: httpx.Client) -> str:
    page = client.get("/dashboard")
    assert page.status_code == 200
    start = page.text.index('id="balance"')
    return page.text[start : page.text.index("</p>", start)].rsplit(">", 1)[1]


def _logged_in(server: ServerProcess, name: str) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=server.url, timeout=30)
    email = new_email(name)
    page = login_http(client, email)
    assert page.url.path == "/dashboard", page.text[:500]
    return client, email


def _top_up(client: httpx.Client, amount: str) -> httpx.Response:
    page = client.get("/dashboard").text
    return client.post(
        "/topup",
        data={
            "csrf_token": csrf_of(page),
            "transfer_id": field_of(page, "transfer_id"),
            "amount": amount,
        },
        headers={"HX-Request": "true"},
    )


def test_pages_need_a_session(web: httpx.Client) -> None:
    for path in ("/dashboard", "/pay", "/transactions", "/transactions.csv", "/chart.json"):
        response = web.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login")
    landing = web.get("/")
    assert "Log in" in landing.text
    assert COOKIE not in landing.headers.get("set-cookie", "")


def test_login_page_says_it_is_the_dev_provider(web: httpx.Client) -> None:
    page = web.get("/login")
    assert "Development login" in page.text


def test_session_cookie_is_an_opaque_server_side_id(server: ServerProcess) -> None:
    client = httpx.Client(base_url=server.url, timeout=30)
    planted = "planted-by-someone-else-" + "x" * 20  # session fixation
    client.cookies.set(COOKIE, planted, domain="127.0.0.1", path="/")
    before = client.cookies.get(COOKIE)
    email = new_email("cookie")
    page = login_http(client, email)
    after = client.cookies.get(COOKIE)
    assert page.url.path == "/dashboard"
    assert before and after and before != after, "login must rotate the session id"
    assert email not in after and len(after) >= 40
    set_cookie = client.get("/dashboard").headers.get("set-cookie", "")
    assert set_cookie == ""  # nothing changes: no new cookie

    # An id that was valid before login is worth nothing after it.
    stale = httpx.Client(base_url=server.url, cookies={COOKIE: before}, timeout=30)
    assert stale.get("/dashboard").status_code == 303

    # Logout ends the session on the server: replaying the old cookie fails.
    csrf = csrf_of(client.get("/dashboard").text)
    response = client.post("/logout", data={"csrf_token": csrf})
    assert response.status_code == 303
    assert "Max-Age=0" in response.headers["set-cookie"]
    replay = httpx.Client(base_url=server.url, cookies={COOKIE: after}, timeout=30)
    assert replay.get("/dashboard").status_code == 303


def test_cookie_flags(server: ServerProcess) -> None:
    client = httpx.Client(base_url=server.url, timeout=30)
    header = client.get("/auth/start").headers["set-cookie"]
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Path=/" in header
    assert "Secure" not in header  # plain http here; Secure behind https


def test_forms_need_the_csrf_token(server: ServerProcess) -> None:
    client, _ = _logged_in(server, "csrf")
    page = client.get("/dashboard").text
    refused = client.post(
        "/topup", data={"transfer_id": field_of(page, "transfer_id"), "amount": "5.00"}
    )
    assert refused.status_code == 403
    forged = client.post(
        "/topup",
        data={"csrf_token": "x" * 43, "transfer_id": field_of(page, "transfer_id"), "amount": "5"},
    )
    assert forged.status_code == 403
    assert client.post("/logout", data={}).status_code == 403
    assert _balance(client) == "$0.00"


def test_another_users_account_is_refused(server: ServerProcess) -> None:
    mallory, _ = _logged_in(server, "mallory")
    victim, _ = _logged_in(server, "victim")
    assert _top_up(victim, "50.00").status_code == 200
    victim_account = field_of(victim.get("/dashboard").text, "account")
    page = mallory.get("/dashboard").text
    csrf = csrf_of(page)

    topup = mallory.post(
        "/topup",
        data={
            "csrf_token": csrf,
            "transfer_id": field_of(page, "transfer_id"),
            "amount": "1.00",
            "account": victim_account,
        },
    )
    assert topup.status_code == 403
    for path in (
        f"/accounts/{victim_account}",
        f"/transactions?account={victim_account}",
        f"/transactions.csv?account={victim_account}",
    ):
        assert mallory.get(path).status_code == 403, path
    pay = mallory.get("/pay").text
    for step in ("/pay/review", "/pay/confirm"):
        response = mallory.post(
            step,
            data={
                "csrf_token": csrf,
                "transfer_id": field_of(pay, "transfer_id"),
                "account": victim_account,
                "email": new_email("anyone"),
                "amount": "1.00",
            },
        )
        assert response.status_code == 403, step
    assert _balance(victim) == "$50.00"
    assert _balance(mallory) == "$0.00"


def test_top_up_parses_and_limits_amounts(server: ServerProcess) -> None:
    client, _ = _logged_in(server, "topup")
    for text, message in (
        ("1e3", "Enter dollars and cents"),
        ("-5", "Enter dollars and cents"),
        ("0", "more than $0.00"),
        ("10000.01", "at most $10,000.00"),
        ("12.345", "Enter dollars and cents"),
    ):
        response = _top_up(client, text)
        assert message in response.text, text
    assert _balance(client) == "$0.00"
    response = _top_up(client, "12.34")
    assert "Added $12.34" in response.text
    assert 'hx-swap-oob="true"' in response.text and "$12.34" in response.text
    assert _balance(client) == "$12.34"


def _funded_pair(
    server: ServerProcess, payer_name: str, payee_name: str, funds: str
) -> tuple[httpx.Client, httpx.Client, str]:
    """A payer with ``funds`` topped up and an empty payee: both clients, the payee's email."""
    payer, _ = _logged_in(server, payer_name)
    payee, payee_email = _logged_in(server, payee_name)
    _top_up(payer, funds)
    return payer, payee, payee_email


def _payment_form(payer: httpx.Client, email: str, amount: str, **extra: str) -> dict[str, str]:
    """A fresh payment form to one recipient, filled in as the browser would post it."""
    form = payer.get("/pay").text
    fields = {"csrf_token": csrf_of(form), "transfer_id": field_of(form, "transfer_id")}
    return {**fields, "email": email, "amount": amount, **extra}


def test_a_repeated_confirmation_pays_once(server: ServerProcess) -> None:
    payer, payee, payee_email = _funded_pair(server, "payer", "payee", "20.00")
    data = _payment_form(payer, payee_email, "7.00", note="twice?")
    review = payer.post("/pay/review", data=data)
    assert review.status_code == 303 and review.headers["location"] == "/pay/review"
    assert "$7.00" in payer.get("/pay/review").text
    first = payer.post("/pay/confirm", data=data)
    second = payer.post("/pay/confirm", data=data)  # double click or refresh
    # Redirect after POST: Back or reload shows the "Paid" page, never a resubmission.
    assert first.status_code == second.status_code == 303
    assert first.headers["location"] == second.headers["location"]
    paid = payer.get(first.headers["location"])
    assert "You paid $7.00" in paid.text
    assert f'href="/transactions/{data["transfer_id"]}"' in paid.text
    assert _balance(payer) == "$13.00"
    assert _balance(payee) == "$7.00"
    csv = payee.get("/transactions.csv")
    assert csv.headers["content-type"].startswith("text/csv")
    assert "received" in csv.text and "7.00" in csv.text and "twice?" in csv.text


def test_ledger_refusal_on_confirm_moves_nothing(server: ServerProcess) -> None:
    payer, payee, payee_email = _funded_pair(server, "short", "rich", "3.00")
    data = _payment_form(payer, payee_email, "3.01")
    # Skipping the review step: the ledger itself refuses the overdraft.
    response = payer.post("/pay/confirm", data=data)
    assert "Not enough money in your wallet" in response.text
    assert _balance(payer) == "$3.00"
    assert _balance(payee) == "$0.00"


def test_transactions_page_by_ledger_cursor_and_filter(server: ServerProcess) -> None:
    client, _ = _logged_in(server, "pages")
    for cents in range(1, 13):
        _top_up(client, f"0.{cents:02d}")
    htmx = {"HX-Request": "true"}
    first = client.get("/transactions?filter=topup", headers=htmx)
    assert first.text.count('class="tx tx-topup"') == 10
    assert "+$0.12" in first.text and "+$0.02<" not in first.text
    # The older page is a real link (state in the URL) holding the ledger cursor.
    assert 'href="/dashboard?filter=topup&amp;before=2"' in first.text
    second = client.get("/transactions?filter=topup&before=2", headers=htmx)
    assert second.text.count('class="tx tx-topup"') == 2
    assert "+$0.02<" in second.text and "+$0.01<" in second.text
    assert "before=" not in second.text.split("Newest")[1]
    # Without JavaScript the same state opens the whole dashboard.
    page = client.get("/transactions?filter=topup&before=2")
    assert page.status_code == 303
    assert page.headers["location"] == "/dashboard?filter=topup&before=2"
    dashboard = client.get(page.headers["location"]).text
    assert "+$0.01<" in dashboard and "+$0.12<" not in dashboard
    assert "No transactions match." in client.get("/transactions?filter=sent", headers=htmx).text
    for junk in ("?before=%C2%B2", "?before=-1", "?before=99999999", "?page=%C2%B2&filter=x"):
        assert client.get("/dashboard" + junk).status_code == 200, junk


def test_login_returns_to_the_page_asked_for_and_only_to_this_site(server: ServerProcess) -> None:
    for start, landed in (
        ("/auth/start?next=/pay", "/pay"),
        ("/auth/start?next=//evil.example/x", "/dashboard"),
        ("/auth/start?next=https://evil.example/", "/dashboard"),
    ):
        with httpx.Client(base_url=server.url, timeout=30) as client:
            page = login_http(client, new_email("next"), start)
            assert page.url.path == landed, start
            assert page.url.host == "127.0.0.1"
