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
