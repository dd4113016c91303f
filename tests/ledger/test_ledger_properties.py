"""Property tests of the money rules across several shards, against a reference model.

A small in-test cluster drives S ``ShardLedger`` objects the way the shard actors and the
coordinator do: single-shard orders through ``apply_orders`` on the owning shard, the
rest through two-phase commit (prepare on every participant, commit iff all voted yes).
A reference model, written here from the rules and not from the code, predicts every
vote and outcome and the full state; after every step the two must agree, the sum of
each currency must be zero, and no user account may be overdrawn, even counting holds.
Ids are claimed at their home shard first, as the client does, so an id binds one body
on every shard; refusals decided from state are remembered. Every state-changing call's
return value is logged (msgpack, as the shard's log does), so the same runs also check
recovery: a real ``ShardStore`` written up to some record, reopened, plus the log records
after it, must equal the straight run.
"""

from __future__ import annotations

import copy
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.orders import ids_on, topup
from tokpay.client.ledger import claim_home
from tokpay.ledger.changes import Mark, order_digest
from tokpay.ledger.errors import ErrorCode
from tokpay.ledger.model import (
    Account,
    AccountSpec,
    Credit,
    Decision,
    Prepare,
    Prepared,
    Transfer,
    TransferKind,
    TransferOrder,
    TransferOutcome,
    Vote,
    funding_account_id,
)
from tokpay.ledger.routing import shard_of
from tokpay.ledger.shard_ledger import REMEMBERED_REFUSALS, ShardLedger, home_of
from tokpay.store.shard_store import ShardStore

T0 = 1_700_000_000_000_000
CURRENCIES = ("USD", "EUR")
encode = msgspec.msgpack.encode


def other_currency(currency: str) -> str:
    return CURRENCIES[1 - CURRENCIES.index(currency)]


# -- the reference model ----------------------------------------------------------------------


@dataclass
class RefAccount:
    currency: str
    overdraft: bool
    balance: int = 0
    held_debit: int = 0
    held_credit: int = 0


@dataclass
class RefVote:
    """What one shard must answer: ``ok``, a replay of ``existing``, or one of ``codes``."""

    ok: bool
    codes: frozenset[str] = frozenset()
    existing: Transfer | None = None
    judged: bool = False
    """Refused from the state (not replayed from memory): a remembered refusal is new."""


