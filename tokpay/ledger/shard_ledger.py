"""One shard's accounts and the money rules that change them.

Plain Python over plain data: no Ray, no clock (callers pass ``now``). A batch is
applied in one pass and in order, so each order sees the effect of the ones before
it, and a hot account costs no more than a spread load. Every method that changes
state returns exactly what the caller must log to replay it.

Memory holds what the rules need on every order: accounts and prepared holds. What
only grows with time (committed transfers, each account's history, the ids this shard
has seen) lives in the shard's store on disk (``tokpay.store``); what batches add
waits in ``pending`` until its owner writes it there, after their log records are
durable. A ledger without a store keeps it all in ``pending`` (tests).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

from tokpay.ledger.changes import Changes, HistoryRow, Mark, digest_difference, order_digest
from tokpay.ledger.errors import ErrorCode, LedgerError, check
from tokpay.ledger.limits import (
    DEFAULT_PAGE_SIZE,
    MAX_ACCOUNTS_PER_SHARD,
    MAX_BALANCE,
    MAX_PAGE_SIZE,
    MAX_PREPARED_PER_SHARD,
    REFUSAL_MEMORY_SECONDS,
)
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

REMEMBERED_REFUSALS = frozenset(
    {
        ErrorCode.INSUFFICIENT_FUNDS,
        ErrorCode.ACCOUNT_NOT_FOUND,
        ErrorCode.CURRENCY_MISMATCH,
        ErrorCode.BALANCE_LIMIT_EXCEEDED,
    }
)
"""Refusals the ledger decided from its state, answered again to a retry of the same body
for ``REFUSAL_MEMORY_SECONDS``. Invalid bodies are refused the same way every time
anyway; ``unavailable`` and ``overloaded`` are not decisions."""


class Disk(Protocol):
    """What the ledger reads from its store (``tokpay.store.ShardStore``)."""

    def transfer(self, transfer_id: str) -> Transfer | None: ...

    def mark(self, transfer_id: str) -> Mark | None: ...

    def bindings(self, transfer_ids: list[str]) -> tuple[dict[str, Transfer], dict[str, Mark]]:
        """The stored transfers and marks of these ids (absent ids are left out)."""
        ...

    def history(
        self, account_id: str, limit: int, below: int
    ) -> list[tuple[Transfer, int, int, int]]: ...


class ShardLedger:
    """Accounts owned by shard ``shard`` of ``shard_count``, their holds and, through
    ``disk``, their history."""

    def __init__(self, shard: int, shard_count: int, disk: Disk | None = None) -> None:
        check(0 <= shard < shard_count, f"shard {shard} outside 0..{shard_count - 1}")
        self.shard = shard
        self.shard_count = shard_count
        self.disk = disk
        self.accounts: dict[str, Account] = {}
        self.prepared: dict[str, Prepared] = {}
        self._prepared_transfer_ids: dict[str, str] = {}
        self.pending = Changes()
        # Indexes over ``pending`` for the rules and reads: transfers, marks and each
        # account's history entries not yet on disk.
        self._pending_transfers: dict[str, Transfer] = {}
        self._pending_marks: dict[str, Mark] = {}
        self._pending_history: dict[str, list[HistoryRow]] = {}
        # What the store held for the ids of the batch being judged, read in one query per
        # table (``_looked_up``); None outside a batch. Pending changes are checked first.
        self._batch_ids: frozenset[str] | None = None
        self._batch_transfers: dict[str, Transfer] = {}
        self._batch_marks: dict[str, Mark] = {}

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
        transfer = self._pending_transfers.get(transfer_id)
        if transfer is not None or self.disk is None:
            return transfer
        if self._batch_ids is not None and transfer_id in self._batch_ids:
            return self._batch_transfers.get(transfer_id)
        return self.disk.transfer(transfer_id)

    @contextmanager
    def _looked_up(self, orders: Iterable[TransferOrder]) -> Iterator[None]:
        """Read what the store binds to the orders' ids in one query per table (not two
        point reads per order), for the rules judging this batch."""
        if self.disk is None:
            yield
            return
        ids = [order.id for order in orders]
        self._batch_transfers, self._batch_marks = self.disk.bindings(ids)
        self._batch_ids = frozenset(ids)
        try:
            yield
        finally:
            self._batch_ids = None
            self._batch_transfers, self._batch_marks = {}, {}

    def history_page(
        self, account_id: str, limit: int = DEFAULT_PAGE_SIZE, cursor: int | None = None
    ) -> HistoryPage:
        """Transfers of ``account_id``, newest first; ``cursor`` is the entry count to
        continue below (entries are numbered 1.. in the order they happened)."""
        entries = self.account(account_id).entries
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise LedgerError(ErrorCode.INVALID_LIMIT, f"limit must be in 1..{MAX_PAGE_SIZE}")
        end = entries if cursor is None else cursor
        if not 0 <= end <= entries:
            raise LedgerError(ErrorCode.INVALID_CURSOR, "cursor does not belong to this history")
        # Entries numbered end, end-1, ...: the newest may still be pending, the rest on disk.
        found: dict[int, tuple[Transfer, int, int]] = {}
        for row in self._pending_history.get(account_id, ()):
            if end - limit < row.n <= end:
                found[row.n] = (
                    self._pending_transfers[row.transfer_id],
                    row.effect,
                    row.balance_after,
                )
        below = min(found, default=end + 1)
        if self.disk is not None and len(found) < min(limit, end):
            for transfer, effect, after, n in self.disk.history(
                account_id, limit - len(found), below
            ):
                found[n] = (transfer, effect, after)
        numbers = sorted(found, reverse=True)[:limit]
        check(
            numbers == list(range(end, end - len(numbers), -1)),
            f"history of {account_id!r} has a gap below entry {end}",
        )
        start = end - len(numbers)
        return HistoryPage(
            items=[found[n] for n in numbers], next_cursor=start if start > 0 else None
        )

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
                if len(self.accounts) >= MAX_ACCOUNTS_PER_SHARD:
                    raise LedgerError(
                        ErrorCode.SHARD_FULL,
                        f"shard {self.shard} holds MAX_ACCOUNTS_PER_SHARD="
                        f"{MAX_ACCOUNTS_PER_SHARD} accounts; the ledger needs more shards",
                    )
                account = Account(
                    id=spec.id,
                    currency=spec.currency,
                    owner=spec.owner,
                    allow_overdraft=spec.allow_overdraft,
                    created_at=now,
                )
                self.accounts[account.id] = account
                self.pending.accounts[account.id] = account
                created.append(account)
                outcomes.append(AccountOutcome(account=account, created=True))
            except LedgerError as error:
                outcomes.append(AccountOutcome(error=error.code, detail=error.detail))
        return outcomes, created

    def replay_accounts(self, accounts: list[Account]) -> None:
        for account in accounts:
            check(account.id not in self.accounts, f"log creates account {account.id!r} twice")
            self.accounts[account.id] = account
            self.pending.accounts[account.id] = account

    # -- single-shard transfers ----------------------------------------------------------

    def apply_orders(
        self, orders: list[TransferOrder], now: int
    ) -> tuple[list[TransferOutcome], list[Transfer], list[Mark]]:
        """Apply orders whose accounts all live here, in order, all legs or none each.

        Returns the outcomes, the committed transfers and the refusals to remember.
        """
        with self._looked_up(orders):
            return self._apply(orders, now)

    def claim_and_apply(
        self, claims: list[TransferOrder], orders: list[TransferOrder], now: int
    ) -> tuple[list[TransferOutcome], list[TransferOutcome], list[Transfer], list[Mark]]:
        """``claim(claims)`` then ``apply_orders(orders)`` as one batch: the ids of both read
        from the store together, and one list of marks (claims and refusals) to log with
        the committed transfers, so the two cost one log record.

        Returns the claims' outcomes, the orders' outcomes, the committed transfers and the
        marks to log.
        """
        with self._looked_up([*claims, *orders]):
            claimed_outcomes, claimed = self._claim(claims)
            outcomes, committed, refused = self._apply(orders, now)
        return claimed_outcomes, outcomes, committed, claimed + refused

    def _apply(
        self, orders: list[TransferOrder], now: int
    ) -> tuple[list[TransferOutcome], list[Transfer], list[Mark]]:
        outcomes: list[TransferOutcome] = []
        committed: list[Transfer] = []
        refused: list[Mark] = []
        for order in orders:
            try:
                validate_order(order, self.shard_count)
                existing = self._existing(order, now)
                if existing is not None:
                    outcomes.append(TransferOutcome(transfer=existing, replayed=True))
                    continue
                for account_id in order.accounts():
                    self._require_here(account_id)
                try:
                    self._check_credits(order, order.credits)
                    self._check_debit(order)
                except LedgerError as error:
                    refused.extend(self._remember_refusal(order, error, now))
                    raise
                transfer = Transfer(order=order, created_at=now)
                self._commit_legs(transfer, debit_here=True, credits_here=order.credits)
                committed.append(transfer)
                outcomes.append(TransferOutcome(transfer=transfer))
            except LedgerError as error:
                outcomes.append(TransferOutcome(error=error.code, detail=error.detail))
        return outcomes, committed, refused

    def replay_transfers(self, transfers: list[Transfer]) -> None:
        for transfer in transfers:
            check(self.transfer(transfer.order.id) is None, f"log repeats {transfer.order.id!r}")
            self._ensure_funding(transfer.order)
            self._commit_legs(transfer, debit_here=True, credits_here=transfer.order.credits)

    def replay_marks(self, marks: list[Mark]) -> None:
        """Refusals and claims from the log, as they were decided."""
        for mark in marks:
            self._mark(mark)

    def claim(self, orders: list[TransferOrder]) -> tuple[list[TransferOutcome], list[Mark]]:
        """Bind each order's id to its body here, at the id's home shard (``home_of``).

        An order whose accounts are elsewhere is claimed at its id's home before it is
        sent on, so an id is bound to one body across all shards, forever: the outcome
        is an empty ``TransferOutcome`` to go ahead, or the refusal (an invalid body,
        or another body under the same id).
        """
        with self._looked_up(orders):
            return self._claim(orders)

    def _claim(self, orders: list[TransferOrder]) -> tuple[list[TransferOutcome], list[Mark]]:
        outcomes: list[TransferOutcome] = []
        claimed: list[Mark] = []
        for order in orders:
            try:
                validate_order(order, self.shard_count)
                check(
                    home_of(order.id, self.shard_count) == self.shard,
                    f"{order.id!r} not homed here",
                )
                if self._binding(order) is None:
                    mark = Mark(order.id, order_digest(order))
                    self._mark(mark)
                    claimed.append(mark)
                outcomes.append(TransferOutcome())
            except LedgerError as error:
                outcomes.append(TransferOutcome(error=error.code, detail=error.detail))
        return outcomes, claimed

    # -- two-phase commit participant ----------------------------------------------------

    def prepare(
        self, prepares: list[Prepare], now: int
    ) -> tuple[list[Vote], list[Prepared], list[Mark]]:
        """Vote on each transaction, holding this shard's funds for every yes.

        Returns the votes, the holds taken and the marks to log: refusals to remember,
        and the id's claim when this shard is its home.
        """
        votes: list[Vote] = []
        prepared: list[Prepared] = []
        refused: list[Mark] = []
        with self._looked_up(request.transfer.order for request in prepares):
            for request in prepares:
                if request.txid in self.prepared:
                    votes.append(Vote(txid=request.txid, ok=True))
                    continue
                order = request.transfer.order
                try:
                    validate_order(order, self.shard_count)
                    debit_here = shard_of(order.debit, self.shard_count) == self.shard
                    credits_here = tuple(
                        c
                        for c in order.credits
                        if shard_of(c.account, self.shard_count) == self.shard
                    )
                    check(
                        debit_here or bool(credits_here), f"{request.txid} has no leg on this shard"
                    )
                    # Every participant checks the id, not just the debit shard: a commit stores the
                    # transfer under its id here, and this shard may know another body with that id.
                    existing = self._existing(order, now)
                    if existing is not None:
                        votes.append(Vote(txid=request.txid, ok=False, existing=existing))
                        continue
                    if len(self.prepared) >= MAX_PREPARED_PER_SHARD:
                        raise LedgerError(
                            ErrorCode.OVERLOADED,
                            f"shard {self.shard} holds MAX_PREPARED_PER_SHARD="
                            f"{MAX_PREPARED_PER_SHARD} undecided transfers; retry shortly",
                        )
                    # Credits first, as in apply_orders: _check_debit creates a top-up's funding
                    # account, which must not happen for a vote that logs no record.
                    try:
                        self._check_credits(order, credits_here)
                        if debit_here:
                            self._check_debit(order)
                    except LedgerError as error:
                        refused.extend(self._remember_refusal(order, error, now))
                        raise
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
                if home_of(order.id, self.shard_count) == self.shard and (
                    self._find_mark(order.id) is None
                ):
                    # The id's home is a participant, so the client sent no claim: the
                    # hold binds the id here as a claim would, and stays if it aborts.
                    claim = Mark(order.id, order_digest(order))
                    self._mark(claim)
                    refused.append(claim)
        return votes, prepared, refused

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
            # A hold taken since the store was last written never reached it: drop it there.
            self.pending.prepared.pop(decision.txid, None)
            self.pending.released.add(decision.txid)
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

    # -- what goes to disk -----------------------------------------------------------------

    def take_pending(self) -> Changes:
        """Hand over what changed since the last call, to be written to the store."""
        changes = self.pending
        self.pending = Changes()
        self._pending_transfers = {}
        self._pending_marks = {}
        self._pending_history = {}
        return changes

    def load(self, accounts: list[Account], prepared: list[Prepared]) -> None:
        """Set the state read back from the store (holds are recomputed from ``prepared``)."""
        self.accounts = {a.id: a for a in accounts}
        for account in self.accounts.values():
            account.held_debit = 0
            account.held_credit = 0
        for record in prepared:
            self._hold(record)
        self.pending = Changes()
        self.check_invariants()

    # -- invariants --------------------------------------------------------------------------

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

    def _existing(self, order: TransferOrder, now: int) -> Transfer | None:
        """The committed transfer this order replays, or None to go ahead.

        Raises on another body under the same id (here or, through a claim, on another
        shard), on the same body mid-commit, and with the remembered refusal of the same
        body within ``REFUSAL_MEMORY_SECONDS``.
        """
        binding = self._binding(order)
        if isinstance(binding, Prepared):
            # The same transfer is mid-commit (e.g. a decision still being delivered):
            # the client should retry, not conclude that its id was taken.
            raise LedgerError(
                ErrorCode.UNAVAILABLE, f"transfer {order.id!r} is being committed; retry shortly"
            )
        if isinstance(binding, Mark):
            if binding.code is not None and now - binding.at < REFUSAL_MEMORY_SECONDS * 1_000_000:
                raise LedgerError(
                    ErrorCode(binding.code), f"{binding.detail} (refused before; same answer)"
                )
            return None
        return binding

    def _binding(self, order: TransferOrder) -> Transfer | Prepared | Mark | None:
        """What binds ``order.id`` here (its committed transfer, its hold or its mark), or
        None; raises ``transfer_id_conflict`` if that is another body."""
        existing = self.transfer(order.id)
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
            held = self.prepared[txid]
            if held.transfer.order != order:
                raise LedgerError(
                    ErrorCode.TRANSFER_ID_CONFLICT,
                    f"transfer {order.id!r} is in progress with a different body",
                )
            return held
        mark = self._find_mark(order.id)
        if mark is not None and mark.digest[:16] != order_digest(order)[:16]:
            raise LedgerError(
                ErrorCode.TRANSFER_ID_CONFLICT,
                f"transfer {order.id!r} exists with a different body"
                f"{digest_difference(mark.digest, order)}",
            )
        return mark

    def _find_mark(self, transfer_id: str) -> Mark | None:
        mark = self._pending_marks.get(transfer_id)
        if mark is not None or self.disk is None:
            return mark
        if self._batch_ids is not None and transfer_id in self._batch_ids:
            return self._batch_marks.get(transfer_id)
        return self.disk.mark(transfer_id)

    def _mark(self, mark: Mark) -> None:
        self._pending_marks[mark.id] = mark
        self.pending.marks.append(mark)

    def _remember_refusal(self, order: TransferOrder, error: LedgerError, now: int) -> list[Mark]:
        if error.code not in REMEMBERED_REFUSALS:
            return []
        mark = Mark(order.id, order_digest(order), str(error.code), error.detail, now)
        self._mark(mark)
        return [mark]

    def _ensure_funding(self, order: TransferOrder) -> None:
        """Create this shard's funding account of the order's currency on first top-up."""
        if order.kind != "topup" or order.debit in self.accounts:
            return
        check(
            order.debit == funding_account_id(order.currency, self.shard),
            f"top-up {order.id!r} debits {order.debit!r}, not this shard's funding account",
        )
        funding = Account(
            id=order.debit, currency=order.currency, owner="system", allow_overdraft=True
        )
        self.accounts[order.debit] = funding
        self.pending.accounts[order.debit] = funding

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
        self.pending.prepared[record.txid] = record
        self.pending.released.discard(record.txid)

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
        pending = self.pending
        if debit_here:
            debit = accounts[order.debit]
            self._entry(debit, order.id, -order.total)
            check(
                debit.allow_overdraft or debit.balance >= 0,
                f"transfer {order.id!r} overdrew {debit.id!r}",
            )
        for credit in credits_here:
            self._entry(accounts[credit.account], order.id, credit.amount)
        self._pending_transfers[order.id] = transfer
        pending.transfers.append(transfer)

    def _entry(self, account: Account, transfer_id: str, effect: int) -> None:
        account.balance += effect
        account.entries += 1
        row = HistoryRow(account.id, account.entries, transfer_id, effect, account.balance)
        self.pending.history.append(row)
        self._pending_history.setdefault(account.id, []).append(row)
        self.pending.accounts[account.id] = account


def home_of(transfer_id: str, shard_count: int) -> int:
    """The shard that binds ``transfer_id`` to one body (it holds the id's claim)."""
    return shard_of(transfer_id, shard_count)


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
