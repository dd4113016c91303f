"""The coordinator's Ray actor: an async shell around ``CoordinatorService``.

One copy, or one replica of two (``ReplicaHost``). Gateways submit cross-shard batches
and spanning lookups on its channel; it reaches participant shards on their own channels,
found through a directory (by actor name on a single node, through the controller's
routes in a cluster).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import ray

from tokpay.actors.channel import ActorChannel, AsyncChannelServer
from tokpay.actors.coordinator import CoordinatorService
from tokpay.actors.directory import ControllerDirectory, Directory, NamedActorDirectory
from tokpay.actors.naming import shard_group
from tokpay.actors.protocol import (
    SPARE_ROLE,
    ChannelAddress,
    ReplicaSpec,
    ReplicaStatus,
    as_backup,
    decode,
    encode,
)
from tokpay.actors.replica_host import ReplicaHost, delete_old_copies_here, replica_root
from tokpay.actors.replicated_service import LogOptions
from tokpay.actors.replication import Role
from tokpay.actors.timing import PREPARE_DEADLINE_SECONDS, RECONFIGURE_WAIT_SECONDS


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=64)  # type: ignore[call-overload]
class CoordinatorActor:
    """Async Ray shell around CoordinatorService; one copy, or one replica of two.

    Shards are reached on their direct channels, found through ``directory``: by
    actor name on a single node, through the controller's routes in a cluster.
    """

    _host: ReplicaHost[CoordinatorService]

    def __init__(
        self,
        shard_count: int,
        data_dir: str,
        fsync: bool = True,
        replica: ReplicaSpec | None = None,
    ) -> None:
        self._spare: tuple[int, str, bool, ReplicaSpec] | None = None
        if replica is not None and replica.role == SPARE_ROLE:
            # Started ahead of need: the process and its imports are ready, nothing else.
            self._spare = (shard_count, data_dir, fsync, replica)
            return
        self._open(shard_count, data_dir, fsync, replica)

    async def activate(self, epoch: int) -> bool:
        """A spare becomes a backup at ``epoch``, as if started as one (idempotent)."""
        if self._spare is not None:
            shard_count, data_dir, fsync, spec = self._spare
            self._open(shard_count, data_dir, fsync, as_backup(spec, epoch))
            self._spare = None
        return True

    def _open(
        self, shard_count: int, data_dir: str, fsync: bool, replica: ReplicaSpec | None
    ) -> None:
        self._channels: dict[int, ActorChannel] = {}
        # Lookups read on their own connections: a read never queues behind a prepare.
        self._read_channels: dict[int, ActorChannel] = {}
        self._shard_count = shard_count
        self._directory: Directory = (
            NamedActorDirectory(shard_count) if replica is None else ControllerDirectory()
        )
        self._sweeper: asyncio.Task[None] | None = None
        root = replica_root(data_dir, "coordinator", replica)

        def open_service(options: LogOptions) -> CoordinatorService:
            return CoordinatorService(shard_count, root.parent, self._call, **options)

        self._host = ReplicaHost(
            "coordinator",
            replica,
            root,
            open_service,
            service_class=CoordinatorService,
            fsync=fsync,
        )
        self._methods: dict[str, Callable[[bytes], Awaitable[bytes]]] = {
            "submit": self.submit,
            "lookup": self.lookup,
            "stats": self._encoded_stats,
        }
        """What the coordinator serves to clients on its channel."""
        self._host_ip = ray.util.get_node_ip_address() if replica is not None else "127.0.0.1"
        self._channel_server = AsyncChannelServer(self._dispatch)
        self._host.start_heartbeat()
        if self._host.role is Role.PRIMARY:
            # After a Ray restart nobody else calls start(): recovery and the in-doubt
            # sweep must not wait for the next cross-shard transfer to begin.
            ray.get_runtime_context().current_actor.start.remote()

    async def _dispatch(self, method: str, payload: bytes) -> bytes:
        served = self._methods.get(method)
        if served is not None:
            return await served(payload)
        return self._host.serve_replication(method, payload)

    async def _encoded_stats(self, payload: bytes) -> bytes:
        return encode(await self.stats())

    # -- reconfiguration (the controller) ----------------------------------------------------

    async def promote(self, epoch: int, hold: float = 0.0) -> bool:
        return self._host.promote(epoch, hold)

    async def attach_backup(self, epoch: int, address: ChannelAddress) -> int:
        sequence = self._host.attach_backup(epoch, address)
        # Decisions held back while the log was broken can go out now.
        await self.start()
        return sequence

    async def fence(self) -> bool:
        self._host.fence()
        return True

    async def replica_status(self) -> ReplicaStatus:
        return self._host.status()

    async def ready(self) -> bool:
        return True

    async def delete_old_copies(self, group: str, keep: list[str], epoch: int) -> list[str]:
        """This node's copies of ``group`` from before ``epoch``, deleted (any group's)."""
        return await asyncio.to_thread(delete_old_copies_here, group, keep, epoch)

    # -- the service -------------------------------------------------------------------------

    async def channel_address(self) -> ChannelAddress:
        """Where gateways submit cross-shard batches (and a primary ships its records)."""
        if self._host.role is Role.PRIMARY:
            await self.start()
        return await self._channel_server.start(self._host_ip)

    async def _call(self, shard: int, method: str, payload: bytes) -> Any:
        """One request to a participant shard. Votes, decisions and reads give up on a
        silent shard after ``PREPARE_DEADLINE_SECONDS`` but wait out a reconfiguring one."""
        channels = self._read_channels if method == "balances" else self._channels
        channel = channels.get(shard)
        if channel is None:
            directory = self._directory
            group = shard_group(shard)

            async def address() -> ChannelAddress:
                return await directory.address(group)

            channel = channels[shard] = ActorChannel(address)
        if method == "in_doubt":
            return decode(await channel.call(method, payload), list[str])
        return await channel.call(
            method, payload, quiet=PREPARE_DEADLINE_SECONDS, budget=RECONFIGURE_WAIT_SECONDS
        )

    async def start(self) -> dict[str, int]:
        service = self._host.primary()
        await service.ensure_recovered()
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(service.sweep_forever())
        return {"pending_commits": len(service.pending_commits)}

    async def submit(self, payload: bytes) -> bytes:
        service = self._host.primary()
        if self._sweeper is None:
            await self.start()
        return await service.submit(payload)

    async def lookup(self, payload: bytes) -> bytes:
        # Under the lease, checked again after the reads: a deposed coordinator no longer
        # knows every delivery in flight, so it must not answer (docs/ARCHITECTURE.md).
        answer = await self._host.leased().lookup(payload)
        self._host.check_lease_after_read()
        return answer

    async def resolve_in_doubt(self) -> dict[str, int]:
        return await self._host.primary().resolve_in_doubt()

    async def shard_count(self) -> int:
        return self._shard_count

    async def stats(self) -> dict[str, int]:
        service = self._host.primary()
        return {
            "committed": service.committed,
            "aborted": service.aborted,
            "pending_commits": len(service.pending_commits),
            "unreachable_shards": service.unreachable_shards,
        }
