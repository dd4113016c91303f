"""What a signed-in person can do with their own wallet, over the ledger client.

Every function takes the user from the session; none accepts an account id
from the browser. Refusals are ``WalletError`` with a message fit for a form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tokpay.client.ledger import LedgerClient
from tokpay.ledger.errors import ErrorCode, LedgerError
from tokpay.ledger.limits import MAX_CREDITS, MAX_MEMO_BYTES
from tokpay.ledger.model import AccountSpec, Credit, Transfer, TransferOrder
from tokpay.ledger.routing import topup_order
from tokpay.ledger.validation import is_valid_id
from tokpay.web.money import MAX_PAYMENT_CENTS, MAX_TOPUP_CENTS, AmountError, parse_cents
from tokpay.web.people import looks_like
from tokpay.web.store import User, WebStore

CURRENCY = "USD"
MAX_RECIPIENTS = 10
"""Recipients on one payment form (the ledger allows up to MAX_CREDITS)."""
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,190}")
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
    """Lower case, with an international domain in its Unicode spelling: browsers send a
    typed domain with a Cyrillic ie as ``xn--xample-2of.com``, the provider as typed."""
    email = text.strip().lower()
    local, at, domain = email.rpartition("@")
    if at and "xn--" in domain and domain.isascii():
        try:
            return f"{local}@{domain.encode('ascii').decode('idna')}"
        except UnicodeError:
            return email
    return email


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
    email_error: str = ""
    amount_error: str = ""
    amount: int = 0
    account_id: str = ""
    new_recipient: bool = False
    """No payment from this user reached this address before (as far as contacts go)."""
    looks_like: str = ""
    """A known contact whose address this one imitates (same TS #39 skeleton)."""

    @property
    def ok(self) -> bool:
        return not (self.email_error or self.amount_error)


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
        return not self.errors and all(row.ok for row in self.rows)


def plan_payment(
    store: WebStore,
    payer: User,
    emails: list[str],
    amounts: list[str],
    note: str,
    transfer_id: str,
    contacts: list[str],
) -> PaymentPlan:
    """Check a payment form; every problem is attached to its field, row or the form.

    ``contacts`` are the payer's recent recipients: a row's address that is new gets a
    notice, one that looks like a contact's but differs gets a warning.
    """
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
            row.amount_error = str(error)
        row.email_error = _recipient_problem(store, payer, row, seen)
        if not row.email_error:
            row.new_recipient = row.email not in contacts
            row.looks_like = looks_like(row.email, contacts) or ""
    return plan


def _recipient_problem(store: WebStore, payer: User, row: PaymentRow, seen: set[str]) -> str:
    """What is wrong with the row's address ("" if nothing); sets the row's account."""
    if not is_email(row.email):
        return "Enter the recipient's email address, like name@example.com."
    if row.email == payer.email:
        return "You cannot pay yourself."
    if row.email in seen:
        return "This recipient is already on the payment; combine the amounts."
    seen.add(row.email)
    recipient = store.user_for_email(row.email)
    if recipient is None:
        return (
            "Nobody has a TokPay wallet with this address yet. Ask them to sign up with it "
            "(TokPay sends no emails: tell them yourself), then pay them."
        )
    row.account_id = recipient.account_id
    return ""


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
