"""Asking to be paid: a request names a TokPay user and an amount; they pay it in one step
or decline it. Requests live in ``PeopleStore``; paying one is an ordinary payment
whose transfer id is derived from the request, so paying it twice pays once.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tokpay.ledger.errors import LedgerError
from tokpay.ledger.limits import MAX_MEMO_BYTES
from tokpay.web import wallet
from tokpay.web.context import SignedIn, Web, WebContext, check_csrf
from tokpay.web.money import MAX_PAYMENT_CENTS, AmountError, parse_cents
from tokpay.web.people import PaymentRequest, TooManyRequests
from tokpay.web.store import User

router = APIRouter(include_in_schema=False)


def _form_page(
    request: Request, web: WebContext, user: User, fields: dict[str, str], errors: dict[str, str]
) -> Response:
    return web.render(request, "request_new.html", user=user, fields=fields, errors=errors)


@router.get("/requests/new", response_class=HTMLResponse)
async def new_request(request: Request, web: Web, user: SignedIn) -> Response:
    return _form_page(request, web, user, {"email": "", "amount": "", "note": ""}, {})


@router.post("/requests", response_class=HTMLResponse)
async def ask(request: Request, web: Web, user: SignedIn) -> Response:
    form = await request.form()
    check_csrf(request, form)
    fields = {
        "email": wallet.normalise_email(str(form.get("email", ""))),
        "amount": str(form.get("amount", "")).strip(),
        "note": str(form.get("note", "")).strip(),
    }
    errors: dict[str, str] = {}
    amount = 0
    try:
        amount = parse_cents(fields["amount"], maximum=MAX_PAYMENT_CENTS)
    except AmountError as error:
        errors["amount"] = str(error)
    if len(fields["note"].encode()) > MAX_MEMO_BYTES:
        errors["note"] = f"The note can be at most {MAX_MEMO_BYTES} bytes."
    if not wallet.is_email(fields["email"]):
        errors["email"] = "Enter their email address, like name@example.com."
    elif fields["email"] == user.email:
        errors["email"] = "You cannot ask yourself for money."
    elif web.store.user_for_email(fields["email"]) is None:
        errors["email"] = (
            "Nobody has a TokPay wallet with this address yet. Ask them to sign up with it "
            "(TokPay sends no emails: tell them yourself), then send the request."
        )
    if errors:
        return _form_page(request, web, user, fields, errors)
    try:
        web.people.ask(user.id, user.email, fields["email"], amount, fields["note"])
    except TooManyRequests as refusal:
        return _form_page(request, web, user, fields, {"form": str(refusal)})
    return RedirectResponse("/requests?sent=1", status_code=303)


@router.get("/requests", response_class=HTMLResponse)
async def requests_page(request: Request, web: Web, user: SignedIn) -> Response:
    return web.render(
        request,
        "requests.html",
        user=user,
        asked_of_me=web.people.asked_of(user.email),
        asked_by_me=web.people.asked_by(user.id),
        just_sent=request.query_params.get("sent") == "1",
    )


def _request_for(web: WebContext, request_id: str, allowed: str, user: User) -> PaymentRequest:
    """The request if ``user`` is its payer (``allowed="payer"``) or requester; else 404."""
    found = web.people.request(request_id) if len(request_id) <= 64 else None
    if found is not None:
        if allowed == "payer" and found.payer_email == user.email:
            return found
        if allowed == "requester" and found.requester_id == user.id:
            return found
    raise RequestNotFound()


class RequestNotFound(Exception):
    pass


def _gone(request: Request, web: WebContext, user: User, message: str) -> Response:
    return web.render(
        request, "error.html", 404, user=user, title="Request not found", message=message
    )


@router.post("/requests/{request_id}/pay", response_class=HTMLResponse)
async def pay_request(request: Request, web: Web, user: SignedIn, request_id: str) -> Response:
    check_csrf(request, await request.form())
    try:
        asked = _request_for(web, request_id, "payer", user)
    except RequestNotFound:
        return _gone(request, web, user, "There is no request with this reference for you.")
    if asked.status == "paid":
        return RedirectResponse(f"/pay/done/{asked.transfer_id}", status_code=303)
    if asked.status != "open":
        return _gone(request, web, user, f"This request was {asked.status}; nothing was sent.")
    plan = wallet.plan_payment(
        web.store,
        user,
        [asked.requester_email],
        [f"{asked.amount // 100}.{asked.amount % 100:02d}"],
        asked.note,
        asked.pay_transfer_id,
        [asked.requester_email],
    )
    try:
        transfer = await wallet.pay(web.ledger(), user, plan)
    except (wallet.WalletError, LedgerError) as refusal:
        row_problems = [r.email_error or r.amount_error for r in plan.rows]
        message = " ".join(p for p in row_problems if p) or (
            str(refusal) if isinstance(refusal, wallet.WalletError) else refusal.detail
        )
        return web.render(request, "error.html", 400, user=user, message=message)
    web.people.settle(asked.id, "paid", transfer.order.id)
    web.people.remember(user.id, [asked.requester_email])
    return RedirectResponse(f"/pay/done/{transfer.order.id}", status_code=303)


@router.post("/requests/{request_id}/decline", response_class=HTMLResponse)
async def decline_request(request: Request, web: Web, user: SignedIn, request_id: str) -> Response:
    return await _close(request, web, user, request_id, "payer", "declined")


@router.post("/requests/{request_id}/cancel", response_class=HTMLResponse)
async def cancel_request(request: Request, web: Web, user: SignedIn, request_id: str) -> Response:
    return await _close(request, web, user, request_id, "requester", "cancelled")


async def _close(
    request: Request, web: WebContext, user: User, request_id: str, role: str, status: str
) -> Response:
    """Decline (the payer) or cancel (the requester) an open request."""
    check_csrf(request, await request.form())
    try:
        asked = _request_for(web, request_id, role, user)
    except RequestNotFound:
        return _gone(request, web, user, "There is no request with this reference for you.")
    web.people.settle(asked.id, status)
    return RedirectResponse("/requests", status_code=303)
