"""What every replicated state machine does with its files: recover, log, follow, install.

A shard and the coordinator differ in what their records mean, not in how records are
kept. ``ReplicatedService`` holds the shared part once: open the latest snapshot and the
write-ahead log, replay the log after the snapshot, append one record per batch through
the ``ReplicatedLog`` (durable here and on the backup, or refused), take a snapshot every
``SNAPSHOT_EVERY_RECORDS`` records, follow a primary's records as a backup, and build a
backup's directory from its primary's state. A subclass supplies how to restore its
state from a snapshot, how to apply one record, and how to encode a snapshot; a state
machine whose state lives in a store of its own (a shard) instead overrides the hooks
that open it, write each record to it and checkpoint it (``open_state``,
``record_applied``, ``checkpoint``, ``export_state``, ``adopt_state``).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, TypedDict

from tokpay.actors.channel import NotPrimary
from tokpay.actors.protocol import ShippedRecord, decode
from tokpay.actors.replication import ReplicatedLog, ReplicationFailed
from tokpay.actors.timing import SNAPSHOT_EVERY_RECORDS
from tokpay.ledger.errors import InvariantViolation, check
from tokpay.wal import SequenceGap, WriteAheadLog, read_latest_snapshot, write_snapshot
from tokpay.wal._files import fsync_file
from tokpay.wal.distrust import check_trusted, distrust

log = logging.getLogger("tokpay.replica")

SNAPSHOTS_DIR = "snapshots"
WAL_DIR = "wal"
SINGLE_NODE_EPOCH = 1
"""The epoch of a copy that has no peers (the single-node default)."""

STOP_EXIT_CODE = 70
"""The exit status of a replica that stopped itself rather than serve a state it cannot trust."""


class LogOptions(TypedDict, total=False):
    """How a state machine's copy is opened (every service takes these as keywords)."""

    fsync: bool
    """fsync each record (off only in tests and benchmarks that say so)."""
    epoch: int
    """The epoch its records carry; a backup refuses any other."""
    replicated: bool
    """Appends count only once the backup has them (False: the single-node default)."""
    root: Path
    """Its directory; by default one named after the state machine under the data dir."""
    wal_floor: int
    """The sequence its log starts after (a backup installed from a snapshot)."""


