"""A shard: one ShardLedger in memory, made durable by a write-ahead log.

``ShardService`` is the plain class (testable without Ray); ``ShardActor`` is the
thin Ray shell. Each batch is applied in one pass, then written as one log record
with one fsync (group commit), and only then answered. The actor runs one call at
a time, so no read can observe a change before its record is durable.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import ray

from tokpay.actors.channel import ChannelAddress, ChannelServer
from tokpay.actors.protocol import (
    AccountsCreated,
    HistoryReply,
    ShardRecord,
    TransfersCommitted,
    TxDecided,
    TxPrepared,
    decode,
    encode,
)
from tokpay.ledger.errors import InvariantViolation, LedgerError, check
from tokpay.ledger.limits import MAX_BATCH
from tokpay.ledger.model import (
    AccountSpec,
    Decision,
    Prepare,
    TransferOrder,
)
from tokpay.ledger.shard_ledger import ShardLedger, ShardSnapshot
from tokpay.wal import WriteAheadLog, read_latest_snapshot, write_snapshot

log = logging.getLogger("tokpay.shard")

SNAPSHOT_EVERY_RECORDS = 20_000
"""Log records between snapshots; bounds recovery time and disk use."""

SINGLE_NODE_EPOCH = 1
"""The epoch used while a shard has a single copy (replication raises it)."""

FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, float("inf"))


def now_micros() -> int:
    return time.time_ns() // 1_000


class ShardStats(msgspec.Struct, kw_only=True):
    shard: int
    accounts: int
    transfers: int
    prepared: int
    log_sequence: int
    batches: int = 0
    batch_items: int = 0
    fsyncs: int = 0
    fsync_seconds: float = 0.0
    fsync_buckets: list[int] = msgspec.field(default_factory=lambda: [0] * len(FSYNC_BUCKETS))


class ShardService:
    def __init__(self, shard: int, shard_count: int, data_dir: Path, *, fsync: bool = True) -> None:
        self._root = data_dir / f"shard-{shard}"
        self._snapshot_dir = self._root / "snapshots"
        self._snapshot_dir.mkdir(parents=True, exist_ok=True)
        self.ledger, snapshot_sequence = self._load_snapshot(shard, shard_count)
        self._wal = WriteAheadLog.open(self._root / "wal", fsync=fsync)
        check(
            self._wal.last_sequence >= snapshot_sequence,
            f"shard {shard}: log ends at {self._wal.last_sequence}, before its snapshot at "
            f"{snapshot_sequence}; refusing to start on a lost or replaced log",
        )
        replayed = 0
        for record in self._wal.records(after_sequence=snapshot_sequence):
            self._replay(decode(record.payload, ShardRecord))
            replayed += 1
        self.ledger.check_invariants()
        self._records_since_snapshot = replayed
        self.stats = ShardStats(shard=shard, accounts=0, transfers=0, prepared=0, log_sequence=0)
        log.info(
            "shard %d recovered: snapshot at %d, %d log records replayed, %d accounts, %d in doubt",
            shard,
            snapshot_sequence,
            replayed,
            len(self.ledger.accounts),
            len(self.ledger.prepared),
        )

    # -- recovery ------------------------------------------------------------------------

    def _load_snapshot(self, shard: int, shard_count: int) -> tuple[ShardLedger, int]:
        found = read_latest_snapshot(self._snapshot_dir)
        if found is None:
            return ShardLedger(shard, shard_count), 0
        sequence, payload = found
        snapshot = msgspec.msgpack.decode(payload, type=ShardSnapshot)
        check(
            snapshot.shard == shard and snapshot.shard_count == shard_count,
            f"snapshot belongs to shard {snapshot.shard}/{snapshot.shard_count}",
        )
        return ShardLedger.from_snapshot(snapshot), sequence

    def _replay(self, record: ShardRecord) -> None:
        ledger = self.ledger
        if isinstance(record, AccountsCreated):
            ledger.replay_accounts(record.accounts)
        elif isinstance(record, TransfersCommitted):
            ledger.replay_transfers(record.transfers)
        elif isinstance(record, TxPrepared):
            ledger.replay_prepared(record.records)
        else:
            ledger.decide(record.decisions)

    # -- writes --------------------------------------------------------------------------

    def _append(self, record: ShardRecord, items: int) -> None:
        started = time.perf_counter()
        try:
            self._wal.append(SINGLE_NODE_EPOCH, encode(record))
        except Exception:
            # The batch is applied in memory but not durable. A failed fsync may have
            # dropped dirty pages, so never retry it: stop, and let Ray restart the
            # actor from the log (WalFatalIOError and any other refusal alike).
            log.critical("shard %d: log write failed; stopping", self.ledger.shard, exc_info=True)
            os._exit(70)
        elapsed = time.perf_counter() - started
        stats = self.stats
        stats.batches += 1
        stats.batch_items += items
        stats.fsyncs += 1
        stats.fsync_seconds += elapsed
        for index, bound in enumerate(FSYNC_BUCKETS):
            if elapsed <= bound:
                stats.fsync_buckets[index] += 1
                break
        self._records_since_snapshot += 1
        if self._records_since_snapshot >= SNAPSHOT_EVERY_RECORDS:
            try:
                self.write_snapshot()
            except Exception:
                # The batch is already durable in the log; a failed snapshot only means
                # a longer replay. Never report the committed batch as failed.
                log.exception("shard %d: snapshot failed; will retry later", self.ledger.shard)
                self._records_since_snapshot = 0

    def write_snapshot(self) -> int:
        sequence = self._wal.last_sequence
        write_snapshot(self._snapshot_dir, sequence, encode(self.ledger.snapshot()))
        self._wal.truncate_before(sequence + 1)
        self._records_since_snapshot = 0
        return sequence

    @contextmanager
    def _stop_if_broken(self) -> Iterator[None]:
        """Stop the process when a rule finds a state that must never exist.

        The failing batch may be half applied in memory and is not in the log: serving
        that state would show effects that can be lost. Ray restarts the actor from the log.
        """
        try:
            yield
        except InvariantViolation:
            log.critical("shard %d: invariant violated; stopping", self.ledger.shard, exc_info=True)
            os._exit(70)

    def create_accounts(self, payload: bytes) -> bytes:
        specs = _bounded(decode(payload, list[AccountSpec]))
        with self._stop_if_broken():
            outcomes, created = self.ledger.create_accounts(specs, now_micros())
        if created:
            self._append(AccountsCreated(created), len(specs))
        return encode(outcomes)

    def apply_orders(self, payload: bytes) -> bytes:
        orders = _bounded(decode(payload, list[TransferOrder]))
        with self._stop_if_broken():
            outcomes, committed = self.ledger.apply_orders(orders, now_micros())
        if committed:
            self._append(TransfersCommitted(committed), len(orders))
        return encode(outcomes)

    def prepare(self, payload: bytes) -> bytes:
        requests = _bounded(decode(payload, list[Prepare]))
        with self._stop_if_broken():
            votes, prepared = self.ledger.prepare(requests)
        if prepared:
            self._append(TxPrepared(prepared), len(requests))
        return encode(votes)

    def decide(self, payload: bytes) -> int:
        decisions = _bounded(decode(payload, list[Decision]))
        with self._stop_if_broken():
            applied = self.ledger.decide(decisions)
        if applied:
            self._append(TxDecided(applied), len(decisions))
        return len(applied)

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
        stats.log_sequence = self._wal.last_sequence
        return encode(stats)

    def close(self) -> None:
        self._wal.close()


def _bounded(items: list[Any]) -> list[Any]:
    if len(items) > MAX_BATCH:
        raise ValueError(f"batch of {len(items)} exceeds MAX_BATCH={MAX_BATCH}")
    return items


CHANNEL_METHODS = frozenset({"balances", "apply_orders", "prepare", "decide"})
"""The hot-path methods also served on the direct channel (2PC included)."""


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=1)  # type: ignore[call-overload]
class ShardActor:
    """Ray shell around ShardService; restarted on crash.

    Ray calls and the direct channel's threads take one lock, so the service
    still runs one request at a time and no read sees an unlogged change.
    """

    def __init__(self, shard: int, shard_count: int, data_dir: str, fsync: bool = True) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        self._lock = threading.Lock()
        self._service = ShardService(shard, shard_count, Path(data_dir), fsync=fsync)
        self._channel = ChannelServer(self._dispatch)

    def _dispatch(self, method: str, payload: bytes) -> bytes:
        if method not in CHANNEL_METHODS:
            raise ValueError(f"{method!r} is not served on the channel")
        with self._lock:
            result = getattr(self._service, method)(payload)
        return result if isinstance(result, bytes) else encode(result)

    def ready(self) -> int:
        return self._service.ledger.shard

    def channel_address(self) -> ChannelAddress:
        return self._channel.address

    def create_accounts(self, payload: bytes) -> bytes:
        with self._lock:
            return self._service.create_accounts(payload)

    def apply_orders(self, payload: bytes) -> bytes:
        with self._lock:
            return self._service.apply_orders(payload)

    def prepare(self, payload: bytes) -> bytes:
        with self._lock:
            return self._service.prepare(payload)

    def decide(self, payload: bytes) -> int:
        with self._lock:
            return self._service.decide(payload)

    def balances(self, payload: bytes) -> bytes:
        with self._lock:
            return self._service.balances(payload)

    def account(self, account_id: str) -> bytes:
        with self._lock:
            return self._service.account(account_id)

    def transfer(self, transfer_id: str) -> bytes:
        with self._lock:
            return self._service.transfer(transfer_id)

    def history(self, account_id: str, limit: int, cursor: int | None) -> bytes:
        with self._lock:
            return self._service.history(account_id, limit, cursor)

    def in_doubt(self) -> list[str]:
        with self._lock:
            return self._service.in_doubt()

    def currency_sums(self) -> dict[str, int]:
        with self._lock:
            return self._service.currency_sums()

    def all_balances(self) -> dict[str, int]:
        with self._lock:
            return self._service.all_balances()

    def check_invariants(self) -> bool:
        with self._lock:
            return self._service.check_invariants()

    def stats(self) -> bytes:
        with self._lock:
            return self._service.current_stats()

    def write_snapshot(self) -> int:
        with self._lock:
            return self._service.write_snapshot()
