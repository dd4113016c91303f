"""Reconfiguration: promote a backup when a primary is lost, build a backup when one is.

- Backup lost: new epoch, a new backup on another live node, installed from the
  primary's snapshot while the primary keeps its state; writes resume when it is in
  sync (acknowledged means durable on two machines).
- Primary lost: stop granting its lease, wait the lease out, bump the epoch, promote
  the copy that holds every acknowledged record (which then refuses the old epoch's
  records), route clients to it, and build it a new backup.

Every change to the map is saved before it is acted on. Fencing never relies on Ray
saying a node is gone: a "dead" primary may still be running, and it is the epoch and
the lease that keep it harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from tokpay.actors.liveness import Liveness
from tokpay.actors.placement import Placement
from tokpay.actors.shard_map import Group, Member, ShardMap
from tokpay.actors.timing import (
    CONTROLLER_CALL_TIMEOUT_SECONDS,
    NO_CANDIDATE_WAIT_SECONDS,
    REPLICA_CREATE_TIMEOUT_SECONDS,
)

log = logging.getLogger("tokpay.controller")


class Reconfiguration:
    def __init__(self, shard_map: ShardMap, liveness: Liveness, placement: Placement) -> None:
        self._map = shard_map
        self._liveness = liveness
        self._placement = placement
        self.failovers = 0
        self.rebuilds = 0

    async def _ask(self, member: Member, method: str, *args: Any) -> Any:
        """Call ``method`` on a replica, bounded in time."""
        handle = await self._placement.handle(member)
        return await asyncio.wait_for(
            getattr(handle, method).remote(*args), CONTROLLER_CALL_TIMEOUT_SECONDS
        )

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

    async def _candidate(self, g: Group) -> Member | None:
        """Which copy to promote: one that holds every acknowledged record.

        The backup, if in sync. While a new backup is being installed, it holds
        everything acknowledged once its install finished (the primary acknowledges
        nothing in between); before that, the previous backup (the standby) does.
        """
        dead = self._liveness.dead
        if g.backup is not None and not dead(g.backup.name):
            if g.backup_ready:
                return g.backup
            try:
                status = await self._ask(g.backup, "replica_status")
                if status.role == "backup" and status.installed:
                    return g.backup
            except Exception as error:
                log.info("status of %s failed: %r", g.backup.name, error)
        if g.standby is not None and not dead(g.standby.name):
            return g.standby
        return None

    async def fail_over(self, group: str) -> None:
        g = self._map.groups[group]
        old = g.primary
        revoking = self._liveness.revoking
        revoking.add(group)
        try:
            # The old primary may still be running: its lease must run out first.
            await asyncio.sleep(max(0.0, self._liveness.lease_over_at(group) - time.monotonic()))
            chosen = await self._candidate(g)
            if chosen is None:
                log.critical("%s: primary and backup both lost; waiting for one to return", group)
                await asyncio.sleep(NO_CANDIDATE_WAIT_SECONDS)
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
            await self._map.save()
            self._placement.mark_suspect(old)
            if not await self._ask(chosen, "promote", epoch):
                raise RuntimeError(f"{chosen.name} refused promotion to epoch {epoch}")
            g.address = await self._ask(chosen, "channel_address")
            await self._map.save()
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
            revoking.discard(group)
        self._placement.retire(old)
        for member in others:
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

    async def replace_backup(self, group: str, *, lost: bool = True) -> None:
        g = self._map.groups[group]
        primary = g.primary
        if primary is None:
            return
        if g.address is None:
            await self._finish_promotion(group, primary)
        self._set_aside_old_backup(g, lost=lost)
        placement = self._placement
        node = placement.pick_node({primary.node} | ({g.standby.node} if g.standby else set()))
        if node is None:
            node = placement.pick_node({primary.node})
        if node is None:
            g.backup, g.backup_ready, g.backup_address = None, False, None
            await self._map.save()
            log.error("%s: no live node for a backup; writes wait", group)
            await asyncio.sleep(NO_CANDIDATE_WAIT_SECONDS)
            return
        epoch = g.epoch + 1
        member = self._map.new_member(group, node)
        g.epoch, g.backup, g.backup_ready, g.backup_address = epoch, member, False, None
        await self._map.save()
        started = time.monotonic()
        try:
            handle = placement.spawn(group, member, epoch, "backup")
            await asyncio.wait_for(handle.ready.remote(), REPLICA_CREATE_TIMEOUT_SECONDS)
            address = await asyncio.wait_for(
                handle.channel_address.remote(), CONTROLLER_CALL_TIMEOUT_SECONDS
            )
            attach = (await placement.handle(primary)).attach_backup.remote(epoch, address)
            await asyncio.wait_for(attach, REPLICA_CREATE_TIMEOUT_SECONDS)
        except Exception:
            placement.mark_suspect(member)
            await placement.kill(member)
            g.backup = None
            await self._map.save()
            raise
        standby, g.standby = g.standby, None
        g.backup_ready = True
        g.backup_address = address
        await self._map.save()
        placement.retire(standby)
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
