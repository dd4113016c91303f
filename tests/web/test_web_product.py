"""The product over plain HTTP against a real server: receipts, CSV export, search, forms
without JavaScript, error pages, payment requests, recent recipients and look-alikes."""

from __future__ import annotations

import csv
import io
import re

import httpx

from tests.conftest import ServerProcess
from tests.web.conftest import csrf_of, new_email
from tests.web.test_web_http import (
    _balance,
    _funded_pair,
    _logged_in,
    _payment_form,
    _top_up,
)
from tokpay.web.people import MAX_OPEN_REQUESTS

HTMX = {"HX-Request": "true"}
FORMULAS = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(A1)"]


def _pay(payer: httpx.Client, email: str, amount: str, note: str = "") -> str:
    """Pay through review and confirmation; the transfer id."""
    data = _payment_form(payer, email, amount, note=note)
    assert "Confirm payment" in payer.post("/pay/review", data=data, follow_redirects=True).text
    done = payer.post("/pay/confirm", data=data)
    assert done.status_code == 303, done.text[:300]
    return data["transfer_id"]


def test_csv_export_neutralises_formulas_and_follows_the_filter(server: ServerProcess) -> None:
    payer, payee, payee_email = _funded_pair(server, "csvpayer", "csvpayee", "20.00")
    for note in FORMULAS:
        _pay(payer, payee_email, "1.00", note)
    rows = list(csv.reader(io.StringIO(payer.get("/transactions.csv").text)))
    assert rows[0] == ["date", "type", "counterparty", "amount", "note", "id"]
    notes = [row[4] for row in rows[1:]]
    for formula in FORMULAS:
        assert "'" + formula in notes, formula
    assert all(not cell.startswith(("=", "+", "@")) for row in rows for cell in row)
    # Our own negative amounts stay numbers; only text cells get the quote.
    assert [row[3] for row in rows[1:5]] == ["-1.00"] * 4

    sent = list(csv.reader(io.StringIO(payer.get("/transactions.csv?filter=sent").text)))
    assert {row[1] for row in sent[1:]} == {"sent"} and len(sent) == 5
    searched = list(csv.reader(io.StringIO(payer.get("/transactions.csv?q=SUM").text)))
    assert [row[4] for row in searched[1:]] == ["'@SUM(A1)"]
    assert "no-store" in payer.get("/transactions.csv").headers["cache-control"]
    assert "no-store" in payer.get("/chart.json").headers["cache-control"]
    assert _balance(payee) == "$4.00"


def test_search_covers_notes_and_people(server: ServerProcess) -> None:
    payer, _, payee_email = _funded_pair(server, "searcher", "found", "10.00")
    _pay(payer, payee_email, "1.00", "Pizza night")
    by_note = payer.get("/transactions?q=pizza", headers=HTMX).text
    assert "Pizza night" in by_note and "-$1.00" in by_note
    by_person = payer.get(f"/transactions?q={payee_email[:9]}", headers=HTMX).text
    assert payee_email in by_person
    assert "No transactions match." in payer.get("/transactions?q=sushi", headers=HTMX).text


def test_receipt_shows_each_share_and_the_balance_after(server: ServerProcess) -> None:
    payer, first, first_email = _funded_pair(server, "splitter", "share1", "30.00")
    second, second_email = _logged_in(server, "share2")
    form = _payment_form(payer, first_email, "4.00", note="Dinner")
    form = {**form, "email": [first_email, second_email], "amount": ["4.00", "6.50"]}  # type: ignore[dict-item]
    payer.post("/pay/review", data=form)
    assert payer.post("/pay/confirm", data=form).status_code == 303
    _pay(payer, first_email, "1.00", "later")  # a newer payment: balance after is not "now"
    receipt = payer.get(f"/transactions/{form['transfer_id']}").text
    assert "Payment sent" in receipt and "-$10.50" in receipt
    shares = receipt[receipt.index('id="receipt-shares"') :]
    assert (
        first_email in shares and "$4.00" in shares and second_email in shares and "$6.50" in shares
    )
    assert re.search(r'id="receipt-balance">\$19\.50<', receipt)
    assert "Dinner" in receipt and form["transfer_id"] in receipt
    # The payee sees the same transfer from their side; a stranger finds nothing.
    theirs = second.get(f"/transactions/{form['transfer_id']}").text
    assert "Payment received" in theirs and "+$6.50" in theirs
    stranger, _ = _logged_in(server, "stranger")
    missing = stranger.get(f"/transactions/{form['transfer_id']}")
    assert missing.status_code == 404 and "There is no transaction" in missing.text
    assert first.get("/transactions/pay_nothing_here").status_code == 404


