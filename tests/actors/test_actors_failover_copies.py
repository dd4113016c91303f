"""Which copy a group resumes from (tokpay.actors.copies): proofs on real disks, real logs.

Each copy here is a real directory with a proof file written by ``ProofKeeper`` through
the same role changes a replica goes through, and a real write-ahead log, read back the
way a node reads its disk for the controller. The choice must never fall on a copy that
may lack an acknowledged record; with only such copies the group stays down and the
reason says what to do.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.actors.test_actors_replication import attach_backup
from tokpay.actors.copies import (
    EARLY_WAL_DIR,
    PROOF_FILE,
    CopyView,
    ProofKeeper,
    ProofRole,
    choose_copy,
    copies_on_disk,
    delete_old_copies,
    read_proof,
)
from tokpay.actors.protocol import ReplicaSpec
from tokpay.actors.recovery import RecoveryRefused, groups_from_copies
from tokpay.actors.replica_host import ReplicaHost
from tokpay.actors.shard import ShardService
from tokpay.wal import WriteAheadLog
from tokpay.wal.distrust import distrust

GROUP = "shard-0"


class Disk:
    """One node's disk (``<base>/replicas/<copy>``), written as a replica would."""

    def __init__(self, base: Path, node: str) -> None:
        self.base = base
        self.node = node

    def copy(self, name: str, records: int, group: str = GROUP) -> ProofKeeper:
        """A copy whose log holds ``records`` records; its proof, to drive through roles."""
        root = self.base / "replicas" / name
        with WriteAheadLog.open(root / "wal", fsync=False) as wal:
            for _ in range(records):
                wal.append(1, b"record")
        return ProofKeeper(root, group, name, fsync=True)

    def read(self, skip: frozenset[str] = frozenset()) -> list[CopyView]:
        return copies_on_disk(self.base, self.node, GROUP, set(skip))

    def read_all(self) -> list[CopyView]:
        """Every group's copies, as ``cluster recover`` reads a node."""
        return copies_on_disk(self.base, self.node, None, set())


@pytest.fixture
def n1(tmp_path: Path) -> Disk:
    return Disk(tmp_path / "n1", "n1")


@pytest.fixture
def n2(tmp_path: Path) -> Disk:
    return Disk(tmp_path / "n2", "n2")


def chosen(copies: list[CopyView], acked_epoch: int | None, **kwargs: object) -> str | None:
    choice = choose_copy(GROUP, copies, acked_epoch=acked_epoch, **kwargs)  # type: ignore[arg-type]
    return None if choice.copy is None else choice.copy.directory


def test_proof_follows_the_roles_and_is_replaced_atomically(n1: Disk) -> None:
    keeper = n1.copy("b", records=0)
    keeper.installing(4)
    assert keeper.proof is not None and keeper.proof.in_sync_epoch == 0
    keeper.in_sync(4, sequence=0)
    keeper.primary(5, sequence=7)
    keeper.retired()
    proof = read_proof(n1.base / "replicas" / "b")
    assert proof is not None
    assert (proof.role, proof.epoch, proof.in_sync_epoch, proof.primary_at_in_sync) == (
        str(ProofRole.RETIRED),
        5,
        5,
        True,
    )
    assert proof.sequence == 7
    assert sorted(p.name for p in (n1.base / "replicas" / "b").iterdir()) == [PROOF_FILE, "wal"]


def test_out_of_sync_backup_is_never_chosen(n1: Disk, n2: Disk) -> None:
    n1.copy("primary", records=9).primary(3, sequence=9)
    # A new backup of epoch 4 that never finished its install: longer-looking, newer epoch.
    n2.copy("new-backup", records=0).installing(4)
    copies = n1.read() + n2.read()
    assert chosen(copies, acked_epoch=4) == "primary"
    only = choose_copy(GROUP, n2.read(), acked_epoch=4)
    assert only.copy is None
    assert "never in sync" in only.reason


