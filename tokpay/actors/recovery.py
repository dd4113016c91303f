"""When the cluster state is lost (Redis wiped): rebuild the shard map from the disks.

The controller keeps its map in the GCS. If that is gone while the replicas' disks are
not, a new controller must neither start an empty ledger over them (``refuse_fresh``)
nor guess: ``rebuild_map`` reads every node's copies, lets ``choose_copy`` prove each
group's complete copy, and records it as the group's (lost) primary; the monitor then
fails over to it from its disk, as after any restart, and builds it a backup. If any
group cannot be proven complete, nothing is recorded and the refusal lists them all.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from tokpay.actors.copies import CopyView, choose_copy
from tokpay.actors.placement import Placement
from tokpay.actors.shard_map import Group, Member, ShardMap

log = logging.getLogger("tokpay.controller")

RECOVER_HINT = "tokpay cluster recover --data-dir DATA_DIR"


class RecoveryRefused(RuntimeError):
    """The disks do not prove what the cluster state should be; nothing was changed."""


async def _every_copy(placement: Placement, nodes: list[str]) -> list[CopyView]:
    await placement.refresh_nodes(force=True)
    copies, silent = await placement.copies_on_disks(None, set())
    missing = sorted((set(nodes) - placement.live_nodes) | silent)
    if missing:
        raise RecoveryRefused(
            f"nodes {', '.join(missing)} are not running: every node's disk must be read "
            "to prove a group complete; start them, then recover again"
        )
    return copies


async def refuse_fresh(placement: Placement, nodes: list[str]) -> None:
    """Raise if any node holds replica data: a new, empty ledger would hide it."""
    await placement.refresh_nodes(force=True)
    copies, _ = await placement.copies_on_disks(None, set())
    if copies:
        where = sorted({f"{c.node}:{c.directory}" for c in copies})
        raise RecoveryRefused(
            f"replica data exists ({', '.join(where[:6])}{' ...' if len(where) > 6 else ''}) "
            f"but the cluster state has no shard map: refusing to start an empty ledger over "
            f"it. Rebuild the map from the disks: {RECOVER_HINT}"
        )


def groups_from_copies(groups: list[str], copies: list[CopyView]) -> dict[str, Group]:
    """Each group's proven copy, recorded as its primary (not running: the monitor
    fails over to it from its disk) at the highest epoch any copy of the group saw;
    or RecoveryRefused listing every group that cannot be proven complete."""
    by_group: dict[str, list[CopyView]] = defaultdict(list)
    for copy in copies:
        by_group[copy.proof.group].append(copy)
    unknown = sorted(set(by_group) - set(groups))
    if unknown:
        raise RecoveryRefused(
            f"the disks hold groups {', '.join(unknown)}, not in a ledger of these "
            f"{len(groups)} groups: recover with the shard count they had"
        )
    chosen: dict[str, Group] = {}
    refused = []
    for group in groups:
        choice = choose_copy(group, by_group.get(group, []), acked_epoch=None)
        if choice.copy is None:
            refused.append(choice.reason)
            continue
        copy = choice.copy
        chosen[group] = Group(
            epoch=max(c.proof.epoch for c in by_group[group]),
            primary=Member(name=copy.proof.member, node=copy.node, root=copy.directory),
            attach_epoch=copy.proof.in_sync_epoch,
        )
    if refused:
        raise RecoveryRefused("cannot prove these groups complete:\n" + "\n".join(refused))
    return chosen


async def rebuild_from_disks(shard_map: ShardMap, placement: Placement) -> list[str]:
    """Fill the empty ``shard_map`` from the copies on every node; the recovered groups."""
    copies = await _every_copy(placement, shard_map.state.nodes)
    chosen = groups_from_copies(list(shard_map.shard_of), copies)
    shard_map.skip_generations_of([c.proof.member for c in copies] + [c.directory for c in copies])
    shard_map.state.groups.update(chosen)
    await shard_map.save()
    for group, g in chosen.items():
        log.warning("%s recovered from the disks: %s at epoch %d", group, g.primary, g.epoch)
    return sorted(chosen)
