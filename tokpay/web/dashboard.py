"""The signed-in user's wallet pages: dashboard, transaction list, receipts, export, chart, top up.

Every page acts on the account of the user in the session; a query or form naming
any other account is refused (``check_account``). The list's state (filter, search,
cursor) lives in the URL, so its links work with and without JavaScript.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from tokpay.ledger.routing import id_homed_with
from tokpay.web import history, wallet
from tokpay.web.context import (
    SECURITY_HEADERS,
    SignedIn,
    Web,
    WebContext,
    check_account,
    check_csrf,
    is_htmx,
)
from tokpay.web.money import MAX_TOPUP_CENTS, format_cents
from tokpay.web.store import User

TIME_ZONE_COOKIE = "tz"
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"-?\d{1,15}\.\d{2}")

router = APIRouter(include_in_schema=False)


def _zone(request: Request) -> ZoneInfo:
    """The browser's time zone, which app.js keeps in a cookie (URL-encoded)."""
    return history.zone_named(unquote(request.cookies.get(TIME_ZONE_COOKIE, ""))[:64])


def _query(request: Request) -> history.ListQuery:
    params = request.query_params
    return history.ListQuery.parse(
        params.get("filter", "all"), params.get("q", ""), params.get("before", "")
    )


def _list_url(path: str, query: history.ListQuery, before: int | None) -> str:
    params: dict[str, str | int] = {}
    if query.kind != "all":
        params["filter"] = query.kind
    if query.text:
        params["q"] = query.text
    if before is not None:
        params["before"] = before
    return path + ("?" + urlencode(params) if params else "")


async def _list_context(
    request: Request, web: WebContext, user: User, query: history.ListQuery
) -> dict[str, Any]:
    page = await history.list_page(web.ledger(), web.store, user, query)
    zone = _zone(request)
    older = page.older

    def link(path: str, before: int | None) -> str:
        return _list_url(path, query, before)

    return {
        "groups": history.by_day(page.entries, zone, datetime.now(UTC)),
        "zone": zone,
        "zone_name": str(zone.key),
        "filter": query.kind,
        "filters": history.FILTERS,
        "q": query.text,
        "paged": query.before is not None,
        "older_url": None if older is None else link("/dashboard", older),
        "older_fragment": None if older is None else link("/transactions", older),
        "newest_url": link("/dashboard", None),
        "csv_url": link("/transactions.csv", None),
        "filtered": query.kind != "all" or bool(query.text),
    }


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(request: Request, web: Web, user: SignedIn) -> Response:
    ledger = web.ledger()
    balance = await wallet.balance_of(ledger, user)
    listing = await _list_context(request, web, user, _query(request))
    return web.render(
        request,
        "dashboard.html",
        user=user,
        balance=balance,
        has_any=bool(listing["groups"]) or listing["filtered"] or listing["paged"],
        asked_of_me=web.people.asked_of(user.email),
        topup_id=id_homed_with("top_", user.account_id, ledger.shard_count),
        max_topup=MAX_TOPUP_CENTS,
        **listing,
    )


@router.get("/accounts/{account_id}", response_class=HTMLResponse)
async def account_page(user: SignedIn, account_id: str) -> Response:
    check_account(user, account_id)
    return RedirectResponse("/dashboard", status_code=303)


@router.get("/transactions", response_class=HTMLResponse)
async def transactions(request: Request, web: Web, user: SignedIn) -> Response:
    check_account(user, request.query_params.get("account"))
    query = _query(request)
    if not is_htmx(request):
        return RedirectResponse(_list_url("/dashboard", query, query.before), status_code=303)
    listing = await _list_context(request, web, user, query)
    return web.render(request, "_tx_results.html", user=user, **listing)


@router.get("/transactions.csv")
async def transactions_csv(request: Request, web: Web, user: SignedIn) -> Response:
    check_account(user, request.query_params.get("account"))
    query = _query(request)
    zone = _zone(request)
    entries = await history.export_entries(web.ledger(), web.store, user, query)
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL)
    writer.writerow(["date", "type", "counterparty", "amount", "note", "id"])
    for entry in entries:
        cells = [
            entry.created_at.astimezone(zone).isoformat(),
            entry.kind,
            "; ".join(entry.counterparties),
            _decimal(entry.effect),
            entry.memo,
            entry.transfer_id,
        ]
        writer.writerow([spreadsheet_safe(cell) for cell in cells])
    name = "tokpay-transactions" + ("" if query.kind == "all" else f"-{query.kind}") + ".csv"
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'},
    )


def spreadsheet_safe(cell: str) -> str:
    """A cell a spreadsheet shows as text, never runs as a formula (OWASP CSV injection):
    one starting with ``= + - @``, tab or carriage return gets a leading ``'``. Amounts
    we formatted ourselves (``-12.50``) stay numbers."""
    if cell.startswith(_FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


@router.get("/transactions/{transfer_id}", response_class=HTMLResponse)
async def receipt_page(request: Request, web: Web, user: SignedIn, transfer_id: str) -> Response:
    found = await history.receipt(web.ledger(), web.store, user, transfer_id)
    if found is None:
        return not_found(
            request, web, user, "There is no transaction with this reference in your wallet."
        )
    zone = _zone(request)
    return web.render(
        request, "receipt.html", user=user, receipt=found, zone=zone, zone_name=str(zone.key)
    )


@router.get("/chart.json")
async def chart_data(web: Web, user: SignedIn) -> Response:
    ledger = web.ledger()
    balance = await wallet.balance_of(ledger, user)
    points = await history.chart_points(ledger, user, balance)
    return JSONResponse(
        {
            "currency": wallet.CURRENCY,
            "points": [{"t": t.isoformat(), "balance": cents} for t, cents in points],
        },
        headers=SECURITY_HEADERS,
    )


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
        transfer_id = id_homed_with("top_", user.account_id, ledger.shard_count)
        amount_text = ""
    except wallet.WalletError as refusal:
        error = str(refusal)
    if not is_htmx(request):
        if error:
            return web.render(request, "error.html", 400, message=error, user=user)
        return RedirectResponse("/dashboard", status_code=303)
    response = web.render(
        request,
        "_topup_result.html",
        user=user,
        balance=await wallet.balance_of(ledger, user),
        has_any=True,
        topup_id=transfer_id,
        amount_text=amount_text,
        topup_error=error,
        topup_message=message,
        max_topup=MAX_TOPUP_CENTS,
        **await _list_context(request, web, user, history.ListQuery()),
    )
    if message:
        response.headers["HX-Trigger"] = "ledger-changed"
    return response


def not_found(request: Request, web: WebContext, user: User, message: str) -> Response:
    return web.render(request, "error.html", 404, user=user, title="Not found", message=message)


def _decimal(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    whole, rest = divmod(abs(cents), 100)
    return f"{sign}{whole}.{rest:02d}"
