"""A shard: one ShardLedger in memory, made durable by a write-ahead log and a store.

``ShardService`` is the plain class (testable without Ray); ``ShardActor`` is the
thin Ray shell. Each batch is applied in one pass, then written as one log record
with one fsync (group commit), and only then answered. The actor runs one call at a
time, so no read can observe a change before its record is durable. What the records
changed goes to the shard's store every ``STORE_WRITE_RECORDS`` records, in one
transaction without fsync (the log is the durable record): one store write per batch
cost about as much as the rest of the batch, most of it per transaction, not per row.
Until then the ledger answers from memory what is not yet in the store.

The store is the checkpoint: a background thread makes it durable every
``CHECKPOINT_SECONDS`` (SQLite works off the interpreter lock), and log segments the
store holds durably are deleted. Nothing is ever encoded whole, so a checkpoint never
stops the apply path, the heartbeat or the lease.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple, Unpack

import ray

from tokpay.actors.channel import ChannelServer, NotPrimary
from tokpay.actors.checkpointer import Checkpointer
from tokpay.actors.protocol import (
    FSYNC_BUCKETS,
    SPARE_ROLE,
    AccountsCreated,
    ChannelAddress,
    HistoryReply,
    IdsClaimed,
    ReplicaSpec,
    ReplicaStatus,
    ShardRecord,
    ShardStats,
    TransfersCommitted,
    TxDecided,
    TxPrepared,
    as_backup,
    decode,
    encode,
)
from tokpay.actors.replica_host import ReplicaHost, delete_old_copies_here, replica_root
from tokpay.actors.replicated_service import STOP_EXIT_CODE, LogOptions, ReplicatedService
from tokpay.actors.replication import ReplicationFailed
from tokpay.ledger.errors import LedgerError
from tokpay.ledger.limits import MAX_BATCH
from tokpay.ledger.model import AccountSpec, Decision, Prepare, TransferOrder
from tokpay.ledger.shard_ledger import ShardLedger
from tokpay.store.shard_store import STORE_FILE, ShardStore
from tokpay.wal._files import fsync_directory

log = logging.getLogger("tokpay.shard")

STORE_WRITE_RECORDS = 16
"""Log records whose changes a shard keeps in memory (``ShardLedger.pending``, at most
``MAX_BATCH`` items each) before writing them to its store in one transaction; a restart
replays them from the log."""

ClaimsAndOrders = tuple[list[TransferOrder], list[TransferOrder]]
"""``claim_and_apply``'s request: ids to claim here, orders to apply here."""


def now_micros() -> int:
    return time.time_ns() // 1_000


