"""The HTTP contract's bodies, decoded strictly by msgspec.

Amounts are ``int``: msgspec refuses ``1.5``, ``1.0``, ``"10"`` and ``true`` for
an ``int`` field, and never routes a number through a float. Unknown fields are
refused, so a typo is an error and not a silently ignored option.
"""

from __future__ import annotations

import msgspec


class _In(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class LegIn(_In, frozen=True):
    account: str
    amount: int


class TransferIn(_In, frozen=True):
    id: str
    from_: str = msgspec.field(name="from")
    to: list[LegIn]
    currency: str
    memo: str = ""


class TopupIn(_In, frozen=True):
    id: str
    account: str
    amount: int
    currency: str


class AccountIn(_In, frozen=True):
    currency: str
    owner: str
    id: str | None = None
    allow_overdraft: bool = False


class LookupIn(_In, frozen=True):
    account_ids: list[str]


class LegOut(msgspec.Struct):
    account: str
    amount: int


class TransferOut(msgspec.Struct):
    id: str
    status: str
    kind: str
    from_: str = msgspec.field(name="from")
    to: list[LegOut] = []
    amount: int = 0
    currency: str = ""
    memo: str = ""
    created_at: str = ""


class HistoryItemOut(TransferOut):
    effect: int = 0
    """Signed change this transfer made to the listed account's balance."""


class HistoryOut(msgspec.Struct):
    items: list[HistoryItemOut]
    next_cursor: str | None


class AccountOut(msgspec.Struct):
    id: str
    currency: str
    owner: str
    allow_overdraft: bool
    balance: int
    created_at: str


class BalanceOut(msgspec.Struct):
    account_id: str
    balance: int
    currency: str


class LookupItemOut(msgspec.Struct, omit_defaults=True):
    account_id: str
    balance: int | None = None
    currency: str | None = None
    error: str | None = None


class LookupOut(msgspec.Struct):
    balances: list[LookupItemOut]


class Problem(msgspec.Struct, omit_defaults=True):
    """RFC 9457 problem details, with TokPay's stable ``code``."""

    type: str
    title: str
    status: int
    code: str
    detail: str = ""
    instance: str | None = None
