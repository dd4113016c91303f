"""The controller of a replicated cluster: one detached, named, restartable Ray actor.

It answers replicas' heartbeats (telling replaced replicas to fence themselves,
handing everyone the routes; leases come from the backups, not from here), and runs
the monitor that notices lost replicas and starts a reconfiguration. The parts live beside it:
``shard_map`` (the state and its persistence in the GCS), ``liveness`` (heartbeats
and reports as the controller sees them), ``placement`` (nodes and replica processes)
and ``failover`` (promotion and backup rebuilds). Intervals are in ``timing``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from functools import partial
from typing import Any

import msgspec
import ray

from tokpay.actors.failover import Reconfiguration
from tokpay.actors.liveness import Liveness
from tokpay.actors.placement import Placement
from tokpay.actors.protocol import HeartbeatAnswer, HeartbeatReport, Route
from tokpay.actors.recovery import rebuild_from_disks, refuse_fresh
from tokpay.actors.shard_map import (
    ControllerStatus,
    Group,
    GroupStatus,
    Member,
    MemberStatus,
    ShardMap,
)
from tokpay.actors.timing import (
    CONTROLLER_STALL_SECONDS,
    MONITOR_SECONDS,
    RECONFIGURE_RETRY_SECONDS,
    REPLICA_CREATE_TIMEOUT_SECONDS,
    SPARE_ACTIVATE_SECONDS,
    SPARE_CHECK_SECONDS,
)

log = logging.getLogger("tokpay.controller")

BOOTSTRAP_POLL_SECONDS = 0.2


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=256)  # type: ignore[call-overload]
class Controller:
    def __init__(self, shard_count: int, nodes: list[str], fsync: bool = True) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        self._map = ShardMap.load(shard_count, nodes, fsync)
        self._liveness = Liveness()
        self._placement = Placement(self._map, self._liveness)
        self._reconfigure = Reconfiguration(self._map, self._liveness, self._placement)
        self._busy: set[str] = set()
        self._moving: str | None = None
        """The group whose copy is being moved off the head (one at a time)."""
        self._spare_work: asyncio.Task[None] | None = None
        self._spares_checked = 0.0
        self._nodes_seen: set[str] = set()
        """Live nodes as of the last monitor round (empty at start: the first sweeps all)."""
        self._monitor: asyncio.Task[None] | None = None
        ray.get_runtime_context().current_actor.start.remote()

    # -- start-up ------------------------------------------------------------------------------

    async def start(self) -> bool:
        if self._monitor is None:
            self._monitor = asyncio.get_running_loop().create_task(self._monitor_forever())
        return True

    async def bootstrap(self, recover: bool = False) -> ControllerStatus:
        """Create every group's primary and backup (first start only), then wait until ready.

        With no shard map but replica data on the nodes (the cluster state was lost), a
        new ledger is refused; ``recover`` rebuilds the map from the disks instead.
        """
        await self.start()
        state = self._map.state
        if not state.groups and recover:
            await rebuild_from_disks(self._map, self._placement)
        elif not state.groups:
            await refuse_fresh(self._placement, state.nodes)
            nodes = state.nodes
            if len(nodes) < 2:
                raise ValueError("replication needs at least 2 nodes")
            head = self._placement.head
            nodes = [n for n in nodes if n != head]
            # The monitor leaves the new groups alone until their primaries exist: until
            # then nothing is heard from them, and their silence is not a loss.
            self._busy.update(self._map.shard_of)
            try:
                for index, group in enumerate(self._map.shard_of):
                    primary = self._map.new_member(group, nodes[index % len(nodes)])
                    state.groups[group] = Group(epoch=1, primary=primary)
                await self._map.save()
                await asyncio.gather(*(self._reconfigure.create_primary(g) for g in state.groups))
            finally:
                self._busy.difference_update(self._map.shard_of)
        deadline = time.monotonic() + REPLICA_CREATE_TIMEOUT_SECONDS * 2
        while time.monotonic() < deadline:
            if all(g.backup_ready and g.address for g in state.groups.values()):
                break
            await asyncio.sleep(BOOTSTRAP_POLL_SECONDS)
        else:
            raise TimeoutError("the cluster did not become ready in time")
        return await self.status()

    # -- what replicas and clients call ------------------------------------------------------

    async def heartbeat(self, report: HeartbeatReport) -> HeartbeatAnswer:
        self._liveness.heard(report)
        routes = msgspec.msgpack.encode(self._map.routes())
        for g in self._map.groups.values():
            if any(
                m is not None and m.name == report.name for m in (g.primary, g.backup, g.standby)
            ):
                return HeartbeatAnswer(epoch=g.epoch, routes=routes)
        # Not in the map: replaced by a newer epoch. Stop serving anything.
        return HeartbeatAnswer(epoch=0, fence=True)

    async def routes(self) -> dict[str, Route]:
        return self._map.routes()

    async def shard_count(self) -> int:
        return self._map.state.shard_count

    async def status(self) -> ControllerStatus:
        await self._placement.refresh_nodes(force=True)
        groups = []
        for group, g in self._map.groups.items():
            primary = self._member_status(g.primary)
            backup = self._member_status(g.backup)
            lag = (
                primary.sequence - backup.sequence
                if primary is not None and backup is not None and g.backup_ready
                else None
            )
            down = self._reconfigure.down.get(group)
            groups.append(GroupStatus(group, g.epoch, primary, backup, g.backup_ready, lag, down))
        return ControllerStatus(
            shard_count=self._map.state.shard_count,
            nodes={n: n in self._placement.live_nodes for n in self._map.state.nodes},
            groups=groups,
            failovers=self._reconfigure.failovers,
            rebuilds=self._reconfigure.rebuilds,
            head_copies=self._placement.head_copies(),
            spares_missing=self._spares_missing(),
            spares={g: m.spare.node for g, m in self._map.groups.items() if m.spare},
        )

    def _member_status(self, member: Member | None) -> MemberStatus | None:
        if member is None:
            return None
        report = self._liveness.reports.get(member.name)
        return MemberStatus(
            name=member.name,
            node=member.node,
            alive=not self._liveness.dead(member.name),
            sequence=report.sequence if report else 0,
            role=report.role if report else "starting",
        )

    # -- failure detection -------------------------------------------------------------------------

    async def _monitor_forever(self) -> None:
        last_round = time.monotonic()
        while True:
            await asyncio.sleep(MONITOR_SECONDS)
            now = time.monotonic()
            stalled = now - last_round - MONITOR_SECONDS
            last_round = now
            if stalled > CONTROLLER_STALL_SECONDS:
                # This loop did not run (GC, a slow GCS call): heartbeats may be queued
                # unprocessed. Nobody's silence during our own stall counts against them.
                log.warning("controller stalled %.2f s; extending every grace period", stalled)
                self._liveness.forgive(stalled)
                continue
            try:
                await self._placement.refresh_nodes()
                self._sweep_returned_nodes()
                for group, g in self._map.groups.items():
                    if group not in self._busy and g.primary is not None:
                        self._check(group, g)
                self._keep_spares(now)
            except Exception:
                log.exception("controller monitor round failed; continuing")

    def _check(self, group: str, g: Group) -> None:
        """Start the reconfiguration ``group`` needs, if any."""
        dead = self._liveness.dead
        if g.primary is None:
            return
        if dead(g.primary.name):
            self._note_silent(group, g.primary)
            self._launch(group, self._reconfigure.fail_over(group))
        elif g.backup is None or self._liveness.backup_lost(g.backup.name, g.primary.name):
            if g.backup is not None:
                self._note_silent(group, g.backup)
            self._launch(group, self._reconfigure.replace_backup(group, lost=True))
        elif not g.backup_ready:
            self._launch(group, self._reconfigure.replace_backup(group, lost=False))
        else:
            report = self._liveness.reports.get(g.primary.name)
            if report is not None and report.broken:
                # The primary could not reach its backup: replace it, but the backup's
                # node may well be fine.
                self._launch(group, self._reconfigure.replace_backup(group, lost=False))
            elif self._moving is None and not self._busy:
                self._move_off_head(group, g)

    def _sweep_returned_nodes(self) -> None:
        """Old copies are deleted on the nodes that are live when a group gets back in sync;
        a node down then keeps its old copies. So when a node comes back (and once after
        the controller starts, its predecessor's pending deletions having died with it),
        every settled group's copies from before its epoch are deleted there too, after the
        usual grace and only if the group is still settled by then."""
        live = set(self._placement.live_nodes)
        returned, self._nodes_seen = live - self._nodes_seen, live
        if not returned:
            return
        for group, g in self._map.groups.items():
            if g.primary is None or g.backup is None or not g.backup_ready:
                continue
            self._placement.delete_old_copies(
                group,
                {g.primary.directory, g.backup.directory},
                g.epoch,
                still=partial(g.in_sync_at, g.epoch),
                nodes=returned,
            )

    def _move_off_head(self, group: str, g: Group) -> None:
        """A healthy group with a copy on the head (put there while a worker was down)
        moves it to a worker that can take it, one group at a time: the backup by
        building a new one there (writes go on); the primary by promoting its in-sync
        backup and building a new backup (the group waits out a lease and that build,
        as after a loss)."""
        move = self._placement.head_move(g)
        if move is None:
            return
        role, node = move
        member = g.backup if role == "backup" else g.primary
        log.warning(
            "%s: moving %s %s off the head (to %s)", group, role, member and member.name, node
        )
        if role == "backup":
            work = self._reconfigure.replace_backup(group, lost=False, node=node)
        else:
            work = self._reconfigure.fail_over(group, planned=True)
        self._moving = group
        self._launch(group, self._moved(work))

    def _keep_spares(self, now: float) -> None:
        """Each settled group keeps a spare process where its next backup would go
        (``Placement.spare_node``): started one at a time, only while no group is being
        reconfigured, checked every ``SPARE_CHECK_SECONDS``, dropped when its node is gone
        or now holds a copy of the group."""
        if self._spare_work is not None and not self._spare_work.done():
            return
        if now - self._spares_checked >= SPARE_CHECK_SECONDS:
            self._spares_checked = now
            self._spare_work = self._background(self._check_spares())
            return
        if self._busy:
            return
        placement, reconfigure = self._placement, self._reconfigure
        for group, g in self._map.groups.items():
            spare = g.spare
            copies = {m.node for m in (g.primary, g.backup) if m is not None}
            if spare is not None and (
                spare.node in copies or spare.node not in placement.live_nodes
            ):
                self._spare_work = self._background(reconfigure.drop_spare(group, spare))
                return
            if spare is None and g.backup_ready:
                node = placement.spare_node(g)
                if node is not None:
                    self._spare_work = self._background(reconfigure.keep_spare(group, node))
                    return

    async def _check_spares(self) -> None:
        """Ask every spare whether it is there; drop those that do not answer."""
        for group, g in list(self._map.groups.items()):
            spare = g.spare
            if spare is None:
                continue
            try:
                handle = await self._placement.handle(spare)
                await asyncio.wait_for(handle.ready.remote(), SPARE_ACTIVATE_SECONDS)
                self._reconfigure.spares_ready.add(spare.name)
            except Exception as error:
                log.warning("%s: spare %s is gone (%s)", group, spare.name, type(error).__name__)
                await self._reconfigure.drop_spare(group, spare)

    def _spares_missing(self) -> list[str]:
        """Groups that could keep a spare but have none ready."""
        ready = self._reconfigure.spares_ready
        return [
            group
            for group, g in self._map.groups.items()
            if self._placement.spare_node(g) is not None
            and (g.spare is None or g.spare.name not in ready)
        ]

    @staticmethod
    def _background(work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("spare upkeep failed; will retry")

        return asyncio.get_running_loop().create_task(run())

    async def _moved(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        finally:
            self._moving = None

    def _note_silent(self, group: str, member: Member) -> None:
        log.warning(
            "%s: %s on %s silent for %.2f s: lost",
            group,
            member.name,
            member.node,
            self._liveness.silent(member.name),
        )

    def _launch(self, group: str, work: Coroutine[Any, Any, None]) -> None:
        self._busy.add(group)

        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("reconfiguring %s failed; will retry", group)
                await asyncio.sleep(RECONFIGURE_RETRY_SECONDS)
            finally:
                self._busy.discard(group)

        asyncio.get_running_loop().create_task(run())
