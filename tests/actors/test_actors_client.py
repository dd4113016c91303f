"""The Python client: batched reads and submissions for scripts, and the per-shard Batcher.

SyncLedgerClient runs against real actors found with ``connect_ledger`` (as a Ray
client script would); the Batcher tests need no Ray.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import msgspec
import pytest

from tests.support.orders import CURRENCY, account_specs, ids_on, pay, topup
from tokpay.actors.batching import Batcher
from tokpay.actors.deploy import LedgerHandles, connect_ledger
from tokpay.client import LedgerClient, SyncLedgerClient
from tokpay.ledger.errors import ErrorCode, LedgerError
from tokpay.ledger.limits import MAX_BATCH, MAX_LOOKUP_IDS
from tokpay.ledger.model import BalanceView, TransferOrder, TransferOutcome
from tokpay.ledger.routing import shard_of
from tokpay.ledger.shard_ledger import home_of

SHARDS = 3
HEAVY_SHARD = 0
HEAVY_ACCOUNTS = MAX_BATCH + 200
"""Accounts on one shard: more than one batch, so every per-shard path must chunk."""
LIGHT_ACCOUNTS = 400


class RecordingHandle:
    """Forwards calls to an actor handle, noting each call's method and item count."""

    def __init__(self, handle: Any, calls: list[tuple[str, int]]) -> None:
        self._handle = handle
        self._calls = calls

    def __getattr__(self, method: str) -> Any:
        target = getattr(self._handle, method)
        calls = self._calls

        class Method:
            def remote(self, *args: Any) -> Any:
                # A shard is called as ``call(method, payload)``; the coordinator by name.
                name, payload = args if method == "call" else (method, *args[:1])
                items = msgspec.msgpack.decode(payload) if payload else []
                calls.append((name, len(items)))
                return target.remote(*args)

        return Method()


def recording(handles: LedgerHandles) -> tuple[LedgerHandles, dict[str, list[tuple[str, int]]]]:
    calls: dict[str, list[tuple[str, int]]] = {}
    shards = []
    for index, shard in enumerate(handles.shards):
        shards.append(RecordingHandle(shard, calls.setdefault(f"shard-{index}", [])))
    coordinator = RecordingHandle(handles.coordinator, calls.setdefault("coordinator", []))
    return LedgerHandles(shards=shards, coordinator=coordinator), calls


@pytest.fixture(scope="module")
def ledger(module_ledger_runner: Any, tmp_path_factory: pytest.TempPathFactory) -> LedgerHandles:
    module_ledger_runner.start(tmp_path_factory.mktemp("ledger-client"), SHARDS)
    return connect_ledger(SHARDS)


@pytest.fixture(scope="module")
def funded(ledger: LedgerHandles) -> dict[str, int]:
    """Accounts (heavy on one shard) created and topped up through the sync client."""
    accounts = ids_on(HEAVY_SHARD, SHARDS, HEAVY_ACCOUNTS, "cl")
    for shard in range(SHARDS):
        if shard != HEAVY_SHARD:
            accounts += ids_on(shard, SHARDS, LIGHT_ACCOUNTS, "cl")
    amounts = {a: 10 + index for index, a in enumerate(accounts)}
    recorded, calls = recording(ledger)
    client = SyncLedgerClient(recorded)
    created = client.create_accounts(account_specs(accounts))
    assert [o.account.id if o.account else None for o in created] == accounts
    assert all(o.created for o in created)
    topups = [topup(a, amounts[a], id=f"top-{a}", shard_count=SHARDS) for a in accounts]
    funded = client.submit_many(topups)
    assert all(o.transfer is not None for o in funded)
    heavy = [n for m, n in calls[f"shard-{HEAVY_SHARD}"] if m == "create_accounts"]
    assert sorted(heavy) == sorted([MAX_BATCH, HEAVY_ACCOUNTS - MAX_BATCH])
    assert calls["coordinator"] == []  # top-ups never need two-phase commit
    return amounts


def test_balances_of_3000_ids_come_back_in_request_order(
    ledger: LedgerHandles, funded: dict[str, int]
) -> None:
    rng = random.Random(1)
    known = rng.sample(sorted(funded), 2_000)
    unknown = ids_on(HEAVY_SHARD, SHARDS, 990, "nobody") + ["nobody-else"] * 10
    request = known + unknown
    rng.shuffle(request)
    assert len(request) == 3_000

    recorded, calls = recording(ledger)
    views = SyncLedgerClient(recorded).balances(request)
    expected = [BalanceView(a, funded[a], CURRENCY) if a in funded else None for a in request]
    assert views == expected
    heavy_reads = [n for _, n in calls[f"shard-{HEAVY_SHARD}"]]
    assert len(heavy_reads) >= 2 and max(heavy_reads) <= MAX_BATCH
    assert sum(n for c in calls.values() for _, n in c) == 3_000
    assert SyncLedgerClient(ledger).balances([]) == []


