"""Recovery: presumed abort, re-delivered commits, a shard killed under load, a full restart.

All on real files; the coordinator re-delivery test drives CoordinatorService and
ShardService directly (no Ray) so it can fail exactly one delivery.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import ray

import tokpay.actors.two_phase as two_phase_module
from tests.support.audit import assert_books_balance, full_history, in_doubt
from tests.support.orders import CURRENCY, account_specs, ids_on, pay, topup
from tests.support.services import InProcessShards, apply_orders, create_accounts
from tokpay.actors.coordinator import CoordinatorService
from tokpay.actors.coordinator_actor import CoordinatorActor
from tokpay.actors.deploy import LedgerHandles, connect_ledger, read_shard_count
from tokpay.actors.naming import COORDINATOR_NAME, NAMESPACE
from tokpay.actors.protocol import ShardStats, decode, encode
from tokpay.actors.shard import ShardService
from tokpay.client import LedgerClient, SyncLedgerClient
from tokpay.ledger.errors import ErrorCode
from tokpay.ledger.model import Account, Prepare, Transfer, TransferOrder, TransferOutcome, Vote
from tokpay.ledger.routing import shard_of

SHARDS = 3
RESTART_TIMEOUT_SECONDS = 60.0


def open_funded(client: SyncLedgerClient, ids: Sequence[str], amount: int) -> None:
    assert all(o.created for o in client.create_accounts(account_specs(ids)))
    topups = [topup(a, amount, id=f"top-{a}", shard_count=SHARDS) for a in ids]
    assert all(o.transfer is not None for o in client.submit_many(topups))


def remote_account(handles: LedgerHandles, account_id: str) -> Account:
    shard = handles.shards[shard_of(account_id, SHARDS)]
    found: Account = decode(ray.get(shard.call.remote("account", encode(account_id))), Account)
    return found


def wait_until_unregistered(name: str) -> None:
    deadline = time.monotonic() + RESTART_TIMEOUT_SECONDS
    while True:
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return
        assert time.monotonic() < deadline, f"{name} still registered"
        time.sleep(0.05)


def test_in_doubt_without_a_commit_record_is_aborted(ledger_runner: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    handles: LedgerHandles = ledger_runner.start(data_dir, SHARDS)
    payer_shard = shard_of("ind-seed", SHARDS)
    payer, neighbour = ids_on(payer_shard, SHARDS, 2, "ind-payer")
    payee = ids_on((payer_shard + 1) % SHARDS, SHARDS, 1, "ind-payee")[0]
    sync = SyncLedgerClient(handles)
    open_funded(sync, [payer, neighbour, payee], 100)

    # The coordinator dies after the participants prepared and before it logged a decision.
    # Its replacement has not started the periodic sweep, so only our call resolves.
    ray.kill(handles.coordinator)
    wait_until_unregistered(COORDINATOR_NAME)
    coordinator = CoordinatorActor.options(  # type: ignore[attr-defined]
        name=COORDINATOR_NAME, namespace=NAMESPACE
    ).remote(SHARDS, str(data_dir.resolve()))
    handles = connect_ledger(SHARDS)
    sync = SyncLedgerClient(handles)

    order = pay(payer, [(payee, 60)], id="ind-1")
    prepare = encode([Prepare(txid="ind-tx", transfer=Transfer(order=order, created_at=1))])
    participants = [handles.shards[payer_shard], handles.shards[shard_of(payee, SHARDS)]]
    votes = [
        decode(raw, list[Vote])
        for raw in ray.get([p.call.remote("prepare", prepare) for p in participants])
    ]
    assert votes == [[Vote(txid="ind-tx", ok=True)]] * 2
    assert in_doubt(participants) == [["ind-tx"]] * 2
    held_payer, held_payee = remote_account(handles, payer), remote_account(handles, payee)
    assert (held_payer.balance, held_payer.held_debit) == (100, 60)
    assert (held_payee.balance, held_payee.held_credit) == (100, 60)
    # Held money cannot be spent twice; the id is taken while in doubt.
    spend = sync.submit_many([pay(payer, [(neighbour, 41)], id="ind-spend")])
    assert spend[0].error == ErrorCode.INSUFFICIENT_FUNDS
    taken = sync.submit_many([pay(payer, [(neighbour, 1)], id=order.id)])
    assert taken[0].error == ErrorCode.TRANSFER_ID_CONFLICT

    assert ray.get(coordinator.resolve_in_doubt.remote()) == {"redelivered": 0, "aborted": 2}
    assert in_doubt(handles.shards) == [[]] * SHARDS
    released_payer, released_payee = remote_account(handles, payer), remote_account(handles, payee)
    assert (released_payer.balance, released_payer.held_debit) == (100, 0)
    assert (released_payee.balance, released_payee.held_credit) == (100, 0)
    assert [v.balance for v in sync.balances([payer, payee]) if v] == [100, 100]
    assert asyncio.run(LedgerClient(handles).transfer("ind-1")) is None
    assert ray.get(coordinator.resolve_in_doubt.remote()) == {"redelivered": 0, "aborted": 0}

    # Nothing was applied, so the id and the money are free again.
    retried = sync.submit_many([order])
    assert retried[0].transfer is not None and not retried[0].replayed
    assert [v.balance for v in sync.balances([payer, payee]) if v] == [40, 160]
    assert_books_balance(handles)


def test_logged_commit_is_redelivered_after_coordinator_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(two_phase_module, "DECIDE_ATTEMPTS", 2)
    monkeypatch.setattr(two_phase_module, "DECIDE_BACKOFF_SECONDS", 0.0)
    services = [ShardService(i, SHARDS, tmp_path) for i in range(SHARDS)]
    payer = ids_on(0, SHARDS, 1, "rd-payer")[0]
    payee_1 = ids_on(1, SHARDS, 1, "rd-payee")[0]
    payee_2 = ids_on(2, SHARDS, 1, "rd-payee")[0]
    for account_id in [payer, payee_1, payee_2]:
        create_accounts(services[shard_of(account_id, SHARDS)], [account_id])
    apply_orders(services[0], [topup(payer, 100, id=f"top-{payer}", shard_count=SHARDS)])
    order = pay(payer, [(payee_1, 5), (payee_2, 7)], id="rd-1")

    first = CoordinatorService(SHARDS, tmp_path, InProcessShards(services, unreachable={2}))
    outcome = decode(asyncio.run(first.submit(encode([order]))), list[TransferOutcome])[0]
    assert outcome.transfer is None and outcome.error == ErrorCode.UNAVAILABLE
    assert "committed" in outcome.detail
    [(txid, participants)] = first.pending_commits.items()
    assert participants == [0, 1, 2]
    # Shards 0 and 1 applied the commit; shard 2 still holds it in doubt.
    assert services[0].all_balances()[payer] == 88
    assert services[1].all_balances()[payee_1] == 5
    assert services[2].in_doubt() == [txid]
    assert services[2].all_balances()[payee_2] == 0
    del first  # the coordinator process dies here
    services[2].close()
    services[2] = ShardService(2, SHARDS, tmp_path)  # and so does shard 2: the hold is durable
    assert services[2].in_doubt() == [txid]

    second = CoordinatorService(SHARDS, tmp_path, InProcessShards(services))
    assert second.pending_commits == {txid: [0, 1, 2]}
    assert asyncio.run(second.resolve_in_doubt()) == {"redelivered": 1, "aborted": 0}
    assert [s.in_doubt() for s in services] == [[], [], []]
    assert services[2].all_balances()[payee_2] == 7
    # Exactly once everywhere: each shard holds the transfer, each history lists it once.
    for account_id, effect in [(payer, -12), (payee_1, 5), (payee_2, 7)]:
        ledger = services[shard_of(account_id, SHARDS)].ledger
        history = [t.order.id for t, _, _ in ledger.history_page(account_id, 200).items]
        assert history.count("rd-1") == 1
        stored = ledger.transfer("rd-1")
        assert stored is not None and stored.order == order
        page = ledger.history_page(account_id)
        assert [(t.order.id, e) for t, e, _ in page.items if t.order.id == "rd-1"] == [
            ("rd-1", effect)
        ]
    totals: dict[str, int] = {}
    for service in services:
        service.check_invariants()
        for currency, amount in service.currency_sums().items():
            totals[currency] = totals.get(currency, 0) + amount
    assert totals == {CURRENCY: 0}

    # Delivered means done: not re-sent by the next sweep, nor after another restart.
    assert second.pending_commits == {}
    assert asyncio.run(second.resolve_in_doubt()) == {"redelivered": 0, "aborted": 0}
    third = CoordinatorService(SHARDS, tmp_path, InProcessShards(services))
    assert third.pending_commits == {}
    # The client's retry with the same id gets the committed transfer back.
    retry = decode(asyncio.run(third.submit(encode([order]))), list[TransferOutcome])[0]
    assert retry.replayed and retry.transfer is not None and retry.transfer.order == order
    assert services[0].all_balances()[payer] == 88
    for service in services:
        service.close()


def random_orders(rng: random.Random, accounts: list[str], count: int) -> list[TransferOrder]:
    orders = []
    for index in range(count):
        debit = rng.choice(accounts)
        payees = rng.sample([a for a in accounts if a != debit], rng.randint(1, 3))
        orders.append(pay(debit, [(p, rng.randint(1, 3)) for p in payees], id=f"kl-{index}"))
    return orders


async def history_ids(client: LedgerClient, account_id: str) -> list[str]:
    return [t.order.id for t, _, _ in await full_history(client, account_id)]


def is_definitive(result: TransferOutcome | BaseException) -> bool:
    return isinstance(result, TransferOutcome) and result.error != ErrorCode.UNAVAILABLE


def test_shard_killed_under_load_keeps_every_acknowledged_transfer(
    ledger_runner: Any, tmp_path: Path
) -> None:
    handles: LedgerHandles = ledger_runner.start(tmp_path / "data", SHARDS)
    accounts = [f"kl-{i:02d}" for i in range(30)]
    open_funded(SyncLedgerClient(handles), accounts, 1_000)
    orders = random_orders(random.Random(5), accounts, 1_500)
    victim = handles.shards[1]

    async def load() -> dict[str, TransferOutcome | BaseException]:
        client = LedgerClient(handles)
        results: dict[str, TransferOutcome | BaseException] = {}
        for wave, start in enumerate(range(0, len(orders), 100)):
            chunk = orders[start : start + 100]
            running = asyncio.gather(*(client.submit(o) for o in chunk), return_exceptions=True)
            if wave == 4:
                await asyncio.sleep(0.005)
                ray.kill(victim, no_restart=False)
            results.update(zip((o.id for o in chunk), await running, strict=True))
        return results

    first_results = asyncio.run(load())
    acked = {
        i: r.transfer
        for i, r in first_results.items()
        if isinstance(r, TransferOutcome) and r.transfer
    }
    lost = [o for o in orders if not is_definitive(first_results[o.id])]
    assert len(acked) > 500

    ray.get(victim.ready.remote(), timeout=RESTART_TIMEOUT_SECONDS)
    restarted = decode(ray.get(victim.call.remote("stats", b"")), ShardStats)
    assert restarted.batches < restarted.log_sequence, "shard 1 was not restarted"

    async def retry(pending: list[TransferOrder]) -> dict[str, TransferOutcome | BaseException]:
        client = LedgerClient(handles)
        results: dict[str, TransferOutcome | BaseException] = {}
        for _ in range(20):
            outs = await asyncio.gather(
                *(client.submit(o) for o in pending), return_exceptions=True
            )
            results.update(zip((o.id for o in pending), outs, strict=True))
            pending = [o for o in pending if not is_definitive(results[o.id])]
            if not pending:
                return results
            await asyncio.sleep(0.5)
        raise AssertionError(f"{len(pending)} orders never got a definitive answer")

    retried = asyncio.run(retry(lost))
    final = {**first_results, **retried}
    committed: dict[str, Transfer] = {}
    for order in orders:
        result = final[order.id]
        assert isinstance(result, TransferOutcome)
        if result.transfer is not None:
            assert result.transfer.order == order
            committed[order.id] = result.transfer
        else:
            assert result.error == ErrorCode.INSUFFICIENT_FUNDS, result
    for transfer_id, transfer in acked.items():
        assert committed[transfer_id] == transfer, "an acknowledged transfer changed or vanished"

    ray.get(handles.coordinator.resolve_in_doubt.remote())
    assert in_doubt(handles.shards) == [[]] * SHARDS

    async def audit() -> tuple[list[list[str]], list[Transfer | None]]:
        client = LedgerClient(handles)
        histories = await asyncio.gather(*(history_ids(client, a) for a in accounts))
        sample = random.Random(3).sample(sorted(acked), 200)
        return histories, await asyncio.gather(*(client.transfer(i) for i in sample))

    histories, found = asyncio.run(audit())
    assert all(t is not None and acked[t.order.id] == t for t in found)
    expected = {a: 1_000 for a in accounts}
    for account_id, ids in zip(accounts, histories, strict=True):
        assert len(ids) == len(set(ids)), f"{account_id} lists a transfer twice"
        assert set(ids) - {f"top-{account_id}"} == {
            i for i, t in committed.items() if account_id in t.order.accounts()
        }
    for transfer in committed.values():
        expected[transfer.order.debit] -= transfer.order.total
        for credit in transfer.order.credits:
            expected[credit.account] += credit.amount
    views = SyncLedgerClient(handles).balances(accounts)
    assert {v.account_id: v.balance for v in views if v} == expected
    assert_books_balance(handles)


def test_full_restart_on_the_same_directory_is_identical(
    ledger_runner: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    handles: LedgerHandles = ledger_runner.start(data_dir, SHARDS)
    accounts = [f"rs-{i:02d}" for i in range(24)]
    sync = SyncLedgerClient(handles)
    open_funded(sync, accounts, 50)
    orders = random_orders(random.Random(9), accounts, 400)
    outcomes = sync.submit_many(orders)
    assert sum(1 for o in outcomes if o.transfer is not None) > 200

    def observe(h: LedgerHandles) -> tuple[Any, ...]:
        client = LedgerClient(h)

        async def histories() -> list[list[str]]:
            return await asyncio.gather(*(history_ids(client, a) for a in accounts))

        stats = [
            decode(raw, ShardStats)
            for raw in ray.get([s.call.remote("stats", b"") for s in h.shards])
        ]
        return (
            ray.get([s.all_balances.remote() for s in h.shards]),
            [(s.accounts, s.transfers, s.prepared, s.log_sequence) for s in stats],
            asyncio.run(histories()),
            SyncLedgerClient(h).currency_sums(),
        )

    before = observe(handles)
    ledger_runner.stop()
    assert read_shard_count(data_dir, None) == SHARDS
    with pytest.raises(ValueError, match="3 shards"):
        read_shard_count(data_dir, SHARDS + 1)

    again: LedgerHandles = ledger_runner.start(data_dir, SHARDS)
    assert observe(again) == before
    assert_books_balance(again)
    committed = [o.transfer for o in outcomes if o.transfer is not None]
    replays = SyncLedgerClient(again).submit_many([t.order for t in committed])
    assert all(o.replayed for o in replays)
    assert [o.transfer for o in replays] == committed
    assert observe(again)[0] == before[0]
