"""The shard map's saves: every change durable before ``save()`` returns, and saves that
overlap share one write to the GCS (no Ray needed: the write is replaced by a recorder)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tokpay.actors.shard_map import ClusterState, Group, Member, ShardMap


def test_overlapping_saves_share_writes_and_each_change_is_written_before_its_save_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shard_map = ShardMap(ClusterState(shard_count=4, fsync=False, nodes=["n0"], groups={}))
    written: list[set[str]] = []
    lock = threading.Lock()

    def persist() -> None:
        seen = set(shard_map.state.groups)  # what this write holds, read as it starts
        time.sleep(0.05)  # a slow GCS
        with lock:
            written.append(seen)

    monkeypatch.setattr(shard_map, "_persist", persist)

    async def change_and_save(group: str) -> None:
        shard_map.state.groups[group] = Group(epoch=1, primary=Member(group, "n0"))
        await shard_map.save()
        # Returned: some write that has already landed holds this change.
        with lock:
            assert any(group in holds for holds in written)

    async def main() -> None:
        await asyncio.gather(*(change_and_save(f"g{n}") for n in range(20)))

    asyncio.run(main())
    assert shard_map.writes == len(written)
    # Twenty saves asked for almost at once: the first write, then one for all the rest.
    assert 2 <= shard_map.writes <= 3
    assert written[-1] == {f"g{n}" for n in range(20)}
