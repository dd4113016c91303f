"""The HTTP contract's bodies, decoded strictly by msgspec.

Amounts are ``int``: msgspec refuses ``1.5``, ``1.0``, ``"10"`` and ``true`` for
an ``int`` field, and never routes a number through a float. Unknown fields are
refused, so a typo is an error and not a silently ignored option. The value rules
(id pattern, amount bounds, legs) are the ledger's own checks, run after decoding
so that each refusal keeps its stable code; ``openapi`` writes them into the
document.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from tokpay.ledger.currencies import ISO_4217
from tokpay.ledger.limits import (
    MAX_AMOUNT,
    MAX_CREDITS,
    MAX_ID_LENGTH,
    MAX_LOOKUP_IDS,
    MAX_MEMO_BYTES,
    MAX_OWNER_LENGTH,
)

ID_PATTERN = f"^[A-Za-z0-9._:@-]{{1,{MAX_ID_LENGTH}}}$"
"""The ids ``tokpay.ledger.validation.is_valid_id`` accepts, as a JSON Schema pattern."""


def _documented(**rules: Any) -> msgspec.Meta:
    # extra_json_schema only writes the rule into the schema; decoding does not
    # enforce it, so the ledger's check still answers with its own error code.
    return msgspec.Meta(extra_json_schema=rules)


Id = Annotated[
    str,
    _documented(minLength=1, maxLength=MAX_ID_LENGTH, pattern=ID_PATTERN),
]
Amount = Annotated[
    int,
    _documented(
        minimum=1,
        maximum=MAX_AMOUNT,
        description="Integer number of minor units (cents); a transfer's total obeys the same bounds",
    ),
]
Currency = Annotated[
    str, _documented(enum=sorted(ISO_4217), description="Active ISO 4217 code, e.g. USD")
]


class _In(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class LegIn(_In, frozen=True):
    account: Id
    amount: Amount


class TransferIn(_In, frozen=True):
    id: Id
    from_: Id = msgspec.field(name="from")
    to: Annotated[list[LegIn], _documented(minItems=1, maxItems=MAX_CREDITS)]
    currency: Currency
    memo: Annotated[
        str,
        _documented(maxLength=MAX_MEMO_BYTES, description=f"At most {MAX_MEMO_BYTES} UTF-8 bytes"),
    ] = ""


class TopupIn(_In, frozen=True):
    id: Id
    account: Id
    amount: Amount
    currency: Currency


class AccountIn(_In, frozen=True):
    currency: Currency
    owner: Annotated[
        str,
        _documented(
            minLength=1,
            maxLength=MAX_OWNER_LENGTH,
            description="No leading or trailing whitespace",
        ),
    ]
    id: Id | None = None
    allow_overdraft: bool = False


class LookupIn(_In, frozen=True):
    account_ids: Annotated[
        list[str],
        _documented(
            maxItems=MAX_LOOKUP_IDS,
            description="An id that is not valid gets its own `error` in the answer",
        ),
    ]


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
    balance_after: int = 0
    """The listed account's balance right after this transfer."""


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


class CurrencySumOut(msgspec.Struct):
    sum_of_balances: int


class LedgerSummaryOut(msgspec.Struct):
    currencies: dict[str, CurrencySumOut]


class HealthOut(msgspec.Struct):
    status: str
    shards: int
    accounts: int


class LivenessOut(msgspec.Struct):
    status: str
