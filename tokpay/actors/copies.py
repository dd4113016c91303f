"""Which copy of a replica group holds every acknowledged record: the proof file and the choice.

Every cluster replica keeps a small proof in its directory (``replica.json``, written
atomically at each role change): its epoch and role, and the highest epoch at which it
was the primary or an in-sync backup. A record is acknowledged at epoch E only once the
primary of E and the one backup of E hold it, and a copy in sync at E holds everything
acknowledged up to E. So after a failure the controller reads the proofs (from live
replicas, or from the node disks after a restart) and ``choose_copy`` picks the copy in
sync at the highest epoch, or keeps the group down and says why. It never picks by "the
newest file", never an installing backup, and never a directory whose log is shorter
than its proof says.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from enum import StrEnum
from pathlib import Path

import msgspec

from tokpay.actors.protocol import ReplicaProof
from tokpay.wal import WalError, WriteAheadLog
from tokpay.wal.distrust import UntrustedCopy, check_trusted

PROOF_FILE = "replica.json"
WAL_DIR = "wal"
EARLY_WAL_DIR = "early-wal"
"""Where an installing backup keeps the records it acknowledges before its state copy lands."""


class ProofRole(StrEnum):
    PRIMARY = "primary"
    IN_SYNC = "backup-in-sync"
    INSTALLING = "backup-installing"
    RETIRED = "retired"


# -- the file ------------------------------------------------------------------------------------


def write_proof(root: Path, proof: ReplicaProof, *, fsync: bool) -> None:
    """Replace ``root/replica.json`` atomically: temporary file, fsync, rename, fsync dir."""
    path = root / PROOF_FILE
    temporary = root / f".{PROOF_FILE}.tmp"
    root.mkdir(parents=True, exist_ok=True)
    with temporary.open("wb") as out:
        out.write(msgspec.json.encode(proof))
        out.flush()
        if fsync:
            os.fsync(out.fileno())
    os.replace(temporary, path)
    if fsync:
        directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def read_proof(root: Path) -> ReplicaProof | None:
    """The proof in ``root``, or None if there is none (or it does not decode)."""
    try:
        return msgspec.json.decode((root / PROOF_FILE).read_bytes(), type=ReplicaProof)
    except (OSError, msgspec.DecodeError):
        return None


class ProofKeeper:
    """A replica's side: rewrite the proof on every role change, before acting on it."""

    def __init__(self, root: Path, group: str, member: str, *, fsync: bool) -> None:
        self._root = root
        self._group = group
        self._member = member
        self._fsync = fsync
        previous = read_proof(root)
        # A copy reopened from its disk keeps what it proved before.
        self.proof: ReplicaProof | None = previous if previous and previous.group == group else None

    def _write(self, epoch: int, role: ProofRole, sequence: int, *, in_sync: bool) -> None:
        old = self.proof
        primary = role is ProofRole.PRIMARY
        self.proof = ReplicaProof(
            group=self._group,
            member=self._member,
            epoch=epoch,
            role=str(role),
            in_sync_epoch=epoch if in_sync else (old.in_sync_epoch if old else 0),
            primary_at_in_sync=primary if in_sync else bool(old and old.primary_at_in_sync),
            sequence=max(sequence, old.sequence if old else 0),
        )
        write_proof(self._root, self.proof, fsync=self._fsync)

    def primary(self, epoch: int, sequence: int) -> None:
        self._write(epoch, ProofRole.PRIMARY, sequence, in_sync=True)

    def installing(self, epoch: int) -> None:
        self.proof = None  # a new backup's directory proves nothing until installed
        self._write(epoch, ProofRole.INSTALLING, 0, in_sync=False)

    def in_sync(self, epoch: int, sequence: int) -> None:
        self._write(epoch, ProofRole.IN_SYNC, sequence, in_sync=True)

    def retired(self) -> None:
        old = self.proof
        if old is not None and old.role != ProofRole.RETIRED:
            self._write(old.epoch, ProofRole.RETIRED, old.sequence, in_sync=False)


# -- what a node holds ---------------------------------------------------------------------------


