"""The controller of a replicated cluster: shard map, epochs, leases, failover.

One detached, named, restartable actor. It owns the map ``group → (epoch, primary,
backup)`` for every shard and the coordinator, keeps it in Ray's own cluster store
(the GCS key-value store, which Redis backs under GCS fault tolerance) and writes it
there before acting on a change, so a restarted controller carries on.

Every replica heartbeats every 0.2 s. A primary's heartbeat renews its read lease
(unless the controller is revoking it); a replica the map no longer names is told
to fence itself. A replica silent for ``DEAD_AFTER_SECONDS`` is lost:

- backup lost: new epoch, a new backup on another live node, installed from the
  primary's snapshot while the primary keeps its state; writes resume when it is
  in sync (acknowledged means durable on two machines).
- primary lost: stop granting its lease, wait the lease out, bump the epoch,
  promote the backup (which then refuses the old epoch's records), route clients
  to it, and build it a new backup.

Fencing never relies on Ray saying a node is gone: a "dead" primary may still be
running, and it is the epoch and the lease that keep it harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
import ray
from ray.experimental import internal_kv

from tokpay.actors.channel import ChannelAddress
from tokpay.actors.coordinator import CoordinatorActor
from tokpay.actors.directory import COORDINATOR_GROUP, Route, shard_group
from tokpay.actors.naming import NAMESPACE, NODE_RESOURCE_PREFIX, node_resource
from tokpay.actors.replica import HeartbeatAnswer, HeartbeatReport, ReplicaSpec
from tokpay.actors.replication import LEASE_SECONDS
from tokpay.actors.shard import ShardActor

log = logging.getLogger("tokpay.controller")

KV_NAMESPACE = "tokpay"
KV_STATE_KEY = b"controller/state"
DEAD_AFTER_SECONDS = 0.8
"""A replica silent this long is treated as lost (heartbeats come every 0.2 s)."""
LEASE_MARGIN_SECONDS = 0.2
"""Added to the lease before promoting: clock-rate differences and scheduling."""
MONITOR_SECONDS = 0.1
STALL_SECONDS = 0.3
"""A monitor round this much late means the controller itself stalled."""
RETIRE_AFTER_SECONDS = 30.0
"""A replaced replica is fenced at once and its process ended this much later."""
SUSPECT_SECONDS = 5.0
"""A node that just lost a replica gets no new one for this long."""
CALL_TIMEOUT_SECONDS = 10.0
CREATE_TIMEOUT_SECONDS = 60.0


class Member(msgspec.Struct):
    name: str
    node: str


class Group(msgspec.Struct):
    epoch: int
    primary: Member | None
    backup: Member | None = None
    backup_ready: bool = False
    address: ChannelAddress | None = None
    backup_address: ChannelAddress | None = None
    standby: Member | None = None
    """The previous backup while its replacement is being installed: until the new one
    is in sync it holds every acknowledged record, so it stays a promotion candidate."""


class ClusterState(msgspec.Struct):
    shard_count: int
    fsync: bool
    nodes: list[str]
    groups: dict[str, Group]
    generation: int = 0


class MemberStatus(msgspec.Struct):
    name: str
    node: str
    alive: bool
    sequence: int
    role: str


class GroupStatus(msgspec.Struct):
    group: str
    epoch: int
    primary: MemberStatus | None
    backup: MemberStatus | None
    backup_ready: bool
    lag: int | None


class ControllerStatus(msgspec.Struct):
    shard_count: int
    nodes: dict[str, bool]
    groups: list[GroupStatus]
    failovers: int
    rebuilds: int


def _groups(shard_count: int) -> list[str]:
    return [shard_group(s) for s in range(shard_count)] + [COORDINATOR_GROUP]


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=256)  # type: ignore[call-overload]
class Controller:
    def __init__(self, shard_count: int, nodes: list[str], fsync: bool = True) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        stored = internal_kv._internal_kv_get(KV_STATE_KEY, namespace=KV_NAMESPACE)
        if stored:
            self._state = msgspec.msgpack.decode(stored, type=ClusterState)
            log.warning(
                "controller restarted: state of %d groups reloaded", len(self._state.groups)
            )
        else:
            self._state = ClusterState(shard_count=shard_count, fsync=fsync, nodes=nodes, groups={})
        now = time.monotonic()
        # After a restart nothing is known about leases granted just before: assume one
        # was granted now, and give every replica a fresh grace period to report.
        self._last_seen: dict[str, float] = {}
        self._reports: dict[str, HeartbeatReport] = {}
        self._last_grant: dict[str, float] = dict.fromkeys(self._state.groups, now)
        self._started = now
        self._revoking: set[str] = set()
        self._busy: set[str] = set()
        self._suspect: dict[str, float] = {}
        self._handles: dict[str, Any] = {}
        self._live_nodes: set[str] = set(self._state.nodes)
        self._nodes_checked = 0.0
        self._monitor: asyncio.Task[None] | None = None
        self._save_lock = asyncio.Lock()
        self.failovers = 0
        self.rebuilds = 0
        ray.get_runtime_context().current_actor.start.remote()

    # -- persistence ---------------------------------------------------------------------------

    def _persist(self) -> None:
        internal_kv._internal_kv_put(
            KV_STATE_KEY,
            msgspec.msgpack.encode(self._state),
            overwrite=True,
            namespace=KV_NAMESPACE,
        )

    async def _save(self) -> None:
        """Persist off the event loop (a slow GCS must not stall heartbeats), in order.

        The state is encoded when the write runs, under the lock, so a later write
        never lands before an earlier one with older contents.
        """
        async with self._save_lock:
            await asyncio.to_thread(self._persist)

    # -- start-up ------------------------------------------------------------------------------

    async def start(self) -> bool:
        if self._monitor is None:
            self._monitor = asyncio.get_running_loop().create_task(self._monitor_forever())
        return True

    async def bootstrap(self) -> ControllerStatus:
        """Create every group's primary and backup (first start only), then wait until ready."""
        await self.start()
        state = self._state
        if not state.groups:
            nodes = state.nodes
            if len(nodes) < 2:
                raise ValueError("replication needs at least 2 nodes")
            for index, group in enumerate(_groups(state.shard_count)):
                primary = self._new_member(group, nodes[index % len(nodes)])
                state.groups[group] = Group(epoch=1, primary=primary)
                self._last_grant[group] = time.monotonic()
            await self._save()
            await asyncio.gather(*(self._create_primary(g) for g in state.groups))
        deadline = time.monotonic() + CREATE_TIMEOUT_SECONDS * 2
        while time.monotonic() < deadline:
            if all(g.backup_ready and g.address for g in state.groups.values()):
                break
            await asyncio.sleep(0.2)
        else:
            raise TimeoutError("the cluster did not become ready in time")
        return await self.status()

    def _new_member(self, group: str, node: str) -> Member:
        self._state.generation += 1
        return Member(name=f"tokpay-{group}-g{self._state.generation}", node=node)

    def _spawn(self, group: str, member: Member, epoch: int, role: str) -> Any:
        spec = ReplicaSpec(name=member.name, epoch=epoch, role=role)
        options = {
            "name": member.name,
            "namespace": NAMESPACE,
            "lifetime": "detached",
            "max_restarts": 0,
            "resources": {node_resource(member.node): 1},
        }
        state = self._state
        if group == COORDINATOR_GROUP:
            handle = CoordinatorActor.options(**options).remote(  # type: ignore[attr-defined]
                state.shard_count, "", state.fsync, spec
            )
        else:
            shard = int(group.removeprefix("shard-"))
            handle = ShardActor.options(**options).remote(  # type: ignore[attr-defined]
                shard, state.shard_count, "", state.fsync, spec
            )
        self._handles[member.name] = handle
        self._last_seen[member.name] = time.monotonic() + CREATE_TIMEOUT_SECONDS
        return handle

    async def _create_primary(self, group: str) -> None:
        g = self._state.groups[group]
        primary = g.primary
        if primary is None:
            raise RuntimeError(f"{group} has no primary to create")
        handle = self._spawn(group, primary, g.epoch, "primary")
        await asyncio.wait_for(handle.ready.remote(), CREATE_TIMEOUT_SECONDS)
        g.address = await asyncio.wait_for(handle.channel_address.remote(), CALL_TIMEOUT_SECONDS)
        await self._save()

    async def _handle(self, member: Member) -> Any:
        """The replica's actor handle; a lookup runs off the event loop (for an actor on
        a node that just died it can block for seconds, and heartbeats must not wait)."""
        handle = self._handles.get(member.name)
        if handle is None:
            handle = await asyncio.to_thread(ray.get_actor, member.name, namespace=NAMESPACE)
            self._handles[member.name] = handle
        return handle

    # -- what replicas and clients call ------------------------------------------------------

    async def heartbeat(self, report: HeartbeatReport) -> HeartbeatAnswer:
        now = time.monotonic()
        self._last_seen[report.name] = now
        self._reports[report.name] = report
        routes = msgspec.msgpack.encode(await self.routes())
        for group, g in self._state.groups.items():
            if g.primary is not None and g.primary.name == report.name:
                if group in self._revoking:
                    return HeartbeatAnswer(epoch=g.epoch, routes=routes)
                self._last_grant[group] = now
                return HeartbeatAnswer(epoch=g.epoch, lease=True, routes=routes)
            if any(m is not None and m.name == report.name for m in (g.backup, g.standby)):
                return HeartbeatAnswer(epoch=g.epoch, routes=routes)
        # Not in the map: replaced by a newer epoch. Stop serving anything.
        return HeartbeatAnswer(epoch=0, fence=True)

    async def routes(self) -> dict[str, Route]:
        return {
            group: Route(
                epoch=g.epoch,
                primary=g.primary.name if g.primary else None,
                address=g.address,
                backup=g.backup_address if g.backup_ready else None,
            )
            for group, g in self._state.groups.items()
        }

    async def shard_count(self) -> int:
        return self._state.shard_count

    async def status(self) -> ControllerStatus:
        await self._refresh_nodes(force=True)
        groups = []
        for group, g in self._state.groups.items():
            primary = self._member_status(g.primary)
            backup = self._member_status(g.backup)
            lag = (
                primary.sequence - backup.sequence
                if primary is not None and backup is not None and g.backup_ready
                else None
            )
            groups.append(GroupStatus(group, g.epoch, primary, backup, g.backup_ready, lag))
        return ControllerStatus(
            shard_count=self._state.shard_count,
            nodes={n: n in self._live_nodes for n in self._state.nodes},
            groups=groups,
            failovers=self.failovers,
            rebuilds=self.rebuilds,
        )

    def _member_status(self, member: Member | None) -> MemberStatus | None:
        if member is None:
            return None
        report = self._reports.get(member.name)
        return MemberStatus(
            name=member.name,
            node=member.node,
            alive=not self._dead(member.name),
            sequence=report.sequence if report else 0,
            role=report.role if report else "starting",
        )

    # -- failure detection and reconfiguration -------------------------------------------------

    def _dead(self, name: str) -> bool:
        seen = self._last_seen.get(name, self._started)
        return time.monotonic() - seen > DEAD_AFTER_SECONDS

    async def _refresh_nodes(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._nodes_checked < 0.5:
            return
        self._nodes_checked = now
        live = set()
        for node in await asyncio.to_thread(ray.nodes):
            if not node.get("Alive"):
                continue
            for resource in node.get("Resources", {}):
                if resource.startswith(NODE_RESOURCE_PREFIX):
                    live.add(resource.removeprefix(NODE_RESOURCE_PREFIX))
        self._live_nodes = live

    async def _monitor_forever(self) -> None:
        last_round = time.monotonic()
        while True:
            await asyncio.sleep(MONITOR_SECONDS)
            now = time.monotonic()
            stalled = now - last_round - MONITOR_SECONDS
            last_round = now
            if stalled > STALL_SECONDS:
                # This loop did not run (GC, a slow GCS call): heartbeats may be queued
                # unprocessed. Nobody's silence during our own stall counts against them.
                log.warning("controller stalled %.2f s; extending every grace period", stalled)
                for name in self._last_seen:
                    self._last_seen[name] += stalled
                continue
            try:
                await self._refresh_nodes()
                for group, g in self._state.groups.items():
                    if group in self._busy or g.primary is None:
                        continue
                    if self._dead(g.primary.name):
                        self._launch(group, self._fail_over(group))
                    elif g.backup is None or self._dead(g.backup.name):
                        self._launch(group, self._replace_backup(group, lost=True))
                    elif not g.backup_ready:
                        self._launch(group, self._replace_backup(group, lost=False))
                    else:
                        report = self._reports.get(g.primary.name)
                        if report is not None and report.broken:
                            # The primary could not reach its backup: replace it, but
                            # the backup's node may well be fine.
                            self._launch(group, self._replace_backup(group, lost=False))
            except Exception:
                log.exception("controller monitor round failed; continuing")

    def _launch(self, group: str, work: Any) -> None:
        self._busy.add(group)

        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("reconfiguring %s failed; will retry", group)
                await asyncio.sleep(0.5)
            finally:
                self._busy.discard(group)

        asyncio.get_running_loop().create_task(run())

    def _mark_suspect(self, member: Member | None) -> None:
        if member is not None:
            self._suspect[member.node] = time.monotonic() + SUSPECT_SECONDS

    def _retire(self, member: Member | None) -> None:
        """Fence a replaced replica now and end its process later.

        It may be paused rather than dead; the fence (and, anyway, its expired lease and
        the epoch its backup now refuses) keeps it harmless until the kill lands. Runs
        as its own task: nothing here may hold up the monitor.
        """
        if member is None:
            return

        async def retire() -> None:
            try:
                (await self._handle(member)).fence.remote()
            except Exception as error:
                log.info("could not fence %s: %r", member.name, error)
            await asyncio.sleep(RETIRE_AFTER_SECONDS)
            await self._kill(member)

        asyncio.get_running_loop().create_task(retire())

    async def _kill(self, member: Member | None) -> None:
        if member is None:
            return
        try:
            handle = await self._handle(member)
            self._handles.pop(member.name, None)
            await asyncio.to_thread(ray.kill, handle, no_restart=True)
        except Exception as error:
            log.info("could not kill %s (already gone?): %r", member.name, error)

    async def _candidate(self, g: Group) -> Member | None:
        """Which copy to promote: one that holds every acknowledged record.

        The backup, if in sync. While a new backup is being installed, it holds
        everything acknowledged once its install finished (the primary acknowledges
        nothing in between); before that, the previous backup (the standby) does.
        """
        if g.backup is not None and not self._dead(g.backup.name):
            if g.backup_ready:
                return g.backup
            try:
                status = await asyncio.wait_for(
                    (await self._handle(g.backup)).replica_status.remote(), CALL_TIMEOUT_SECONDS
                )
                if status.role == "backup" and status.installed:
                    return g.backup
            except Exception as error:
                log.info("status of %s failed: %r", g.backup.name, error)
        if g.standby is not None and not self._dead(g.standby.name):
            return g.standby
        return None

    async def _fail_over(self, group: str) -> None:
        g = self._state.groups[group]
        old = g.primary
        self._revoking.add(group)
        try:
            # The old primary may still be running: its lease must run out first.
            wait = self._last_grant.get(group, self._started) + LEASE_SECONDS + LEASE_MARGIN_SECONDS
            await asyncio.sleep(max(0.0, wait - time.monotonic()))
            chosen = await self._candidate(g)
            if chosen is None:
                log.critical("%s: primary and backup both lost; waiting for one to return", group)
                await asyncio.sleep(1.0)
                return
            others = [m for m in (g.backup, g.standby) if m is not None and m.name != chosen.name]
            epoch = g.epoch + 1
            g.epoch, g.primary, g.backup, g.backup_ready, g.address = (
                epoch,
                chosen,
                None,
                False,
                None,
            )
            g.backup_address, g.standby = None, None
            await self._save()
            self._mark_suspect(old)
            promoted = await asyncio.wait_for(
                (await self._handle(chosen)).promote.remote(epoch), CALL_TIMEOUT_SECONDS
            )
            if not promoted:
                raise RuntimeError(f"{chosen.name} refused promotion to epoch {epoch}")
            g.address = await asyncio.wait_for(
                (await self._handle(chosen)).channel_address.remote(), CALL_TIMEOUT_SECONDS
            )
            await self._save()
            self.failovers += 1
            log.warning(
                "%s: primary %s on %s lost; %s on %s promoted at epoch %d",
                group,
                old and old.name,
                old and old.node,
                chosen.name,
                chosen.node,
                epoch,
            )
        finally:
            self._revoking.discard(group)
        self._retire(old)
        for member in others:
            self._retire(member)
        await self._replace_backup(group)

    def _pick_node(self, avoid: set[str]) -> str | None:
        now = time.monotonic()
        load: dict[str, int] = dict.fromkeys(self._state.nodes, 0)
        for g in self._state.groups.values():
            for member in (g.primary, g.backup):
                if member is not None and member.node in load:
                    load[member.node] += 1
        candidates = [
            n
            for n in self._state.nodes
            if n in self._live_nodes and n not in avoid and self._suspect.get(n, 0.0) < now
        ]
        return min(candidates, key=lambda n: load[n]) if candidates else None

    async def _replace_backup(self, group: str, *, lost: bool = True) -> None:
        g = self._state.groups[group]
        primary = g.primary
        if primary is None:
            return
        if g.address is None:
            # A restart interrupted a promotion: finish it (promote is idempotent).
            await asyncio.wait_for(
                (await self._handle(primary)).promote.remote(g.epoch), CALL_TIMEOUT_SECONDS
            )
            status = await asyncio.wait_for(
                (await self._handle(primary)).replica_status.remote(), CALL_TIMEOUT_SECONDS
            )
            if status.role != "primary":
                raise RuntimeError(f"{primary.name} is {status.role}, expected primary")
            g.address = await asyncio.wait_for(
                (await self._handle(primary)).channel_address.remote(), CALL_TIMEOUT_SECONDS
            )
            await self._save()
        old = g.backup
        if old is not None:
            if lost:
                self._mark_suspect(old)
                self._retire(old)
            elif g.backup_ready:
                # Alive and in sync until now: it stays a promotion candidate until its
                # replacement is in sync (a failed install leaves it so for the next try).
                self._retire(g.standby)
                g.standby = old
            else:
                self._retire(old)
        node = self._pick_node({primary.node} | ({g.standby.node} if g.standby else set()))
        if node is None:
            node = self._pick_node({primary.node})
        if node is None:
            g.backup, g.backup_ready, g.backup_address = None, False, None
            await self._save()
            log.error("%s: no live node for a backup; writes wait", group)
            await asyncio.sleep(1.0)
            return
        epoch = g.epoch + 1
        member = self._new_member(group, node)
        g.epoch, g.backup, g.backup_ready, g.backup_address = epoch, member, False, None
        await self._save()
        started = time.monotonic()
        try:
            handle = self._spawn(group, member, epoch, "backup")
            await asyncio.wait_for(handle.ready.remote(), CREATE_TIMEOUT_SECONDS)
            address = await asyncio.wait_for(handle.channel_address.remote(), CALL_TIMEOUT_SECONDS)
            await asyncio.wait_for(
                (await self._handle(primary)).attach_backup.remote(epoch, address),
                CREATE_TIMEOUT_SECONDS,
            )
        except Exception:
            self._mark_suspect(member)
            await self._kill(member)
            g.backup = None
            await self._save()
            raise
        standby, g.standby = g.standby, None
        g.backup_ready = True
        g.backup_address = address
        await self._save()
        self._retire(standby)
        # Reports from before the attach (say, "broken") no longer describe the primary.
        self._reports.pop(primary.name, None)
        self.rebuilds += 1
        log.warning(
            "%s: backup %s on %s in sync at epoch %d after %.2f s",
            group,
            member.name,
            node,
            epoch,
            time.monotonic() - started,
        )