class ReplicatedService(ABC):
    """One copy of a state machine, made durable by a write-ahead log (and a backup)."""

    label = "replica"
    """How log lines name this copy (``shard 3``, ``coordinator``)."""

    def __init__(self, default_root: Path, options: LogOptions) -> None:
        root = options.get("root", default_root)
        fsync = options.get("fsync", True)
        check_trusted(root)
        self._root = root
        self._fsync = fsync
        self._snapshot_dir = root / SNAPSHOTS_DIR
        self.checkpoint_failures = 0
        snapshot_sequence = self.open_state(root)
        self._wal = WriteAheadLog.open(
            root / WAL_DIR, fsync=fsync, floor=options.get("wal_floor", 0)
        )
        self.log = ReplicatedLog(
            self._wal,
            options.get("epoch", SINGLE_NODE_EPOCH),
            required=options.get("replicated", False),
        )
        check(
            self._wal.last_sequence >= snapshot_sequence,
            f"{self.label}: log ends at {self._wal.last_sequence}, before its snapshot at "
            f"{snapshot_sequence}; refusing to start on a lost or replaced log",
        )
        replayed = 0
        for record in self._wal.records(after_sequence=snapshot_sequence):
            self.apply_record(record.payload)
            self.record_applied(record.sequence)
            replayed += 1
        self._records_since_snapshot = replayed
        self.recovered(snapshot_sequence, replayed)

    # -- what a state machine supplies ---------------------------------------------------------

    def open_state(self, root: Path) -> int:
        """Load the state from disk; returns the log sequence it already holds.

        By default the newest snapshot file (a state small enough to encode whole).
        """
        self._snapshot_dir.mkdir(parents=True, exist_ok=True)
        found = read_latest_snapshot(self._snapshot_dir)
        self.restore(None if found is None else found[1])
        return 0 if found is None else found[0]

    def record_applied(self, sequence: int) -> None:  # noqa: B027 (optional hook)
        """Called once record ``sequence`` is durable in the log and applied in memory."""

    def checkpoint(self) -> None:
        """Every ``SNAPSHOT_EVERY_RECORDS`` records: let the log shrink.

        By default a snapshot file of the whole state, then older segments go. A failed
        checkpoint is loud (logged as an error and counted in the stats) but does not fail
        the batch, whose record is already durable; the log simply stays longer.
        """
        try:
            self.write_snapshot()
        except Exception:
            self.checkpoint_failed()

    def checkpoint_failed(self) -> None:
        """Count and log a failed checkpoint (call from the ``except`` that caught it)."""
        self.checkpoint_failures += 1
        log.error(
            "%s: checkpoint failed (%d so far); the log keeps growing until one succeeds",
            self.label,
            self.checkpoint_failures,
            exc_info=True,
        )

    def export_state(self) -> Callable[[Path], int]:
        """Called under the owner's lock when a backup is attached: returns a function, run
        later on another thread, that writes a consistent copy of the state to a file and
        returns the sequence the copy holds (at least the current one)."""
        sequence = self._wal.last_sequence
        payload = self.snapshot_payload()

        def write(path: Path) -> int:
            path.write_bytes(payload)
            fsync_file(path)
            return sequence

        return write

    @classmethod
    def adopt_state(cls, root: Path, copy: Path, sequence: int, *, fsync: bool) -> None:
        """Place a copy made by ``export_state`` where ``open_state`` will find it."""
        write_snapshot(root / SNAPSHOTS_DIR, sequence, copy.read_bytes(), fsync=fsync)
        copy.unlink()

    def restore(self, snapshot: bytes | None) -> None:
        """Set the in-memory state from a snapshot (None: the empty state); used by the
        default ``open_state``."""
        raise NotImplementedError(f"{self.label} keeps no snapshot files")

    @abstractmethod
    def apply_record(self, payload: bytes) -> None:
        """Apply one log record (replayed after a restart, or followed as a backup)."""

    @abstractmethod
    def snapshot_payload(self) -> bytes:
        """The whole in-memory state, encoded: what a snapshot and a backup install carry."""

    def recovered(self, snapshot_sequence: int, replayed: int) -> None:
        """Called once the log is replayed: check invariants, say what was recovered."""
        log.info(
            "%s recovered: snapshot at %d, %d log records replayed",
            self.label,
            snapshot_sequence,
            replayed,
        )

    def note_append(self, seconds: float, items: int) -> None:  # noqa: B027 (optional hook)
        """Called after each durable record (statistics); nothing by default."""

    @abstractmethod
    def empty_record(self) -> bytes:
        """A record that changes nothing when applied (``append_barrier`` logs it)."""

    def append_barrier(self) -> None:
        """Log a record that changes nothing, through the backup: once the new backup of a
        broken log holds it, no copy chosen instead of this one can lack what this one
        shows (``ReplicaHost.attach_backup``). ``ReplicationFailed`` if it does not."""
        self.append(self.empty_record(), 0)

    # -- the log ---------------------------------------------------------------------------------

    @property
    def last_sequence(self) -> int:
        return self._wal.last_sequence

    def append(self, payload: bytes, items: int) -> None:
        """Durable here and on the backup, or ``ReplicationFailed`` (the log is then broken).

        A local write failure stops the process: a failed fsync may have dropped dirty
        pages, so it is never retried; the replica restarts from its log.
        """
        started = time.perf_counter()
        try:
            sequence = self.log.append(payload)
        except ReplicationFailed:
            # The record is in the local log (only the backup failed): keep what the
            # state machine keeps of it in step with the log.
            self._record_applied(self._wal.last_sequence)
            raise
        except Exception as error:
            self.stop_untrusted(f"log write failed: {error!r}")
        self._record_applied(sequence)
        self._after_append(started, items)

    def _record_applied(self, sequence: int) -> None:
        try:
            self.record_applied(sequence)
        except Exception:
            # Memory and log are ahead of the state on disk: restart and replay the log.
            log.critical(
                "%s: writing record %d failed; stopping", self.label, sequence, exc_info=True
            )
            os._exit(STOP_EXIT_CODE)

    def follow(self, payload: bytes) -> bytes:
        """Backup: append the primary's record verbatim (same epoch and sequence), then apply it."""
        shipped = decode(payload, ShippedRecord)
        if shipped.epoch != self.log.epoch:
            raise NotPrimary(
                f"record of epoch {shipped.epoch} refused: this backup follows epoch {self.log.epoch}"
            )
        started = time.perf_counter()
        try:
            self._wal.append(shipped.epoch, shipped.payload, sequence=shipped.sequence)
        except SequenceGap as error:
            raise NotPrimary(f"out of order: {error}") from error
        except Exception as error:
            self.stop_untrusted(f"backup log write failed: {error!r}")
        with self.stop_if_broken():
            self.apply_record(shipped.payload)
        self._record_applied(shipped.sequence)
        self._after_append(started, 1)
        return b""

    def _after_append(self, started: float, items: int) -> None:
        self.note_append(time.perf_counter() - started, items)
        self._records_since_snapshot += 1
        if self._records_since_snapshot >= SNAPSHOT_EVERY_RECORDS:
            self._records_since_snapshot = 0
            self.checkpoint()

    def write_snapshot(self) -> int:
        sequence = self._wal.last_sequence
        write_snapshot(self._snapshot_dir, sequence, self.snapshot_payload())
        self._wal.truncate_before(sequence + 1)
        self._records_since_snapshot = 0
        return sequence

    def stop_untrusted(self, reason: str) -> NoReturn:
        """A write or fsync of this copy failed: mark it untrusted and stop (see
        ``tokpay.wal.distrust``). Never retried: the failed pages may already be gone."""
        log.critical(
            "%s: %s; marking this copy untrusted and stopping", self.label, reason, exc_info=True
        )
        distrust(self._root, reason)
        os._exit(STOP_EXIT_CODE)

    @contextmanager
    def stop_if_broken(self) -> Iterator[None]:
        """Stop the process when a rule finds a state that must never exist.

        The failing batch may be half applied in memory and is not in the log: serving
        that state would show effects that can be lost. The replica restarts from its log.
        """
        try:
            yield
        except InvariantViolation:
            log.critical("%s: invariant violated; stopping", self.label, exc_info=True)
            os._exit(STOP_EXIT_CODE)

    def close(self) -> None:
        self.log.detach(self.log.epoch)
        self._wal.close()


def clear_for_install(root: Path) -> None:
    """Wipe a backup's directory before its primary's state arrives.

    A replica never rejoins from its own (possibly stale or wiped) files: it always
    starts from the surviving copy's state.
    """
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