class CopyView(msgspec.Struct, frozen=True):
    """One copy of a group as the controller sees it."""

    directory: str
    """Its directory's name under the node's ``replicas/``."""
    node: str
    proof: ReplicaProof
    log_end: int | None
    """The last sequence its log holds (None: no log that opens)."""
    live: bool = False
    """A running replica (the one named in the proof): promoted in place if chosen."""
    in_use: bool = False
    """Read from a disk while some process still has it open: not read, not chosen yet
    (its proof still counts: what it was in sync at was acknowledged)."""
    untrusted: str = ""
    """Why a write or fsync of this copy failed (``tokpay.wal.distrust``): never chosen."""
    kept_nothing: bool = False
    """An installing backup that holds no record yet: nothing was acknowledged through it.
    False when unknown (its directory in use, or read live)."""


def log_end(root: Path) -> int | None:
    """The last sequence of the log in ``root`` (None if there is none or it is damaged).

    Only for a directory no running replica uses: opening cuts a torn tail.
    """
    if not (root / WAL_DIR).is_dir():
        return None
    try:
        with WriteAheadLog.open(root / WAL_DIR, fsync=False) as wal:
            return wal.last_sequence
    except (WalError, OSError):
        return None


def kept_nothing(root: Path) -> bool:
    """Whether an installing backup's directory holds no record at all: neither in a log
    nor among the records kept before its state copy (``EARLY_WAL_DIR``). A primary
    acknowledges through a new backup from its attach on, each record once the backup
    logged it, so a backup that kept nothing had nothing acknowledged through it."""
    return not (_holds_records(root / WAL_DIR) or _holds_records(root / EARLY_WAL_DIR))


def _holds_records(directory: Path) -> bool:
    if not directory.is_dir():
        return False
    try:
        with WriteAheadLog.open(directory, fsync=False) as wal:
            return next(iter(wal.records(0)), None) is not None
    except (WalError, OSError):
        return True  # damaged: it may have held records


def untrusted_reason(root: Path) -> str:
    """Why ``root``'s copy saw a failed write or fsync ("" if it did not)."""
    try:
        check_trusted(root)
    except UntrustedCopy as error:
        return str(error)
    return ""


def directories_in_use(replicas: Path) -> set[str]:
    """The directories under ``replicas`` that a running process has a file open in.

    A replica keeps its log open while it lives, so this tells, on the node itself,
    whether a replica the controller gave up on is really gone: Ray's kill returns
    before the process ends, and a process that missed its heartbeats may run on.
    """
    prefix = f"{replicas.resolve()}/"
    used: set[str] = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            with contextlib.suppress(OSError):  # closed since it was listed
                target = os.readlink(fd)
                if target.startswith(prefix):
                    used.add(target[len(prefix) :].split("/", 1)[0])
    return used


def copies_on_disk(base: Path, node: str, group: str | None, skip: set[str]) -> list[CopyView]:
    """The copies of ``group`` (None: of every group) in ``base/replicas`` (a node's disk),
    except those whose proof names a replica in ``skip`` (running ones: ask them instead).
    A directory some process still has open is listed unread (``in_use``): a log is never
    opened under its writer."""
    found = []
    replicas = base / "replicas"
    in_use = directories_in_use(replicas) if replicas.is_dir() else set()
    for root in sorted(replicas.iterdir()) if replicas.is_dir() else []:
        proof = read_proof(root)
        if proof is None or (group is not None and proof.group != group) or proof.member in skip:
            continue
        if root.name in in_use:
            found.append(CopyView(root.name, node, proof, None, in_use=True))
        else:
            installing = proof.role == ProofRole.INSTALLING
            found.append(
                CopyView(
                    root.name,
                    node,
                    proof,
                    log_end(root),
                    untrusted=untrusted_reason(root),
                    kept_nothing=installing and kept_nothing(root),
                )
            )
    return found


def delete_old_copies(base: Path, group: str, keep: set[str], epoch: int) -> list[str]:
    """Delete the copies of ``group`` in ``base/replicas`` that no choice can take any
    more: not in ``keep`` (the current primary's and backup's directories) and never in
    sync at ``epoch`` or later, once the group is in sync again at ``epoch``."""
    deleted = []
    replicas = base / "replicas"
    keep = keep | (directories_in_use(replicas) if replicas.is_dir() else set())
    for root in sorted(replicas.iterdir()) if replicas.is_dir() else []:
        proof = read_proof(root)
        if proof is None or proof.group != group or root.name in keep:
            continue
        if proof.in_sync_epoch < epoch and proof.epoch < epoch:
            shutil.rmtree(root)
            deleted.append(root.name)
    return deleted


