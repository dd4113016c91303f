"""The signed-in user's wallet pages: dashboard, transaction table and export, chart, top up.

Every page acts on the account of the user in the session; a query or form naming
any other account is refused (``check_account``).
"""

from __future__ import annotations

import csv
import io
import secrets
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from tokpay.web import wallet
from tokpay.web.context import SignedIn, Web, check_account, check_csrf, is_htmx
from tokpay.web.money import MAX_TOPUP_CENTS, format_cents

PAGE_SIZE = 10
FILTERS = {"all": "All", "sent": "Sent", "received": "Received", "topup": "Top-ups"}

router = APIRouter(include_in_schema=False)


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(request: Request, web: Web, user: SignedIn) -> Response:
    ledger = web.ledger()
    entries = await wallet.entries(ledger, web.store, user)
    return web.render(
        request,
        "dashboard.html",
        user=user,
        balance=await wallet.balance_of(ledger, user),
        topup_id=f"top_{secrets.token_hex(12)}",
        max_topup=MAX_TOPUP_CENTS,
        **_table(entries, "all", "", 1),
    )


@router.get("/accounts/{account_id}", response_class=HTMLResponse)
async def account_page(user: SignedIn, account_id: str) -> Response:
    check_account(user, account_id)
    return RedirectResponse("/dashboard", status_code=303)


@router.get("/transactions", response_class=HTMLResponse)
async def transactions(request: Request, web: Web, user: SignedIn) -> Response:
    query = request.query_params
    check_account(user, query.get("account"))
    entries = await wallet.entries(web.ledger(), web.store, user)
    raw_page = query.get("page", "")
    page = int(raw_page) if raw_page.isascii() and raw_page.isdigit() and len(raw_page) <= 6 else 1
    table = _table(entries, query.get("filter", "all"), query.get("q", ""), page)
    return web.render(request, "_tx_results.html", user=user, **table)


@router.get("/transactions.csv")
async def transactions_csv(request: Request, web: Web, user: SignedIn) -> Response:
    check_account(user, request.query_params.get("account"))
    entries = await wallet.entries(web.ledger(), web.store, user)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["date", "type", "counterparty", "amount", "balance_after", "note", "id"])
    for entry in entries:
        writer.writerow(
            [
                entry.created_at.isoformat(),
                entry.kind,
                "; ".join(entry.counterparties),
                _decimal(entry.effect),
                _decimal(entry.balance_after),
                entry.memo,
                entry.transfer_id,
            ]
        )
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="tokpay-transactions.csv"'},
    )


@router.get("/chart.json")
async def chart_data(web: Web, user: SignedIn) -> Response:
    entries = await wallet.entries(web.ledger(), web.store, user)
    points = [
        {"t": e.created_at.isoformat(), "balance": e.balance_after} for e in reversed(entries)
    ]
    if entries:
        # Start the line at the balance before the first transfer shown.
        first = entries[-1]
        points.insert(
            0,
            {"t": first.created_at.isoformat(), "balance": first.balance_after - first.effect},
        )
        points.append({"t": datetime.now(UTC).isoformat(), "balance": entries[0].balance_after})
    return JSONResponse({"currency": wallet.CURRENCY, "points": points})


@router.post("/topup", response_class=HTMLResponse)
async def topup(request: Request, web: Web, user: SignedIn) -> Response:
    form = await request.form()
    check_csrf(request, form)
    check_account(user, form.get("account"))
    ledger = web.ledger()
    transfer_id = str(form.get("transfer_id", ""))
    amount_text = str(form.get("amount", ""))
    error = message = ""
    try:
        amount = await wallet.top_up(ledger, user, amount_text, transfer_id)
        message = f"Added {format_cents(amount)} to your wallet."
        transfer_id = f"top_{secrets.token_hex(12)}"
        amount_text = ""
    except wallet.WalletError as refusal:
        error = str(refusal)
    if not is_htmx(request):
        if error:
            return web.render(request, "error.html", message=error, user=user)
        return RedirectResponse("/dashboard", status_code=303)
    entries = await wallet.entries(ledger, web.store, user)
    response = web.render(
        request,
        "_topup_result.html",
        user=user,
        balance=await wallet.balance_of(ledger, user),
        topup_id=transfer_id,
        amount_text=amount_text,
        topup_error=error,
        topup_message=message,
        max_topup=MAX_TOPUP_CENTS,
        **_table(entries, "all", "", 1),
    )
    if message:
        response.headers["HX-Trigger"] = "ledger-changed"
    return response


def _decimal(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    whole, rest = divmod(abs(cents), 100)
    return f"{sign}{whole}.{rest:02d}"


def _table(entries: list[wallet.Entry], kind: str, query: str, page: int) -> dict[str, Any]:
    kind = kind if kind in FILTERS else "all"
    needle = query.strip().lower()
    rows = [
        e
        for e in entries
        if (kind == "all" or e.kind == kind)
        and (not needle or any(needle in p.lower() for p in e.counterparties))
    ]
    pages = max(1, -(-len(rows) // PAGE_SIZE))
    page = min(max(1, page), pages)
    return {
        "rows": rows[(page - 1) * PAGE_SIZE : page * PAGE_SIZE],
        "has_any": bool(entries),
        "filter": kind,
        "filters": FILTERS,
        "q": query,
        "page": page,
        "pages": pages,
        "matches": len(rows),
    }
