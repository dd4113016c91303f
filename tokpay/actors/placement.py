"""Where replicas run: live nodes, the least loaded node for a new copy, creating and ending them.

Each replica is a detached Ray actor pinned to its node by the node's own resource
(``tokpay_node_<name>``), never placed by luck. A node that just lost a replica is
suspect for ``SUSPECT_SECONDS`` and gets no new one. With 3 nodes or more the head
gets a copy only when no other node can take it (``HEAD_FREE_MIN_NODES``). Replaced
replicas are fenced at once and ended ``RETIRE_AFTER_SECONDS`` later. Ray look-ups and kills run off the
controller's event loop: for an actor on a node that just died they can block for seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from tokpay.actors.coordinator_actor import CoordinatorActor
from tokpay.actors.copies import CopyView, copies_on_disk, delete_old_copies
from tokpay.actors.liveness import Liveness
from tokpay.actors.naming import NAMESPACE, NODE_RESOURCE_PREFIX, node_resource
from tokpay.actors.protocol import SPARE_ROLE, ReplicaSpec
from tokpay.actors.replica_host import NODE_DATA_DIR_ENV
from tokpay.actors.shard import ShardActor
from tokpay.actors.shard_map import Group, Member, ShardMap
from tokpay.actors.timing import (
    CONTROLLER_CALL_TIMEOUT_SECONDS,
    NODES_REFRESH_SECONDS,
    REPLICA_CREATE_TIMEOUT_SECONDS,
    RETIRE_AFTER_SECONDS,
    SUSPECT_SECONDS,
)

log = logging.getLogger("tokpay.controller")

HEAD_FREE_MIN_NODES = 3
"""From this many nodes on, the head holds no copy whenever another node can take it: its
loss then costs no group its primary or its backup, and nothing waits for the controller
that died with it. A copy that had to go there (a worker was down) is moved off again
once a worker can take it (Controller._move_off_head)."""

OLD_COPIES_GRACE_SECONDS = 30.0
"""How long a group stays unchanged before the copies it left behind are deleted."""


@ray.remote(num_cpus=0, max_retries=0)
def _copies_on_node(node: str, group: str | None, skip: list[str]) -> list[CopyView]:
    """Runs on ``node``: the copies of ``group`` on its disk (tokpay.actors.copies)."""
    return copies_on_disk(Path(os.environ[NODE_DATA_DIR_ENV]), node, group, set(skip))


@ray.remote(num_cpus=0, max_retries=0)
def _delete_copies_on_node(group: str, keep: list[str], epoch: int) -> list[str]:
    """Runs on a node: delete its copies of ``group`` from before ``epoch``."""
    return delete_old_copies(Path(os.environ[NODE_DATA_DIR_ENV]), group, set(keep), epoch)


class Placement:
    def __init__(self, shard_map: ShardMap, liveness: Liveness) -> None:
        self._map = shard_map
        self._liveness = liveness
        self._handles: dict[str, Any] = {}
        # node -> (when it became suspect, the Ray node id it had then)
        self._suspect: dict[str, tuple[float, str | None]] = {}
        self._ray_ids: dict[str, set[str]] = {}
        self.live_nodes: set[str] = set(shard_map.state.nodes)
        self._nodes_checked = 0.0

    async def refresh_nodes(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._nodes_checked < NODES_REFRESH_SECONDS:
            return
        self._nodes_checked = now
        live = set()
        ray_ids: dict[str, set[str]] = {}
        for node in await asyncio.to_thread(ray.nodes):
            if not node.get("Alive"):
                continue
            for resource in node.get("Resources", {}):
                if resource.startswith(NODE_RESOURCE_PREFIX):
                    name = resource.removeprefix(NODE_RESOURCE_PREFIX)
                    live.add(name)
                    ray_ids.setdefault(name, set()).add(str(node.get("NodeID")))
        self.live_nodes = live
        self._ray_ids = ray_ids

    @property
    def head(self) -> str | None:
        """The head (``nodes[0]``, where the controller and the GCS live) when the cluster
        can keep it free of copies: with 3 nodes or more. None on a 2-node cluster."""
        nodes = self._map.state.nodes
        return nodes[0] if len(nodes) >= HEAD_FREE_MIN_NODES else None

    def pick_node(self, avoid: set[str]) -> str | None:
        """The live, unsuspected node outside ``avoid`` that holds the fewest replicas;
        the head only when no other node can take it (tokpay.actors.placement)."""
        return self._first_off_head(self._candidates(avoid))

    def _first_off_head(self, candidates: list[str]) -> str | None:
        """The first of ``candidates`` that is not the head; the head if it is the only one."""
        return next((n for n in candidates if n != self.head), next(iter(candidates), None))

    def off_head(self, avoid: set[str]) -> str | None:
        """A steady node other than the head for a copy that sits on the head, or None."""
        return next((n for n in self._candidates(avoid, steady=True) if n != self.head), None)

    def head_copies(self) -> list[str]:
        """Groups with a primary or a backup on the head while it should hold none."""
        head = self.head
        return [
            group
            for group, g in self._map.groups.items()
            if head is not None and head in {m.node for m in (g.primary, g.backup) if m}
        ]

    def head_move(self, g: Group) -> tuple[str, str] | None:
        """What to move off the head for ``g`` (a group with an in-sync backup), if
        anything, and where a new backup can go: ("backup", node) or ("primary", node).
        The backup first; the primary only once its backup sits on a worker."""
        head, primary, backup = self.head, g.primary, g.backup
        if head is None or primary is None or backup is None:
            return None
        if backup.node == head:
            node = self.off_head({primary.node})
            return ("backup", node) if node is not None else None
        if primary.node == head:
            node = self.off_head({backup.node})
            return ("primary", node) if node is not None else None
        return None

    def _candidates(self, avoid: set[str], *, steady: bool = False) -> list[str]:
        """Live, unsuspected nodes outside ``avoid``, the least loaded first. ``steady``
        (for work that can wait: moves, spares): also none that lost a replica in the last
        ``SUSPECT_SECONDS``, whatever it reported since (a heartbeat sent before a node
        died can arrive after the loss was noted, on a starved machine)."""
        now = time.monotonic()
        if steady:
            avoid = avoid | {
                n for n, (since, _) in self._suspect.items() if since + SUSPECT_SECONDS >= now
            }
        state = self._map.state
        load: dict[str, int] = dict.fromkeys(state.nodes, 0)
        for g in state.groups.values():
            for member in (g.primary, g.backup):
                if member is not None and member.node in load:
                    load[member.node] += 1
        candidates = [
            n
            for n in state.nodes
            if n in self.live_nodes and n not in avoid and not self._suspected(n, now)
        ]
        return sorted(candidates, key=lambda n: load[n])

    def _suspected(self, node: str, now: float) -> bool:
        """Suspect for ``SUSPECT_SECONDS``, unless it shows it is up: a replica on it
        reported since (one replica lost, or stalled, on a live node), or it was started
        again (Ray lists it under a node id it did not have then; a dead node stays
        listed under its old id until the GCS's health checks give up on it)."""
        since, ray_id = self._suspect.get(node, (0.0, None))
        if since + SUSPECT_SECONDS < now:
            return False
        if ray_id is not None and not self._ray_ids.get(node, set()) <= {ray_id}:
            return False
        reported = self._liveness.reported
        return not any(reported.get(m.name, 0.0) > since for m in self._members_on(node))

    def _members_on(self, node: str) -> list[Member]:
        return [
            m
            for g in self._map.state.groups.values()
            for m in (g.primary, g.backup, g.standby)
            if m is not None and m.node == node
        ]

    def mark_suspect(self, member: Member | None) -> None:
        if member is not None:
            ids = self._ray_ids.get(member.node, set())
            # With two ids listed (a restart while the old one still shows), the newer
            # cannot be told apart here: suspect it all, as before.
            ray_id = next(iter(ids)) if len(ids) == 1 else None
            self._suspect[member.node] = (time.monotonic(), ray_id)

    def spawn(self, group: str, member: Member, epoch: int, role: str) -> Any:
        """Create replica ``member`` of ``group`` on its node; returns its actor handle."""
        spec = ReplicaSpec(name=member.name, epoch=epoch, role=role, group=group, root=member.root)
        options = {
            "name": member.name,
            "namespace": NAMESPACE,
            "lifetime": "detached",
            "max_restarts": 0,
            "resources": {node_resource(member.node): 1},
        }
        state = self._map.state
        shard = self._map.shard_of[group]
        if shard is None:
            handle = CoordinatorActor.options(**options).remote(  # type: ignore[attr-defined]
                state.shard_count, "", state.fsync, spec
            )
        else:
            handle = ShardActor.options(**options).remote(  # type: ignore[attr-defined]
                shard, state.shard_count, "", state.fsync, spec
            )
        self._handles[member.name] = handle
        if role != SPARE_ROLE:
            self._liveness.expect(member.name, REPLICA_CREATE_TIMEOUT_SECONDS)
        return handle

    def spare_node(self, g: Group) -> str | None:
        """Where ``g``'s next backup would go if the node of its primary or its backup
        died now: where a spare for it is worth keeping (None: nowhere)."""
        if g.primary is None or g.backup is None:
            return None
        return self._first_off_head(self._candidates({g.primary.node, g.backup.node}, steady=True))

    async def copies_on_disks(
        self, group: str | None, skip: set[str]
    ) -> tuple[list[CopyView], set[str]]:
        """The copies of ``group`` (None: of every group) on every live node's disk but
        those of the replicas in ``skip``; and the nodes that did not answer."""
        nodes = sorted(self.live_nodes)
        calls = [
            _copies_on_node.options(resources={node_resource(n): 0.001}).remote(
                n, group, sorted(skip)
            )
            for n in nodes
        ]
        answers = await asyncio.gather(
            *(asyncio.wait_for(call, CONTROLLER_CALL_TIMEOUT_SECONDS) for call in calls),
            return_exceptions=True,
        )
        copies: list[CopyView] = []
        silent: set[str] = set()
        for node, answer in zip(nodes, answers, strict=True):
            if isinstance(answer, BaseException):
                log.warning("reading the copies of %s on %s failed: %r", group, node, answer)
                silent.add(node)
            else:
                copies.extend(answer)
        return copies, silent

    def delete_old_copies(
        self,
        group: str,
        keep: set[str],
        epoch: int,
        still: Callable[[], bool],
        nodes: set[str] | None = None,
    ) -> None:
        """On every live node (of ``nodes``, if given), delete the copies of ``group`` left
        from before ``epoch`` (replaced and retired replicas' directories), in the
        background, once the group has stayed as it is (``still()``) for
        ``OLD_COPIES_GRACE_SECONDS``: a cluster that keeps reconfiguring spends nothing on it."""

        async def delete() -> None:
            await asyncio.sleep(OLD_COPIES_GRACE_SECONDS)
            if not still():
                return
            for node in sorted(self.live_nodes if nodes is None else self.live_nodes & nodes):
                try:
                    deleted = await asyncio.wait_for(
                        await self._delete_on(node, group, sorted(keep), epoch),
                        CONTROLLER_CALL_TIMEOUT_SECONDS,
                    )
                except Exception as error:
                    log.info("deleting old copies of %s on %s failed: %r", group, node, error)
                    continue
                if deleted:
                    log.info("%s: deleted old copies %s on %s", group, deleted, node)

        asyncio.get_running_loop().create_task(delete())

    async def _delete_on(self, node: str, group: str, keep: list[str], epoch: int) -> Any:
        """The deletion of ``group``'s old copies on ``node``, asked of a live replica
        there when there is one (no Ray worker process to start), else a Ray task."""
        live = [m for m in self._members_on(node) if not self._liveness.dead(m.name)]
        if live:
            return (await self.handle(live[0])).delete_old_copies.remote(group, keep, epoch)
        call = _delete_copies_on_node.options(resources={node_resource(node): 0.001})
        return call.remote(group, keep, epoch)

    async def handle(self, member: Member) -> Any:
        """The replica's actor handle, looked up off the event loop when not cached."""
        handle = self._handles.get(member.name)
        if handle is None:
            handle = await asyncio.to_thread(ray.get_actor, member.name, namespace=NAMESPACE)
            self._handles[member.name] = handle
        return handle

    async def kill(self, member: Member | None) -> None:
        if member is None:
            return
        try:
            handle = await self.handle(member)
            self._handles.pop(member.name, None)
            await asyncio.to_thread(ray.kill, handle, no_restart=True)
        except Exception as error:
            log.info("could not kill %s (already gone?): %r", member.name, error)
        self._liveness.forget(member.name)

    def retire(self, member: Member | None) -> None:
        """Fence a replaced replica now and end its process later.

        It may be paused rather than dead; the fence (and, anyway, its expired lease and
        the epoch its backup now refuses) keeps it harmless until the kill lands. Runs
        as its own task: nothing here may hold up the monitor.
        """
        if member is None:
            return

        async def retire() -> None:
            try:
                (await self.handle(member)).fence.remote()
            except Exception as error:
                log.info("could not fence %s: %r", member.name, error)
            await asyncio.sleep(RETIRE_AFTER_SECONDS)
            await self.kill(member)

        asyncio.get_running_loop().create_task(retire())