def test_submit_many_chunks_by_max_batch_and_keeps_order(
    ledger: LedgerHandles, funded: dict[str, int]
) -> None:
    rng = random.Random(2)
    heavy = [a for a in funded if shard_of(a, SHARDS) == HEAVY_SHARD]
    everyone = sorted(funded)
    orders: list[TransferOrder] = []
    for index in range(1_300):  # single-shard, all on the heavy shard
        debit, credit = rng.sample(heavy, 2)
        orders.append(pay(debit, [(credit, rng.randint(1, 5))], id=f"sm-local-{index}"))
    for index in range(1_700):  # mostly cross-shard
        debit, *credits = rng.sample(everyone, rng.randint(2, 4))
        legs = [(c, rng.randint(1, 5)) for c in credits]
        orders.append(pay(debit, legs, id=f"sm-mixed-{index}"))
    rng.shuffle(orders)
    before = SyncLedgerClient(ledger).balances(everyone)

    recorded, calls = recording(ledger)
    outcomes = SyncLedgerClient(recorded).submit_many(orders)

    assert len(outcomes) == len(orders)
    committed = []
    for order, outcome in zip(orders, outcomes, strict=True):
        if outcome.transfer is not None:
            assert outcome.transfer.order == order and not outcome.replayed
            committed.append(order)
        else:
            assert outcome.error == ErrorCode.INSUFFICIENT_FUNDS, outcome
    assert len(committed) > 2_500
    coordinator_chunks = [n for _, n in calls["coordinator"]]
    heavy_chunks = [n for m, n in calls[f"shard-{HEAVY_SHARD}"] if m == "apply_orders"]
    assert len(coordinator_chunks) >= 2 and max(coordinator_chunks) <= MAX_BATCH
    assert len(heavy_chunks) >= 2 and max(heavy_chunks) <= MAX_BATCH
    sent = [(m, n) for c in calls.values() for m, n in c]
    assert sum(n for m, n in sent if m != "claim_ids") == len(orders)
    # Ids are claimed at their home shard unless the order touches it (bound there anyway).
    claimed = sum(n for m, n in sent if m == "claim_ids")
    touched = [{shard_of(a, SHARDS) for a in o.accounts()} for o in orders]
    homes = [home_of(o.id, SHARDS) for o in orders]
    assert claimed == sum(1 for t, h in zip(touched, homes, strict=True) if h not in t)
    assert all(n <= MAX_BATCH for m, n in sent if m == "claim_ids")

    expected = {v.account_id: v.balance for v in before if v is not None}
    for order in committed:
        expected[order.debit] -= order.total
        for leg in order.credits:
            expected[leg.account] += leg.amount
    after = SyncLedgerClient(ledger).balances(everyone)
    assert {v.account_id: v.balance for v in after if v is not None} == expected
    assert all(total == 0 for total in SyncLedgerClient(ledger).currency_sums().values())


def test_async_submits_share_claims_and_orders_in_one_batch_per_shard(
    ledger: LedgerHandles, funded: dict[str, int]
) -> None:
    """The gateway's client sends a shard the claims of ids homed there and the orders on
    its accounts in one batch; every caller still gets its own answer: the originals
    commit once, the same ids with other bodies are conflicts, the originals again replay."""
    pairs = []
    for shard in range(SHARDS):
        on = sorted(a for a in funded if shard_of(a, SHARDS) == shard)[:120]
        pairs += list(zip(on[::2], on[1::2], strict=True))
    orders = [pay(d, [(c, 1)], id=f"as-{i}") for i, (d, c) in enumerate(pairs)]
    assert sum(1 for o in orders if home_of(o.id, SHARDS) != shard_of(o.debit, SHARDS)) > 100
    rivals = [pay(o.debit, [(o.credits[0].account, 2)], id=o.id) for o in orders[::3]]
    accounts = [a for pair in pairs for a in pair]
    before = SyncLedgerClient(ledger).balances(accounts)

    async def main() -> tuple[list[TransferOutcome], list[TransferOutcome]]:
        client = LedgerClient(ledger)
        first = await asyncio.gather(*(client.submit(o) for o in orders))
        again = await asyncio.gather(*(client.submit(o) for o in [*rivals, *orders[::3]]))
        return list(first), list(again)

    first, again = asyncio.run(main())
    for order, outcome in zip(orders, first, strict=True):
        assert outcome.transfer is not None and outcome.transfer.order == order
        assert not outcome.replayed
    assert [o.error for o in again[: len(rivals)]] == [ErrorCode.TRANSFER_ID_CONFLICT] * len(rivals)
    for order, outcome in zip(orders[::3], again[len(rivals) :], strict=True):
        assert outcome.replayed and outcome.transfer is not None
        assert outcome.transfer.order == order
    after = SyncLedgerClient(ledger).balances(accounts)
    moved = [
        (b.balance - a.balance) for a, b in zip(before, after, strict=True) if a is not None and b
    ]
    assert moved == [-1, 1] * len(pairs)