def test_pay_form_works_without_javascript_and_marks_the_fields(server: ServerProcess) -> None:
    payer, _ = _logged_in(server, "nojs")
    form = payer.get("/pay").text
    assert 'name="remove_row"' not in form  # one recipient: nothing to remove
    base = {
        "csrf_token": csrf_of(form),
        "transfer_id": re.findall(r'name="transfer_id" value="([^"]+)"', form)[0],
    }
    added = payer.post(
        "/pay/review", data={**base, "email": "a@example.com", "amount": "1", "add_row": "1"}
    )
    assert added.text.count('class="recipient"') == 2
    assert 'value="a@example.com"' in added.text and 'aria-invalid="true"' not in added.text
    assert added.text.count('name="remove_row"') == 2
    removed = payer.post(
        "/pay/review",
        data={
            **base,
            "email": ["a@example.com", "b@example.com"],
            "amount": ["1", "2"],
            "remove_row": "1",
        },  # type: ignore[dict-item]
    )
    assert 'value="b@example.com"' in removed.text and 'value="a@example.com"' not in removed.text
    # Both problems of one row are shown, each on its own field.
    bad = payer.post("/pay/review", data={**base, "email": "not-an-email", "amount": "1e3"})
    assert 'id="email-error-1"' in bad.text and 'id="amount-error-1"' in bad.text
    assert re.search(
        r'id="amount-1"[^>]*aria-invalid="true"[^>]*aria-describedby="amount-error-1"', bad.text
    )
    assert "Enter dollars and cents" in bad.text and "like name@example.com" in bad.text
    invite = payer.post("/pay/review", data={**base, "email": new_email("nobody"), "amount": "1"})
    assert "Nobody has a TokPay wallet with this address yet" in invite.text
    assert "TokPay sends no emails" in invite.text


def test_error_pages_speak_plainly_and_the_api_keeps_json(server: ServerProcess) -> None:
    client, _ = _logged_in(server, "errors")
    missing = client.get("/no/such/page")
    assert missing.status_code == 404 and "Page not found" in missing.text
    assert (
        missing.headers["content-type"].startswith("text/html") and '"detail"' not in missing.text
    )
    wrong = client.post("/dashboard", data={})
    assert wrong.status_code == 405 and "cannot be used that way" in wrong.text
    assert wrong.headers["allow"] == "GET"
    api = httpx.get(f"{server.url}/v1/no-such-thing", timeout=30)
    assert api.status_code == 404 and api.json()["code"] == "not_found"


def test_expired_session_keeps_the_page_and_login_never_returns_to_a_post(
    server: ServerProcess,
) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        # An htmx action: an error status, so htmx leaves the form and what was typed.
        assert anonymous.post("/topup", data={"amount": "5"}, headers=HTMX).status_code == 401
        form_post = anonymous.post(
            "/pay/review", data={}, headers={"Referer": f"{server.url}/pay?to=x%40example.com"}
        )
        assert form_post.status_code == 303
        assert form_post.headers["location"] == "/login?next=%2Fpay%3Fto%3Dx%2540example.com"
        elsewhere = anonymous.post(
            "/pay/review", data={}, headers={"Referer": "https://evil.example/"}
        )
        assert elsewhere.headers["location"] == "/login?next=%2Fdashboard"


def test_recent_recipients_new_recipient_notice_and_look_alike_warning(
    server: ServerProcess,
) -> None:
    payer, _, friend = _funded_pair(server, "contacts", "friend", "10.00")
    first = payer.post(
        "/pay/review", data=_payment_form(payer, friend, "1.00"), follow_redirects=True
    ).text
    assert "First payment to this person" in first and "Check this address" not in first
    _pay(payer, friend, "1.00")
    assert f'<option value="{friend}">' in payer.get("/pay").text
    again = payer.post(
        "/pay/review", data=_payment_form(payer, friend, "1.00"), follow_redirects=True
    ).text
    assert "First payment to this person" not in again
    # A look-alike of the friend (Cyrillic a, U+0430) with a wallet of its own.
    impostor = friend.replace("a", "\u0430", 1)
    assert impostor != friend
    _logged_in_as(server, impostor)
    warned = payer.post(
        "/pay/review", data=_payment_form(payer, impostor, "1.00"), follow_redirects=True
    ).text
    assert "Check this address" in warned and f"looks like {friend}" in warned
    assert "Cyrillic small letter a" in warned
    assert "First payment to this person" in warned


def _logged_in_as(server: ServerProcess, email: str) -> httpx.Client:
    from tests.web.conftest import login_http

    client = httpx.Client(base_url=server.url, timeout=30)
    assert login_http(client, email).url.path == "/dashboard"
    return client


