"""The HTTP contract through a real server: every endpoint, every error code."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tokpay.ledger.limits import MAX_BODY_BYTES, MAX_CREDITS, MAX_LOOKUP_IDS, MAX_PAGE_SIZE

PROBLEM = "application/problem+json"


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def open_account(http: httpx.Client, currency: str = "USD", **extra: Any) -> str:
    account_id = uid("acct")
    body = {"id": account_id, "currency": currency, "owner": f"{account_id}@example.com", **extra}
    response = http.post("/v1/accounts", json=body)
    assert response.status_code == 201, response.text
    return account_id


def top_up(http: httpx.Client, account: str, amount: int, currency: str = "USD") -> None:
    body = {"id": uid("top"), "account": account, "amount": amount, "currency": currency}
    response = http.post("/v1/topups", json=body)
    assert response.status_code == 201, response.text


def balance(http: httpx.Client, account: str) -> int:
    response = http.get(f"/v1/accounts/{account}/balance")
    assert response.status_code == 200, response.text
    value: int = response.json()["balance"]
    return value


def expect_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["title"] and body["type"].endswith(code)
    return body


def test_account_create_replay_conflict_and_read(http: httpx.Client) -> None:
    account_id = uid("alice")
    body = {
        "id": account_id,
        "currency": "USD",
        "owner": "alice@example.com",
        "allow_overdraft": False,
    }
    created = http.post("/v1/accounts", json=body)
    assert created.status_code == 201
    assert created.json() == {**body, "balance": 0, "created_at": created.json()["created_at"]}
    again = http.post("/v1/accounts", json=body)
    assert again.status_code == 200 and again.json() == created.json()
    conflict = http.post("/v1/accounts", json={**body, "owner": "mallory@example.com"})
    expect_problem(conflict, 409, "account_id_conflict")
    assert http.get(f"/v1/accounts/{account_id}").json()["owner"] == "alice@example.com"
    expect_problem(http.get("/v1/accounts/nobody-here"), 404, "account_not_found")
    expect_problem(http.get("/v1/accounts/nobody-here/balance"), 404, "account_not_found")


def test_account_id_is_generated_when_missing(http: httpx.Client) -> None:
    response = http.post("/v1/accounts", json={"currency": "EUR", "owner": "gen@example.com"})
    assert response.status_code == 201
    generated = response.json()["id"]
    assert generated.startswith("acc_")
    assert http.get(f"/v1/accounts/{generated}/balance").json()["currency"] == "EUR"


def test_transfer_commits_replays_and_conflicts(http: httpx.Client) -> None:
    payer, first, second = open_account(http), open_account(http), open_account(http)
    top_up(http, payer, 10_000)
    body = {
        "id": uid("pay"),
        "from": payer,
        "to": [{"account": first, "amount": 1_250}, {"account": second, "amount": 750}],
        "currency": "USD",
        "memo": "dinner",
    }
    created = http.post("/v1/transfers", json=body)
    assert created.status_code == 201, created.text
    result = created.json()
    assert result["status"] == "committed" and result["amount"] == 2_000
    assert result["from"] == payer and result["to"] == body["to"] and result["memo"] == "dinner"
    replay = http.post("/v1/transfers", json=body)
    assert replay.status_code == 200 and replay.json() == result
    changed = {**body, "memo": "something else"}
    detail = expect_problem(http.post("/v1/transfers", json=changed), 409, "transfer_id_conflict")
    assert "memo" in detail["detail"]
    assert (balance(http, payer), balance(http, first), balance(http, second)) == (
        8_000,
        1_250,
        750,
    )
    assert http.get(f"/v1/transfers/{body['id']}").json() == result


def test_balance_lookup_keeps_request_order_and_reports_unknown_ids(http: httpx.Client) -> None:
    accounts = [open_account(http) for _ in range(5)]
    for amount, account in enumerate(accounts, start=1):
        top_up(http, account, amount * 100)
    ids = [accounts[3], "missing-1", accounts[0], "bad id!", *accounts[1:3], accounts[4]]
    response = http.post("/v1/balances/lookup", json={"account_ids": ids})
    assert response.status_code == 200
    items = response.json()["balances"]
    assert [i["account_id"] for i in items] == ids
    assert items[0] == {"account_id": accounts[3], "balance": 400, "currency": "USD"}
    assert items[1] == {"account_id": "missing-1", "error": "account_not_found"}
    assert items[3] == {"account_id": "bad id!", "error": "invalid_account_id"}
    assert [i["balance"] for i in items[4:]] == [200, 300, 500]
    too_many = {"account_ids": [f"a{i}" for i in range(MAX_LOOKUP_IDS + 1)]}
    expect_problem(http.post("/v1/balances/lookup", json=too_many), 422, "too_many_ids")


def test_history_is_newest_first_paginated_with_signed_effects(http: httpx.Client) -> None:
    payer, payee = open_account(http), open_account(http)
    top_up(http, payer, 5_000)
    ids = []
    for n in range(7):
        ids.append(uid("h"))
        body = {
            "id": ids[-1],
            "from": payer,
            "to": [{"account": payee, "amount": n + 1}],
            "currency": "USD",
        }
        assert http.post("/v1/transfers", json=body).status_code == 201
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = http.get(f"/v1/accounts/{payer}/transfers", params=params).json()
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [i["id"] for i in seen[:7]] == list(reversed(ids))
    assert [i["effect"] for i in seen[:7]] == [-(n + 1) for n in reversed(range(7))]
    assert seen[7]["kind"] == "topup" and seen[7]["effect"] == 5_000
    payee_page = http.get(f"/v1/accounts/{payee}/transfers").json()
    assert [i["effect"] for i in payee_page["items"]] == [n + 1 for n in reversed(range(7))]
    url = f"/v1/accounts/{payer}/transfers"
    expect_problem(http.get(url, params={"limit": 0}), 422, "invalid_limit")
    expect_problem(http.get(url, params={"limit": MAX_PAGE_SIZE + 1}), 422, "invalid_limit")
    expect_problem(http.get(url, params={"limit": "ten"}), 422, "invalid_limit")
    expect_problem(http.get(url, params={"cursor": "not-a-cursor"}), 422, "invalid_cursor")
    expect_problem(http.get("/v1/accounts/ghost/transfers"), 404, "account_not_found")


def test_every_transfer_rejection_code_is_reachable(http: httpx.Client) -> None:
    payer, payee = open_account(http), open_account(http)
    euro = open_account(http, currency="EUR")
    top_up(http, payer, 1_000)

    def pay(**overrides: Any) -> httpx.Response:
        body = {
            "id": uid("x"),
            "from": payer,
            "to": [{"account": payee, "amount": 10}],
            "currency": "USD",
        }
        return http.post("/v1/transfers", json={**body, **overrides})

    expect_problem(pay(to=[{"account": payee, "amount": 5_000}]), 422, "insufficient_funds")
    expect_problem(pay(to=[{"account": "ghost", "amount": 1}]), 404, "account_not_found")
    expect_problem(pay(**{"from": "ghost"}), 404, "account_not_found")
    expect_problem(pay(to=[{"account": euro, "amount": 1}]), 422, "currency_mismatch")
    expect_problem(pay(currency="EUR"), 422, "currency_mismatch")
    expect_problem(pay(currency="ABC"), 422, "invalid_currency")
    expect_problem(pay(to=[{"account": payee, "amount": 1}] * 2), 422, "duplicate_credit_account")
    expect_problem(pay(to=[{"account": payer, "amount": 1}]), 422, "self_transfer")
    expect_problem(pay(to=[]), 422, "no_credits")
    legs = [{"account": f"leg{i}", "amount": 1} for i in range(MAX_CREDITS + 1)]
    expect_problem(pay(to=legs), 422, "too_many_legs")
    expect_problem(pay(memo="x" * 257), 422, "memo_too_long")
    expect_problem(pay(id="has space"), 422, "invalid_transfer_id")
    expect_problem(pay(to=[{"account": "bad/id", "amount": 1}]), 422, "invalid_account_id")
    expect_problem(pay(**{"from": "sys:funding:USD:0"}), 403, "system_account_forbidden")
    for amount in (0, -5, 1.5, 1.0, "10", True, None, 10**30, 10**12 + 1):
        expect_problem(pay(to=[{"account": payee, "amount": amount}]), 422, "invalid_amount")
    assert balance(http, payer) == 1_000 and balance(http, payee) == 0


def test_topup_rejections(http: httpx.Client) -> None:
    account = open_account(http)

    def topup(**overrides: Any) -> httpx.Response:
        body = {"id": uid("t"), "account": account, "amount": 100, "currency": "USD"}
        return http.post("/v1/topups", json={**body, **overrides})

    expect_problem(topup(amount=0), 422, "invalid_amount")
    expect_problem(topup(amount=2.5), 422, "invalid_amount")
    expect_problem(topup(account="ghost"), 404, "account_not_found")
    expect_problem(topup(currency="EUR"), 422, "currency_mismatch")
    expect_problem(topup(account="sys:funding:USD:1"), 403, "system_account_forbidden")
    expect_problem(topup(extra=1), 422, "invalid_body")
    assert balance(http, account) == 0


def test_account_rejections(http: httpx.Client) -> None:
    def create(**overrides: Any) -> httpx.Response:
        body = {"id": uid("a"), "currency": "USD", "owner": "o@example.com"}
        return http.post("/v1/accounts", json={**body, **overrides})

    expect_problem(create(id=""), 422, "invalid_account_id")
    expect_problem(create(id="x" * 65), 422, "invalid_account_id")
    expect_problem(create(id="sys:mine"), 403, "system_account_forbidden")
    expect_problem(create(currency="usd"), 422, "invalid_currency")
    expect_problem(create(owner=""), 422, "invalid_owner")
    expect_problem(create(allow_overdraft="yes"), 422, "invalid_body")
    expect_problem(create(balance=100), 422, "invalid_body")


def test_transport_level_problems(http: httpx.Client) -> None:
    expect_problem(http.get("/v1/nothing-here"), 404, "not_found")
    expect_problem(http.delete("/v1/transfers"), 405, "method_not_allowed")
    expect_problem(http.get("/v1/transfers/never-made"), 404, "transfer_not_found")
    form = http.post("/v1/transfers", content=b"id=1", headers={"content-type": "text/plain"})
    expect_problem(form, 415, "unsupported_media_type")
    big = b'{"id": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}'
    json_headers = {"content-type": "application/json"}
    for path in ("/v1/transfers", "/v1/accounts"):
        too_large = http.post(path, content=big, headers=json_headers)
        expect_problem(too_large, 413, "body_too_large")
        # The rest of the body is still on the connection: it must not carry another request.
        assert too_large.headers["connection"] == "close"
    for garbage in (b"{", b"[]", b"null", b"42", b'{"id": 1}', '{"id": "\u00e9"'.encode()):
        for path in ("/v1/transfers", "/v1/topups", "/v1/accounts", "/v1/balances/lookup"):
            response = http.post(path, content=garbage, headers=json_headers)
            expect_problem(response, 422, "invalid_body")


def test_bad_input_never_changes_anything(http: httpx.Client) -> None:
    payer, payee = open_account(http), open_account(http)
    top_up(http, payer, 500)
    before = http.get("/v1/ledger/summary").json()
    bodies: list[Any] = [
        {
            "id": uid("b"),
            "from": payer,
            "to": [{"account": payee, "amount": 600}],
            "currency": "USD",
        },
        {
            "id": uid("b"),
            "from": payer,
            "to": [{"account": payee, "amount": 100}, {"account": "ghost", "amount": 1}],
            "currency": "USD",
        },
        {
            "id": uid("b"),
            "from": payer,
            "to": [{"account": payee, "amount": 100}],
            "currency": "USD",
            "extra": True,
        },
        {
            "id": uid("b"),
            "from": payer,
            "to": [{"account": payee, "amount": "100"}],
            "currency": "USD",
        },
        {"from": payer, "to": [{"account": payee, "amount": 100}], "currency": "USD"},
    ]
    for body in bodies:
        response = http.post("/v1/transfers", json=body)
        assert 400 <= response.status_code < 500, response.text
        assert response.headers["content-type"].startswith(PROBLEM)
    assert (balance(http, payer), balance(http, payee)) == (500, 0)
    assert http.get(f"/v1/accounts/{payee}/transfers").json()["items"] == []
    assert http.get("/v1/ledger/summary").json() == before


def test_sum_of_balances_is_zero(http: httpx.Client) -> None:
    summary = http.get("/v1/ledger/summary").json()
    assert summary["currencies"], "the suite created USD accounts"
    for currency, figures in summary["currencies"].items():
        assert figures["sum_of_balances"] == 0, currency


def test_operations_endpoints(http: httpx.Client) -> None:
    health = http.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    account = open_account(http)
    http.get(f"/v1/accounts/{account}/balance")
    metrics = http.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    assert (
        'tokpay_http_requests_total{route="/v1/accounts/{account_id}/balance",status="200"}' in text
    )
    assert "tokpay_shard_fsync_seconds_bucket" in text
    assert "tokpay_gateway_batch_items_bucket" in text
    document = http.get("/openapi.json").json()
    for path in (
        "/v1/accounts",
        "/v1/accounts/{account_id}",
        "/v1/accounts/{account_id}/balance",
        "/v1/balances/lookup",
        "/v1/transfers",
        "/v1/topups",
        "/v1/transfers/{transfer_id}",
        "/v1/accounts/{account_id}/transfers",
    ):
        assert path in document["paths"], path
    assert "TransferIn" in document["components"]["schemas"]
    docs = http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_probed_inputs_are_clear_errors(http: httpx.Client) -> None:
    """What probing found answered 500 or was stored: each is now a 4xx with its code."""
    payer, payee = open_account(http), open_account(http)
    top_up(http, payer, 100)
    json_headers = {"content-type": "application/json"}
    for path in ("/v1/transfers", "/v1/topups", "/v1/accounts", "/v1/balances/lookup"):
        # A JSON string holding a byte that is not UTF-8 (was: UnicodeDecodeError, 500).
        for body in (b'{"id": "\xff"}', b'{"account_ids": ["a\\n\xc3"]}'):
            response = http.post(path, content=body, headers=json_headers)
            expect_problem(response, 422, "invalid_body")

    def pay(**overrides: Any) -> httpx.Response:
        body = {"id": uid("p"), "from": payer, "to": [{"account": payee, "amount": 1}]}
        return http.post("/v1/transfers", json={**body, "currency": "USD", **overrides})

    for memo in ("a\x00b", "line\nbreak", "pay \u202egnp.exe", "x\u2028y"):
        expect_problem(pay(memo=memo), 422, "invalid_memo")
    for dots in (".", "..", "..."):
        expect_problem(pay(to=[{"account": dots, "amount": 1}]), 422, "invalid_account_id")
        created = http.post("/v1/accounts", json={"id": dots, "currency": "USD", "owner": "o"})
        expect_problem(created, 422, "invalid_account_id")
    for owner in ("o\x00", "a\nb", "\u202eevil"):
        body = {"id": uid("o"), "currency": "USD", "owner": owner}
        expect_problem(http.post("/v1/accounts", json=body), 422, "invalid_owner")
    assert (balance(http, payer), balance(http, payee)) == (100, 0)


def test_system_accounts_history_is_not_served(http: httpx.Client) -> None:
    """A funding account's history would list every wallet ever topped up."""
    account = open_account(http)
    top_up(http, account, 5)
    for shard in range(4):
        response = http.get(f"/v1/accounts/sys:funding:USD:{shard}/transfers")
        expect_problem(response, 403, "system_account_forbidden")
    assert http.get(f"/v1/accounts/{account}/transfers").status_code == 200
