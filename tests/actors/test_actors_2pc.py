"""Two-phase commit against real Ray actors on real files: concurrency, idempotency, conflicts.

One ledger of three shards serves the module; each test uses its own accounts, so the
books of one test can be audited exactly while the others share the shards.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import ray

from tests.support.audit import assert_books_balance, full_history, in_doubt
from tests.support.orders import account_spec, ids_on, pay, topup
from tokpay.actors.deploy import LedgerHandles
from tokpay.actors.protocol import decode, encode
from tokpay.client import LedgerClient, SyncLedgerClient
from tokpay.ledger.errors import ErrorCode
from tokpay.ledger.model import Transfer, TransferOrder, TransferOutcome
from tokpay.ledger.routing import shard_of

SHARDS = 3
ACCOUNTS = 60
TOPUP = 30
TRANSFERS = 2_000
OVERDRAW_AMOUNT = 5_000
"""More than all user money of the workload together: such a transfer can never apply."""

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@pytest.fixture(scope="module")
def ledger(module_ledger_runner: Any, tmp_path_factory: pytest.TempPathFactory) -> LedgerHandles:
    handles: LedgerHandles = module_ledger_runner.start(
        tmp_path_factory.mktemp("ledger-2pc"), SHARDS
    )
    return handles


def is_cross_shard(order: TransferOrder) -> bool:
    return len({shard_of(a, SHARDS) for a in order.accounts()}) > 1


def cross_shard_pair(tag: str, hops: int) -> tuple[str, str]:
    """A payer and a payee ``hops`` shards further on, both named after ``tag``."""
    payer_shard = shard_of(f"{tag}-seed", SHARDS)
    payer = ids_on(payer_shard, SHARDS, 1, f"{tag}-payer")[0]
    payee = ids_on((payer_shard + hops) % SHARDS, SHARDS, 1, f"{tag}-payee")[0]
    return payer, payee


async def open_accounts(client: LedgerClient, ids: Sequence[str], amount: int, tag: str) -> None:
    created = await asyncio.gather(*(client.create_account(account_spec(a)) for a in ids))
    assert all(o.created for o in created), created
    topups = [topup(a, amount, id=f"{tag}-top-{a}", shard_count=SHARDS) for a in ids]
    funded = await asyncio.gather(*(client.submit(order) for order in topups))
    assert all(o.transfer is not None and not o.replayed for o in funded), funded


def replay_balances(accounts: Sequence[str], transfers: Sequence[Transfer]) -> dict[str, int]:
    balances = dict.fromkeys(accounts, 0)
    for transfer in transfers:
        order = transfer.order
        if order.debit in balances:
            balances[order.debit] -= order.total
        for credit in order.credits:
            if credit.account in balances:
                balances[credit.account] += credit.amount
    return balances


def balances_now(ledger: LedgerHandles, accounts: Sequence[str]) -> dict[str, int]:
    views = SyncLedgerClient(ledger).balances(accounts)
    assert all(v is not None for v in views)
    return {v.account_id: v.balance for v in views if v is not None}


def audit_shards(ledger: LedgerHandles) -> None:
    """Books balance everywhere: sums zero, no user overdrawn, invariants, nothing in doubt."""
    assert_books_balance(ledger)
    assert in_doubt(ledger.shards) == [[]] * SHARDS
    assert ray.get(ledger.coordinator.stats.remote())["pending_commits"] == 0


@dataclass
class Workload:
    accounts: list[str]
    topups: list[Transfer]
    orders: list[TransferOrder]
    outcomes: list[TransferOutcome]

    @property
    def committed(self) -> list[Transfer]:
        return [o.transfer for o in self.outcomes if o.transfer is not None]


def random_orders(rng: random.Random, accounts: list[str]) -> list[TransferOrder]:
    by_shard: dict[int, list[str]] = {}
    for account_id in accounts:
        by_shard.setdefault(shard_of(account_id, SHARDS), []).append(account_id)
    orders: list[TransferOrder] = []
    for index in range(TRANSFERS):
        debit = rng.choice(accounts)
        transfer_id = f"w-t{index}"
        if rng.random() < 0.05:
            payee = rng.choice([a for a in accounts if a != debit])
            orders.append(pay(debit, [(payee, OVERDRAW_AMOUNT)], id=transfer_id))
            continue
        same_shard = rng.random() < 0.5
        pool = by_shard[shard_of(debit, SHARDS)] if same_shard else accounts
        payees = rng.sample([a for a in pool if a != debit], rng.randint(1, 3))
        orders.append(pay(debit, [(p, rng.randint(1, 3)) for p in payees], id=transfer_id))
    return orders


@pytest.fixture(scope="module")
def workload(ledger: LedgerHandles) -> Workload:
    accounts = [f"w-{i:02d}" for i in range(ACCOUNTS)]
    orders = random_orders(random.Random(20_260_101), accounts)

    async def main() -> Workload:
        client = LedgerClient(ledger)
        await open_accounts(client, accounts, TOPUP, "w")
        topups = [await client.transfer(f"w-top-{a}") for a in accounts]
        outcomes = await asyncio.gather(*(client.submit(o) for o in orders))
        return Workload(accounts, [t for t in topups if t is not None], orders, outcomes)

    return run(main())


def test_concurrent_random_transfers_keep_the_books(
    ledger: LedgerHandles, workload: Workload
) -> None:
    assert len(workload.topups) == ACCOUNTS
    committed_ids: set[str] = set()
    for order, outcome in zip(workload.orders, workload.outcomes, strict=True):
        if outcome.transfer is not None:
            assert not outcome.replayed and outcome.transfer.order == order
            committed_ids.add(order.id)
        else:
            assert outcome.error == ErrorCode.INSUFFICIENT_FUNDS, outcome
        if order.total == OVERDRAW_AMOUNT:
            assert outcome.error == ErrorCode.INSUFFICIENT_FUNDS
    committed = workload.committed
    cross = [t for t in committed if is_cross_shard(t.order)]
    assert len(cross) > 300 and len(committed) - len(cross) > 300
    assert sum(1 for o in workload.orders if o.total == OVERDRAW_AMOUNT) > 50

    async def reads() -> dict[str, list[tuple[Transfer, int]]]:
        client = LedgerClient(ledger)
        histories = await asyncio.gather(*(full_history(client, a) for a in workload.accounts))
        return dict(zip(workload.accounts, histories, strict=True))

    histories = run(reads())
    by_id = {t.order.id: t for t in [*workload.topups, *committed]}
    for account_id, items in histories.items():
        ids = [t.order.id for t, _, _ in items]
        assert len(ids) == len(set(ids)), f"{account_id} lists a transfer twice"
        for transfer, effect, _ in items:
            assert by_id.get(transfer.order.id) == transfer, (
                "history shows an unacknowledged transfer"
            )
            change = -transfer.order.total if transfer.order.debit == account_id else 0
            change += sum(c.amount for c in transfer.order.credits if c.account == account_id)
            assert effect == change
    for transfer in by_id.values():
        for account_id in transfer.order.accounts():
            if account_id in histories:
                assert transfer.order.id in {t.order.id for t, _, _ in histories[account_id]}

    expected = replay_balances(workload.accounts, [*workload.topups, *committed])
    assert balances_now(ledger, workload.accounts) == expected
    assert all(b >= 0 for b in expected.values())
    audit_shards(ledger)


def test_transfer_reads_return_committed_and_not_refused(
    ledger: LedgerHandles, workload: Workload
) -> None:
    rng = random.Random(11)
    pairs = list(zip(workload.orders, workload.outcomes, strict=True))
    committed = rng.sample([p for p in pairs if p[1].transfer is not None], 300)
    refused = rng.sample([p for p in pairs if p[1].transfer is None], 50)

    async def main() -> list[Transfer | None]:
        client = LedgerClient(ledger)
        return await asyncio.gather(*(client.transfer(o.id) for o, _ in [*committed, *refused]))

    found = run(main())
    assert found[: len(committed)] == [outcome.transfer for _, outcome in committed]
    assert found[len(committed) :] == [None] * len(refused)


def test_replaying_committed_orders_changes_nothing(
    ledger: LedgerHandles, workload: Workload
) -> None:
    originals = [*workload.topups, *workload.committed]
    before = balances_now(ledger, workload.accounts)
    transfers_before = [s.transfers for s in run(LedgerClient(ledger).shard_stats())]

    async def main() -> list[TransferOutcome]:
        client = LedgerClient(ledger)
        return await asyncio.gather(*(client.submit(t.order) for t in originals))

    outcomes = run(main())
    assert all(o.replayed for o in outcomes)
    assert [o.transfer for o in outcomes] == originals
    assert balances_now(ledger, workload.accounts) == before
    assert [s.transfers for s in run(LedgerClient(ledger).shard_stats())] == transfers_before
    audit_shards(ledger)


def test_same_id_with_another_body_is_a_conflict(ledger: LedgerHandles) -> None:
    shard_a = shard_of("cf-seed", SHARDS)
    payer, local_payee = ids_on(shard_a, SHARDS, 2, "cf-local")
    remote_payee = ids_on((shard_a + 1) % SHARDS, SHARDS, 1, "cf-remote")[0]
    accounts = [payer, local_payee, remote_payee]
    single = pay(payer, [(local_payee, 5)], id="cf-single")
    cross = pay(payer, [(remote_payee, 5)], id="cf-cross")
    assert not is_cross_shard(single) and is_cross_shard(cross)
    variants = [
        pay(payer, [(local_payee, 6)], id=single.id),
        pay(payer, [(local_payee, 5)], id=single.id, memo="x"),
        pay(payer, [(remote_payee, 5)], id=single.id),  # now cross-shard
        pay(payer, [(remote_payee, 7)], id=cross.id),
        pay(payer, [(remote_payee, 5), (local_payee, 1)], id=cross.id),
        pay(payer, [(local_payee, 5)], id=cross.id),  # now single-shard
    ]

    async def main() -> tuple[list[TransferOutcome], list[TransferOutcome]]:
        client = LedgerClient(ledger)
        await open_accounts(client, accounts, 100, "cf")
        first = [await client.submit(single), await client.submit(cross)]
        again = await asyncio.gather(*(client.submit(v) for v in variants))
        return first, again

    first, again = run(main())
    assert all(o.transfer is not None for o in first)
    for variant, outcome in zip(variants, again, strict=True):
        assert outcome.error == ErrorCode.TRANSFER_ID_CONFLICT, (variant, outcome)
        assert outcome.transfer is None
    assert balances_now(ledger, accounts) == {payer: 90, local_payee: 105, remote_payee: 105}
    found = run(LedgerClient(ledger).transfer(cross.id))
    assert found is not None and found == first[1].transfer
    audit_shards(ledger)


def test_two_bodies_in_flight_under_one_id_apply_one(ledger: LedgerHandles) -> None:
    payer, payee = cross_shard_pair("fl", hops=2)
    first = pay(payer, [(payee, 4)], id="fl-1")
    second = pay(payer, [(payee, 9)], id="fl-1")

    async def main() -> list[TransferOutcome]:
        client = LedgerClient(ledger)
        await open_accounts(client, [payer, payee], 50, "fl")
        return list(await asyncio.gather(client.submit(first), client.submit(second)))

    outcomes = run(main())
    winners = [o for o in outcomes if o.transfer is not None]
    assert len(winners) == 1 and not winners[0].replayed
    assert [o.error for o in outcomes if o.transfer is None] == [ErrorCode.TRANSFER_ID_CONFLICT]
    amount = winners[0].transfer.order.total if winners[0].transfer else 0
    assert balances_now(ledger, [payer, payee]) == {payer: 50 - amount, payee: 50 + amount}


def test_concurrent_submissions_of_one_cross_shard_id_apply_once(ledger: LedgerHandles) -> None:
    payer, payee = cross_shard_pair("dup", hops=1)
    batched = pay(payer, [(payee, 3)], id="dup-batched")
    direct = pay(payer, [(payee, 5)], id="dup-direct")
    scripted = pay(payer, [(payee, 7)], id="dup-scripted")

    async def main() -> tuple[list[TransferOutcome], list[TransferOutcome]]:
        client = LedgerClient(ledger)
        await open_accounts(client, [payer, payee], 100, "dup")
        # Through the client: many copies coalesce into the coordinator's batches.
        via_client = await asyncio.gather(*(client.submit(batched) for _ in range(20)))
        # Straight at the coordinator, one call each: separate batches in flight together.
        raws = await asyncio.gather(
            *(ledger.coordinator.submit.remote(encode([direct])) for _ in range(10))
        )
        return via_client, [decode(r, list[TransferOutcome])[0] for r in raws]

    via_client, via_calls = run(main())
    via_script = SyncLedgerClient(ledger).submit_many([scripted] * 5)
    for order, outcomes in [(batched, via_client), (direct, via_calls), (scripted, via_script)]:
        assert all(o.transfer is not None and o.transfer.order == order for o in outcomes)
        assert sum(1 for o in outcomes if not o.replayed) == 1
        assert len({o.transfer.created_at for o in outcomes if o.transfer}) == 1
    assert balances_now(ledger, [payer, payee]) == {payer: 85, payee: 115}
    history = run(full_history(LedgerClient(ledger), payee))
    assert sorted(t.order.id for t, _, _ in history) == sorted(
        ["dup-top-" + payee, batched.id, direct.id, scripted.id]
    )
    audit_shards(ledger)


def test_reused_id_on_untouched_shards_is_a_conflict(ledger: LedgerHandles) -> None:
    payer, payee = cross_shard_pair("ru", hops=1)
    shard_c = (shard_of(payer, SHARDS) + 2) % SHARDS
    other_payer, other_payee = ids_on(shard_c, SHARDS, 2, "ru-other")
    original = pay(payer, [(payee, 2)], id="ru-1")
    reused = pay(other_payer, [(other_payee, 2)], id="ru-1")

    async def main() -> TransferOutcome:
        client = LedgerClient(ledger)
        await open_accounts(client, [payer, payee, other_payer, other_payee], 10, "ru")
        assert (await client.submit(original)).transfer is not None
        return await client.submit(reused)

    assert run(main()).error == ErrorCode.TRANSFER_ID_CONFLICT
