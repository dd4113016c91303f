"""The controller's shard map: group -> (epoch, primary, backup), kept in Ray's GCS.

The map is the controller's only durable state. It lives in the GCS key-value store
(which Redis backs under GCS fault tolerance) and is written there before the
controller acts on a change, so a restarted controller carries on from it. Routes
(where each group's primary and backup listen) are derived from it for clients.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from ray.experimental import internal_kv

from tokpay.actors.naming import replica_groups
from tokpay.actors.protocol import ChannelAddress, Route

log = logging.getLogger("tokpay.controller")

KV_NAMESPACE = "tokpay"
KV_STATE_KEY = b"controller/state"
MEMBER_PREFIX = "tokpay-"
GENERATION_MARK = "-g"


class Member(msgspec.Struct):
    """One replica of a group: its unique actor name and the node it is pinned to."""

    name: str
    node: str
    root: str = ""
    """Its directory under the node's ``replicas/`` (empty: its name); a copy resumed from
    its disk after a restart keeps its old directory under a new name."""

    @property
    def directory(self) -> str:
        return self.root or self.name


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
    attach_epoch: int | None = None
    """The last epoch at which the primary was told to attach a backup (saved before the
    call): no write can have been acknowledged at a later epoch. None: not recorded."""
    spare: Member | None = None
    """A replica process started ahead of need on the node a new backup would go to
    (``SPARE_ROLE``): it holds nothing and opens nothing until it is made the backup."""

    def in_sync_at(self, epoch: int) -> bool:
        """Still at ``epoch`` with its backup in sync (a deletion's grace asks it at the end)."""
        return self.epoch == epoch and self.backup_ready


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
    down: str | None = None
    """Why the group cannot serve, in words an operator can act on (None: it can)."""


class ControllerStatus(msgspec.Struct):
    shard_count: int
    nodes: dict[str, bool]
    groups: list[GroupStatus]
    failovers: int
    rebuilds: int
    head_copies: list[str] = []
    """Groups with a copy on the head while they should have none (3 nodes or more):
    the controller is moving them to workers."""
    spares_missing: list[str] = []
    """Groups that could keep a spare process (Group.spare) but have none ready yet."""
    spares: dict[str, str] = {}
    """Each group's spare: the node it waits on."""


class ShardMap:
    """The cluster state with its persistence; every change is saved before it is acted on."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.shard_of: dict[str, int | None] = replica_groups(state.shard_count)
        """Group -> its shard (None: the coordinator), from the shard count, never parsed."""
        self._save_lock = asyncio.Lock()
        self._asked = 0
        """Saves asked for so far (a ticket each)."""
        self._covered = 0
        """Every save asked for up to this ticket is durable."""
        self.writes = 0
        """Writes to the GCS so far (fewer than saves asked for when they overlap)."""

    @classmethod
    def load(cls, shard_count: int, nodes: list[str], fsync: bool) -> ShardMap:
        """The stored map, or a new empty one (a first start)."""
        stored = internal_kv._internal_kv_get(KV_STATE_KEY, namespace=KV_NAMESPACE)
        if stored:
            state = msgspec.msgpack.decode(stored, type=ClusterState)
            log.warning("controller restarted: state of %d groups reloaded", len(state.groups))
            return cls(state)
        return cls(ClusterState(shard_count=shard_count, fsync=fsync, nodes=nodes, groups={}))

    @property
    def groups(self) -> dict[str, Group]:
        return self.state.groups

    def _persist(self) -> None:
        internal_kv._internal_kv_put(
            KV_STATE_KEY,
            msgspec.msgpack.encode(self.state),
            overwrite=True,
            namespace=KV_NAMESPACE,
        )

    async def save(self) -> None:
        """Persist off the event loop (a slow GCS must not stall heartbeats), in order;
        returns once the state as it is now is durable.

        The state is encoded when the write runs, under the lock, so a later write
        never lands before an earlier one with older contents. Saves asked for while a
        write is under way share the next one (group commit): when several groups fail
        over at once, each change waits for one write, not for a queue of them.
        """
        self._asked += 1
        ticket = self._asked
        async with self._save_lock:
            if self._covered >= ticket:
                return  # a write that began after this change was made holds it
            covers = self._asked
            await asyncio.to_thread(self._persist)
            self.writes += 1
            self._covered = covers

    def new_member(self, group: str, node: str) -> Member:
        self.state.generation += 1
        return Member(
            name=f"{MEMBER_PREFIX}{group}{GENERATION_MARK}{self.state.generation}", node=node
        )

    def skip_generations_of(self, names: list[str]) -> None:
        """Name new replicas after every one in ``names`` (a map rebuilt from the disks
        must never reuse the name, hence the directory, of a copy that is still there)."""
        for name in names:
            _, mark, number = name.rpartition(GENERATION_MARK)
            if mark and number.isdigit():
                self.state.generation = max(self.state.generation, int(number))

    def routes(self) -> dict[str, Route]:
        return {
            group: Route(
                epoch=g.epoch,
                primary=g.primary.name if g.primary else None,
                address=g.address,
                backup=g.backup_address if g.backup_ready else None,
            )
            for group, g in self.state.groups.items()
        }