# -- the choice ----------------------------------------------------------------------------------


class CopyChoice(msgspec.Struct, frozen=True):
    copy: CopyView | None
    """The copy to resume from; None: the group stays down (``reason`` says why)."""
    reason: str


def rejection(copy: CopyView) -> str | None:
    """Why ``copy`` cannot be resumed from at all, or None."""
    proof = copy.proof
    if copy.in_use:
        return f"{copy.directory} on {copy.node} is still open in a running process"
    if copy.untrusted:
        return f"{copy.directory} on {copy.node} is untrusted: {copy.untrusted}"
    if proof.in_sync_epoch == 0:
        return f"{copy.directory} on {copy.node} was never in sync ({proof.role})"
    if copy.log_end is None:
        return f"{copy.directory} on {copy.node} has no log that opens"
    if copy.log_end < proof.sequence:
        return (
            f"{copy.directory} on {copy.node}: its log ends at {copy.log_end}, before "
            f"sequence {proof.sequence} it held (truncated)"
        )
    return None


def acknowledged_bound(copies: list[CopyView], acked_epoch: int | None) -> int:
    """The highest epoch at which writes may have been acknowledged.

    At least every epoch a copy proves it was in sync at (damaged copies too: their
    records were acknowledged). With the shard map, ``acked_epoch``: the last epoch at
    which a primary was told to attach a backup (none is acknowledged at a later one),
    unless that epoch's backup shows it holds no record at all: each epoch has one
    backup (every rebuild bumps the epoch) and a primary is in sync at its epoch, so a
    copy at ``acked_epoch`` that is not in sync there is that backup. Not being in sync
    is not enough: the primary acknowledges through an installing backup from the
    attach on (the backup keeps those records until its state copy lands), so only a
    backup that kept nothing proves that nothing was acknowledged at that epoch.
    """
    bound = max((c.proof.in_sync_epoch for c in copies), default=0)
    # A backup that holds records it was sent at an epoch it never got in sync at (still
    # installing, or fenced while installing) shows that its primary acknowledged writes
    # at that epoch: no copy in sync only before it holds them all.
    bound = max(
        [bound]
        + [
            c.proof.epoch
            for c in copies
            if c.proof.in_sync_epoch < c.proof.epoch and not c.kept_nothing
        ]
    )
    if acked_epoch is None:
        return bound
    if any(
        c.proof.epoch == acked_epoch and c.proof.in_sync_epoch < acked_epoch and c.kept_nothing
        for c in copies
    ):
        acked_epoch -= 1
    return max(bound, acked_epoch)


def choose_copy(
    group: str,
    copies: list[CopyView],
    *,
    acked_epoch: int | None,
    unreachable: list[str] | None = None,
) -> CopyChoice:
    """The copy of ``group`` that holds every acknowledged record, or why there is none.

    ``copies`` are the ones that could be read; ``acked_epoch`` comes from the shard map
    (see ``acknowledged_bound``; None when the map is lost);
    ``unreachable`` names the copies the map lists on nodes that are down. Among complete copies: the highest epoch in sync, then
    the primary of that epoch, then the longer log.
    """
    bound = acknowledged_bound(copies, acked_epoch)
    usable = [c for c in copies if rejection(c) is None]
    rejected = [r for c in copies if (r := rejection(c)) is not None]
    waiting = (
        f"; waiting for {', '.join(unreachable)} (start its node again)" if unreachable else ""
    )
    if not usable:
        found = "; ".join(rejected) if rejected else "no copy found on the running nodes"
        return CopyChoice(None, f"{group} is down: no complete copy ({found}){waiting}")
    best = max(
        usable,
        key=lambda c: (c.proof.in_sync_epoch, c.proof.primary_at_in_sync, c.log_end or 0, c.live),
    )
    if best.proof.in_sync_epoch < bound:
        return CopyChoice(
            None,
            f"{group} is down: the best copy ({best.directory} on {best.node}) is in sync "
            f"only up to epoch {best.proof.in_sync_epoch}, and writes may have been "
            f"acknowledged at epoch {bound}{'; ' if rejected else ''}{'; '.join(rejected)}"
            f"{waiting}",
        )
    return CopyChoice(
        best,
        f"{group}: {best.directory} on {best.node} holds every acknowledged record "
        f"(in sync at epoch {best.proof.in_sync_epoch}, log to {best.log_end})",
    )