class ShardService(ReplicatedService):
    """A shard's state machine: the ledger rules over its accounts, one record per batch."""

    def __init__(
        self,
        shard: int,
        shard_count: int,
        data_dir: Path,
        **options: Unpack[LogOptions],
    ) -> None:
        self.label = f"shard {shard}"
        self._shard = shard
        self._shard_count = shard_count
        self.stats = ShardStats(shard=shard, accounts=0, transfers=0, prepared=0, log_sequence=0)
        super().__init__(data_dir / f"shard-{shard}", options)
        self._checkpointer = Checkpointer(self)

    # -- the state machine ---------------------------------------------------------------

    def open_state(self, root: Path) -> int:
        self.store = ShardStore(root, self._shard, self._shard_count)
        self.ledger = ShardLedger(self._shard, self._shard_count, disk=self.store)
        self.ledger.load(list(self.store.accounts()), list(self.store.prepared()))
        self._truncated_at = self.store.durable_sequence
        self._applied = self.store.applied_sequence
        return self.store.applied_sequence

    def apply_record(self, payload: bytes) -> None:
        record = decode(payload, ShardRecord)
        ledger = self.ledger
        if isinstance(record, AccountsCreated):
            ledger.replay_accounts(record.accounts)
        elif isinstance(record, TransfersCommitted):
            ledger.replay_transfers(record.transfers)
            ledger.replay_marks(record.refused)
        elif isinstance(record, TxPrepared):
            ledger.replay_prepared(record.records)
            ledger.replay_marks(record.refused)
        elif isinstance(record, IdsClaimed):
            ledger.replay_marks(record.marks)
        else:
            ledger.decide(record.decisions)

    def record_applied(self, sequence: int) -> None:
        self._applied = sequence
        if sequence - self.store.applied_sequence >= STORE_WRITE_RECORDS:
            self.write_store()
        durable = self.store.durable_sequence
        if durable > self._truncated_at:
            # Log segments wholly below what the store holds durably are no longer needed.
            self._wal.truncate_before(durable + 1)
            self._truncated_at = durable

    def write_store(self) -> None:
        """Write what the records applied since the last write changed, in one transaction.

        A failure stops the process (the caller cannot mend it): memory would be ahead of
        the store, and the changes taken for the write are gone from ``pending``.
        """
        if self.store.applied_sequence == self._applied:
            return
        try:
            self.store.write(self._applied, self.ledger.take_pending())
        except Exception:
            log.critical("%s: store write failed; stopping", self.label, exc_info=True)
            os._exit(STOP_EXIT_CODE)

    def checkpoint(self) -> None:
        self.write_store()  # so the checkpoint covers every record so far
        self._checkpointer.wake()

    def write_snapshot(self) -> int:
        """Checkpoint now, on this thread (tests and operators); returns the sequence."""
        self.write_store()
        sequence = self.store.checkpoint()
        self._wal.truncate_before(sequence + 1)
        self._truncated_at = sequence
        return sequence

    def export_state(self) -> Callable[[Path], int]:
        # The copy must hold every record up to now: the backup keeps only later ones.
        self.write_store()
        return self.store.copy_to

    @classmethod
    def adopt_state(cls, root: Path, copy: Path, sequence: int, *, fsync: bool) -> None:
        os.replace(copy, root / STORE_FILE)
        if fsync:
            fsync_directory(root)

    def snapshot_payload(self) -> bytes:
        """The whole state, encoded (replicas compare it): accounts, holds and a digest of
        the store's rows. Reads every row: for checks, never on the write path."""
        self.write_store()
        ledger = self.ledger
        return encode(
            (
                sorted(
                    (a.id, a.balance, a.entries, a.held_debit, a.held_credit)
                    for a in ledger.accounts.values()
                ),
                sorted(ledger.prepared),
                self.store.content_digest(),
            )
        )

    def recovered(self, snapshot_sequence: int, replayed: int) -> None:
        self.ledger.check_invariants()
        self.write_store()
        log.info(
            "shard %d recovered: snapshot at %d, %d log records replayed, %d accounts, %d in doubt",
            self._shard,
            snapshot_sequence,
            replayed,
            len(self.ledger.accounts),
            len(self.ledger.prepared),
        )

    def note_append(self, seconds: float, items: int) -> None:
        stats = self.stats
        stats.batches += 1
        stats.batch_items += items
        stats.fsyncs += 1
        stats.fsync_seconds += seconds
        for index, bound in enumerate(FSYNC_BUCKETS):
            if seconds <= bound:
                stats.fsync_buckets[index] += 1
                break

    def empty_record(self) -> bytes:
        return encode(IdsClaimed([]))

    def _append(self, record: ShardRecord, items: int) -> None:
        try:
            self.append(encode(record), items)
        except ReplicationFailed as error:
            # Durable here but not on the backup: not acknowledged, and the log now
            # refuses everything until the controller attaches a backup (whose
            # snapshot includes this batch) or promotes the backup instead.
            raise NotPrimary(f"shard {self._shard}: backup lost mid-batch; retry") from error

    def _write(
        self,
        payload: bytes,
        kind: Any,
        apply: Callable[[Any], tuple[Any, ShardRecord | None]],
        size: Callable[[Any], int] = len,
    ) -> Any:
        """One write batch: decode, apply in one pass, log what changed as one record.
        ``size`` counts the batch's items (bounded by ``MAX_BATCH``)."""
        self.log.check_writable()
        items = decode(payload, kind)
        count = _bounded(size(items))
        with self.stop_if_broken():
            answer, record = apply(items)
        if record is not None:
            self._append(record, count)
        return answer

    def create_accounts(self, payload: bytes) -> bytes:
        def apply(specs: list[AccountSpec]) -> tuple[Any, ShardRecord | None]:
            outcomes, created = self.ledger.create_accounts(specs, now_micros())
            return outcomes, AccountsCreated(created) if created else None

        return encode(self._write(payload, list[AccountSpec], apply))

    def apply_orders(self, payload: bytes) -> bytes:
        def apply(orders: list[TransferOrder]) -> tuple[Any, ShardRecord | None]:
            outcomes, committed, refused = self.ledger.apply_orders(orders, now_micros())
            changed = committed or refused
            return outcomes, TransfersCommitted(committed, refused) if changed else None

        return encode(self._write(payload, list[TransferOrder], apply))

    def claim_ids(self, payload: bytes) -> bytes:
        def apply(orders: list[TransferOrder]) -> tuple[Any, ShardRecord | None]:
            outcomes, claimed = self.ledger.claim(orders)
            return outcomes, IdsClaimed(claimed) if claimed else None

        return encode(self._write(payload, list[TransferOrder], apply))

    def claim_and_apply(self, payload: bytes) -> bytes:
        """The gateway's write call: claims of ids homed here and orders on this shard's
        accounts, judged in one pass and logged as one record, so a shard that is both
        homes and holds accounts pays one fsync per batch, not one per kind."""

        def apply(batch: ClaimsAndOrders) -> tuple[Any, ShardRecord | None]:
            claims, orders = batch
            claimed, outcomes, committed, marks = self.ledger.claim_and_apply(
                claims, orders, now_micros()
            )
            changed = committed or marks
            return (claimed, outcomes), TransfersCommitted(committed, marks) if changed else None

        return encode(self._write(payload, ClaimsAndOrders, apply, lambda b: len(b[0]) + len(b[1])))

    def prepare(self, payload: bytes) -> bytes:
        def apply(prepares: list[Prepare]) -> tuple[Any, ShardRecord | None]:
            votes, prepared, refused = self.ledger.prepare(prepares, now_micros())
            changed = prepared or refused
            return votes, TxPrepared(prepared, refused) if changed else None

        return encode(self._write(payload, list[Prepare], apply))

    def decide(self, payload: bytes) -> int:
        def apply(decisions: list[Decision]) -> tuple[int, ShardRecord | None]:
            applied = self.ledger.decide(decisions)
            return len(applied), TxDecided(applied) if applied else None

        count: int = self._write(payload, list[Decision], apply)
        return count

    # -- reads ---------------------------------------------------------------------------

    def balances(self, payload: bytes) -> bytes:
        ids = decode(payload, list[str])
        _bounded(len(ids))
        return encode(self.ledger.balances(ids))

    def account(self, account_id: str) -> bytes:
        try:
            return encode(self.ledger.account(account_id))
        except LedgerError:
            return b""

    def transfer(self, transfer_id: str) -> bytes:
        transfer = self.ledger.transfer(transfer_id)
        return b"" if transfer is None else encode(transfer)

    def history(self, account_id: str, limit: int, cursor: int | None) -> bytes:
        try:
            return encode(HistoryReply(page=self.ledger.history_page(account_id, limit, cursor)))
        except LedgerError as error:
            return encode(HistoryReply(error=error.code, detail=error.detail))

    def in_doubt(self) -> list[str]:
        return self.ledger.in_doubt()

    def currency_sums(self) -> dict[str, int]:
        sums: dict[str, int] = {}
        for account in self.ledger.accounts.values():
            sums[account.currency] = sums.get(account.currency, 0) + account.balance
        return sums

    def all_balances(self) -> dict[str, int]:
        return {a.id: a.balance for a in self.ledger.accounts.values()}

    def check_invariants(self) -> bool:
        self.ledger.check_invariants()
        return True

    def current_stats(self) -> bytes:
        stats = self.stats
        stats.accounts = len(self.ledger.accounts)
        stats.transfers = self.store.transfers + len(self.ledger.pending.transfers)
        stats.prepared = len(self.ledger.prepared)
        stats.log_sequence = self.last_sequence
        stats.durable_sequence = self.store.durable_sequence
        stats.store_bytes = self.store.size_bytes()
        stats.checkpoint_failures = self.checkpoint_failures
        return encode(stats)

    def close(self) -> None:
        # No store write here: memory may hold a batch its log never got (a shard stopping
        # on a broken invariant); what the log holds and the store not yet is replayed.
        self._checkpointer.stop()
        super().close()
        self.store.close()


