"""A stopped participant (SIGSTOP): lookups spanning it answer 503 within the barrier's bound,
lookups among the other shards keep answering.

Real Ray actors on real files (4 shards) and the gateway's own client. Writers keep
cross-shard transfers going among all shards (some touch the victim, so commits to it are
in flight when it stops); readers look up accounts on the victim with one on another shard,
and accounts on the three other shards. While the victim is stopped, every lookup spanning
it is answered ``unavailable`` within the barrier's wait plus one read's deadline, and not
one lookup among the other shards is refused. After SIGCONT, lookups spanning the victim
answer again, every unsettled transfer settles on retry with its id, and the books balance.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from tests.support.audit import assert_books_balance
from tests.support.orders import pay

# The stalled-shard test's builders (same 4 shards, victim 3, ids homed off it).
from tests.support.stalled import (
    HEALTHY,
    SHARDS,
    VICTIM,
    ids_homed_off_victim,
    open_accounts,
    retry_until_settled,
    stop_for,
    submit,
)
from tokpay.actors.deploy import LedgerHandles
from tokpay.actors.timing import LOOKUP_WAIT_SECONDS, PREPARE_DEADLINE_SECONDS
from tokpay.client import LedgerClient
from tokpay.ledger.errors import ErrorCode, LedgerError

WRITERS = 6
READERS = 4
BEFORE_SECONDS = 2.0
STOPPED_SECONDS = 5.0
AFTER_SECONDS = 3.0
ANSWER_LIMIT_SECONDS = LOOKUP_WAIT_SECONDS + PREPARE_DEADLINE_SECONDS + 1.0
"""A lookup spanning the stopped shard waits at most the barrier's wait, or reads it for at
most a read's deadline; plus scheduling slack on a shared 2-core machine."""


@dataclass
class Read:
    spans_victim: bool
    started: float
    finished: float
    error: str | None


async def writer(
    client: LedgerClient,
    accounts: dict[int, list[str]],
    seed: int,
    ids: Any,
    unsettled: list[Any],
    stop: asyncio.Event,
) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        debit, credit = rng.sample(range(SHARDS), 2)
        order = pay(rng.choice(accounts[debit]), [(rng.choice(accounts[credit]), 1)], id=next(ids))
        error = await submit(client, order)
        assert error in (None, ErrorCode.UNAVAILABLE), error
        if error is not None:
            unsettled.append(order)


async def reader(
    client: LedgerClient,
    accounts: dict[int, list[str]],
    seed: int,
    reads: list[Read],
    stop: asyncio.Event,
) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        spans_victim = rng.random() < 0.5
        shards = [rng.choice(HEALTHY), VICTIM] if spans_victim else list(HEALTHY)
        ids = [rng.choice(accounts[s]) for s in shards]
        started, error = time.monotonic(), None
        try:
            views = await client.balances(ids)
            assert all(v is not None for v in views)
        except LedgerError as caught:
            error = caught.code
        reads.append(Read(spans_victim, started, time.monotonic(), error))
        await asyncio.sleep(0.01)


def test_a_stopped_shard_refuses_only_the_lookups_spanning_it(
    ledger_runner: Any, tmp_path: Path
) -> None:
    handles: LedgerHandles = ledger_runner.start(tmp_path / "data", SHARDS)
    accounts = open_accounts(handles)
    victim_pid = ray.get(handles.shards[VICTIM].replica_status.remote()).pid
    reads: list[Read] = []

    async def scenario() -> tuple[float, float]:
        client, stop, unsettled = LedgerClient(handles), asyncio.Event(), []
        ids = ids_homed_off_victim()
        running = asyncio.gather(
            *(writer(client, accounts, n, ids, unsettled, stop) for n in range(WRITERS)),
            *(reader(client, accounts, 100 + n, reads, stop) for n in range(READERS)),
        )
        stopped, resumed = await stop_for(
            victim_pid, BEFORE_SECONDS, STOPPED_SECONDS, AFTER_SECONDS
        )
        stop.set()
        await running
        await retry_until_settled(client, unsettled)
        return stopped, resumed

    stopped, resumed = asyncio.run(scenario())
    # Among the other shards, not one lookup was refused, before, during or after.
    healthy = [r for r in reads if not r.spans_victim]
    assert [r.error for r in healthy if r.error is not None] == []
    assert sum(1 for r in healthy if stopped < r.started < resumed) >= 20
    # Spanning the stopped shard: 503, each within the bound.
    blocked = [r for r in reads if r.spans_victim and stopped + 0.1 < r.started < resumed]
    assert blocked and {r.error for r in blocked} == {ErrorCode.UNAVAILABLE}
    slowest = max(r.finished - r.started for r in blocked)
    assert slowest < ANSWER_LIMIT_SECONDS, slowest
    # Once it runs again, they answer again.
    back = [r for r in reads if r.spans_victim and r.started > resumed + 2.0]
    assert back and any(r.error is None for r in back)
    assert_books_balance(handles)
