"""The read barrier's rules, on its own (no Ray, no shards): who waits for whom, and how long.

Each test drives ``ReadBarrier`` the way the coordinator does: ``before_delivery`` before a
commit goes out, ``confirmed`` as a shard answers, ``enter``, ``admit`` and ``leave`` around
a batch of lookups.
The waits are shortened so a refusal takes a fraction of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Container
from typing import Any

import pytest

import tokpay.actors.read_barrier as read_barrier
from tests.support.orders import ids_on
from tokpay.actors.read_barrier import ReadBarrier, read_whole
from tokpay.ledger.model import BalanceView

WAIT = 0.3
"""The shortened LOOKUP_WAIT_SECONDS and DELIVERY_WAIT_SECONDS of these tests."""


@pytest.fixture(autouse=True)
def short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(read_barrier, "LOOKUP_WAIT_SECONDS", WAIT)
    monkeypatch.setattr(read_barrier, "DELIVERY_WAIT_SECONDS", WAIT)


@contextlib.asynccontextmanager
async def reading(
    barrier: ReadBarrier, lookups: list[set[int]], down: Container[int] = ()
) -> AsyncIterator[list[Any]]:
    """Lookups admitted (or refused) and holding the barrier while the block runs."""
    entries = barrier.enter([frozenset(s) for s in lookups])
    try:
        await barrier.admit(entries, down, lambda group: None)
        yield entries
    finally:
        for entry in entries:
            barrier.leave(entry)


async def admitted(barrier: ReadBarrier, *lookups: set[int]) -> list[str | None]:
    """Each lookup's refusal (None: it was admitted and read)."""
    async with reading(barrier, list(lookups)) as entries:
        pass
    return [None if e.admitted and e.refusal is None else e.refusal or "?" for e in entries]


def test_a_lookup_waits_for_a_commit_being_delivered_among_its_shards() -> None:
    async def scenario() -> None:
        barrier = ReadBarrier()
        await barrier.before_delivery({"t": [0, 1]})
        barrier.confirmed(0, ["t"])  # applied on shard 0, not yet on shard 1
        lookup = asyncio.create_task(admitted(barrier, {0, 1}))
        await asyncio.sleep(0.05)
        assert not lookup.done()
        # Shards not holding a torn leg among two participants read at once.
        assert await admitted(barrier, {0, 2}, {1, 2}, {2, 3}) == [None, None, None]
        barrier.confirmed(1, ["t"])
        assert await lookup == [None]

    asyncio.run(scenario())


def test_a_commit_stuck_on_one_shard_refuses_only_lookups_spanning_it_with_another_participant() -> (
    None
):
    async def scenario() -> None:
        barrier = ReadBarrier()
        await barrier.before_delivery({"t": [0, 1, 2]})
        barrier.confirmed(0, ["t"])
        barrier.confirmed(1, ["t"])  # shard 2 never answers
        started = time.monotonic()
        answers = await admitted(barrier, {0, 2}, {0, 1}, {2, 3}, {0, 1, 3})
        assert answers[0] is not None and "still being applied" in answers[0]
        assert answers[1:] == [None, None, None]
        assert WAIT <= time.monotonic() - started < WAIT + 0.2

    asyncio.run(scenario())


def test_lookups_spanning_a_shard_that_does_not_answer_are_refused_at_once() -> None:
    async def scenario() -> None:
        barrier = ReadBarrier()
        started = time.monotonic()
        async with reading(barrier, [{0, 3}, {0, 1}], {3}) as entries:
            pass
        assert time.monotonic() - started < 0.05
        assert entries[0].refusal == "shard 3 is not answering; retry later"
        assert entries[1].admitted and entries[1].refusal is None

    asyncio.run(scenario())


def test_a_first_delivery_waits_for_earlier_lookups_and_later_lookups_wait_for_it() -> None:
    async def scenario() -> None:
        barrier = ReadBarrier()
        order: list[str] = []
        release = asyncio.Event()

        async def early_lookup() -> None:
            async with reading(barrier, [{0, 1}]):
                order.append("early lookup reads")
                await release.wait()

        async def delivery() -> None:
            await barrier.before_delivery({"t": [0, 1]})
            order.append("delivery goes")

        async def late_lookup() -> None:
            async with reading(barrier, [{0, 1}]):
                order.append("late lookup reads")

        early = asyncio.create_task(early_lookup())
        await asyncio.sleep(0.01)
        sent = asyncio.create_task(delivery())
        await asyncio.sleep(0.01)
        late = asyncio.create_task(late_lookup())
        await asyncio.sleep(0.05)
        assert order == ["early lookup reads"]  # the delivery waits; the late one waits for it
        release.set()
        await asyncio.gather(early, sent)
        assert order == ["early lookup reads", "delivery goes"]
        barrier.confirmed(0, ["t"])
        barrier.confirmed(1, ["t"])
        await late
        assert order[-1] == "late lookup reads"

    asyncio.run(scenario())


def test_a_delivery_out_of_patience_goes_ahead_and_spoils_the_lookup_reading() -> None:
    async def scenario() -> None:
        barrier = ReadBarrier()
        async with reading(barrier, [{0, 1}, {2, 3}]) as entries:
            started = time.monotonic()
            await barrier.before_delivery({"t": [0, 1]})
            assert WAIT <= time.monotonic() - started < WAIT + 0.2
        assert entries[0].refusal is not None and "could not wait" in entries[0].refusal
        assert entries[1].refusal is None

    asyncio.run(scenario())


def test_commits_replayed_or_followed_count_as_torn_until_delivered_everywhere() -> None:
    async def scenario() -> None:
        barrier = ReadBarrier()
        barrier.unknown({"t": [0, 1], "u": [2, 3]})
        barrier.forget(["u"])  # logged done: applied everywhere
        assert await admitted(barrier, {2, 3}) == [None]
        refused = await admitted(barrier, {0, 1})
        assert refused[0] is not None
        # Re-delivering a commit already counted torn never waits for lookups.
        async with reading(barrier, [{0, 1}]):
            started = time.monotonic()
            await barrier.before_delivery({"t": [0, 1]})
            assert time.monotonic() - started < 0.05
        barrier.confirmed(0, ["t"])
        barrier.confirmed(1, ["t"])
        assert await admitted(barrier, {0, 1}) == [None]

    asyncio.run(scenario())


def test_a_lookup_leaves_the_barrier_once_its_own_shards_answered() -> None:
    (on_0,), (on_1,), (on_3,) = (ids_on(s, 4, 1, "rb") for s in (0, 1, 3))

    async def scenario() -> None:
        barrier, shard_3_answers = ReadBarrier(), asyncio.Event()

        async def read(shard: int, ids: list[str]) -> list[BalanceView | None]:
            if shard == 3:
                await shard_3_answers.wait()
            return [BalanceView(a, 7, "USD") for a in ids]

        batch = asyncio.create_task(read_whole(barrier, [[on_0, on_1], [on_0, on_3]], 4, read, ()))
        await asyncio.sleep(0.05)
        # The lookup of shards 0 and 1 has read: a commit among them goes at once, although
        # its batch-mate still waits for shard 3, and nobody's answer is spoiled.
        started = time.monotonic()
        await barrier.before_delivery({"t": [0, 1]})
        assert time.monotonic() - started < 0.05
        shard_3_answers.set()
        answers = await batch
        assert [a.views for a in answers] == [
            [BalanceView(on_0, 7, "USD"), BalanceView(on_1, 7, "USD")],
            [BalanceView(on_0, 7, "USD"), BalanceView(on_3, 7, "USD")],
        ]

    asyncio.run(scenario())
