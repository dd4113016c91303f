"""The ledger's plain data: accounts, transfers, two-phase-commit records.

msgspec Structs, so the same types are validated at the edge, written to the
log and sent between processes as msgpack without pickling rich objects.
"""

from __future__ import annotations

import msgspec

FUNDING_PREFIX = "sys:funding:"
"""System accounts standing for money entering from outside, one per currency per shard."""


def funding_account_id(currency: str, shard: int) -> str:
    """The funding account of ``currency`` that lives on ``shard``.

    One per shard keeps every top-up a single-shard transfer (no 2PC).
    """
    return f"{FUNDING_PREFIX}{currency}:{shard}"


def is_system_account(account_id: str) -> bool:
    return account_id.startswith("sys:")


class Account(msgspec.Struct, kw_only=True):
    id: str
    currency: str
    owner: str
    allow_overdraft: bool = False
    balance: int = 0
    created_at: int = 0
    # Funds held by prepared cross-shard transfers: debits leaving, credits arriving.
    # Reads never show them; they only stop a second spend of the same money.
    held_debit: int = 0
    held_credit: int = 0
    entries: int = 0
    """How many history entries the account has; the next one is numbered entries + 1."""


class Credit(msgspec.Struct, array_like=True, frozen=True):
    account: str
    amount: int


class TransferKind:
    PAYMENT = "payment"
    TOPUP = "topup"


class TransferOrder(msgspec.Struct, frozen=True, kw_only=True):
    """What a client asks for: validated before it reaches a shard."""

    id: str
    debit: str
    credits: tuple[Credit, ...]
    currency: str
    memo: str = ""
    kind: str = TransferKind.PAYMENT

    @property
    def total(self) -> int:
        return sum(c.amount for c in self.credits)

    def accounts(self) -> list[str]:
        return [self.debit, *(c.account for c in self.credits)]


class Transfer(msgspec.Struct, frozen=True, kw_only=True):
    """A committed transfer: the order plus the server's timestamp (microseconds)."""

    order: TransferOrder
    created_at: int


class TransferOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """Result of submitting one order: the transfer, or a rejection code."""

    transfer: Transfer | None = None
    replayed: bool = False
    error: str | None = None
    detail: str = ""


class AccountSpec(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    currency: str
    owner: str
    allow_overdraft: bool = False


class AccountOutcome(msgspec.Struct, frozen=True, kw_only=True):
    account: Account | None = None
    created: bool = False
    error: str | None = None
    detail: str = ""


class Prepare(msgspec.Struct, frozen=True, kw_only=True):
    """Coordinator -> participant: reserve this shard's legs of ``transfer`` under ``txid``."""

    txid: str
    transfer: Transfer
    coordinator_epoch: int = 0
    """The epoch of the coordinator that asked; kept with the hold (see ``Decision``)."""


class Vote(msgspec.Struct, frozen=True, kw_only=True):
    txid: str
    ok: bool
    error: str | None = None
    detail: str = ""
    existing: Transfer | None = None
    """Set when the debit shard already committed this transfer id with the same body."""


class Decision(msgspec.Struct, frozen=True, array_like=True):
    txid: str
    commit: bool
    coordinator_epoch: int = 0
    """An abort from a coordinator older than the one that prepared the transaction is
    ignored: a deposed coordinator, resumed after a pause, cannot undo the work of the
    one that replaced it. (Commits are logged on two machines before they are sent, so
    any coordinator may repeat one.)"""


class Prepared(msgspec.Struct, frozen=True, kw_only=True):
    """A participant's durable promise: funds held until the decision arrives."""

    txid: str
    transfer: Transfer
    debit_here: bool
    credits_here: tuple[Credit, ...]
    coordinator_epoch: int = 0


class BalanceView(msgspec.Struct, frozen=True, array_like=True):
    account_id: str
    balance: int
    currency: str


class HistoryPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[tuple[Transfer, int, int]]
    """(transfer, signed effect on the account, the account's balance after it), newest first."""
    next_cursor: int | None