class Reference:
    """The rules, restated: per shard, which transfer ids it knows and which it holds."""

    def __init__(self, shard_count: int) -> None:
        self.shard_count = shard_count
        self.accounts: dict[str, RefAccount] = {}
        self.transfers: list[dict[str, Transfer]] = [{} for _ in range(shard_count)]
        self.in_progress: list[dict[str, str]] = [{} for _ in range(shard_count)]
        self.prepared: list[dict[str, Prepared]] = [{} for _ in range(shard_count)]
        # Ids a shard knows without their transfer: claims (code None) and refusals.
        self.marks: list[dict[str, tuple[TransferOrder, str | None]]] = [
            {} for _ in range(shard_count)
        ]
        self.history: dict[str, list[tuple[str, int]]] = {}

    def shard(self, account_id: str) -> int:
        return shard_of(account_id, self.shard_count)

    @staticmethod
    def stateless(order: TransferOrder) -> frozenset[str]:
        """Codes the order earns whatever the state (only the kinds the generators make)."""
        codes: set[str] = set()
        if any(c.amount <= 0 for c in order.credits):
            codes.add(ErrorCode.INVALID_AMOUNT)
        if any(c.account == order.debit for c in order.credits):
            codes.add(ErrorCode.SELF_TRANSFER)
        if len({c.account for c in order.credits}) != len(order.credits):
            codes.add(ErrorCode.DUPLICATE_CREDIT_ACCOUNT)
        if order.kind == TransferKind.PAYMENT and any(
            a.startswith("sys:") for a in order.accounts()
        ):
            codes.add(ErrorCode.SYSTEM_ACCOUNT_FORBIDDEN)
        if order.kind == TransferKind.TOPUP and any(
            c.account.startswith("sys:") for c in order.credits
        ):
            codes.add(ErrorCode.SYSTEM_ACCOUNT_FORBIDDEN)
        return frozenset(codes)

    def vote(self, order: TransferOrder, shard: int) -> RefVote:
        stateless = self.stateless(order)
        if stateless:
            return RefVote(ok=False, codes=stateless)
        known = self.transfers[shard].get(order.id)
        if known is not None:
            if known.order == order:
                return RefVote(ok=False, existing=known)
            return RefVote(ok=False, codes=frozenset({ErrorCode.TRANSFER_ID_CONFLICT}))
        txid = self.in_progress[shard].get(order.id)
        if txid is not None:
            # Same body mid-commit: retry later; another body under the id: conflict.
            same = self.prepared[shard][txid].transfer.order == order
            code = ErrorCode.UNAVAILABLE if same else ErrorCode.TRANSFER_ID_CONFLICT
            return RefVote(ok=False, codes=frozenset({code}))
        mark = self.marks[shard].get(order.id)
        if mark is not None:
            if mark[0] != order:
                return RefVote(ok=False, codes=frozenset({ErrorCode.TRANSFER_ID_CONFLICT}))
            if mark[1] is not None:
                # Runs last microseconds, far inside REFUSAL_MEMORY_SECONDS: same answer.
                return RefVote(ok=False, codes=frozenset({mark[1]}))
        codes: set[str] = set()
        for credit in order.credits:
            if self.shard(credit.account) != shard:
                continue
            account = self.accounts.get(credit.account)
            if account is None:
                codes.add(ErrorCode.ACCOUNT_NOT_FOUND)
            elif account.currency != order.currency:
                codes.add(ErrorCode.CURRENCY_MISMATCH)
        if self.shard(order.debit) == shard and order.kind == TransferKind.PAYMENT:
            debit = self.accounts.get(order.debit)
            if debit is None:
                codes.add(ErrorCode.ACCOUNT_NOT_FOUND)
            elif debit.currency != order.currency:
                codes.add(ErrorCode.CURRENCY_MISMATCH)
            elif not debit.overdraft and debit.balance - debit.held_debit < order.total:
                codes.add(ErrorCode.INSUFFICIENT_FUNDS)
        return RefVote(ok=not codes, codes=frozenset(codes), judged=bool(codes))

    def refused(self, order: TransferOrder, shard: int, vote: RefVote, code: str | None) -> None:
        """The shard refused ``order`` with ``code``: a refusal judged from state is kept."""
        if vote.judged and code in REMEMBERED_REFUSALS:
            self.marks[shard][order.id] = (order, code)

    def claim(self, order: TransferOrder, home: int) -> tuple[frozenset[str], bool]:
        """The codes a claim of ``order``'s id at its home may answer (empty: go ahead),
        and whether the claim binds the id anew."""
        stateless = self.stateless(order)
        if stateless:
            return stateless, False
        known: TransferOrder | None = None
        if order.id in self.transfers[home]:
            known = self.transfers[home][order.id].order
        elif order.id in self.in_progress[home]:
            known = self.prepared[home][self.in_progress[home][order.id]].transfer.order
        elif order.id in self.marks[home]:
            known = self.marks[home][order.id][0]
        if known is None:
            self.marks[home][order.id] = (order, None)
            return frozenset(), True
        if known != order:
            return frozenset({ErrorCode.TRANSFER_ID_CONFLICT}), False
        return frozenset(), False

    def _apply(
        self, transfer: Transfer, shard: int, debit_here: bool, credits: tuple[Credit, ...]
    ) -> None:
        order = transfer.order
        if debit_here:
            if order.debit not in self.accounts:
                # The top-up funding account appears with the first top-up it pays.
                self.accounts[order.debit] = RefAccount(order.currency, overdraft=True)
            self.accounts[order.debit].balance -= order.total
            self.history.setdefault(order.debit, []).append((order.id, -order.total))
        for credit in credits:
            self.accounts[credit.account].balance += credit.amount
            self.history.setdefault(credit.account, []).append((order.id, credit.amount))
        self.transfers[shard][order.id] = transfer

    def commit_single(self, transfer: Transfer) -> None:
        self._apply(transfer, self.shard(transfer.order.debit), True, transfer.order.credits)

    def record_for(self, txid: str, transfer: Transfer, shard: int) -> Prepared:
        order = transfer.order
        return Prepared(
            txid=txid,
            transfer=transfer,
            debit_here=self.shard(order.debit) == shard,
            credits_here=tuple(c for c in order.credits if self.shard(c.account) == shard),
        )

    def prepare(self, record: Prepared, shard: int) -> bool:
        """Hold the funds; True if the hold claims the id (this shard is its home and
        knew nothing of it), as a claim would."""
        order = record.transfer.order
        claims = home_of(order.id, self.shard_count) == shard and order.id not in self.marks[shard]
        if claims:
            self.marks[shard][order.id] = (order, None)
        if record.debit_here:
            self.accounts[order.debit].held_debit += order.total
        for credit in record.credits_here:
            self.accounts[credit.account].held_credit += credit.amount
        self.prepared[shard][record.txid] = record
        self.in_progress[shard][order.id] = record.txid
        return claims

    def decide(self, txid: str, commit: bool, shard: int) -> bool:
        record = self.prepared[shard].pop(txid, None)
        if record is None:
            return False
        order = record.transfer.order
        if record.debit_here:
            self.accounts[order.debit].held_debit -= order.total
        for credit in record.credits_here:
            self.accounts[credit.account].held_credit -= credit.amount
        del self.in_progress[shard][order.id]
        if commit:
            self._apply(record.transfer, shard, record.debit_here, record.credits_here)
        return True


