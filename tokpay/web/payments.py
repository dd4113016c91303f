"""Paying other users: the payment form, its review, the one confirmed transfer, its result.

The confirmation reuses the form's transfer id, so a double click or a repeated post
pays once (the ledger answers the repeat with the original transfer), and it answers
with a redirect to the "Paid" page, so Back and reload never post it again. The form
works without JavaScript: "Add recipient" and "Remove" are ordinary submit buttons.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import FormData

from tokpay.ledger.errors import LedgerError
from tokpay.ledger.routing import id_homed_with
from tokpay.web import history, wallet
from tokpay.web.context import SignedIn, Web, WebContext, check_account, check_csrf
from tokpay.web.dashboard import not_found
from tokpay.web.money import MAX_PAYMENT_CENTS, format_cents
from tokpay.web.people import unusual_letters
from tokpay.web.store import User

router = APIRouter(include_in_schema=False)
MAX_SUGGESTIONS = 10
"""Recent recipients offered by the email fields' autocomplete."""
DRAFT_KEY = "pay_draft"
"""The reviewed payment waiting for confirmation, in the server-side session."""


async def _pay_context(
    web: WebContext, user: User, plan: wallet.PaymentPlan, show_errors: bool = True
) -> dict[str, Any]:
    return {
        "user": user,
        "plan": plan,
        "show_errors": show_errors,
        "balance": await wallet.balance_of(web.ledger(), user),
        "max_payment": MAX_PAYMENT_CENTS,
        "max_recipients": wallet.MAX_RECIPIENTS,
        "suggestions": web.people.contacts(user.id)[:MAX_SUGGESTIONS],
        "unusual_letters": unusual_letters,
    }


async def _plan_from(
    request: Request, web: WebContext, user: User
) -> tuple[FormData, wallet.PaymentPlan]:
    form = await request.form()
    check_csrf(request, form)
    check_account(user, form.get("account"))
    plan = wallet.plan_payment(
        web.store,
        user,
        [str(v) for v in form.getlist("email")],
        [str(v) for v in form.getlist("amount")],
        str(form.get("note", "")),
        str(form.get("transfer_id", "")),
        web.people.contacts(user.id),
    )
    return form, plan


def _fresh_plan(web: WebContext, user: User, email: str = "") -> wallet.PaymentPlan:
    """An empty payment form; its transfer id is homed on the payer's shard (routing.py)."""
    transfer_id = id_homed_with("pay_", user.account_id, web.ledger().shard_count)
    return wallet.PaymentPlan([wallet.PaymentRow(email, "")], "", transfer_id)


@router.get("/pay", response_class=HTMLResponse)
async def pay_form(request: Request, web: Web, user: SignedIn) -> Response:
    email = wallet.normalise_email(request.query_params.get("to", ""))[:254]
    plan = _fresh_plan(web, user, email if wallet.is_email(email) else "")
    return web.render(request, "pay.html", **await _pay_context(web, user, plan))


@router.post("/pay/review", response_class=HTMLResponse)
async def pay_review(request: Request, web: Web, user: SignedIn) -> Response:
    form, plan = await _plan_from(request, web, user)
    if form.get("add_row") or form.get("remove_row"):
        # A row added or removed by a plain submit (no JavaScript): the form again, unjudged.
        rows = plan.rows
        removed = str(form.get("remove_row", ""))
        if removed.isdigit() and 1 <= int(removed) <= len(rows) and len(rows) > 1:
            del rows[int(removed) - 1]
        if form.get("add_row") and len(rows) < wallet.MAX_RECIPIENTS:
            rows.append(wallet.PaymentRow("", ""))
        if not rows:
            rows.append(wallet.PaymentRow("", ""))
        return web.render(request, "pay.html", **await _pay_context(web, user, plan, False))
    context = await _pay_context(web, user, plan)
    if form.get("edit") or not plan.ok:
        if not plan.rows:
            plan.rows.append(wallet.PaymentRow("", ""))
        context["show_errors"] = not form.get("edit")
        return web.render(request, "pay.html", **context)
    if plan.total > context["balance"]:
        plan.errors.append(
            f"Your balance is {format_cents(context['balance'])}; this payment needs "
            f"{format_cents(plan.total)}. Nothing was sent."
        )
        return web.render(request, "pay.html", **context)
    # Redirect after POST: the confirmation is a GET page, so Back to it never re-posts.
    request.session[DRAFT_KEY] = {
        "emails": [row.email for row in plan.rows],
        "amounts": [row.amount_text for row in plan.rows],
        "note": plan.note,
        "transfer_id": plan.transfer_id,
    }
    return RedirectResponse("/pay/review", status_code=303)


@router.get("/pay/review", response_class=HTMLResponse)
async def pay_review_page(request: Request, web: Web, user: SignedIn) -> Response:
    draft = request.session.get(DRAFT_KEY)
    if not isinstance(draft, dict):
        return RedirectResponse("/pay", status_code=303)
    plan = wallet.plan_payment(
        web.store,
        user,
        [str(v) for v in draft.get("emails", [])][: wallet.MAX_RECIPIENTS],
        [str(v) for v in draft.get("amounts", [])][: wallet.MAX_RECIPIENTS],
        str(draft.get("note", "")),
        str(draft.get("transfer_id", "")),
        web.people.contacts(user.id),
    )
    context = await _pay_context(web, user, plan)
    if not plan.ok:  # a recipient closed their wallet meanwhile, or the like
        return web.render(request, "pay.html", **context)
    return web.render(request, "pay_confirm.html", **context)


@router.post("/pay/confirm", response_class=HTMLResponse)
async def pay_confirm(request: Request, web: Web, user: SignedIn) -> Response:
    _, plan = await _plan_from(request, web, user)
    if plan.ok:
        try:
            transfer = await wallet.pay(web.ledger(), user, plan)
        except (wallet.WalletError, LedgerError) as refusal:
            plan.errors.append(
                str(refusal) if isinstance(refusal, wallet.WalletError) else refusal.detail
            )
        else:
            web.people.remember(user.id, [row.email for row in plan.rows])
            request.session.pop(DRAFT_KEY, None)
            return RedirectResponse(f"/pay/done/{transfer.order.id}", status_code=303)
    if not plan.rows:
        plan.rows.append(wallet.PaymentRow("", ""))
    return web.render(request, "pay.html", **await _pay_context(web, user, plan))


@router.get("/pay/done/{transfer_id}", response_class=HTMLResponse)
async def pay_done(request: Request, web: Web, user: SignedIn, transfer_id: str) -> Response:
    ledger = web.ledger()
    balance = await wallet.balance_of(ledger, user)
    found = await history.receipt(ledger, web.store, user, transfer_id)
    if found is None or found.entry.kind != "sent":
        return not_found(
            request, web, user, "There is no payment with this reference from your wallet."
        )
    return web.render(request, "pay_done.html", user=user, receipt=found, balance=balance)