def test_retired_leftover_directory_loses_to_the_complete_copy(n1: Disk, n2: Disk) -> None:
    leftover = n1.copy("old-backup", records=50)
    leftover.in_sync(2, sequence=50)
    leftover.retired()
    n2.copy("primary", records=20).primary(5, sequence=20)
    assert chosen(n1.read() + n2.read(), acked_epoch=5) == "primary"
    alone = choose_copy(GROUP, n1.read(), acked_epoch=5, unreachable=["tokpay-shard-0-g9 on n2"])
    assert alone.copy is None
    assert "only up to epoch 2" in alone.reason and "tokpay-shard-0-g9 on n2" in alone.reason


def test_older_epoch_loses_and_the_primary_wins_a_tie(n1: Disk, n2: Disk) -> None:
    n1.copy("at-3", records=30).in_sync(3, sequence=30)
    n2.copy("at-4", records=10).in_sync(4, sequence=10)
    assert chosen(n1.read() + n2.read(), acked_epoch=4) == "at-4"
    n1.copy("primary-at-4", records=10).primary(4, sequence=10)
    assert chosen(n1.read() + n2.read(), acked_epoch=4) == "primary-at-4"


def test_truncated_log_is_never_chosen(n1: Disk, n2: Disk) -> None:
    cut = n1.copy("cut", records=5)
    cut.primary(6, sequence=12)  # its proof says the log held 12 records; 5 remain
    n2.copy("backup", records=12).in_sync(6, sequence=12)
    assert chosen(n1.read() + n2.read(), acked_epoch=6) == "backup"
    alone = choose_copy(GROUP, n1.read(), acked_epoch=6)
    assert alone.copy is None and "truncated" in alone.reason


def test_a_wiped_copy_raises_the_bar_for_the_others(n1: Disk, n2: Disk) -> None:
    """A copy in sync at epoch 7 whose log is gone still proves writes were acknowledged
    at 7: the copy of epoch 6 must not be taken for complete, even with no shard map."""
    wiped = n1.copy("wiped", records=0)
    wiped.primary(7, sequence=40)
    n2.copy("older", records=30).in_sync(6, sequence=30)
    choice = choose_copy(GROUP, n1.read() + n2.read(), acked_epoch=None)
    assert choice.copy is None
    assert "acknowledged at epoch 7" in choice.reason


def test_only_bad_copies_keep_the_group_down_with_a_reason(n1: Disk, n2: Disk) -> None:
    n1.copy("installing", records=0).installing(8)
    n2.copy("cut", records=1).in_sync(7, sequence=9)
    choice = choose_copy(
        GROUP,
        n1.read() + n2.read(),
        acked_epoch=8,
        unreachable=["tokpay-shard-0-g3 on node n0"],
    )
    assert choice.copy is None
    assert choice.reason.startswith(f"{GROUP} is down")
    assert "start its node again" in choice.reason and "n0" in choice.reason


def test_standby_kept_during_install_loses_to_the_installed_backup(n1: Disk, n2: Disk) -> None:
    """Issue 11 item 5: the new backup finished its install, the primary acknowledged
    through it at epoch 4, the controller restarted before it marked it in sync, and the
    primary died. The standby (in sync at 3) lacks those writes: the new backup wins."""
    standby = n1.copy("standby", records=10)
    standby.in_sync(3, sequence=10)
    new_backup = n2.copy("new", records=10)
    new_backup.installing(4)
    new_backup.in_sync(4, sequence=10)
    copies = [
        CopyView(c.directory, c.node, c.proof, c.log_end, live=True) for c in n1.read() + n2.read()
    ]
    assert chosen(copies, acked_epoch=4) == "new"


def test_backup_fenced_after_silence_is_chosen_when_the_primary_dies(n1: Disk, n2: Disk) -> None:
    """Issue 11 item 5: the in-sync backup went silent for 0.8 s and was fenced; its
    replacement was still installing when the primary died. No write was acknowledged
    at epoch 4 (its one backup never got in sync), so the fenced copy holds them all."""
    fenced = n1.copy("fenced", records=10)
    fenced.in_sync(3, sequence=10)
    fenced.retired()
    n2.copy("installing", records=0).installing(4)
    copies = n1.read() + n2.read()
    assert chosen(copies, acked_epoch=4) == "fenced"
    # Had the new backup got in sync, the fenced copy would lack epoch 4's writes.
    assert chosen(n1.read(), acked_epoch=4) is None