# -- the cluster under test ---------------------------------------------------------------------


@dataclass
class Tx:
    txid: str
    transfer: Transfer
    shards: list[int]
    votes: dict[int, Vote] = field(default_factory=dict)

    @property
    def all_yes(self) -> bool:
        return all(v.ok for v in self.votes.values())


RECORD_TYPES: dict[str, Any] = {
    "accounts": list[Account],
    "transfers": tuple[list[Transfer], list[Mark]],
    "prepared": tuple[list[Prepared], list[Mark]],
    "decided": list[Decision],
    "claimed": list[Mark],
}


class Runner:
    """S ledgers, a 2PC driver, the log of each shard, and the reference they must match.

    A shard may have a store (``stores``): each record is then written to it as the shard
    does, and the ledger reads its history, transfers and marks back from it.
    """

    def __init__(self, shard_count: int, currencies: list[str], overdraft_first: bool) -> None:
        self.shard_count = shard_count
        self.ledgers = [ShardLedger(s, shard_count) for s in range(shard_count)]
        self.logs: list[list[tuple[str, bytes]]] = [[] for _ in range(shard_count)]
        self.stores: list[ShardStore | None] = [None] * shard_count
        self.claims_refused = 0
        self.ref = Reference(shard_count)
        self.now = T0
        self.next_id = 0
        self.next_tx = 0
        self.orders: list[TransferOrder] = []
        self.open: list[Tx] = []
        users: list[str] = []
        ghosts: list[str] = []
        for shard in range(shard_count):
            users += ids_on(shard, shard_count, 2, f"user-{shard}")
            ghosts += ids_on(shard, shard_count, 1, f"ghost-{shard}")
        self.users = users
        self.ghosts = ghosts
        specs = [
            AccountSpec(
                id=user,
                currency=currencies[i % len(currencies)],
                owner=f"{user}@example.com",
                allow_overdraft=overdraft_first and i == 0,
            )
            for i, user in enumerate(users)
        ]
        for spec in specs:
            shard = shard_of(spec.id, shard_count)
            outcomes, created = self.ledgers[shard].create_accounts([spec], self.tick())
            assert outcomes[0].created and [a.id for a in created] == [spec.id]
            self._log(shard, "accounts", created, bool(created))
            self.ref.accounts[spec.id] = RefAccount(spec.currency, spec.allow_overdraft)
        self.check()

    # -- plumbing --

    def tick(self) -> int:
        self.now += 1
        return self.now

    def fresh_id(self) -> str:
        self.next_id += 1
        return f"o{self.next_id}"

    def _log(self, shard: int, kind: str, record: Any, changed: bool) -> None:
        # Encoded at once, as the shard's log does: returned accounts are live objects.
        if changed:
            self.logs[shard].append((kind, encode(record)))
            store = self.stores[shard]
            if store is not None:
                store.write(len(self.logs[shard]), self.ledgers[shard].take_pending())

    def participants(self, order: TransferOrder) -> list[int]:
        debit_shard = shard_of(order.debit, self.shard_count)
        others = {shard_of(a, self.shard_count) for a in order.accounts()} - {debit_shard}
        return [debit_shard, *sorted(others)]

    # -- single-shard orders and two-phase commit --

    def claim(self, orders: list[TransferOrder]) -> list[TransferOutcome | None]:
        """Claim each order's id at its home where the client would (one call per home);
        the refusal for each order a claim refused, else None."""
        by_home: dict[int, list[int]] = {}
        for index, order in enumerate(orders):
            home = claim_home(order, set(self.participants(order)), self.shard_count)
            if home is not None:
                by_home.setdefault(home, []).append(index)
        refusals: list[TransferOutcome | None] = [None] * len(orders)
        for home, indexes in by_home.items():
            batch = [orders[i] for i in indexes]
            outcomes, claimed = self.ledgers[home].claim(batch)
            self._log(home, "claimed", claimed, bool(claimed))
            expected: list[Mark] = []
            for index, order, outcome in zip(indexes, batch, outcomes, strict=True):
                codes, new = self.ref.claim(order, home)
                if codes:
                    assert outcome.error in codes, (outcome, codes)
                    refusals[index] = outcome
                else:
                    assert outcome == TransferOutcome(), outcome
                if new:
                    expected.append(Mark(order.id, order_digest(order)))
            assert claimed == expected
        return refusals

    def submit(self, order: TransferOrder, lose_vote: bool = False) -> TransferOutcome:
        self.orders.append(order)
        (refused,) = self.claim([order])
        if refused is not None:
            return refused
        shards = self.participants(order)
        if len(shards) > 1:
            tx = self.prepare(order)
            return self.decide(tx, commit=not lose_vote)
        return self.apply_batch(shards[0], [order])[0]

    def submit_batch(self, orders: list[TransferOrder]) -> None:
        """Claims first, then one ``apply_orders`` call per shard for the single-shard
        orders, then the rest (as ``SyncLedgerClient.submit_many`` does)."""
        self.orders += orders
        refusals = self.claim(orders)
        admitted = [o for o, refused in zip(orders, refusals, strict=True) if refused is None]
        by_shard: dict[int, list[TransferOrder]] = {}
        for order in admitted:
            shards = self.participants(order)
            if len(shards) == 1:
                by_shard.setdefault(shards[0], []).append(order)
        for shard, group in by_shard.items():
            self.apply_batch(shard, group)
        for order in admitted:
            if len(self.participants(order)) > 1:
                self.decide(self.prepare(order), commit=True)

    def apply_batch(self, shard: int, orders: list[TransferOrder]) -> list[TransferOutcome]:
        now = self.tick()
        outcomes, committed, refused = self.ledgers[shard].apply_orders(orders, now)
        self._log(shard, "transfers", (committed, refused), bool(committed or refused))
        assert len(outcomes) == len(orders)
        expected_committed: list[Transfer] = []
        expected_refused: list[Mark] = []
        for order, outcome in zip(orders, outcomes, strict=True):
            # Predicted in batch order: each order sees what the ones before it did.
            expected = self.ref.vote(order, shard)
            if expected.ok:
                transfer = Transfer(order=order, created_at=now)
                assert outcome == TransferOutcome(transfer=transfer)
                expected_committed.append(transfer)
                self.ref.commit_single(transfer)
            elif expected.existing is not None:
                assert outcome == TransferOutcome(transfer=expected.existing, replayed=True)
            else:
                assert outcome.error in expected.codes, (outcome, expected)
                assert outcome.transfer is None and not outcome.replayed
                expected_refused += self._refused(order, shard, expected, outcome, now)
        assert committed == expected_committed
        assert refused == expected_refused
        return outcomes

    def _refused(
        self, order: TransferOrder, shard: int, vote: RefVote, outcome: Any, now: int
    ) -> list[Mark]:
        """What the shard must remember of a refusal (``outcome`` has error and detail)."""
        self.ref.refused(order, shard, vote, outcome.error)
        if not vote.judged or outcome.error not in REMEMBERED_REFUSALS:
            return []
        return [Mark(order.id, order_digest(order), outcome.error, outcome.detail, now)]

    def prepare(self, order: TransferOrder) -> Tx:
        self.next_tx += 1
        transfer = Transfer(order=order, created_at=self.tick())
        tx = Tx(f"tx{self.next_tx}", transfer, self.participants(order))
        for shard in tx.shards:
            expected = self.ref.vote(order, shard)
            now = self.tick()
            votes, prepared, refused = self.ledgers[shard].prepare(
                [Prepare(txid=tx.txid, transfer=tx.transfer)], now
            )
            self._log(shard, "prepared", (prepared, refused), bool(prepared or refused))
            (vote,) = votes
            assert vote.txid == tx.txid
            tx.votes[shard] = vote
            if expected.ok:
                record = self.ref.record_for(tx.txid, tx.transfer, shard)
                assert vote == Vote(txid=tx.txid, ok=True)
                assert prepared == [record]
                claims = self.ref.prepare(record, shard)
                assert refused == ([Mark(order.id, order_digest(order))] if claims else [])
            elif expected.existing is not None:
                assert vote == Vote(txid=tx.txid, ok=False, existing=expected.existing)
                assert prepared == []
            else:
                assert not vote.ok and vote.error in expected.codes, (vote, expected)
                assert vote.existing is None and prepared == []
                assert refused == self._refused(order, shard, expected, vote, now)
        return tx

    def hold(self, order: TransferOrder) -> None:
        """Claim the id, then prepare and leave the transaction in doubt."""
        self.orders.append(order)
        (refused,) = self.claim([order])
        if refused is None:
            self.open.append(self.prepare(order))
        else:
            self.claims_refused += 1

    def decide(self, tx: Tx, commit: bool) -> TransferOutcome:
        commit = commit and tx.all_yes
        decision = Decision(tx.txid, commit)
        for shard in tx.shards:
            changes = self.ref.decide(tx.txid, commit, shard)
            applied = self.ledgers[shard].decide([decision])
            assert applied == ([decision] if changes else [])
            self._log(shard, "decided", applied, bool(applied))
            # A decision delivered twice changes nothing the second time.
            assert self.ledgers[shard].decide([decision]) == []
        if commit:
            return TransferOutcome(transfer=tx.transfer)
        for shard in tx.shards:
            vote = tx.votes[shard]
            if vote.existing is not None:
                return TransferOutcome(transfer=vote.existing, replayed=True)
            if not vote.ok:
                return TransferOutcome(error=vote.error, detail=vote.detail)
        return TransferOutcome(error=ErrorCode.UNAVAILABLE, detail="a vote was lost")

    # -- the operations the strategies draw --

    def step(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        if kind == "topup":
            _, target_index, amount, flaw = op
            target = self.users[target_index % len(self.users)]
            currency = self.ref.accounts[target].currency
            if flaw == "ghost":
                target = self.ghosts[target_index % len(self.ghosts)]
            elif flaw == "sys":
                target = funding_account_id("EUR", 0)
            elif flaw == "currency":
                currency = other_currency(currency)
            order = topup(
                target, amount, id=self.fresh_id(), shard_count=self.shard_count, currency=currency
            )
            self.submit(order)
        elif kind in ("pay", "prepare"):
            _, debit_index, legs, flaw, lose_vote = op
            order = self._payment(self.fresh_id(), debit_index, legs, flaw)
            if kind == "pay":
                self.submit(order, lose_vote)
            else:
                self.hold(order)
        elif kind == "squeeze":
            # Exactly what the debit can still spend, or one more: the edge that holds guard.
            _, debit_index, payee_index, over, hold = op
            held = [tx.transfer.order.debit for tx in self.open]
            held = [a for a in held if a in self.users]
            if held and debit_index % 3:
                # Mostly spend from an account that has money promised to an open transaction.
                debit_index = self.users.index(held[debit_index % len(held)])
            debit = self.users[debit_index % len(self.users)]
            ref = self.ref.accounts[debit]
            amount = max(1, ref.balance - ref.held_debit + over)
            order = self._payment(self.fresh_id(), debit_index, [(payee_index, amount)], "none")
            if hold:
                self.hold(order)
            else:
                self.submit(order)
        elif kind == "batch":
            orders: list[TransferOrder] = []
            for debit_index, legs, flaw, repeat in op[1]:
                if repeat and orders:
                    orders.append(orders[-1])
                else:
                    orders.append(self._payment(self.fresh_id(), debit_index, legs, flaw))
            self.submit_batch(orders)
        elif kind == "again" and self.orders:
            self.submit(self.orders[op[1] % len(self.orders)])
        elif kind == "conflict" and self.orders:
            original = self.orders[op[1] % len(self.orders)]
            first, *rest = original.credits
            changed = (Credit(first.account, first.amount + 1), *rest)
            self.submit(msgspec.structs.replace(original, credits=changed))
        elif kind == "steal" and self.orders:
            # Another client picks an id already in use, for a different transfer.
            _, order_index, debit_index, legs, flaw = op
            taken = self.orders[order_index % len(self.orders)].id
            self.submit(self._payment(taken, debit_index, legs, flaw))
        elif kind == "decide" and self.open:
            _, tx_index, commit = op
            self.decide(self.open.pop(tx_index % len(self.open)), commit)
        elif kind == "retry" and self.open:
            # A second coordinator attempt at a transfer that is still in doubt.
            tx = self.open[op[1] % len(self.open)]
            self.open.append(self.prepare(tx.transfer.order))
        self.check()

    def _payment(
        self, id: str, debit_index: int, legs: list[tuple[int, int]], flaw: str
    ) -> TransferOrder:
        """A payment between users of one currency, then spoiled by ``flaw`` if not "none"."""
        debit = self.users[debit_index % len(self.users)]
        currency = self.ref.accounts[debit].currency
        payees = [u for u in self.users if u != debit and self.ref.accounts[u].currency == currency]
        payees = payees or [u for u in self.users if u != debit]
        credits: list[Credit] = []
        for index, amount in legs:
            payee = payees[index % len(payees)]
            if all(c.account != payee for c in credits):
                credits.append(Credit(payee, amount))
        ghost = self.ghosts[legs[0][0] % len(self.ghosts)]
        if flaw == "ghost":
            credits[-1] = Credit(ghost, credits[-1].amount)
        elif flaw == "debit-ghost":
            debit = ghost
        elif flaw == "self":
            credits.append(Credit(debit, 1))
        elif flaw == "dup":
            credits.append(credits[0])
        elif flaw == "zero":
            credits[0] = Credit(credits[0].account, 0)
        elif flaw == "currency":
            currency = other_currency(currency)
        elif flaw == "sys":
            credits.append(Credit(funding_account_id(currency, 0), 1))
        return TransferOrder(id=id, debit=debit, credits=tuple(credits), currency=currency)

    def finish(self, rng: random.Random) -> None:
        """Decide everything still in doubt, in random order, each commit or abort at random."""
        rng.shuffle(self.open)
        while self.open:
            self.decide(self.open.pop(), rng.random() < 0.5)
            self.check()
        assert all(ledger.in_doubt() == [] for ledger in self.ledgers)

    # -- what must hold after every step --

    def check(self) -> None:
        sums: dict[str, int] = {}
        for ledger in self.ledgers:
            ledger.check_invariants()
            for account in ledger.accounts.values():
                sums[account.currency] = sums.get(account.currency, 0) + account.balance
                if not account.allow_overdraft:
                    assert account.balance >= 0, account
                    # Holds stop a second spend: what is promised away is really there.
                    assert account.balance - account.held_debit >= 0, account
        assert all(total == 0 for total in sums.values()), sums

        ref = self.ref
        for shard, ledger in enumerate(self.ledgers):
            mine = {a: r for a, r in ref.accounts.items() if ref.shard(a) == shard}
            assert set(ledger.accounts) == set(mine)
            for account_id, expected in mine.items():
                account = ledger.accounts[account_id]
                assert (
                    account.currency,
                    account.allow_overdraft,
                    account.balance,
                    account.held_debit,
                    account.held_credit,
                ) == (
                    expected.currency,
                    expected.overdraft,
                    expected.balance,
                    expected.held_debit,
                    expected.held_credit,
                ), account_id
                assert account.entries == len(ref.history.get(account_id, []))
                assert history_of(ledger, account_id) == ref.history.get(account_id, [])
            for transfer_id, transfer in ref.transfers[shard].items():
                assert ledger.transfer(transfer_id) == transfer
            assert transfer_count(ledger) == len(ref.transfers[shard])
            for transfer_id, (order, code) in ref.marks[shard].items():
                mark = ledger._find_mark(transfer_id)
                assert mark is not None and (mark.digest, mark.code) == (order_digest(order), code)
            assert ledger.prepared == ref.prepared[shard]
            assert ledger._prepared_transfer_ids == ref.in_progress[shard]


def history_of(ledger: ShardLedger, account_id: str, limit: int = 50) -> list[tuple[str, int]]:
    """An account's whole history, oldest first, read in pages of ``limit``; checks that
    each entry's balance_after is the running balance and the last is the balance."""
    items: list[tuple[Transfer, int, int]] = []
    cursor: int | None = None
    while True:
        page = ledger.history_page(account_id, limit, cursor)
        items += page.items
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    items.reverse()
    running = 0
    for _, effect, balance_after in items:
        running += effect
        assert balance_after == running
    assert running == ledger.accounts[account_id].balance
    return [(transfer.order.id, effect) for transfer, effect, _ in items]


def transfer_count(ledger: ShardLedger) -> int:
    """Transfers the shard holds: on its store and still pending."""
    stored = ledger.disk.transfers if isinstance(ledger.disk, ShardStore) else 0
    return stored + len(ledger.pending.transfers)


# -- strategies -----------------------------------------------------------------------------

INDEX = st.integers(0, 63)
LEGS = st.lists(st.tuples(INDEX, st.integers(1, 200)), min_size=1, max_size=3)
# Mostly well-formed orders, so that money really moves; each flaw now and then.
FLAW = st.sampled_from(
    ["none"] * 8 + ["ghost", "debit-ghost", "self", "dup", "zero", "currency", "sys"]
)
TOPUP_FLAW = st.sampled_from(["none"] * 6 + ["ghost", "sys", "currency"])
LOST_VOTE = st.sampled_from([False] * 4 + [True])

TOPUP = st.tuples(st.just("topup"), INDEX, st.integers(1, 1_000), TOPUP_FLAW)
PAY = st.tuples(st.just("pay"), INDEX, LEGS, FLAW, LOST_VOTE)
AGAIN = st.tuples(st.just("again"), INDEX)
CONFLICT = st.tuples(st.just("conflict"), INDEX)
STEAL = st.tuples(st.just("steal"), INDEX, INDEX, LEGS, FLAW)
PREPARE = st.tuples(st.just("prepare"), INDEX, LEGS, FLAW, st.just(False))
DECIDE = st.tuples(st.just("decide"), INDEX, st.booleans())
RETRY = st.tuples(st.just("retry"), INDEX)
BATCH = st.tuples(
    st.just("batch"),
    st.lists(st.tuples(INDEX, LEGS, FLAW, st.sampled_from([False] * 3 + [True])), max_size=8),
)
SQUEEZE = st.tuples(st.just("squeeze"), INDEX, INDEX, st.integers(0, 1), st.booleans())
SQUEEZE_NOW = st.tuples(st.just("squeeze"), INDEX, INDEX, st.integers(0, 1), st.just(False))

STREAM_OPS = st.one_of(TOPUP, PAY, PAY, PAY, BATCH, SQUEEZE_NOW, AGAIN, CONFLICT, STEAL)
INTERLEAVED_OPS = st.one_of(
    TOPUP, PAY, BATCH, PREPARE, PREPARE, SQUEEZE, SQUEEZE, DECIDE, DECIDE, AGAIN, RETRY, STEAL
)
# Only prepares: each leaves its transaction in doubt.
HOLD_OPS = st.one_of(PREPARE, SQUEEZE.map(lambda op: (*op[:4], True)))

SHARD_COUNTS = st.integers(1, 4)
SETUP = st.tuples(st.lists(st.sampled_from(CURRENCIES), min_size=1, max_size=3), st.booleans())


SEED = st.lists(st.integers(100, 1_000), min_size=8, max_size=8)


@dataclass(frozen=True)
class Start:
    """How a run begins: shard count, user currencies and overdraft, each user's first top-up."""

    shard_count: int
    setup: tuple[list[str], bool]
    seed: list[int]

    def runner(self, ops: Sequence[tuple[Any, ...]] = ()) -> Runner:
        """A runner whose users start with the seed top-ups (so that holds have money to hold),
        after it has taken ``ops``.
        """
        runner = Runner(self.shard_count, *self.setup)
        for i, amount in enumerate(self.seed):
            runner.step(("topup", i, amount, "none"))
        for op in ops:
            runner.step(op)
        return runner


def starts(shard_counts: st.SearchStrategy[int] = SHARD_COUNTS) -> st.SearchStrategy[Start]:
    return st.builds(Start, shard_counts, SETUP, SEED)


MULTI_SHARD_STARTS = starts(st.integers(2, 4))
RNG = st.randoms(use_true_random=False)


# -- (a) random streams ----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(starts(), st.lists(STREAM_OPS, min_size=5, max_size=40))
def test_streams_keep_money_conserved_and_match_the_reference(
    start: Start, ops: list[tuple[Any, ...]]
) -> None:
    runner = start.runner(ops)
    assert runner.open == []
    assert all(ledger.in_doubt() == [] for ledger in runner.ledgers)


# -- (b) interleaved two-phase commit ----------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(MULTI_SHARD_STARTS, st.lists(INTERLEAVED_OPS, min_size=5, max_size=40), RNG)
def test_interleaved_transactions_hold_funds_until_decided(
    start: Start, ops: list[tuple[Any, ...]], rng: random.Random
) -> None:
    start.runner(ops).finish(rng)


@settings(max_examples=150, deadline=None)
@given(MULTI_SHARD_STARTS, st.lists(HOLD_OPS, min_size=2, max_size=10), RNG)
def test_prepare_all_then_decide_in_random_order(
    start: Start, prepares: list[tuple[Any, ...]], rng: random.Random
) -> None:
    """Every transaction is in doubt at once before any decision arrives."""
    runner = start.runner(prepares)
    assert len(runner.open) + runner.claims_refused == len(prepares)
    runner.finish(rng)


# -- (c) recovery: a store written up to some record, plus the log after it ---------------------


def replay(ledger: ShardLedger, records: list[tuple[str, bytes]]) -> None:
    """Apply log records as a recovering shard does (``ShardService.apply_record``)."""
    for kind, payload in records:
        items = msgspec.msgpack.decode(payload, type=RECORD_TYPES[kind])
        if kind == "accounts":
            ledger.replay_accounts(items)
        elif kind == "transfers":
            ledger.replay_transfers(items[0])
            ledger.replay_marks(items[1])
        elif kind == "prepared":
            ledger.replay_prepared(items[0])
            ledger.replay_marks(items[1])
        elif kind == "claimed":
            ledger.replay_marks(items)
        else:
            assert ledger.decide(items) == items


def recover(
    root: Path, shard: int, shard_count: int, log: list[tuple[str, bytes]], written: int
) -> tuple[ShardLedger, ShardStore]:
    """A shard whose store took the first ``written`` records before it stopped, reopened
    from its files and brought up to date from the log, as ``ShardService`` recovers."""
    store = ShardStore(root, shard, shard_count)
    ledger = ShardLedger(shard, shard_count, disk=store)
    for sequence, record in enumerate(log[:written], start=1):
        replay(ledger, [record])
        store.write(sequence, ledger.take_pending())
    store.checkpoint()
    store.close()
    store = ShardStore(root, shard, shard_count)
    assert store.applied_sequence == written
    ledger = ShardLedger(shard, shard_count, disk=store)
    ledger.load(list(store.accounts()), list(store.prepared()))
    for sequence, record in enumerate(log[written:], start=written + 1):
        replay(ledger, [record])
        store.write(sequence, ledger.take_pending())
    ledger.check_invariants()
    return ledger, store


def assert_same_state(restored: ShardLedger, original: ShardLedger) -> None:
    """Everything ``original`` (a ledger without a store: all of it pending) holds, the
    restored ledger holds too, whether in memory, pending or on its store."""
    assert (restored.shard, restored.shard_count) == (original.shard, original.shard_count)
    assert restored.accounts == original.accounts
    assert restored.prepared == original.prepared
    assert sorted(restored.in_doubt()) == sorted(original.in_doubt())
    assert restored._prepared_transfer_ids == original._prepared_transfer_ids
    for account_id in original.accounts:
        assert history_of(restored, account_id, 3) == history_of(original, account_id, 3)
    for transfer in original.pending.transfers:
        assert restored.transfer(transfer.order.id) == transfer
    assert transfer_count(restored) == transfer_count(original)
    for mark in original.pending.marks:
        assert restored._find_mark(mark.id) == original._find_mark(mark.id)


@settings(max_examples=40, deadline=None)
@given(
    starts(),
    st.lists(INTERLEAVED_OPS, min_size=5, max_size=30),
    st.lists(INTERLEAVED_OPS, max_size=15),
    st.floats(0, 1),
    RNG,
)
def test_recovery_from_the_store_keeps_everything_including_prepared(
    start: Start,
    before: list[tuple[Any, ...]],
    after: list[tuple[Any, ...]],
    written: float,
    rng: random.Random,
) -> None:
    """A store that lags its log by any number of records (a crash between the log's
    fsync and the store's write) recovers to the same state, and behaves the same after."""
    runner = start.runner(before)
    restored = copy.deepcopy(runner)
    with tempfile.TemporaryDirectory() as tmp:
        for shard, original in enumerate(runner.ledgers):
            log = runner.logs[shard]
            ledger, store = recover(
                Path(tmp) / str(shard), shard, start.shard_count, log, int(written * len(log))
            )
            assert_same_state(ledger, original)
            restored.ledgers[shard], restored.stores[shard] = ledger, store
        # The recovered ledgers, now writing to their stores, behave exactly like the originals.
        for op in after:
            runner.step(op)
            restored.step(op)
        runner.finish(copy.deepcopy(rng))
        restored.finish(rng)
        for original, again in zip(runner.ledgers, restored.ledgers, strict=True):
            assert_same_state(again, original)
        for kept in restored.stores:
            assert kept is not None
            kept.close()


# -- (d) replay from the log -----------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(starts(), st.lists(INTERLEAVED_OPS, min_size=5, max_size=40), st.booleans(), RNG)
def test_replaying_the_whole_log_rebuilds_the_same_state(
    start: Start, ops: list[tuple[Any, ...]], decide_all: bool, rng: random.Random
) -> None:
    runner = start.runner(ops)
    if decide_all:
        runner.finish(rng)
    for shard, original in enumerate(runner.ledgers):
        rebuilt = ShardLedger(shard, start.shard_count)
        replay(rebuilt, runner.logs[shard])
        rebuilt.check_invariants()
        assert_same_state(rebuilt, original)
        assert msgspec.msgpack.encode(rebuilt.pending) == msgspec.msgpack.encode(original.pending)


# -- a few hand-written scenarios the properties rely on ------------------------------------------


def test_cross_shard_id_reuse_is_a_conflict_on_the_credit_shard() -> None:
    """A credit-only shard that already knows the id must refuse, not overwrite its record."""
    runner = Runner(2, ["USD"], False)
    a, b, c, _ = runner.users  # two on shard 0, two on shard 1
    for target in (a, c):
        runner.step(("topup", runner.users.index(target), 100, "none"))
    local = runner.submit(TransferOrder(id="X", debit=a, credits=(Credit(b, 30),), currency="USD"))
    assert local.error is None
    reused = runner.submit(TransferOrder(id="X", debit=c, credits=(Credit(b, 5),), currency="USD"))
    assert reused.error == ErrorCode.TRANSFER_ID_CONFLICT
    assert runner.ledgers[0].transfer("X") == local.transfer
    assert [e for _, e, _ in runner.ledgers[0].history_page(a).items] == [-30, 100]
    runner.check()


def test_in_doubt_transfer_blocks_its_id_on_every_shard() -> None:
    runner = Runner(2, ["USD"], False)
    a, _, c, _ = runner.users
    runner.step(("topup", runner.users.index(a), 100, "none"))
    order = TransferOrder(id="P", debit=a, credits=(Credit(c, 40),), currency="USD")
    runner.orders.append(order)
    first = runner.prepare(order)
    assert first.all_yes
    second = runner.prepare(order)
    assert [v.error for v in second.votes.values()] == [ErrorCode.UNAVAILABLE] * 2
    runner.decide(second, commit=True)  # all-no: decided as an abort
    assert runner.ledgers[0].account(a).held_debit == 40
    assert runner.ledgers[1].account(c).held_credit == 40
    runner.decide(first, commit=True)
    assert runner.ledgers[0].account(a).balance == 60
    assert runner.ledgers[1].account(c).balance == 40
    runner.check()
