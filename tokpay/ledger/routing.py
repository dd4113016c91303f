"""Which shard owns an account: a stable hash every process agrees on.

A top-up is paid by the funding account on its account's own shard, so it never needs
two-phase commit; ``topup_order`` builds it.
"""

from __future__ import annotations

import secrets
import zlib

from tokpay.ledger.model import (
    FUNDING_PREFIX,
    Credit,
    TransferKind,
    TransferOrder,
    funding_account_id,
)


def shard_of(account_id: str, shard_count: int) -> int:
    """Owning shard of ``account_id``; funding accounts name their shard in the id."""
    if account_id.startswith(FUNDING_PREFIX):
        suffix = account_id.rsplit(":", 1)[-1]
        if suffix.isdigit():
            return int(suffix) % shard_count
    # zlib.crc32, not hash(): Python salts str hashes per process.
    return zlib.crc32(account_id.encode()) % shard_count


MAX_HOMING_DRAWS = 256
"""Random ids ``id_homed_with`` draws at most (one in ``shard_count`` fits)."""


def id_homed_with(prefix: str, account_id: str, shard_count: int) -> str:
    """A new random transfer id whose home (the shard that binds an id to one body:
    ``shard_of`` the id) is ``account_id``'s shard. An order debiting that account (a
    payment from it, or a top-up of it: its funding account is on the same shard) is then
    bound where it is applied, with no claim at another shard first. Homing is only a
    saving: after ``MAX_HOMING_DRAWS`` misses the last draw is used as it is."""
    want = shard_of(account_id, shard_count)
    candidate = ""
    for _ in range(MAX_HOMING_DRAWS):
        candidate = f"{prefix}{secrets.token_hex(12)}"
        if shard_of(candidate, shard_count) == want:
            break
    return candidate


def topup_order(
    transfer_id: str, account_id: str, amount: int, currency: str, shard_count: int
) -> TransferOrder:
    """Money entering from outside: ``amount`` to ``account_id`` from its shard's funding account."""
    return TransferOrder(
        id=transfer_id,
        debit=funding_account_id(currency, shard_of(account_id, shard_count)),
        credits=(Credit(account_id, amount),),
        currency=currency,
        kind=TransferKind.TOPUP,
    )
