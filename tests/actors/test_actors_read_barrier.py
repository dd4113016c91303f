"""The read barrier's rules, on its own (no Ray, no shards): who waits for whom, and how long.

Each test drives ``ReadBarrier`` the way the coordinator does: ``before_delivery`` before a
commit goes out, ``confirmed`` as a shard answers, ``reading`` around a batch of lookups.
The waits are shortened so a refusal takes a fraction of a second.
"""

from __future__ import annotations

import asyncio
import time

import pytest

import tokpay.actors.read_barrier as read_barrier
from tokpay.actors.read_barrier import ReadBarrier

WAIT = 0.3
"""The shortened LOOKUP_WAIT_SECONDS and DELIVERY_WAIT_SECONDS of these tests."""


@pytest.fixture(autouse=True)
def short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(read_barrier, "LOOKUP_WAIT_SECONDS", WAIT)
    monkeypatch.setattr(read_barrier, "DELIVERY_WAIT_SECONDS", WAIT)


async def admitted(barrier: ReadBarrier, *lookups: set[int]) -> list[str | None]:
    """Each lookup's refusal (None: it was admitted and read)."""
    async with barrier.reading([frozenset(s) for s in lookups], ()) as entries:
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
        async with barrier.reading([frozenset({0, 3}), frozenset({0, 1})], {3}) as entries:
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
            async with barrier.reading([frozenset({0, 1})], ()):
                order.append("early lookup reads")
                await release.wait()

        async def delivery() -> None:
            await barrier.before_delivery({"t": [0, 1]})
            order.append("delivery goes")

        async def late_lookup() -> None:
            async with barrier.reading([frozenset({0, 1})], ()):
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
        async with barrier.reading([frozenset({0, 1}), frozenset({2, 3})], ()) as entries:
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
        async with barrier.reading([frozenset({0, 1})], ()):
            started = time.monotonic()
            await barrier.before_delivery({"t": [0, 1]})
            assert time.monotonic() - started < 0.05
        barrier.confirmed(0, ["t"])
        barrier.confirmed(1, ["t"])
        assert await admitted(barrier, {0, 1}) == [None]

    asyncio.run(scenario())
