"""What a signed-in person can do with their own wallet, over the ledger client.

Every function takes the user from the session; none accepts an account id
from the browser. Refusals are ``WalletError`` with a message fit for a form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from tokpay.client.ledger import LedgerClient
from tokpay.ledger.errors import ErrorCode, LedgerError
from tokpay.ledger.limits import MAX_CREDITS, MAX_MEMO_BYTES, MAX_PAGE_SIZE
from tokpay.ledger.model import (
    AccountSpec,
    Credit,
    Transfer,
    TransferKind,
    TransferOrder,
)
from tokpay.ledger.routing import topup_order
from tokpay.ledger.validation import is_valid_id
from tokpay.web.money import MAX_PAYMENT_CENTS, MAX_TOPUP_CENTS, AmountError, parse_cents
from tokpay.web.store import User, WebStore

CURRENCY = "USD"
MAX_RECIPIENTS = 10
"""Recipients on one payment form (the ledger allows up to MAX_CREDITS)."""
MAX_HISTORY_ITEMS = 2_000
"""Transfers read for the dashboard's chart, filters and CSV export."""
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,190}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MESSAGES = {
    ErrorCode.INSUFFICIENT_FUNDS: "Not enough money in your wallet for this payment. Nothing was sent.",
    ErrorCode.ACCOUNT_NOT_FOUND: "A recipient's wallet could not be found. Nothing was sent.",
    ErrorCode.TRANSFER_ID_CONFLICT: "This form was already used for a different payment; start a new one.",
    ErrorCode.BALANCE_LIMIT_EXCEEDED: "A wallet would pass its balance limit. Nothing was sent.",
    ErrorCode.OVERLOADED: "TokPay is busy right now; nothing was sent, please try again.",
    ErrorCode.UNAVAILABLE: "TokPay could not reach the ledger; nothing was sent, please try again.",
}

if MAX_RECIPIENTS > MAX_CREDITS:
    raise RuntimeError("a payment form cannot have more recipients than a transfer has credits")


class WalletError(Exception):
    """A refusal to show on the form; nothing moved."""


def normalise_email(text: str) -> str:
    return text.strip().lower()


def is_email(text: str) -> bool:
    return _EMAIL.fullmatch(text) is not None


async def open_wallet(ledger: LedgerClient, user: User) -> None:
    """Create the user's USD account; repeating it is harmless (same spec -> same account)."""
    outcome = await ledger.create_account(
        AccountSpec(id=user.account_id, currency=CURRENCY, owner=user.id)
    )
    if outcome.error is not None:
        raise LedgerError(ErrorCode(outcome.error), outcome.detail)


async def balance_of(ledger: LedgerClient, user: User) -> int:
    view = await ledger.balance(user.account_id)
    return 0 if view is None else view.balance


def _message(error: str | None, detail: str) -> str:
    if error is None:
        return "The ledger refused this request. Nothing was moved."
    try:
        return _MESSAGES.get(ErrorCode(error), f"Refused ({error}): {detail}")
    except ValueError:
        return f"Refused ({error}): {detail}"


def _require_transfer_id(transfer_id: str) -> None:
    if not (transfer_id.startswith(("pay_", "top_")) and is_valid_id(transfer_id)):
        raise WalletError("This form has expired; reload the page and try again.")


async def top_up(ledger: LedgerClient, user: User, amount_text: str, transfer_id: str) -> int:
    """Add money from outside; returns the amount in cents."""
    _require_transfer_id(transfer_id)
    try:
        amount = parse_cents(amount_text, maximum=MAX_TOPUP_CENTS)
    except AmountError as error:
        raise WalletError(str(error)) from None
    order = topup_order(transfer_id, user.account_id, amount, CURRENCY, ledger.shard_count)
    outcome = await ledger.submit(order)
    if outcome.transfer is None:
        raise WalletError(_message(outcome.error, outcome.detail))
    return amount


@dataclass
class PaymentRow:
    email: str
    amount_text: str
    error: str = ""
    amount: int = 0
    account_id: str = ""


