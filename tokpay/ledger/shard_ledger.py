"""One shard's accounts and the money rules that change them.

Plain Python over plain data: no Ray, no files, no clock (callers pass ``now``).
A batch is applied in one pass and in order, so each order sees the effect of the
ones before it, and a hot account costs no more than a spread load. Every method
that changes state returns exactly what the caller must log to replay it.
"""

from __future__ import annotations

import msgspec

from tokpay.ledger.errors import ErrorCode, LedgerError, check
from tokpay.ledger.limits import DEFAULT_PAGE_SIZE, MAX_BALANCE, MAX_PAGE_SIZE
from tokpay.ledger.model import (
    Account,
    AccountOutcome,
    AccountSpec,
    BalanceView,
    Credit,
    Decision,
    HistoryPage,
    Prepare,
    Prepared,
    Transfer,
    TransferOrder,
    TransferOutcome,
    Vote,
    funding_account_id,
)
from tokpay.ledger.routing import shard_of
from tokpay.ledger.validation import validate_account_spec, validate_order


class ShardSnapshot(msgspec.Struct, kw_only=True):
    shard: int
    shard_count: int
    accounts: list[Account]
    transfers: list[Transfer]
    history: dict[str, list[str]]
    prepared: list[Prepared]


class ShardLedger:
    """Accounts owned by shard ``shard`` of ``shard_count``, with their history."""

    def __init__(self, shard: int, shard_count: int) -> None:
        check(0 <= shard < shard_count, f"shard {shard} outside 0..{shard_count - 1}")
        self.shard = shard
        self.shard_count = shard_count
        self.accounts: dict[str, Account] = {}
        # Every transfer touching this shard; authoritative for those whose debit lives here.
        self.transfers: dict[str, Transfer] = {}
        self.history: dict[str, list[str]] = {}
        self.prepared: dict[str, Prepared] = {}
        self._prepared_transfer_ids: dict[str, str] = {}

    # -- reads (committed state only) ------------------------------------------------

    def balances(self, account_ids: list[str]) -> list[BalanceView | None]:
        accounts = self.accounts
        out: list[BalanceView | None] = []
        for account_id in account_ids:
            account = accounts.get(account_id)
            out.append(
                None
                if account is None
                else BalanceView(account_id, account.balance, account.currency)
            )
        return out

    def account(self, account_id: str) -> Account:
        account = self.accounts.get(account_id)
        if account is None:
            raise LedgerError(ErrorCode.ACCOUNT_NOT_FOUND, f"no account {account_id!r}")
        return account

    def transfer(self, transfer_id: str) -> Transfer | None:
        return self.transfers.get(transfer_id)

    def history_page(
        self, account_id: str, limit: int = DEFAULT_PAGE_SIZE, cursor: int | None = None
    ) -> HistoryPage:
        """Transfers of ``account_id``, newest first; ``cursor`` is the position to continue below."""
        self.account(account_id)
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise LedgerError(ErrorCode.INVALID_LIMIT, f"limit must be in 1..{MAX_PAGE_SIZE}")
        ids = self.history.get(account_id, [])
        end = len(ids) if cursor is None else cursor
        if not 0 <= end <= len(ids):
            raise LedgerError(ErrorCode.INVALID_CURSOR, "cursor does not belong to this history")
        start = max(0, end - limit)
        items = []
        for transfer_id in reversed(ids[start:end]):
            transfer = self.transfers[transfer_id]
            items.append((transfer, effect_on(transfer, account_id)))
        return HistoryPage(items=items, next_cursor=start if start > 0 else None)

    # -- accounts ------------------------------------------------------------------------

    def create_accounts(
        self, specs: list[AccountSpec], now: int
    ) -> tuple[list[AccountOutcome], list[Account]]:
        """Create accounts; the same spec again is a replay, a different one a conflict."""
        outcomes: list[AccountOutcome] = []
        created: list[Account] = []
        for spec in specs:
            try:
                validate_account_spec(spec)
                self._require_here(spec.id)
                existing = self.accounts.get(spec.id)
                if existing is not None:
                    if _spec_of(existing) != spec:
                        raise LedgerError(
                            ErrorCode.ACCOUNT_ID_CONFLICT,
                            f"account {spec.id!r} exists with a different currency, owner or flags",
                        )
                    outcomes.append(AccountOutcome(account=existing, created=False))
                    continue
                account = Account(
                    id=spec.id,
                    currency=spec.currency,
                    owner=spec.owner,
                    allow_overdraft=spec.allow_overdraft,
                    created_at=now,
                )
                self.accounts[account.id] = account
                created.append(account)
                outcomes.append(AccountOutcome(account=account, created=True))
            except LedgerError as error:
                outcomes.append(AccountOutcome(error=error.code, detail=error.detail))
        return outcomes, created

    def replay_accounts(self, accounts: list[Account]) -> None:
        for account in accounts:
            check(account.id not in self.accounts, f"log creates account {account.id!r} twice")
            self.accounts[account.id] = account

    # -- single-shard transfers ----------------------------------------------------------

    def apply_orders(
        self, orders: list[TransferOrder], now: int
    ) -> tuple[list[TransferOutcome], list[Transfer]]:
        """Apply orders whose accounts all live here, in order, all legs or none each."""
        outcomes: list[TransferOutcome] = []
        committed: list[Transfer] = []
        for order in orders:
            try:
                validate_order(order, self.shard_count)
                existing = self._existing(order)
                if existing is not None:
                    outcomes.append(TransferOutcome(transfer=existing, replayed=True))
                    continue
                for account_id in order.accounts():
                    self._require_here(account_id)
                self._check_credits(order, order.credits)
                self._check_debit(order)
                transfer = Transfer(order=order, created_at=now)
                self._commit_legs(transfer, debit_here=True, credits_here=order.credits)
                committed.append(transfer)
                outcomes.append(TransferOutcome(transfer=transfer))
            except LedgerError as error:
                outcomes.append(TransferOutcome(error=error.code, detail=error.detail))
        return outcomes, committed

    def replay_transfers(self, transfers: list[Transfer]) -> None:
        for transfer in transfers:
            check(transfer.order.id not in self.transfers, f"log repeats {transfer.order.id!r}")
            self._ensure_funding(transfer.order)
            self._commit_legs(transfer, debit_here=True, credits_here=transfer.order.credits)

    # -- two-phase commit participant ----------------------------------------------------

    def prepare(self, prepares: list[Prepare]) -> tuple[list[Vote], list[Prepared]]:
        """Vote on each transaction, holding this shard's funds for every yes."""
        votes: list[Vote] = []
        prepared: list[Prepared] = []
        for request in prepares:
            if request.txid in self.prepared:
                votes.append(Vote(txid=request.txid, ok=True))
                continue
            order = request.transfer.order
            try:
                validate_order(order, self.shard_count)
                debit_here = shard_of(order.debit, self.shard_count) == self.shard
                credits_here = tuple(
                    c for c in order.credits if shard_of(c.account, self.shard_count) == self.shard
                )
                check(debit_here or bool(credits_here), f"{request.txid} has no leg on this shard")
                # Every participant checks the id, not just the debit shard: a commit stores the
                # transfer under its id here, and this shard may know another body with that id.
                existing = self._existing(order)
                if existing is not None:
                    votes.append(Vote(txid=request.txid, ok=False, existing=existing))
                    continue
                # Credits first, as in apply_orders: _check_debit creates a top-up's funding
                # account, which must not happen for a vote that logs no record.
                self._check_credits(order, credits_here)
                if debit_here:
                    self._check_debit(order)
            except LedgerError as error:
                votes.append(
                    Vote(txid=request.txid, ok=False, error=error.code, detail=error.detail)
                )
                continue
            record = Prepared(
                txid=request.txid,
                transfer=request.transfer,
                debit_here=debit_here,
                credits_here=credits_here,
                coordinator_epoch=request.coordinator_epoch,
            )
            self._hold(record)
            prepared.append(record)
            votes.append(Vote(txid=request.txid, ok=True))
        return votes, prepared

    def replay_prepared(self, records: list[Prepared]) -> None:
        for record in records:
            check(record.txid not in self.prepared, f"log prepares {record.txid} twice")
            self._hold(record)

    def decide(self, decisions: list[Decision]) -> list[Decision]:
        """Apply or release prepared transactions; returns the decisions that changed state.

        Unknown txids are ignored: a decision may be delivered more than once. An abort
        from a coordinator older than the one that prepared the transaction is ignored.
        """
        applied: list[Decision] = []
        for decision in decisions:
            record = self.prepared.get(decision.txid)
            if record is None:
                continue
            if not decision.commit and decision.coordinator_epoch < record.coordinator_epoch:
                continue
            del self.prepared[decision.txid]
            self._release(record)
            if decision.commit:
                self._commit_legs(
                    record.transfer,
                    debit_here=record.debit_here,
                    credits_here=record.credits_here,
                )
            applied.append(decision)
        return applied

    def in_doubt(self) -> list[str]:
        return list(self.prepared)

    # -- snapshots and invariants ----------------------------------------------------------

    def snapshot(self) -> ShardSnapshot:
        return ShardSnapshot(
            shard=self.shard,
            shard_count=self.shard_count,
            accounts=list(self.accounts.values()),
            transfers=list(self.transfers.values()),
            history=self.history,
            prepared=list(self.prepared.values()),
        )

    @classmethod
    def from_snapshot(cls, snapshot: ShardSnapshot) -> ShardLedger:
        ledger = cls(snapshot.shard, snapshot.shard_count)
        ledger.accounts = {a.id: a for a in snapshot.accounts}
        ledger.transfers = {t.order.id: t for t in snapshot.transfers}
        ledger.history = snapshot.history
        for account in ledger.accounts.values():
            account.held_debit = 0
            account.held_credit = 0
        ledger.replay_prepared(snapshot.prepared)
        ledger.check_invariants()
        return ledger

    def check_invariants(self) -> None:
        for account in self.accounts.values():
            check(
                account.allow_overdraft or account.balance >= 0,
                f"user account {account.id!r} is overdrawn: {account.balance}",
            )
            check(abs(account.balance) <= MAX_BALANCE, f"{account.id!r} balance out of range")
            check(account.held_debit >= 0 and account.held_credit >= 0, f"{account.id!r} holds < 0")
        held_debit: dict[str, int] = {}
        for record in self.prepared.values():
            if record.debit_here:
                debit = record.transfer.order.debit
                held_debit[debit] = held_debit.get(debit, 0) + record.transfer.order.total
        for account in self.accounts.values():
            check(
                account.held_debit == held_debit.get(account.id, 0),
                f"{account.id!r} holds {account.held_debit}, prepared say otherwise",
            )

    # -- private helpers -------------------------------------------------------------------

    def _require_here(self, account_id: str) -> None:
        # A caller with a wrong shard map is refused, not a reason to stop the shard.
        if shard_of(account_id, self.shard_count) != self.shard:
            raise LedgerError(
                ErrorCode.UNAVAILABLE,
                f"account {account_id!r} does not live on shard {self.shard}; "
                "the caller's shard map is stale",
            )

    def _existing(self, order: TransferOrder) -> Transfer | None:
        """The committed transfer this order replays, or None; raises on a conflicting body."""
        existing = self.transfers.get(order.id)
        if existing is not None:
            if existing.order != order:
                raise LedgerError(
                    ErrorCode.TRANSFER_ID_CONFLICT,
                    f"transfer {order.id!r} exists with a different body"
                    f"{_first_difference(existing.order, order)}",
                )
            return existing
        txid = self._prepared_transfer_ids.get(order.id)
        if txid is not None:
            if self.prepared[txid].transfer.order != order:
                raise LedgerError(
                    ErrorCode.TRANSFER_ID_CONFLICT,
                    f"transfer {order.id!r} is in progress with a different body",
                )
            # The same transfer is mid-commit (e.g. a decision still being delivered):
            # the client should retry, not conclude that its id was taken.
            raise LedgerError(
                ErrorCode.UNAVAILABLE, f"transfer {order.id!r} is being committed; retry shortly"
            )
        return None

    def _ensure_funding(self, order: TransferOrder) -> None:
        """Create this shard's funding account of the order's currency on first top-up."""
        if order.kind != "topup" or order.debit in self.accounts:
            return
        check(
            order.debit == funding_account_id(order.currency, self.shard),
            f"top-up {order.id!r} debits {order.debit!r}, not this shard's funding account",
        )
        self.accounts[order.debit] = Account(
            id=order.debit, currency=order.currency, owner="system", allow_overdraft=True
        )

    def _check_debit(self, order: TransferOrder) -> None:
        self._ensure_funding(order)
        debit = self.accounts.get(order.debit)
        if debit is None:
            raise LedgerError(ErrorCode.ACCOUNT_NOT_FOUND, f"no account {order.debit!r}")
        if debit.currency != order.currency:
            raise LedgerError(
                ErrorCode.CURRENCY_MISMATCH,
                f"account {debit.id!r} holds {debit.currency}, the transfer is in {order.currency}",
            )
        total = order.total
        if not debit.allow_overdraft and debit.balance - debit.held_debit < total:
            raise LedgerError(
                ErrorCode.INSUFFICIENT_FUNDS,
                f"account {debit.id!r} cannot pay {total}",
            )
        if debit.balance - debit.held_debit - total < -MAX_BALANCE:
            raise LedgerError(
                ErrorCode.BALANCE_LIMIT_EXCEEDED, f"{debit.id!r} would pass the limit"
            )

    def _check_credits(self, order: TransferOrder, credits: tuple[Credit, ...]) -> None:
        for credit in credits:
            account = self.accounts.get(credit.account)
            if account is None:
                raise LedgerError(ErrorCode.ACCOUNT_NOT_FOUND, f"no account {credit.account!r}")
            if account.currency != order.currency:
                raise LedgerError(
                    ErrorCode.CURRENCY_MISMATCH,
                    f"account {account.id!r} holds {account.currency}, "
                    f"the transfer is in {order.currency}",
                )
            if account.balance + account.held_credit + credit.amount > MAX_BALANCE:
                raise LedgerError(
                    ErrorCode.BALANCE_LIMIT_EXCEEDED, f"{account.id!r} would pass the limit"
                )

    def _hold(self, record: Prepared) -> None:
        order = record.transfer.order
        if record.debit_here:
            self._ensure_funding(order)
            self.accounts[order.debit].held_debit += order.total
        for credit in record.credits_here:
            self.accounts[credit.account].held_credit += credit.amount
        self.prepared[record.txid] = record
        self._prepared_transfer_ids[order.id] = record.txid

    def _release(self, record: Prepared) -> None:
        order = record.transfer.order
        if record.debit_here:
            self.accounts[order.debit].held_debit -= order.total
        for credit in record.credits_here:
            self.accounts[credit.account].held_credit -= credit.amount
        self._prepared_transfer_ids.pop(order.id, None)

    def _commit_legs(
        self, transfer: Transfer, *, debit_here: bool, credits_here: tuple[Credit, ...]
    ) -> None:
        order = transfer.order
        accounts = self.accounts
        history = self.history
        if debit_here:
            debit = accounts[order.debit]
            debit.balance -= order.total
            check(
                debit.allow_overdraft or debit.balance >= 0,
                f"transfer {order.id!r} overdrew {debit.id!r}",
            )
            history.setdefault(debit.id, []).append(order.id)
        for credit in credits_here:
            accounts[credit.account].balance += credit.amount
            history.setdefault(credit.account, []).append(order.id)
        self.transfers[order.id] = transfer


def effect_on(transfer: Transfer, account_id: str) -> int:
    """Signed change ``transfer`` made to ``account_id``'s balance."""
    order = transfer.order
    if order.debit == account_id:
        return -order.total
    return sum(c.amount for c in order.credits if c.account == account_id)


def _spec_of(account: Account) -> AccountSpec:
    return AccountSpec(
        id=account.id,
        currency=account.currency,
        owner=account.owner,
        allow_overdraft=account.allow_overdraft,
    )


def _first_difference(old: TransferOrder, new: TransferOrder) -> str:
    for field in ("debit", "credits", "currency", "memo", "kind"):
        if getattr(old, field) != getattr(new, field):
            return f" (field {field!r} differs)"
    return ""
