"""Stateless checks of orders and account specs: what can be refused without a shard.

The gateway runs these at the edge and the shard runs them again, because a
shard trusts no caller.
"""

import re
import unicodedata

from tokpay.ledger.currencies import ISO_4217
from tokpay.ledger.errors import ErrorCode, LedgerError
from tokpay.ledger.limits import (
    MAX_AMOUNT,
    MAX_CREDITS,
    MAX_ID_LENGTH,
    MAX_MEMO_BYTES,
    MAX_OWNER_LENGTH,
)
from tokpay.ledger.model import (
    AccountSpec,
    TransferKind,
    TransferOrder,
    funding_account_id,
    is_system_account,
)
from tokpay.ledger.routing import shard_of

_ID_PATTERN = re.compile(rf"[A-Za-z0-9._:@-]{{1,{MAX_ID_LENGTH}}}")


_ID_RULE = f"1..{MAX_ID_LENGTH} characters of [A-Za-z0-9._:@-], not only dots"

_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
"""Characters that reorder the text around them (Trojan Source, CVE-2021-42574)."""
_LINE_BREAKING = frozenset({"Cc", "Zl", "Zp"})
"""Control characters (NUL, newlines, tabs, DEL, C1) and the Unicode line/paragraph separators."""


def is_valid_id(value: str) -> bool:
    # Only dots ("." and "..") would be path segments once the id is in a URL.
    return _ID_PATTERN.fullmatch(value) is not None and value.strip(".") != ""


def validate_account_id(value: str) -> None:
    if not is_valid_id(value):
        raise LedgerError(ErrorCode.INVALID_ACCOUNT_ID, f"account ids are {_ID_RULE}")


def unsafe_character(text: str) -> str | None:
    """The first character of ``text`` that may not be shown to people: a control character
    (NUL, newline, tab...), a line or paragraph separator, or a bidi control; else None."""
    for char in text:
        if char in _BIDI_CONTROLS or unicodedata.category(char) in _LINE_BREAKING:
            return char
    return None


def validate_memo(memo: str) -> None:
    if len(memo.encode()) > MAX_MEMO_BYTES:
        raise LedgerError(ErrorCode.MEMO_TOO_LONG, f"memo is limited to {MAX_MEMO_BYTES} bytes")
    bad = unsafe_character(memo)
    if bad is not None:
        raise LedgerError(
            ErrorCode.INVALID_MEMO,
            f"memo has the character U+{ord(bad):04X}: no control, line-break or bidi characters",
        )


def validate_currency(value: str) -> None:
    if value not in ISO_4217:
        raise LedgerError(
            ErrorCode.INVALID_CURRENCY, f"{value!r} is not an active ISO 4217 currency code"
        )


def validate_amount(value: object, where: str) -> None:
    # type() rather than isinstance(): bool is a subclass of int.
    if type(value) is not int or value <= 0 or value > MAX_AMOUNT:
        raise LedgerError(
            ErrorCode.INVALID_AMOUNT,
            f"{where} must be an integer number of minor units in 1..{MAX_AMOUNT}",
        )


def validate_account_spec(spec: AccountSpec) -> None:
    validate_account_id(spec.id)
    if is_system_account(spec.id):
        raise LedgerError(
            ErrorCode.SYSTEM_ACCOUNT_FORBIDDEN, "ids starting with 'sys:' are reserved"
        )
    validate_currency(spec.currency)
    owner = spec.owner
    if (
        not owner
        or len(owner) > MAX_OWNER_LENGTH
        or owner != owner.strip()
        or unsafe_character(owner) is not None
    ):
        raise LedgerError(
            ErrorCode.INVALID_OWNER,
            f"owner must be 1..{MAX_OWNER_LENGTH} characters without surrounding spaces, "
            "control, line-break or bidi characters",
        )


def validate_order(order: TransferOrder, shard_count: int) -> None:
    """Refuse any order that could never apply, whatever the balances."""
    if not is_valid_id(order.id):
        raise LedgerError(ErrorCode.INVALID_TRANSFER_ID, f"transfer ids are {_ID_RULE}")
    validate_account_id(order.debit)
    validate_currency(order.currency)
    validate_memo(order.memo)
    if not order.credits:
        raise LedgerError(ErrorCode.NO_CREDITS, "a transfer needs at least one credit")
    if len(order.credits) > MAX_CREDITS:
        raise LedgerError(ErrorCode.TOO_MANY_LEGS, f"a transfer has at most {MAX_CREDITS} credits")
    seen: set[str] = set()
    for index, credit in enumerate(order.credits):
        validate_account_id(credit.account)
        validate_amount(credit.amount, f"to[{index}].amount")
        if credit.account == order.debit:
            raise LedgerError(
                ErrorCode.SELF_TRANSFER, "a transfer cannot credit its own debit account"
            )
        if credit.account in seen:
            raise LedgerError(
                ErrorCode.DUPLICATE_CREDIT_ACCOUNT, f"account {credit.account!r} is credited twice"
            )
        seen.add(credit.account)
    if order.total > MAX_AMOUNT:
        raise LedgerError(
            ErrorCode.INVALID_AMOUNT, f"the total of a transfer is limited to {MAX_AMOUNT}"
        )
    if order.kind == TransferKind.TOPUP:
        _validate_topup_shape(order, shard_count)
    elif order.kind == TransferKind.PAYMENT:
        if any(is_system_account(account) for account in order.accounts()):
            raise LedgerError(
                ErrorCode.SYSTEM_ACCOUNT_FORBIDDEN, "payments cannot move money of system accounts"
            )
    else:
        raise LedgerError(ErrorCode.INVALID_BODY, f"unknown transfer kind {order.kind!r}")


def _validate_topup_shape(order: TransferOrder, shard_count: int) -> None:
    if len(order.credits) != 1:
        raise LedgerError(ErrorCode.TOO_MANY_LEGS, "a top-up credits exactly one account")
    target = order.credits[0].account
    if is_system_account(target):
        raise LedgerError(ErrorCode.SYSTEM_ACCOUNT_FORBIDDEN, "system accounts cannot be topped up")
    expected = funding_account_id(order.currency, shard_of(target, shard_count))
    if order.debit != expected:
        raise LedgerError(
            ErrorCode.SYSTEM_ACCOUNT_FORBIDDEN, "a top-up is paid by its funding account"
        )
