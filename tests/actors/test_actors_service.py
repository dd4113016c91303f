"""ShardService on real files, without Ray: durability, checkpoints, in-doubt holds, group commit.

Each test writes through the service, closes it as a crash or restart would, opens a
new service on the same directory and checks that it rebuilt exactly the same state.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

import tokpay.actors.replicated_service as replicated_service_module
from tests.support.orders import CURRENCY, ids_on, pay, topup
from tests.support.services import account_of, apply_orders, create_accounts
from tokpay.actors.protocol import decode, encode
from tokpay.actors.shard import ShardService
from tokpay.ledger.errors import ErrorCode
from tokpay.ledger.limits import MAX_PAGE_SIZE
from tokpay.ledger.model import Decision, Prepare, Transfer, Vote, funding_account_id
from tokpay.wal import WriteAheadLog

SHARD = 0
SHARD_COUNT = 2
FUNDING = funding_account_id(CURRENCY, SHARD)


def open_service(data_dir: Path, *, fsync: bool = True) -> ShardService:
    return ShardService(SHARD, SHARD_COUNT, data_dir, fsync=fsync)


def state(service: ShardService) -> dict[str, Any]:
    """Everything a restart must preserve, in comparable form: memory, and every row of
    the store (transfers, history, claims and refusals) through its digest."""
    service.write_store()  # the records not yet written too (every STORE_WRITE_RECORDS)
    ledger = service.ledger
    return {
        "balances": service.all_balances(),
        "accounts": {a.id: encode(a) for a in ledger.accounts.values()},
        "transfers": service.store.transfers,
        "store": service.store.content_digest(),
        "history": {a: history_ids(service, a) for a in ledger.accounts},
        "in_doubt": sorted(service.in_doubt()),
        "sums": service.currency_sums(),
    }


def history_ids(service: ShardService, account_id: str) -> list[str]:
    """An account's transfer ids, newest first, through the service's history pages."""
    ids: list[str] = []
    cursor: int | None = None
    while True:
        reply = decode(service.history(account_id, MAX_PAGE_SIZE, cursor), Any)
        ids += [item[0]["order"]["id"] for item in reply["page"]["items"]]
        cursor = reply["page"]["next_cursor"]
        if cursor is None:
            return ids


def populate(service: ShardService, prefix: str, rounds: int) -> list[str]:
    """Accounts, top-ups and payments (some refused) in several batches."""
    users = ids_on(SHARD, SHARD_COUNT, 8, prefix)
    assert all(o.created for o in create_accounts(service, users))
    outcomes = apply_orders(
        service, [topup(u, 100, id=f"{prefix}-top-{u}", shard_count=SHARD_COUNT) for u in users]
    )
    assert all(o.transfer is not None for o in outcomes)
    for round_ in range(rounds):
        orders = [
            pay(
                users[i],
                [(users[(i + 1) % 8], 3), (users[(i + 3) % 8], 2)],
                id=f"{prefix}-p{round_}-{i}",
            )
            for i in range(8)
        ]
        orders.append(pay(users[0], [(users[1], 10_000)], id=f"{prefix}-over-{round_}"))
        outcomes = apply_orders(service, orders)
        assert outcomes[-1].error == ErrorCode.INSUFFICIENT_FUNDS
        assert all(o.transfer is not None for o in outcomes[:-1])
    return users


def hold_a_cross_shard_payment(
    service: ShardService, tag: str
) -> tuple[str, str, Transfer, list[Vote]]:
    """Payer (topped up with 50) and another account on this shard; 30 of the payer's money
    prepared for an account on the other shard under txid ``tx-{tag}``, and the shard's vote.
    """
    payer, other = ids_on(SHARD, SHARD_COUNT, 2, tag)
    remote = ids_on(1 - SHARD, SHARD_COUNT, 1, f"{tag}-remote")[0]
    create_accounts(service, [payer, other])
    apply_orders(service, [topup(payer, 50, id=f"{tag}-top", shard_count=SHARD_COUNT)])
    transfer = Transfer(order=pay(payer, [(remote, 30)], id=f"{tag}-cross"), created_at=1)
    prepare = encode([Prepare(txid=f"tx-{tag}", transfer=transfer)])
    votes: list[Vote] = decode(service.prepare(prepare), list[Vote])
    return payer, other, transfer, votes


def test_restart_rebuilds_balances_transfers_and_history(tmp_path: Path) -> None:
    service = open_service(tmp_path)
    users = populate(service, "rs", rounds=5)
    before = state(service)
    page_before = decode(service.history(users[0], 200, None), Any)
    service.close()

    reopened = open_service(tmp_path)
    assert state(reopened) == before
    assert decode(reopened.history(users[0], 200, None), Any) == page_before
    # Each user paid 5 a round and received 5: balances are back to the top-up.
    assert {u: before["balances"][u] for u in users} == dict.fromkeys(users, 100)
    assert before["balances"][FUNDING] == -800
    assert before["sums"] == {CURRENCY: 0}
    assert before["transfers"] == 8 + 5 * 8
    assert reopened.ledger.transfer("rs-over-0") is None
    assert reopened.ledger.transfer("rs-p4-7") is not None
    reopened.check_invariants()
    # A replayed order after the restart is recognised, not applied again.
    again = apply_orders(
        reopened, [topup(users[0], 100, id=f"rs-top-{users[0]}", shard_count=SHARD_COUNT)]
    )
    assert again[0].replayed and reopened.all_balances()[users[0]] == 100
    reopened.close()


def test_checkpoint_drops_old_segments_and_restart_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class SmallSegmentLog(WriteAheadLog):
        """Segments of 2 KiB, so a few batches fill several files."""

        @classmethod
        def open(
            cls, directory: Path, *, segment_bytes: int = 2048, fsync: bool = True, floor: int = 0
        ) -> WriteAheadLog:
            return super().open(directory, segment_bytes=segment_bytes, fsync=fsync, floor=floor)

    monkeypatch.setattr(replicated_service_module, "WriteAheadLog", SmallSegmentLog)
    wal_dir = tmp_path / f"shard-{SHARD}" / "wal"
    snapshot_dir = tmp_path / f"shard-{SHARD}" / "snapshots"

    service = open_service(tmp_path)
    users = populate(service, "sn", rounds=6)
    segments_before = sorted(wal_dir.glob("*.wal"))
    assert len(segments_before) >= 3

    sequence = service.write_snapshot()
    stats = decode(service.current_stats(), Any)
    assert sequence == stats["log_sequence"] == stats["durable_sequence"]
    # The store is the checkpoint: a shard writes no snapshot files.
    assert list(snapshot_dir.glob("*.snap")) == []
    after_snapshot = sorted(wal_dir.glob("*.wal"))
    # Only the segment holding the newest record survives; everything older is gone.
    assert len(after_snapshot) == 1
    assert set(after_snapshot) < set(segments_before)

    more = apply_orders(
        service, [pay(users[i], [(users[i - 1], 1)], id=f"sn-after-{i}") for i in range(8)]
    )
    assert all(o.transfer is not None for o in more)
    create_accounts(service, ids_on(SHARD, SHARD_COUNT, 2, "sn-late"))
    before = state(service)
    service.close()

    reopened = open_service(tmp_path)
    assert state(reopened) == before
    assert reopened.ledger.transfer("sn-after-3") is not None
    assert decode(reopened.current_stats(), Any)["log_sequence"] == sequence + 2
    reopened.check_invariants()
    reopened.close()


def test_checkpoint_every_n_records_runs_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replicated_service_module, "SNAPSHOT_EVERY_RECORDS", 4)
    service = open_service(tmp_path)
    assert service.store.durable_sequence == 0
    populate(service, "au", rounds=3)  # 1 + 1 + 3 records: the checkpointer is woken at 4
    deadline = time.monotonic() + 10
    while service.store.durable_sequence < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert service.store.durable_sequence >= 4
    assert list((tmp_path / f"shard-{SHARD}" / "snapshots").glob("*.snap")) == []
    before = state(service)
    service.close()
    reopened = open_service(tmp_path)
    assert state(reopened) == before
    reopened.close()


def test_prepared_transaction_survives_restart_and_holds_funds(tmp_path: Path) -> None:
    service = open_service(tmp_path)
    payer, other, transfer, votes = hold_a_cross_shard_payment(service, "pp")
    assert votes == [Vote(txid="tx-pp", ok=True)]
    service.close()

    reopened = open_service(tmp_path)
    assert reopened.in_doubt() == ["tx-pp"]
    held = account_of(reopened, payer)
    assert (held.balance, held.held_debit) == (50, 30)
    # Reads show committed state only; the hold still stops a second spend of the money.
    assert reopened.all_balances()[payer] == 50
    refused = apply_orders(reopened, [pay(payer, [(other, 21)], id="pp-second-spend")])
    assert refused[0].error == ErrorCode.INSUFFICIENT_FUNDS
    # The same id cannot be used for another transfer while it is in doubt.
    blocked = apply_orders(reopened, [pay(payer, [(other, 1)], id="pp-cross")])
    assert blocked[0].error == ErrorCode.TRANSFER_ID_CONFLICT
    reopened.check_invariants()

    # In doubt across a snapshot too.
    reopened.write_snapshot()
    reopened.close()
    from_snapshot = open_service(tmp_path)
    assert from_snapshot.in_doubt() == ["tx-pp"]
    assert account_of(from_snapshot, payer).held_debit == 30

    assert from_snapshot.decide(encode([Decision("tx-pp", True)])) == 1
    assert from_snapshot.decide(encode([Decision("tx-pp", True)])) == 0
    from_snapshot.close()
    decided = open_service(tmp_path)
    assert decided.in_doubt() == []
    payer_after = account_of(decided, payer)
    assert (payer_after.balance, payer_after.held_debit) == (20, 0)
    assert decided.ledger.transfer("pp-cross") == transfer
    decided.check_invariants()
    decided.close()


def test_one_fdatasync_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_fdatasync = os.fdatasync

    def counting_fdatasync(fd: int) -> None:
        calls.append(fd)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", counting_fdatasync)
    service = open_service(tmp_path)
    users = ids_on(SHARD, SHARD_COUNT, 50, "fs")

    def synced(action: Any) -> int:
        calls.clear()
        action()
        return len(calls)

    assert synced(lambda: create_accounts(service, users)) == 1
    topups = [topup(u, 10, id=f"fs-top-{u}", shard_count=SHARD_COUNT) for u in users]
    assert synced(lambda: apply_orders(service, topups)) == 1
    batch = [pay(users[i], [(users[i - 1], 1)], id=f"fs-pay-{i}") for i in range(50)]
    assert synced(lambda: apply_orders(service, batch)) == 1
    # Nothing changed, nothing logged: replays and unknown decisions cost no fsync.
    assert synced(lambda: apply_orders(service, batch)) == 0
    # A refusal is remembered (one record); its retry is answered from memory.
    overdraft = [pay(users[0], [(users[1], 999)], id="fs-no")]
    assert synced(lambda: apply_orders(service, overdraft)) == 1
    assert synced(lambda: apply_orders(service, overdraft)) == 0
    assert synced(lambda: service.decide(encode([Decision("unknown", True)]))) == 0
    assert synced(lambda: service.balances(encode(users))) == 0
    assert decode(service.current_stats(), Any)["fsyncs"] == 4
    service.close()

    unsynced = open_service(tmp_path / "nosync", fsync=False)
    assert synced(lambda: create_accounts(unsynced, users)) == 0
    assert unsynced.all_balances() == dict.fromkeys(users, 0)
    unsynced.close()


class ShardStopped(Exception):
    """Stands in for the process exit, so the test can look at what was left behind."""


def test_broken_invariant_stops_the_shard_instead_of_serving_unlogged_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_exit(status: int) -> None:
        raise ShardStopped(status)

    service = open_service(tmp_path)
    payer, other, _, _ = hold_a_cross_shard_payment(service, "iv")
    # A rule bug forgets the hold, so the held money is spent again...
    service.ledger.accounts[payer].held_debit = 0
    assert apply_orders(service, [pay(payer, [(other, 40)], id="iv-spend")])[0].transfer is not None
    # ...and committing the prepared transfer would overdraw the payer.
    monkeypatch.setattr(os, "_exit", fake_exit)
    with pytest.raises(ShardStopped) as stopped:
        service.decide(encode([Decision("tx-iv", True)]))
    assert stopped.value.args == (70,)
    service.close()

    # The log is the truth: the decision was never logged, so the transfer is still in doubt.
    reopened = open_service(tmp_path)
    assert reopened.in_doubt() == ["tx-iv"]
    assert reopened.ledger.transfer("iv-cross") is None
    reopened.close()