def test_an_installing_backup_that_kept_records_keeps_a_lesser_copy_from_being_chosen(
    n1: Disk, n2: Disk
) -> None:
    """The primary acknowledges through a new backup from its attach on: the backup logs
    each record in its early log before its state copy lands, and says ``installing``
    until then. Once it kept a record, writes were acknowledged at its epoch, so the
    standby or fenced copy in sync one epoch earlier lacks them: the group waits for the
    primary's node rather than lose them."""
    fenced = n1.copy("fenced", records=10)
    fenced.in_sync(3, sequence=10)
    fenced.retired()
    n2.copy("installing", records=0).installing(4)
    with WriteAheadLog.open(
        n2.base / "replicas" / "installing" / EARLY_WAL_DIR, fsync=False, floor=10
    ) as early:
        early.append(4, b"acknowledged at epoch 4")
    (installing,) = n2.read()
    assert not installing.kept_nothing
    choice = choose_copy(GROUP, n1.read() + n2.read(), acked_epoch=4)
    assert choice.copy is None
    assert "acknowledged at epoch 4" in choice.reason
    # Without the map (cluster recover) or with a map older than the attach: the same.
    for acked in (None, 3):
        assert choose_copy(GROUP, n1.read() + n2.read(), acked_epoch=acked).copy is None
    # The same backup before its first record proves nothing was acknowledged at 4.
    empty = n2.copy("installing-empty", records=0)
    empty.installing(4)
    WriteAheadLog.open(
        n2.base / "replicas" / "installing-empty" / EARLY_WAL_DIR, fsync=False, floor=10
    ).close()
    bare = [c for c in n2.read() if c.directory == "installing-empty"]
    assert bare[0].kept_nothing
    assert chosen(n1.read() + bare, acked_epoch=4) == "fenced"


def test_a_real_backup_proves_its_install_promotion_and_fence(tmp_path: Path) -> None:
    root = tmp_path / "p"
    primary = ReplicaHost(
        "primary",
        ReplicaSpec(name="p", epoch=1, role="primary"),
        root,
        lambda options: ShardService(0, 2, root.parent, **options),
        service_class=ShardService,
        fsync=True,
    )
    backup = attach_backup(primary, tmp_path / "b", epoch=2)
    with backup.host.lock:  # the install ends under the backup's lock, proof written last
        proof = read_proof(tmp_path / "b")
    assert proof is not None and (proof.role, proof.in_sync_epoch) == ("backup-in-sync", 2)
    backup.promote()
    backup.host.fence()
    proof = read_proof(tmp_path / "b")
    assert proof is not None
    assert (proof.role, proof.in_sync_epoch, proof.primary_at_in_sync) == ("retired", 3, True)


def test_old_copies_are_deleted_once_the_group_is_in_sync_again(n1: Disk) -> None:
    n1.copy("primary", records=3).primary(6, sequence=3)
    n1.copy("retired", records=3).in_sync(4, sequence=3)
    n1.copy("new-backup", records=3).in_sync(6, sequence=3)
    # A copy of another group is never touched.
    n1.copy("other-group", records=1, group="shard-1").primary(1, sequence=1)
    deleted = delete_old_copies(n1.base, GROUP, {"primary", "new-backup"}, epoch=6)
    assert deleted == ["retired"]
    left = sorted(p.name for p in (n1.base / "replicas").iterdir())
    assert left == ["new-backup", "other-group", "primary"]


def test_recovery_rebuilds_groups_from_the_disks_or_lists_what_it_cannot_prove(
    n1: Disk, n2: Disk
) -> None:
    n1.copy("s0-primary", records=8).primary(5, sequence=8)
    n2.copy("s0-installing", records=0).installing(6)
    n2.copy("s1-backup", records=4, group="shard-1").in_sync(3, sequence=4)
    groups = groups_from_copies(["shard-0", "shard-1"], n1.read_all() + n2.read_all())
    g0, g1 = groups["shard-0"], groups["shard-1"]
    assert g0.primary is not None and g0.primary.root == "s0-primary"
    assert (g0.epoch, g0.attach_epoch) == (6, 5)
    assert g1.primary is not None and (g1.primary.node, g1.epoch) == ("n2", 3)
    # shard-1's only copy lost records: nothing is recovered, and the refusal names it.
    n2.copy("s1-cut", records=1, group="shard-1").in_sync(4, sequence=9)
    with pytest.raises(RecoveryRefused, match="shard-1 is down") as refused:
        groups_from_copies(["shard-0", "shard-1"], n1.read() + n2.read_all())
    assert "shard-0" not in str(refused.value)


