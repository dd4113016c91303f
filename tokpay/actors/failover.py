"""Reconfiguration: promote a backup when a primary is lost, build a backup when one is.

- Backup lost: new epoch, a new backup on another live node, installed from the
  primary's snapshot while the primary keeps its state; writes resume when it is in
  sync (acknowledged means durable on two machines).
- Primary lost: bump the epoch, promote the copy that holds every acknowledged record
  (which then refuses the old epoch's records and serves nothing until the lease it
  granted the old primary is over), route clients to it, and build it a new backup.

Every change to the map is saved before it is acted on. Fencing never relies on Ray
saying a node is gone: a "dead" primary may still be running, and it is the epoch and
the lease that keep it harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import partial
from typing import Any

from tokpay.actors.copies import CopyChoice, CopyView, choose_copy
from tokpay.actors.liveness import Liveness
from tokpay.actors.placement import Placement
from tokpay.actors.protocol import SPARE_ROLE
from tokpay.actors.shard_map import Group, Member, ShardMap
from tokpay.actors.timing import (
    CONTROLLER_CALL_TIMEOUT_SECONDS,
    LEASE_MARGIN_SECONDS,
    LEASE_SECONDS,
    NO_CANDIDATE_WAIT_SECONDS,
    REPLICA_CREATE_TIMEOUT_SECONDS,
    SPARE_ACTIVATE_SECONDS,
)

log = logging.getLogger("tokpay.controller")

SILENT_ASK_SECONDS = 1.0
"""How long a copy that looks lost is given to answer before a failover passes it by."""

DOWN_RETRY_SECONDS = 3.0
"""A group with no provably complete copy reads the nodes' disks again this often (a
node holding one may have come back)."""


class Reconfiguration:
    def __init__(self, shard_map: ShardMap, liveness: Liveness, placement: Placement) -> None:
        self._map = shard_map
        self._liveness = liveness
        self._placement = placement
        self.failovers = 0
        self.rebuilds = 0
        self.down: dict[str, str] = {}
        """Groups that cannot serve now, and why (for ``cluster status``)."""
        self.spares_ready: set[str] = set()
        """The names of the spares in the map that started and answer: one per group at
        most (a name leaves when its spare is dropped or becomes a backup)."""

    async def _ask(
        self,
        member: Member,
        method: str,
        *args: Any,
        timeout: float = CONTROLLER_CALL_TIMEOUT_SECONDS,
    ) -> Any:
        """Call ``method`` on a replica, bounded in time."""
        handle = await self._placement.handle(member)
        return await asyncio.wait_for(getattr(handle, method).remote(*args), timeout)

    async def create_primary(self, group: str) -> None:
        """A new cluster's first primary of ``group``."""
        g = self._map.groups[group]
        primary = g.primary
        if primary is None:
            raise RuntimeError(f"{group} has no primary to create")
        handle = self._placement.spawn(group, primary, g.epoch, "primary")
        await asyncio.wait_for(handle.ready.remote(), REPLICA_CREATE_TIMEOUT_SECONDS)
        g.address = await asyncio.wait_for(
            handle.channel_address.remote(), CONTROLLER_CALL_TIMEOUT_SECONDS
        )
        await self._map.save()

    async def _live_copies(self, g: Group) -> list[CopyView]:
        """The backup and the standby that answer as installed backups (promotable in
        place), with what their proofs say; and a backup still installing that kept no
        record (never chosen, but it proves nothing was acknowledged at its epoch)."""
        views = []
        for member in (g.backup, g.standby):
            if member is None:
                continue
            # One that looks lost may only be starved with the rest of its machine (its
            # primary's silence may be the same starvation): asked briefly, not skipped.
            quiet = self._liveness.dead(member.name)
            try:
                status = await self._ask(
                    member,
                    "replica_status",
                    timeout=SILENT_ASK_SECONDS if quiet else CONTROLLER_CALL_TIMEOUT_SECONDS,
                )
            except Exception as error:
                log.info("status of %s failed: %r", member.name, error)
                continue
            if status.proof is None or status.role != "backup":
                continue
            if status.installed or status.kept_nothing:
                views.append(
                    CopyView(
                        member.directory,
                        member.node,
                        status.proof,
                        status.sequence,
                        live=True,
                        kept_nothing=status.kept_nothing,
                    )
                )
        return views

    async def choose(self, group: str, g: Group) -> CopyChoice:
        """The copy to promote: by what the copies prove (tokpay.actors.copies), asking the
        live backup and standby first, then reading every live node's disk."""
        acked = g.attach_epoch if g.attach_epoch is not None else g.epoch
        live = await self._live_copies(g)
        choice = choose_copy(group, live, acked_epoch=acked)
        if choice.copy is not None:
            return choice
        placement = self._placement
        # Reading a directory must not race its replica: the old primary (replaced either
        # way) and the members that did not answer are ended first; the copy then started
        # as primary waits a whole lease before serving (ReplicaHost), so any lease those
        # granted is over by then (after a restart none runs); the scan skips what still has a
        # directory open.
        answered = {c.proof.member for c in live}
        for member in (g.primary, g.backup, g.standby):
            if member is not None and member.name not in answered:
                await placement.kill(member)
        await placement.refresh_nodes(force=True)
        on_disk, silent = await placement.copies_on_disks(group, answered)
        unreachable = [
            f"{m.name} on node {m.node}"
            for m in (g.primary, g.backup, g.standby)
            if m is not None and (m.node not in placement.live_nodes or m.node in silent)
        ]
        return choose_copy(
            group, live + on_disk, acked_epoch=acked, unreachable=unreachable,
        )  # fmt: skip

    async def _take_over(self, group: str, g: Group, copy: CopyView, epoch: int) -> Member:
        """Make ``copy`` the primary at ``epoch``: promote it in place if it is a running
        backup, else start a replica on its node that reopens its directory."""
        if copy.live:
            chosen = next(m for m in (g.backup, g.standby) if m and m.name == copy.proof.member)
            # Any other copy may have granted the old primary its lease: it grants nothing
            # more once fenced, and the promoted copy waits a whole lease beyond that.
            hold = 0.0
            for other in (g.backup, g.standby):
                if other is not None and other.name != chosen.name:
                    with contextlib.suppress(Exception):
                        await self._ask(other, "fence")
                    hold = LEASE_SECONDS + LEASE_MARGIN_SECONDS
            self._save_primary(g, chosen, epoch)
            await self._map.save()
            if not await self._ask(chosen, "promote", epoch, hold):
                raise RuntimeError(f"{chosen.name} refused promotion to epoch {epoch}")
            return chosen
        # A fenced replica may still run on that directory: end it first.
        await self._placement.kill(Member(name=copy.proof.member, node=copy.node))
        chosen = self._map.new_member(group, copy.node)
        chosen.root = copy.directory
        self._save_primary(g, chosen, epoch)
        await self._map.save()
        handle = self._placement.spawn(group, chosen, epoch, "primary")
        await asyncio.wait_for(handle.ready.remote(), REPLICA_CREATE_TIMEOUT_SECONDS)
        return chosen

    @staticmethod
    def _save_primary(g: Group, chosen: Member, epoch: int) -> None:
        g.epoch, g.primary, g.backup, g.backup_ready, g.address = epoch, chosen, None, False, None
        g.backup_address, g.standby = None, None

    async def fail_over(self, group: str, *, planned: bool = False) -> None:
        """Promote a copy of ``group`` in its primary's place: the primary was lost, or
        (``planned``) it is alive but sits where it should not (the head)."""
        g = self._map.groups[group]
        old = g.primary
        # The old primary may still be running: the copy promoted waits out the lease it
        # granted (ReplicaHost.promote), or starts after it (a copy from disk).
        choice = await self.choose(group, g)
        if choice.copy is None:
            self.down[group] = choice.reason
            log.critical("%s", choice.reason)
            await asyncio.sleep(DOWN_RETRY_SECONDS)
            return
        log.warning("%s", choice.reason)
        others = [m for m in (g.backup, g.standby) if m is not None]
        epoch = g.epoch + 1
        chosen = await self._take_over(group, g, choice.copy, epoch)
        if not planned:
            self._placement.mark_suspect(old)
        g.address = await self._ask(chosen, "channel_address")
        await self._map.save()
        self.down.pop(group, None)
        self.failovers += 1
        log.warning(
            "%s: primary %s on %s %s; %s on %s promoted at epoch %d",
            group,
            old and old.name,
            old and old.node,
            "moved off the head" if planned else "lost",
            chosen.name,
            chosen.node,
            epoch,
        )
        self._placement.retire(old)
        for member in others:
            if member.name != chosen.name:
                self._placement.retire(member)
        await self.replace_backup(group)

    async def _finish_promotion(self, group: str, primary: Member) -> None:
        """A restart interrupted a promotion: finish it (promote is idempotent)."""
        g = self._map.groups[group]
        await self._ask(primary, "promote", g.epoch)
        status = await self._ask(primary, "replica_status")
        if status.role != "primary":
            raise RuntimeError(f"{primary.name} is {status.role}, expected primary")
        g.address = await self._ask(primary, "channel_address")
        await self._map.save()

    def _set_aside_old_backup(self, g: Group, *, lost: bool) -> None:
        old = g.backup
        if old is None:
            return
        placement = self._placement
        if lost:
            placement.mark_suspect(old)
            placement.retire(old)
        elif g.backup_ready:
            # Alive and in sync until now: it stays a promotion candidate until its
            # replacement is in sync (a failed install leaves it so for the next try).
            placement.retire(g.standby)
            g.standby = old
        else:
            placement.retire(old)

    async def _start_backup(
        self, group: str, g: Group, node: str, epoch: int
    ) -> tuple[Member, Any]:
        """A new backup of ``group`` on ``node`` at ``epoch``, recorded in the map first and
        running when this returns: the group's spare there when it has one (no process
        to start: tens of milliseconds), else a new replica process."""
        placement, spare = self._placement, g.spare
        if spare is not None and spare.node == node:
            g.spare = None
            self.spares_ready.discard(spare.name)  # a backup from now on
            g.epoch, g.backup, g.backup_ready, g.backup_address = epoch, spare, False, None
            await self._map.save()
            try:
                handle = await placement.handle(spare)
                await asyncio.wait_for(handle.activate.remote(epoch), SPARE_ACTIVATE_SECONDS)
                self._liveness.expect(spare.name, REPLICA_CREATE_TIMEOUT_SECONDS)
                return spare, handle
            except Exception as error:
                # Gone with its process (a restart): a new process, on the same node.
                log.warning(
                    "%s: spare %s did not answer (%r); starting a backup", group, spare.name, error
                )
                await placement.kill(spare)
        member = self._map.new_member(group, node)
        g.epoch, g.backup, g.backup_ready, g.backup_address = epoch, member, False, None
        await self._map.save()
        try:
            handle = placement.spawn(group, member, epoch, "backup")
            await asyncio.wait_for(handle.ready.remote(), REPLICA_CREATE_TIMEOUT_SECONDS)
        except Exception:
            await self._abandon_backup(g, member)
            raise
        return member, handle

    async def _abandon_backup(self, g: Group, member: Member) -> None:
        """A new backup that did not start or attach: its node suspect, its process
        ended, and the map without it."""
        self._placement.mark_suspect(member)
        await self._placement.kill(member)
        g.backup = None
        await self._map.save()

    async def keep_spare(self, group: str, node: str) -> None:
        """Start a spare for ``group`` on ``node`` (recorded first); forget it if it does
        not come up. Runs beside the group's reconfigurations, never holding them up."""
        g = self._map.groups[group]
        member = self._map.new_member(group, node)
        g.spare = member
        await self._map.save()
        try:
            handle = self._placement.spawn(group, member, 0, SPARE_ROLE)
            await asyncio.wait_for(handle.ready.remote(), REPLICA_CREATE_TIMEOUT_SECONDS)
        except Exception as error:
            log.warning("%s: spare %s on %s did not start: %r", group, member.name, node, error)
            await self.drop_spare(group, member)
            return
        self.spares_ready.add(member.name)
        log.info("%s: spare %s ready on %s", group, member.name, node)

    async def drop_spare(self, group: str, member: Member) -> None:
        """Forget ``group``'s spare ``member`` (if it still is one) and end its process."""
        g = self._map.groups[group]
        self.spares_ready.discard(member.name)
        if g.spare is not None and g.spare.name == member.name:
            g.spare = None
            await self._map.save()
            await self._placement.kill(member)

    async def replace_backup(
        self, group: str, *, lost: bool = True, node: str | None = None
    ) -> None:
        """A new backup for ``group``, on ``node`` or the node ``pick_node`` chooses; the
        old one, unless ``lost``, stays a promotion candidate until the new one is in sync."""
        g = self._map.groups[group]
        primary = g.primary
        if primary is None:
            return
        if g.address is None:
            await self._finish_promotion(group, primary)
        self._set_aside_old_backup(g, lost=lost)
        placement = self._placement
        if node is None:
            node = placement.pick_node({primary.node} | ({g.standby.node} if g.standby else set()))
        if node is None:
            node = placement.pick_node({primary.node})
        if node is None:
            g.backup, g.backup_ready, g.backup_address = None, False, None
            await self._map.save()
            self.down[group] = f"{group}: no live node for a backup; writes wait (start a node)"
            log.error("%s", self.down[group])
            await asyncio.sleep(NO_CANDIDATE_WAIT_SECONDS)
            return
        epoch = g.epoch + 1
        started = time.monotonic()
        member, handle = await self._start_backup(group, g, node, epoch)
        try:
            address = await asyncio.wait_for(
                handle.channel_address.remote(), CONTROLLER_CALL_TIMEOUT_SECONDS
            )
            # From here the primary may acknowledge writes at this epoch: say so first.
            g.attach_epoch = epoch
            await self._map.save()
            attach = (await placement.handle(primary)).attach_backup.remote(epoch, address)
            await asyncio.wait_for(attach, REPLICA_CREATE_TIMEOUT_SECONDS)
        except Exception:
            await self._abandon_backup(g, member)
            raise
        standby, g.standby = g.standby, None
        self.down.pop(group, None)
        g.backup_ready = True
        g.backup_address = address
        await self._map.save()
        placement.retire(standby)
        # Both copies are in sync at this epoch: no choice can take an older copy now.
        placement.delete_old_copies(
            group,
            {primary.directory, member.directory},
            epoch,
            still=partial(g.in_sync_at, epoch),
        )
        # Reports from before the attach (say, "broken") no longer describe the primary.
        self._liveness.reports.pop(primary.name, None)
        self.rebuilds += 1
        log.warning(
            "%s: backup %s on %s in sync at epoch %d after %.2f s",
            group,
            member.name,
            node,
            epoch,
            time.monotonic() - started,
        )
