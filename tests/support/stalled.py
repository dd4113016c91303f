"""Shared by the tests that SIGSTOP one shard's process under load: the ledger's layout,
ids that avoid the stopped shard, funded accounts, the stop itself, and the retries that
settle every transfer answered 503 once it runs again."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Iterator

from tests.support.orders import account_specs, ids_on, topup
from tokpay.actors.deploy import LedgerHandles
from tokpay.client import LedgerClient, SyncLedgerClient
from tokpay.ledger.errors import LedgerError
from tokpay.ledger.model import TransferOrder
from tokpay.ledger.shard_ledger import home_of

SHARDS = 4
VICTIM = 3
HEALTHY = (0, 1, 2)
ACCOUNTS_PER_SHARD = 6
FUNDS = 1_000_000
SETTLE_SECONDS = 30.0


def ids_homed_off_victim() -> Iterator[str]:
    """Transfer ids whose home is not the victim: an id homed there is claimed there first,
    so it would touch the stopped shard whatever its accounts."""
    for n in itertools.count():
        candidate = f"stall-{n}"
        if home_of(candidate, SHARDS) != VICTIM:
            yield candidate


async def submit(client: LedgerClient, order: TransferOrder) -> str | None:
    """The error code a submission was answered with (None: applied)."""
    try:
        return (await client.submit(order)).error
    except LedgerError as error:
        return error.code


def open_accounts(handles: LedgerHandles) -> dict[int, list[str]]:
    """ACCOUNTS_PER_SHARD funded accounts on every shard, by shard."""
    accounts = {s: ids_on(s, SHARDS, ACCOUNTS_PER_SHARD, "stall") for s in range(SHARDS)}
    everyone = [a for ids in accounts.values() for a in ids]
    sync = SyncLedgerClient(handles)
    assert all(o.created for o in sync.create_accounts(account_specs(everyone)))
    topups = [topup(a, FUNDS, id=f"stall-top-{a}", shard_count=SHARDS) for a in everyone]
    assert all(o.transfer is not None for o in sync.submit_many(topups))
    return accounts


async def stop_for(pid: int, before: float, stopped: float, after: float) -> tuple[float, float]:
    """Let the load run ``before`` s, SIGSTOP ``pid`` for ``stopped`` s, SIGCONT it, let the
    load run ``after`` s; returns when it was stopped and when it resumed (monotonic)."""
    await asyncio.sleep(before)
    stopped_at = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(stopped)
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed_at = time.monotonic()
    await asyncio.sleep(after)
    return stopped_at, resumed_at


async def retry_until_settled(
    client: LedgerClient, orders: list[TransferOrder]
) -> list[TransferOrder]:
    """Retry each order with its id until it is answered without error (within
    SETTLE_SECONDS, else the test fails); returns them, all applied."""
    unsettled, applied = list(orders), []
    deadline = time.monotonic() + SETTLE_SECONDS
    while unsettled:
        assert time.monotonic() < deadline, f"{len(unsettled)} transfers never settled"
        errors = await asyncio.gather(*(submit(client, order) for order in unsettled))
        applied += [o for o, e in zip(unsettled, errors, strict=True) if e is None]
        unsettled = [o for o, e in zip(unsettled, errors, strict=True) if e is not None]
        await asyncio.sleep(0.2)
    return applied