def test_a_directory_open_in_a_running_process_is_not_read_nor_chosen(n1: Disk, n2: Disk) -> None:
    """Ray's kill returns before the replica's process ends: its log is not opened under
    it (opening cuts a torn tail), and the group waits rather than take a lesser copy."""
    n1.copy("old-primary", records=6).primary(5, sequence=6)
    n2.copy("older", records=6).in_sync(4, sequence=6)
    held = (n1.base / "replicas" / "old-primary" / PROOF_FILE).open("rb")
    try:
        (busy,) = n1.read()
        assert busy.in_use and busy.log_end is None
        choice = choose_copy(GROUP, [busy, *n2.read()], acked_epoch=5)
        assert choice.copy is None and "still open in a running process" in choice.reason
    finally:
        held.close()
    assert chosen(n1.read() + n2.read(), acked_epoch=5) == "old-primary"


def test_a_failed_rebuild_left_in_the_map_does_not_keep_the_group_down(n1: Disk, n2: Disk) -> None:
    """Both nodes of a group died while a new backup was being attached: the map kept
    the rebuild's epoch (3) but forgot its backup. That backup's own proof (at epoch 3,
    never in sync) shows nothing was acknowledged at 3, so the old primary is complete."""
    n1.copy("primary", records=7).primary(2, sequence=7)
    n2.copy("failed-rebuild", records=0).installing(3)
    assert chosen(n1.read() + n2.read(), acked_epoch=3) == "primary"
    assert chosen(n1.read(), acked_epoch=3) is None


def test_a_copy_whose_fsync_failed_is_never_chosen(n1: Disk, n2: Disk) -> None:
    """Even the best proof loses to a lesser complete copy once its write or fsync failed."""
    n1.copy("failed-primary", records=9).primary(5, sequence=9)
    n2.copy("backup", records=9).in_sync(5, sequence=9)
    distrust(n1.base / "replicas" / "failed-primary", "log write failed: EIO")
    assert chosen(n1.read() + n2.read(), acked_epoch=5) == "backup"
    only = choose_copy(GROUP, n1.read(), acked_epoch=5)
    assert only.copy is None and "untrusted" in only.reason and "EIO" in only.reason


def test_the_head_lost_with_its_disk_and_the_map_every_group_recovers_from_the_others(
    tmp_path: Path, n1: Disk, n2: Disk
) -> None:
    """The head machine is gone for good: Redis (the map) and its disk with it. Each group
    had one copy there; the copy left elsewhere holds every acknowledged record, because
    an acknowledgement needed both. (``tokpay drill --target head-lost`` does it for real.)"""
    head = Disk(tmp_path / "n0", "n0")
    head.copy("s0-primary", records=9).primary(4, sequence=9)
    n1.copy("s0-backup", records=9).in_sync(4, sequence=9)
    n2.copy("s1-primary", records=5, group="shard-1").primary(3, sequence=5)
    head.copy("s1-backup", records=5, group="shard-1").in_sync(3, sequence=5)
    survivors = n1.read_all() + n2.read_all()  # the head's disk is not there to read
    groups = groups_from_copies(["shard-0", "shard-1"], survivors)
    g0, g1 = groups["shard-0"], groups["shard-1"]
    assert g0.primary is not None and (g0.primary.root, g0.epoch) == ("s0-backup", 4)
    assert g1.primary is not None and (g1.primary.root, g1.epoch) == ("s1-primary", 3)
    # A backup left mid-install at a newer epoch shows writes may have been acknowledged
    # there, through the lost head's primary: the older backup is not proof enough.
    n2.copy("s0-installing", records=2).installing(5)
    with pytest.raises(RecoveryRefused, match="shard-0 is down"):
        groups_from_copies(["shard-0", "shard-1"], n1.read_all() + n2.read_all())