def _bounded(count: int) -> int:
    if count > MAX_BATCH:
        raise ValueError(f"batch of {count} exceeds MAX_BATCH={MAX_BATCH}")
    return count


class Access(Enum):
    WRITE = "write"
    """Needs the primary under its lease."""
    READ = "read"
    """Needs the primary under its lease, with replication intact; the lease is checked
    again after the read."""


class ShardMethod(NamedTuple):
    access: Access
    run: Callable[[ShardService, bytes], Any]
    """(service, msgpack of the arguments) -> bytes, or a value to encode."""


SHARD_METHODS: dict[str, ShardMethod] = {
    "create_accounts": ShardMethod(Access.WRITE, ShardService.create_accounts),
    "apply_orders": ShardMethod(Access.WRITE, ShardService.apply_orders),
    "prepare": ShardMethod(Access.WRITE, ShardService.prepare),
    "claim_ids": ShardMethod(Access.WRITE, ShardService.claim_ids),
    "claim_and_apply": ShardMethod(Access.WRITE, ShardService.claim_and_apply),
    "decide": ShardMethod(Access.WRITE, ShardService.decide),
    "balances": ShardMethod(Access.READ, ShardService.balances),
    "account": ShardMethod(Access.READ, lambda s, p: s.account(decode(p, str))),
    "transfer": ShardMethod(Access.READ, lambda s, p: s.transfer(decode(p, str))),
    "history": ShardMethod(
        Access.READ, lambda s, p: s.history(*decode(p, tuple[str, int, int | None]))
    ),
    "in_doubt": ShardMethod(Access.READ, lambda s, p: s.in_doubt()),
    "currency_sums": ShardMethod(Access.READ, lambda s, p: s.currency_sums()),
    "stats": ShardMethod(Access.READ, lambda s, p: s.current_stats()),
}
"""The one table of what a shard serves to clients, on its channel and through ``call``."""


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=8)  # type: ignore[call-overload]
class ShardActor:
    """Ray shell around ShardService: one copy (single node) or one replica of two.

    Ray calls and the direct channel's threads take the host's lock, so the service
    still runs one request at a time and no read sees a change that is not durable (on
    both replicas, when replicated). Clients call ``SHARD_METHODS`` by name: on the
    channel, or through ``call`` over Ray.
    """

    _host: ReplicaHost[ShardService]
    _channel: ChannelServer

    def __init__(
        self,
        shard: int,
        shard_count: int,
        data_dir: str,
        fsync: bool = True,
        replica: ReplicaSpec | None = None,
    ) -> None:
        self._shard = shard
        self._spare: tuple[int, str, bool, ReplicaSpec] | None = None
        if replica is not None and replica.role == SPARE_ROLE:
            # Started ahead of need: the process and its imports are ready, nothing else.
            self._spare = (shard_count, data_dir, fsync, replica)
            return
        self._open(shard_count, data_dir, fsync, replica)

    def _open(
        self, shard_count: int, data_dir: str, fsync: bool, replica: ReplicaSpec | None
    ) -> None:
        shard = self._shard
        root = replica_root(data_dir, f"shard-{shard}", replica)

        def open_service(options: LogOptions) -> ShardService:
            return ShardService(shard, shard_count, root.parent, **options)

        self._host = ReplicaHost(
            f"shard {shard}", replica, root, open_service, service_class=ShardService, fsync=fsync
        )
        host = ray.util.get_node_ip_address() if replica is not None else "127.0.0.1"
        self._channel = ChannelServer(self._dispatch, host=host)
        self._host.start_heartbeat()

    def activate(self, epoch: int) -> int:
        """A spare becomes a backup at ``epoch``, as if started as one (idempotent)."""
        if self._spare is not None:
            shard_count, data_dir, fsync, spec = self._spare
            self._open(shard_count, data_dir, fsync, as_backup(spec, epoch))
            self._spare = None
        return self._shard

    def _dispatch(self, method: str, payload: bytes) -> bytes:
        host = self._host
        entry = SHARD_METHODS.get(method)
        if entry is None:
            return host.serve_locked(method, payload)  # replication frames, lease asks
        with host.lock:
            if entry.access is Access.WRITE:
                result = entry.run(host.leased(), payload)
            else:
                result = entry.run(host.readable(), payload)
                host.check_lease_after_read()
        return result if isinstance(result, bytes) else encode(result)

    # -- Ray-call interface ------------------------------------------------------------------

    def ready(self) -> int:
        return self._shard

    def channel_address(self) -> ChannelAddress:
        return self._channel.address

    def delete_old_copies(self, group: str, keep: list[str], epoch: int) -> list[str]:
        """This node's copies of ``group`` from before ``epoch``, deleted (any group's)."""
        return delete_old_copies_here(group, keep, epoch)

    def call(self, method: str, payload: bytes) -> bytes:
        """Any of ``SHARD_METHODS`` (or a replication frame), as on the channel."""
        return self._dispatch(method, payload)

    def promote(self, epoch: int, hold: float = 0.0) -> bool:
        with self._host.lock:
            return self._host.promote(epoch, hold)

    def attach_backup(self, epoch: int, address: ChannelAddress) -> int:
        with self._host.lock:
            return self._host.attach_backup(epoch, address)

    def fence(self) -> bool:
        self._host.fence()
        return True

    def replica_status(self) -> ReplicaStatus:
        return self._host.status()

    def state_bytes(self) -> bytes:
        return self._host.state_bytes()

    def all_balances(self) -> dict[str, int]:
        with self._host.lock:
            return self._host.readable().all_balances()

    def check_invariants(self) -> bool:
        with self._host.lock:
            service = self._host.service
            return service.check_invariants() if service is not None else True

    def write_snapshot(self) -> int:
        with self._host.lock:
            return self._host.primary().write_snapshot()
