"""History pages read from the store: cursors survive checkpoints, restarts and new
entries, and a page may span entries still waiting for the store and entries on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.orders import account_specs, ids_on, pay, topup
from tests.support.services import apply_orders, create_accounts
from tokpay.actors.protocol import decode
from tokpay.actors.shard import ShardService
from tokpay.ledger.shard_ledger import ShardLedger, effect_on
from tokpay.store.shard_store import ShardStore

SHARD = 0
SHARD_COUNT = 2
ENTRIES = 1_200


def page(service: ShardService, account_id: str, limit: int, cursor: int | None) -> Any:
    reply = decode(service.history(account_id, limit, cursor), Any)
    assert reply["error"] is None, reply
    return reply["page"]


def test_paging_through_1200_entries_across_checkpoints_and_a_restart(tmp_path: Path) -> None:
    service = ShardService(SHARD, SHARD_COUNT, tmp_path)
    hot, *others = ids_on(SHARD, SHARD_COUNT, 5, "hot")
    create_accounts(service, [hot, *others])
    apply_orders(service, [topup(hot, 10**9, id="seed", shard_count=SHARD_COUNT)])
    for batch in range(ENTRIES // 100):
        orders = [
            pay(hot, [(others[n % 4], 1 + n)], id=f"b{batch}-{n}")
            if n % 3
            else pay(others[n % 4], [(hot, 1)], id=f"b{batch}-{n}")
            for n in range(100)
        ]
        # The others need money to pay back: the first batch's early ones are top-ups.
        if batch == 0:
            orders[:4] = [topup(o, 1_000, id=f"seed-{o}", shard_count=SHARD_COUNT) for o in others]
        assert all(o.error is None for o in apply_orders(service, orders))
        if batch % 4 == 3:
            service.write_snapshot()  # checkpoints in between: old log segments go
    total = service.ledger.accounts[hot].entries
    assert total == 1 + ENTRIES - 4  # the seed, and every order but the four top-ups

    seen: list[tuple[str, int, int]] = []
    cursor: int | None = None
    pages = 0
    while True:
        if pages == 7:
            # A restart in the middle: the cursor from before it goes on after it.
            service.close()
            service = ShardService(SHARD, SHARD_COUNT, tmp_path)
        if pages == 11:
            # New entries arrive and a checkpoint runs: the walk below is unchanged.
            apply_orders(service, [pay(hot, [(others[0], 1)], id=f"late-{n}") for n in range(5)])
            service.write_snapshot()
        current = page(service, hot, 37, cursor)
        seen += [(t["order"]["id"], effect, after) for t, effect, after in current["items"]]
        pages += 1
        cursor = current["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == total
    assert len({transfer_id for transfer_id, _, _ in seen}) == total  # every entry once
    # Newest first; each balance_after is the one before it plus its effect.
    running = 0
    for transfer_id, effect, after in reversed(seen):
        running += effect
        assert after == running, transfer_id
    assert seen[-1][0] == "seed"
    assert seen[0][0] == "b11-99"  # the newest when the walk began
    newest = page(service, hot, 5, None)
    assert [t["order"]["id"] for t, _, _ in newest["items"]] == [
        f"late-{n}" for n in range(4, -1, -1)
    ]
    assert newest["items"][0][2] == service.all_balances()[hot]
    service.close()


def test_a_page_spans_pending_entries_and_stored_ones(tmp_path: Path) -> None:
    store = ShardStore(tmp_path, 0, 1)
    ledger = ShardLedger(0, 1, disk=store)
    ledger.create_accounts(account_specs(["alice", "bob"]), 1)
    ledger.apply_orders([topup("alice", 1_000, id="seed", shard_count=1)], 2)
    ledger.apply_orders([pay("alice", [("bob", n)], id=f"old{n}") for n in range(1, 6)], 3)
    store.write(1, ledger.take_pending())
    ledger.apply_orders([pay("alice", [("bob", n)], id=f"new{n}") for n in range(1, 4)], 4)
    # Three entries only in memory, the rest on disk: one page of 6 takes from both.
    assert [r.transfer_id for r in ledger.pending.history if r.account == "alice"] == [
        "new1",
        "new2",
        "new3",
    ]
    first = ledger.history_page("alice", 6)
    assert [t.order.id for t, _, _ in first.items] == [
        "new3",
        "new2",
        "new1",
        "old5",
        "old4",
        "old3",
    ]
    assert [after for _, _, after in first.items] == [979, 982, 984, 985, 990, 994]
    rest = ledger.history_page("alice", 6, first.next_cursor)
    assert [t.order.id for t, _, _ in rest.items] == ["old2", "old1", "seed"]
    assert rest.next_cursor is None
    for transfer, effect, _ in first.items + rest.items:
        assert effect == effect_on(transfer, "alice")
    store.close()
