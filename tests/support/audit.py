"""Checks and reads over a running ledger of Ray actors, shared by the actor tests.

``assert_books_balance`` is the audit every integration test ends with: each currency sums to
zero over all shards, no user account is overdrawn, and every shard's invariants hold.
"""

from __future__ import annotations

from typing import Any

import ray

from tokpay.actors.deploy import LedgerHandles
from tokpay.actors.protocol import decode
from tokpay.client import LedgerClient, SyncLedgerClient
from tokpay.ledger.model import Transfer, is_system_account

HISTORY_PAGE = 200


def assert_books_balance(handles: LedgerHandles) -> None:
    sums = SyncLedgerClient(handles).currency_sums()
    assert sums and all(total == 0 for total in sums.values()), sums
    for balances in ray.get([s.all_balances.remote() for s in handles.shards]):
        overdrawn = {a: b for a, b in balances.items() if not is_system_account(a) and b < 0}
        assert overdrawn == {}
    invariants = ray.get([s.check_invariants.remote() for s in handles.shards])
    assert invariants == [True] * len(handles.shards)


def in_doubt(shards: list[Any]) -> list[list[str]]:
    """The in-doubt transaction ids held by each shard actor, in order."""
    return [
        decode(raw, list[str]) for raw in ray.get([s.call.remote("in_doubt", b"") for s in shards])
    ]


async def full_history(client: LedgerClient, account_id: str) -> list[tuple[Transfer, int, int]]:
    """Every history entry of ``account_id``, newest first, read page by page."""
    items: list[tuple[Transfer, int, int]] = []
    cursor: int | None = None
    while True:
        page = await client.history(account_id, HISTORY_PAGE, cursor)
        items.extend(page.items)
        if page.next_cursor is None:
            return items
        cursor = page.next_cursor
