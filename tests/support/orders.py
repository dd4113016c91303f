"""Builders for the inputs of the money rules: account ids on a shard, account specs, orders.

One way to write a top-up or a payment for every test, whether it talks to a ``ShardLedger``,
a ``ShardService`` or the Ray actors.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokpay.ledger.model import (
    AccountSpec,
    Credit,
    TransferKind,
    TransferOrder,
    funding_account_id,
)
from tokpay.ledger.routing import shard_of

CURRENCY = "USD"
"""The currency of a test that does not care which one it uses."""


def ids_on(shard: int, shard_count: int, count: int, prefix: str) -> list[str]:
    """The first ``count`` ids ``{prefix}-{n}`` that route to ``shard`` of ``shard_count``."""
    found: list[str] = []
    candidate = 0
    while len(found) < count:
        account_id = f"{prefix}-{candidate}"
        if shard_of(account_id, shard_count) == shard:
            found.append(account_id)
        candidate += 1
    return found


def account_spec(account_id: str, currency: str = CURRENCY) -> AccountSpec:
    """A plain user account owned by ``{account_id}@example.com``."""
    return AccountSpec(id=account_id, currency=currency, owner=f"{account_id}@example.com")


def account_specs(account_ids: Iterable[str], currency: str = CURRENCY) -> list[AccountSpec]:
    return [account_spec(account_id, currency) for account_id in account_ids]


def pay(
    debit: str,
    credits: Iterable[tuple[str, int]],
    *,
    id: str,
    currency: str = CURRENCY,
    memo: str = "",
) -> TransferOrder:
    """A payment from ``debit`` to each ``(account, amount)`` of ``credits``."""
    return TransferOrder(
        id=id,
        debit=debit,
        credits=tuple(Credit(account, amount) for account, amount in credits),
        currency=currency,
        memo=memo,
    )


def topup(
    account_id: str,
    amount: int,
    *,
    id: str,
    shard_count: int = 1,
    currency: str = CURRENCY,
    debit: str | None = None,
) -> TransferOrder:
    """A top-up of ``account_id`` paid by the funding account of its shard (or by ``debit``)."""
    funding = funding_account_id(currency, shard_of(account_id, shard_count))
    return TransferOrder(
        id=id,
        debit=funding if debit is None else debit,
        credits=(Credit(account_id, amount),),
        currency=currency,
        kind=TransferKind.TOPUP,
    )
