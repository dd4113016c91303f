"""Where the controller puts a new replica: the suspect-node rule (no Ray needed).

Ray's node table is given by hand here: what is under test is the controller's reading
of it, not Ray (tests/cluster start real nodes and kill them).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tokpay.actors import placement as placement_module
from tokpay.actors.liveness import Liveness
from tokpay.actors.naming import NODE_RESOURCE_PREFIX
from tokpay.actors.placement import Placement
from tokpay.actors.protocol import HeartbeatReport
from tokpay.actors.shard_map import ClusterState, Group, Member, ShardMap

NODES = ["n0", "n1", "n2"]


def table(**ids: str) -> list[dict[str, Any]]:
    """Ray's node table with one alive entry per node name given (its node id)."""
    return [
        {"Alive": True, "NodeID": node_id, "Resources": {f"{NODE_RESOURCE_PREFIX}{name}": 1.0}}
        for name, node_id in ids.items()
    ]


@pytest.fixture
def nodes(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = []
    monkeypatch.setattr(placement_module.ray, "nodes", lambda: list(listed))
    return listed


def placement_over(
    nodes: list[dict[str, Any]],
    entries: list[dict[str, Any]],
    groups: dict[str, Group] | None = None,
    liveness: Liveness | None = None,
) -> Placement:
    nodes[:] = entries
    state = ClusterState(shard_count=2, fsync=False, nodes=NODES, groups=groups or {})
    placed = Placement(ShardMap(state), liveness or Liveness())
    asyncio.run(placed.refresh_nodes(force=True))
    return placed


def test_a_node_that_lost_a_replica_gets_none_until_it_restarts(
    nodes: list[dict[str, Any]],
) -> None:
    placed = placement_over(nodes, table(n0="a", n1="b", n2="c"))
    placed.mark_suspect(Member(name="r1", node="n1"))
    # Dead or not, Ray still lists n1 under the id it had: not a candidate.
    assert placed.pick_node({"n0"}) == "n2"
    assert placed.pick_node({"n0", "n2"}) is None
    # Started again: a new id beside the old one (not yet given up on by the GCS).
    nodes[:] = [*table(n0="a", n1="b", n2="c"), *table(n1="b2")]
    asyncio.run(placed.refresh_nodes(force=True))
    assert placed.pick_node({"n0", "n2"}) == "n1"


def test_suspicion_runs_out(nodes: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    placed = placement_over(nodes, table(n0="a", n1="b"))
    placed.mark_suspect(Member(name="r1", node="n1"))
    assert placed.pick_node({"n0"}) is None
    later = placement_module.time.monotonic() + placement_module.SUSPECT_SECONDS + 1
    monkeypatch.setattr(placement_module.time, "monotonic", lambda: later)
    assert placed.pick_node({"n0"}) == "n1"


def test_a_node_whose_other_replicas_still_report_is_not_suspect(
    nodes: list[dict[str, Any]],
) -> None:
    """One replica lost (or stalled) on a live node: its neighbours' reports clear it."""
    lost, neighbour = Member(name="r1", node="n1"), Member(name="r2", node="n1")
    groups = {"shard-0": Group(epoch=2, primary=lost), "shard-1": Group(epoch=2, primary=neighbour)}
    liveness = Liveness()
    placed = placement_over(nodes, table(n0="a", n1="b"), groups, liveness)
    placed.mark_suspect(lost)
    assert placed.pick_node({"n0"}) is None
    liveness.heard(HeartbeatReport(name="r2", epoch=2, role="primary", sequence=0, broken=False))
    assert placed.pick_node({"n0"}) == "n1"


def test_the_head_gets_a_copy_only_when_no_worker_can_take_it(
    nodes: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # n1 holds two copies, the head none: still a worker is chosen.
    groups = {
        "shard-0": Group(epoch=2, primary=Member(name="p0", node="n1")),
        "shard-1": Group(epoch=2, primary=Member(name="p1", node="n1")),
    }
    placed = placement_over(nodes, table(n0="a", n1="b", n2="c"), groups)
    assert placed.head == "n0"
    assert placed.pick_node(set()) == "n2"
    assert placed.pick_node({"n2"}) == "n1"
    # Only the head is left: it takes the copy, but nothing is "off the head".
    assert placed.pick_node({"n1", "n2"}) == "n0"
    assert placed.off_head({"n1", "n2"}) is None
    placed.mark_suspect(Member(name="r", node="n2"))
    assert placed.pick_node({"n1"}) == "n0"


def test_on_two_nodes_the_head_holds_copies_like_any_node(nodes: list[dict[str, Any]]) -> None:
    nodes[:] = table(n0="a", n1="b")
    state = ClusterState(shard_count=2, fsync=False, nodes=["n0", "n1"], groups={})
    placed = Placement(ShardMap(state), Liveness())
    asyncio.run(placed.refresh_nodes(force=True))
    assert placed.head is None
    assert placed.pick_node({"n1"}) == "n0"
    group = Group(epoch=2, primary=Member("p", "n0"), backup=Member("b", "n1"), backup_ready=True)
    assert placed.head_move(group) is None


def test_copies_on_the_head_move_backup_first_then_primary(nodes: list[dict[str, Any]]) -> None:
    on_head = Group(epoch=3, primary=Member("p", "n1"), backup=Member("b", "n0"), backup_ready=True)
    placed = placement_over(nodes, table(n0="a", n1="b", n2="c"), {"shard-0": on_head})
    assert placed.head_move(on_head) == ("backup", "n2")
    primary_on_head = Group(
        epoch=3, primary=Member("p", "n0"), backup=Member("b", "n2"), backup_ready=True
    )
    assert placed.head_move(primary_on_head) == ("primary", "n1")
    settled = Group(epoch=3, primary=Member("p", "n1"), backup=Member("b", "n2"))
    assert placed.head_move(settled) is None
    # No worker to take it (n2 holds the primary, n1 is suspect): it stays for now.
    placed.mark_suspect(Member(name="r", node="n1"))
    stuck = Group(epoch=3, primary=Member("p", "n2"), backup=Member("b", "n0"), backup_ready=True)
    assert placed.head_move(stuck) is None