@dataclass
class PaymentPlan:
    rows: list[PaymentRow]
    note: str
    transfer_id: str
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(row.amount for row in self.rows)

    @property
    def ok(self) -> bool:
        return not self.errors and not any(row.error for row in self.rows)


def plan_payment(
    store: WebStore,
    payer: User,
    emails: list[str],
    amounts: list[str],
    note: str,
    transfer_id: str,
) -> PaymentPlan:
    """Check a payment form; every problem is attached to its row or to the form."""
    rows = [
        PaymentRow(normalise_email(email), amount.strip())
        for email, amount in zip(emails, amounts, strict=False)
        if email.strip() or amount.strip()
    ]
    plan = PaymentPlan(rows, note.strip(), transfer_id)
    if not rows:
        plan.errors.append("Add at least one recipient.")
    if len(rows) > MAX_RECIPIENTS:
        plan.errors.append(f"One payment can have at most {MAX_RECIPIENTS} recipients.")
    if len(plan.note.encode()) > MAX_MEMO_BYTES:
        plan.errors.append(f"The note can be at most {MAX_MEMO_BYTES} bytes.")
    try:
        _require_transfer_id(transfer_id)
    except WalletError as error:
        plan.errors.append(str(error))
    seen: set[str] = set()
    for row in rows:
        try:
            row.amount = parse_cents(row.amount_text, maximum=MAX_PAYMENT_CENTS)
        except AmountError as error:
            row.error = str(error)
        if not is_email(row.email):
            row.error = "Enter the recipient's email address."
            continue
        if row.email == payer.email:
            row.error = "You cannot pay yourself."
            continue
        if row.email in seen:
            row.error = "This recipient is already on the payment; combine the amounts."
            continue
        seen.add(row.email)
        recipient = store.user_for_email(row.email)
        if recipient is None:
            row.error = "No TokPay user has this email address."
            continue
        row.account_id = recipient.account_id
    return plan


async def pay(ledger: LedgerClient, payer: User, plan: PaymentPlan) -> Transfer:
    """One ledger transfer: the payer's debit, one credit per recipient, all or nothing."""
    if not plan.ok:
        raise WalletError("Fix the problems on the form first.")
    order = TransferOrder(
        id=plan.transfer_id,
        debit=payer.account_id,
        credits=tuple(Credit(row.account_id, row.amount) for row in plan.rows),
        currency=CURRENCY,
        memo=plan.note,
    )
    outcome = await ledger.submit(order)
    if outcome.transfer is None:
        raise WalletError(_message(outcome.error, outcome.detail))
    return outcome.transfer


@dataclass(frozen=True)
class Entry:
    """One line of the transaction table, from the user's side."""

    transfer_id: str
    kind: str  # "topup", "sent" or "received"
    effect: int
    counterparties: tuple[str, ...]
    memo: str
    created_at: datetime
    balance_after: int


async def entries(ledger: LedgerClient, store: WebStore, user: User) -> list[Entry]:
    """The user's transfers, newest first, with the balance after each."""
    history: list[tuple[Transfer, int]] = []
    cursor: int | None = None
    while len(history) < MAX_HISTORY_ITEMS:
        page = await ledger.history(user.account_id, MAX_PAGE_SIZE, cursor)
        history.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    others = {a for t, _ in history for a in t.order.accounts() if a != user.account_id}
    emails = store.emails_of(others)
    balance = await balance_of(ledger, user)
    out = []
    for transfer, effect in history:
        order = transfer.order
        parties: tuple[str, ...]
        if order.kind == TransferKind.TOPUP:
            kind, parties = "topup", ("Top-up",)
        elif order.debit == user.account_id:
            kind = "sent"
            parties = tuple(emails.get(c.account, c.account) for c in order.credits)
        else:
            kind, parties = "received", (emails.get(order.debit, order.debit),)
        created = _EPOCH + timedelta(microseconds=transfer.created_at)
        out.append(Entry(order.id, kind, effect, parties, order.memo, created, balance))
        balance -= effect
    return out
