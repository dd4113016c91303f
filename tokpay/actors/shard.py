"""A shard: one ShardLedger in memory, made durable by a write-ahead log.

``ShardService`` is the plain class (testable without Ray); ``ShardActor`` is the
thin Ray shell. Each batch is applied in one pass, then written as one log record
with one fsync (group commit), and only then answered. The actor runs one call at
a time, so no read can observe a change before its record is durable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple, Unpack

import msgspec
import ray

from tokpay.actors.channel import ChannelServer, NotPrimary
from tokpay.actors.protocol import (
    FSYNC_BUCKETS,
    AccountsCreated,
    ChannelAddress,
    HistoryReply,
    ReplicaSpec,
    ReplicaStatus,
    ShardRecord,
    ShardStats,
    TransfersCommitted,
    TxDecided,
    TxPrepared,
    decode,
    encode,
)
from tokpay.actors.replica_host import ReplicaHost, replica_root
from tokpay.actors.replicated_service import LogOptions, ReplicatedService
from tokpay.actors.replication import ReplicationFailed
from tokpay.ledger.errors import LedgerError, check
from tokpay.ledger.limits import MAX_BATCH
from tokpay.ledger.model import AccountSpec, Decision, Prepare, TransferOrder
from tokpay.ledger.shard_ledger import ShardLedger, ShardSnapshot

log = logging.getLogger("tokpay.shard")


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

    # -- the state machine ---------------------------------------------------------------

    def restore(self, snapshot: bytes | None) -> None:
        if snapshot is None:
            self.ledger = ShardLedger(self._shard, self._shard_count)
            return
        state = msgspec.msgpack.decode(snapshot, type=ShardSnapshot)
        check(
            state.shard == self._shard and state.shard_count == self._shard_count,
            f"snapshot belongs to shard {state.shard}/{state.shard_count}",
        )
        self.ledger = ShardLedger.from_snapshot(state)

    def apply_record(self, payload: bytes) -> None:
        record = decode(payload, ShardRecord)
        ledger = self.ledger
        if isinstance(record, AccountsCreated):
            ledger.replay_accounts(record.accounts)
        elif isinstance(record, TransfersCommitted):
            ledger.replay_transfers(record.transfers)
        elif isinstance(record, TxPrepared):
            ledger.replay_prepared(record.records)
        else:
            ledger.decide(record.decisions)

    def snapshot_payload(self) -> bytes:
        return encode(self.ledger.snapshot())

    def recovered(self, snapshot_sequence: int, replayed: int) -> None:
        self.ledger.check_invariants()
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
        apply: Callable[[list[Any]], tuple[Any, list[Any]]],
        record: Callable[[list[Any]], ShardRecord],
    ) -> Any:
        """One write batch: decode, apply in one pass, log what changed as one record."""
        self.log.check_writable()
        items = _bounded(decode(payload, kind))
        with self.stop_if_broken():
            answer, changed = apply(items)
        if changed:
            self._append(record(changed), len(items))
        return answer

    def create_accounts(self, payload: bytes) -> bytes:
        return encode(self._write(payload, list[AccountSpec], self._create, AccountsCreated))

    def _create(self, specs: list[AccountSpec]) -> tuple[Any, list[Any]]:
        return self.ledger.create_accounts(specs, now_micros())

    def apply_orders(self, payload: bytes) -> bytes:
        return encode(self._write(payload, list[TransferOrder], self._commit, TransfersCommitted))

    def _commit(self, orders: list[TransferOrder]) -> tuple[Any, list[Any]]:
        return self.ledger.apply_orders(orders, now_micros())

    def prepare(self, payload: bytes) -> bytes:
        return encode(self._write(payload, list[Prepare], self.ledger.prepare, TxPrepared))

    def decide(self, payload: bytes) -> int:
        ledger = self.ledger

        def apply(decisions: list[Decision]) -> tuple[int, list[Decision]]:
            applied = ledger.decide(decisions)
            return len(applied), applied

        count: int = self._write(payload, list[Decision], apply, TxDecided)
        return count

    # -- reads ---------------------------------------------------------------------------

    def balances(self, payload: bytes) -> bytes:
        return encode(self.ledger.balances(_bounded(decode(payload, list[str]))))

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
        stats.transfers = len(self.ledger.transfers)
        stats.prepared = len(self.ledger.prepared)
        stats.log_sequence = self.last_sequence
        return encode(stats)


def _bounded(items: list[Any]) -> list[Any]:
    if len(items) > MAX_BATCH:
        raise ValueError(f"batch of {len(items)} exceeds MAX_BATCH={MAX_BATCH}")
    return items


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

    def __init__(
        self,
        shard: int,
        shard_count: int,
        data_dir: str,
        fsync: bool = True,
        replica: ReplicaSpec | None = None,
    ) -> None:
        root = replica_root(data_dir, f"shard-{shard}", replica)

        def open_service(options: LogOptions) -> ShardService:
            return ShardService(shard, shard_count, root.parent, **options)

        self._shard = shard
        self._host = ReplicaHost(f"shard {shard}", replica, root, open_service, fsync=fsync)
        host = ray.util.get_node_ip_address() if replica is not None else "127.0.0.1"
        self._channel = ChannelServer(self._dispatch, host=host)
        self._host.start_heartbeat()

    def _dispatch(self, method: str, payload: bytes) -> bytes:
        host = self._host
        with host.lock:
            entry = SHARD_METHODS.get(method)
            if entry is None:
                result = host.serve_replication(method, payload)
            elif entry.access is Access.WRITE:
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

    def call(self, method: str, payload: bytes) -> bytes:
        """Any of ``SHARD_METHODS`` (or a replication frame), as on the channel."""
        return self._dispatch(method, payload)

    def promote(self, epoch: int) -> bool:
        with self._host.lock:
            return self._host.promote(epoch)

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
