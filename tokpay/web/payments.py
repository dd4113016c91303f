"""Paying other users: the payment form, its review, and the one confirmed transfer.

The confirmation reuses the form's transfer id, so a double click or a refresh
pays once (the ledger answers the repeat with the original transfer).
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import FormData

from tokpay.ledger.errors import LedgerError
from tokpay.web import wallet
from tokpay.web.context import SignedIn, Web, WebContext, check_account, check_csrf
from tokpay.web.money import MAX_PAYMENT_CENTS, format_cents
from tokpay.web.store import User

router = APIRouter(include_in_schema=False)


async def _pay_context(web: WebContext, user: User, plan: wallet.PaymentPlan) -> dict[str, Any]:
    return {
        "user": user,
        "plan": plan,
        "balance": await wallet.balance_of(web.ledger(), user),
        "max_payment": MAX_PAYMENT_CENTS,
        "max_recipients": wallet.MAX_RECIPIENTS,
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
    )
    return form, plan


@router.get("/pay", response_class=HTMLResponse)
async def pay_form(request: Request, web: Web, user: SignedIn) -> Response:
    plan = wallet.PaymentPlan([wallet.PaymentRow("", "")], "", f"pay_{secrets.token_hex(12)}")
    return web.render(request, "pay.html", **await _pay_context(web, user, plan))


@router.post("/pay/review", response_class=HTMLResponse)
async def pay_review(request: Request, web: Web, user: SignedIn) -> Response:
    form, plan = await _plan_from(request, web, user)
    context = await _pay_context(web, user, plan)
    if form.get("edit") or not plan.ok:
        if not plan.rows:
            plan.rows.append(wallet.PaymentRow("", ""))
        return web.render(request, "pay.html", **context)
    if plan.total > context["balance"]:
        plan.errors.append(
            f"Your balance is {format_cents(context['balance'])}; this payment needs "
            f"{format_cents(plan.total)}. Nothing was sent."
        )
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
            return web.render(
                request,
                "pay_done.html",
                user=user,
                plan=plan,
                transfer=transfer,
                balance=await wallet.balance_of(web.ledger(), user),
            )
    if not plan.rows:
        plan.rows.append(wallet.PaymentRow("", ""))
    return web.render(request, "pay.html", **await _pay_context(web, user, plan))