def test_async_lookup_refuses_more_than_max_lookup_ids(ledger: LedgerHandles) -> None:
    with pytest.raises(LedgerError) as refused:
        asyncio.run(LedgerClient(ledger).balances([f"x{i}" for i in range(MAX_LOOKUP_IDS + 1)]))
    assert refused.value.code == ErrorCode.TOO_MANY_IDS


# -- Batcher ---------------------------------------------------------------------------------


class Target:
    """A fake shard: records batch sizes; optionally waits for ``gate`` before answering."""

    def __init__(self, *, gated: bool = False, fail: BaseException | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event() if gated else None
        self.fail = fail

    async def send(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        else:
            await asyncio.sleep(0.001)
        if self.fail is not None:
            raise self.fail
        return [item * 2 for item in items]


async def _until(condition: Any) -> None:
    for _ in range(1_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


async def busy_batcher(
    *, max_pending: int, waiting: int
) -> tuple[Target, Batcher[int, int], asyncio.Future[int], list[asyncio.Future[int]]]:
    """A batcher with one slot, taken by ``submit(0)`` at a gated target, and ``waiting``
    more submits (1, 2, ...) queued behind it.
    """
    target = Target(gated=True)
    batcher: Batcher[int, int] = Batcher(
        target.send, max_batch=MAX_BATCH, max_pending=max_pending, max_inflight=1
    )
    in_flight = asyncio.ensure_future(batcher.submit(0))
    await _until(lambda: len(target.batches) == 1)
    queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, waiting + 1)]
    await _until(lambda: batcher.pending == waiting)
    return target, batcher, in_flight, queued


def test_batcher_coalesces_concurrent_submits() -> None:
    async def main() -> None:
        target = Target()
        observed: list[int] = []
        batcher: Batcher[int, int] = Batcher(
            target.send, max_batch=100, max_pending=10_000, max_inflight=2, on_batch=observed.append
        )
        results = await asyncio.gather(*(batcher.submit(i) for i in range(1_000)))
        assert results == [i * 2 for i in range(1_000)]
        assert [len(b) for b in target.batches] == [100] * 10
        assert observed == [100] * 10
        assert sorted(i for b in target.batches for i in b) == list(range(1_000))

        one_turn = Target()
        wide: Batcher[int, int] = Batcher(
            one_turn.send, max_batch=MAX_BATCH, max_pending=10_000, max_inflight=4
        )
        assert await asyncio.gather(*(wide.submit(i) for i in range(500))) == [
            i * 2 for i in range(500)
        ]
        assert [len(b) for b in one_turn.batches] == [500]

    asyncio.run(main())


def test_batcher_grows_batches_while_the_target_is_busy() -> None:
    async def main() -> None:
        target, _, first, rest = await busy_batcher(max_pending=10_000, waiting=300)
        assert len(target.batches) == 1  # nothing leaves while the one slot is busy
        assert target.gate is not None
        target.gate.set()
        assert await first == 0
        assert await asyncio.gather(*rest) == [i * 2 for i in range(1, 301)]
        assert [len(b) for b in target.batches] == [1, 300]

    asyncio.run(main())


def test_batcher_overflow_is_an_immediate_overloaded_error() -> None:
    async def main() -> None:
        target, batcher, busy, waiting = await busy_batcher(max_pending=10, waiting=10)
        with pytest.raises(LedgerError) as refused:
            await asyncio.wait_for(batcher.submit(99), timeout=1.0)
        assert refused.value.code == ErrorCode.OVERLOADED
        assert refused.value.status == 429
        assert batcher.pending == 10  # the refused request took no place in the queue
        assert target.gate is not None
        target.gate.set()
        assert await busy == 0
        assert await asyncio.gather(*waiting) == [i * 2 for i in range(1, 11)]
        assert await batcher.submit(7) == 14  # room again once the queue drained

    asyncio.run(main())


def test_batcher_failure_reaches_every_waiter_and_the_batcher_recovers() -> None:
    async def main() -> None:
        boom = RuntimeError("shard exploded")
        target = Target(fail=boom)
        batcher: Batcher[int, int] = Batcher(
            target.send, max_batch=30, max_pending=1_000, max_inflight=2
        )
        results = await asyncio.gather(
            *(batcher.submit(i) for i in range(100)), return_exceptions=True
        )
        assert all(r is boom for r in results)
        assert [len(b) for b in target.batches] == [30, 30, 30, 10]

        target.fail = None
        assert await asyncio.gather(*(batcher.submit(i) for i in range(5))) == [0, 2, 4, 6, 8]

        async def short_answer(items: list[int]) -> list[int]:
            return items[:-1]  # one result missing: every waiter must hear of it

        broken: Batcher[int, int] = Batcher(
            short_answer, max_batch=100, max_pending=100, max_inflight=1
        )
        mismatched = await asyncio.gather(
            *(broken.submit(i) for i in range(10)), return_exceptions=True
        )
        assert all(isinstance(r, ValueError) for r in mismatched)

    asyncio.run(main())
