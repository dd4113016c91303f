"""What one batch changed, as the shard's store will keep it (see ``tokpay.store``).

The ledger fills a ``Changes`` while it applies batches; its owner writes it to the
store after their log records are durable (every few records, in one transaction).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import msgspec

from tokpay.ledger.model import Account, Prepared, Transfer, TransferOrder

ORDER_FIELDS = ("debit", "credits", "currency", "memo", "kind")


def order_digest(order: TransferOrder) -> bytes:
    """What an id's claim stores of its body: 16 bytes that differ for any two bodies,
    then 2 bytes per field of ``ORDER_FIELDS``, to say which field another body changed."""
    whole = hashlib.blake2b(msgspec.msgpack.encode(order), digest_size=16).digest()
    fields = b"".join(_field_hash(getattr(order, name)) for name in ORDER_FIELDS)
    return whole + fields


def digest_difference(digest: bytes, order: TransferOrder) -> str:
    """`` (field 'memo' differs)`` for the first field whose hash differs, else ``""``."""
    for index, name in enumerate(ORDER_FIELDS):
        start = 16 + 2 * index
        if digest[start : start + 2] != _field_hash(getattr(order, name)):
            return f" (field {name!r} differs)"
    return ""


def _field_hash(value: object) -> bytes:
    return hashlib.blake2b(msgspec.msgpack.encode(value), digest_size=2).digest()


class HistoryRow(msgspec.Struct, array_like=True, frozen=True):
    """One entry of an account's history: its number, the transfer, its effect, the balance after."""

    account: str
    n: int
    transfer_id: str
    effect: int
    balance_after: int


class Mark(msgspec.Struct, array_like=True, frozen=True):
    """An id known here without its transfer: a claim (``code`` None) or a refusal."""

    id: str
    digest: bytes
    code: str | None = None
    detail: str = ""
    at: int = 0


@dataclass
class Changes:
    """What log records changed since the store was last written; written in one
    transaction. Several records fold into one: an account or a hold keeps its latest
    state, and a hold released and taken again under the same txid is taken."""

    accounts: dict[str, Account] = field(default_factory=dict)
    transfers: list[Transfer] = field(default_factory=list)
    history: list[HistoryRow] = field(default_factory=list)
    prepared: dict[str, Prepared] = field(default_factory=dict)
    released: set[str] = field(default_factory=set)
    marks: list[Mark] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.accounts
            or self.transfers
            or self.history
            or self.prepared
            or self.released
            or self.marks
        )