def test_payment_request_paid_in_one_step_once(server: ServerProcess) -> None:
    payer, requester, _ = _funded_pair(server, "reqpayer", "requester", "10.00")
    payer_email = payer.get("/dashboard").text.split('title="Signed in as">')[1].split("<")[0]
    page = requester.get("/requests/new").text
    unknown = requester.post(
        "/requests", data={"csrf_token": csrf_of(page), "email": new_email("x"), "amount": "1"}
    )
    assert unknown.status_code == 200 and "Nobody has a TokPay wallet" in unknown.text
    bad = requester.post(
        "/requests", data={"csrf_token": csrf_of(page), "email": payer_email, "amount": "0"}
    )
    assert 'id="request-amount-error"' in bad.text
    asked = requester.post(
        "/requests",
        data={
            "csrf_token": csrf_of(page),
            "email": payer_email,
            "amount": "2.50",
            "note": "Tickets",
        },
    )
    assert (
        asked.status_code == 303 and "Request sent" in requester.get(asked.headers["location"]).text
    )

    dashboard = payer.get("/dashboard").text
    assert "asks you for $2.50" in dashboard and "Tickets" in dashboard
    request_id = re.findall(r"/requests/(req_[0-9a-f]+)/pay", dashboard)[0]
    # Nobody but the payer can pay or decline it.
    assert (
        requester.post(
            f"/requests/{request_id}/pay", data={"csrf_token": csrf_of(page)}
        ).status_code
        == 404
    )
    token = csrf_of(dashboard)
    paid = payer.post(f"/requests/{request_id}/pay", data={"csrf_token": token})
    again = payer.post(f"/requests/{request_id}/pay", data={"csrf_token": token})
    assert paid.status_code == again.status_code == 303
    assert paid.headers["location"] == again.headers["location"]
    assert _balance(payer) == "$7.50" and _balance(requester) == "$2.50"
    assert "Paid" in requester.get("/requests").text
    assert "asks you for" not in payer.get("/dashboard").text


def test_payment_request_declined_cancelled_and_bounded(server: ServerProcess) -> None:
    payer, payer_email = _logged_in(server, "decliner")
    requester, _ = _logged_in(server, "asker")
    token = csrf_of(requester.get("/requests/new").text)

    def ask(amount: str) -> httpx.Response:
        return requester.post(
            "/requests", data={"csrf_token": token, "email": payer_email, "amount": amount}
        )

    assert ask("1.00").status_code == 303
    dashboard = payer.get("/dashboard").text
    request_id = re.findall(r"/requests/(req_[0-9a-f]+)/decline", dashboard)[0]
    payer.post(f"/requests/{request_id}/decline", data={"csrf_token": csrf_of(dashboard)})
    assert "Declined" in requester.get("/requests").text
    refused = payer.post(f"/requests/{request_id}/pay", data={"csrf_token": csrf_of(dashboard)})
    assert refused.status_code == 404 and "was declined" in refused.text

    for _ in range(MAX_OPEN_REQUESTS):
        assert ask("1.00").status_code == 303
    too_many = ask("1.00")
    assert (
        too_many.status_code == 200
        and f"You have {MAX_OPEN_REQUESTS} open requests" in too_many.text
    )
    mine = requester.get("/requests").text
    first_open = re.findall(r"/requests/(req_[0-9a-f]+)/cancel", mine)[0]
    requester.post(f"/requests/{first_open}/cancel", data={"csrf_token": token})
    assert ask("1.00").status_code == 303
    assert _balance(payer) == "$0.00"


def test_times_follow_the_browsers_time_zone_cookie(server: ServerProcess) -> None:
    client, _ = _logged_in(server, "clock")
    _top_up(client, "1.00")

    def shown(zone: str | None) -> tuple[str, int]:
        if zone is None:
            client.cookies.delete("tz")
        else:
            client.cookies.set("tz", zone)
        page = client.get("/transactions", headers=HTMX).text
        note = re.findall(r'id="tz-note" data-tz="([^"]+)"', page)[0]
        hour = int(re.findall(r"Added · (\d\d):\d\d", page)[0])
        return note, hour

    utc_zone, utc_hour = shown(None)
    tokyo_zone, tokyo_hour = shown("Asia%2FTokyo")  # as app.js writes it
    assert (utc_zone, tokyo_zone) == ("UTC", "Asia/Tokyo")
    assert tokyo_hour == (utc_hour + 9) % 24
    assert shown("..%2F..%2Fetc%2Fpasswd")[0] == "UTC"
