"""A shard: one ShardLedger in memory, made durable by a write-ahead log.

``ShardService`` is the plain class (testable without Ray); ``ShardActor`` is the
thin Ray shell. Each batch is applied in one pass, then written as one log record
with one fsync (group commit), and only then answered. The actor runs one call at
a time, so no read can observe a change before its record is durable.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import ray

from tokpay.actors.channel import ChannelAddress, ChannelServer, NotPrimary
from tokpay.actors.protocol import (
    FSYNC_BUCKETS,
    AccountsCreated,
    HistoryReply,
    ShardRecord,
    ShardStats,
    TransfersCommitted,
    TxDecided,
    TxPrepared,
    decode,
    encode,
)
from tokpay.actors.replica import (
    HeartbeatAnswer,
    HeartbeatReport,
    ReplicaSpec,
    ReplicaStatus,
    replica_root,
    report_of,
    start_heartbeat,
    status_of,
)
from tokpay.actors.replication import (
    INSTALL_METHODS,
    Install,
    InstallReceiver,
    Lease,
    ReplicatedLog,
    ReplicationFailed,
    Role,
    ShippedRecord,
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
from tokpay.wal import SequenceGap, WriteAheadLog, read_latest_snapshot, write_snapshot

log = logging.getLogger("tokpay.shard")

SNAPSHOT_EVERY_RECORDS = 20_000
"""Log records between snapshots; bounds recovery time and disk use."""

SINGLE_NODE_EPOCH = 1
"""The epoch used while a shard has a single copy (replication raises it)."""


def now_micros() -> int:
    return time.time_ns() // 1_000


class ShardService:
    def __init__(
        self,
        shard: int,
        shard_count: int,
        data_dir: Path,
        *,
        fsync: bool = True,
        epoch: int = SINGLE_NODE_EPOCH,
        replicated: bool = False,
        root: Path | None = None,
        wal_floor: int = 0,
    ) -> None:
        self._root = root if root is not None else data_dir / f"shard-{shard}"
        self._fsync = fsync
        self._snapshot_dir = self._root / "snapshots"
        self._snapshot_dir.mkdir(parents=True, exist_ok=True)
        self.ledger, snapshot_sequence = self._load_snapshot(shard, shard_count)
        self._wal = WriteAheadLog.open(self._root / "wal", fsync=fsync, floor=wal_floor)
        self.log = ReplicatedLog(self._wal, epoch, required=replicated)
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
            self.log.append(encode(record))
        except ReplicationFailed as error:
            # Durable here but not on the backup: not acknowledged, and the log now
            # refuses everything until the controller attaches a backup (whose
            # snapshot includes this batch) or promotes the backup instead.
            raise NotPrimary(f"shard {self.ledger.shard}: backup lost mid-batch; retry") from error
        except Exception:
            # The batch is applied in memory but not durable. A failed fsync may have
            # dropped dirty pages, so never retry it: stop, and let Ray restart the
            # actor from the log (WalFatalIOError and any other refusal alike).
            log.critical("shard %d: log write failed; stopping", self.ledger.shard, exc_info=True)
            os._exit(70)
        self._after_append(started, items)

    def _after_append(self, started: float, items: int) -> None:
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
        self.log.check_writable()
        specs = _bounded(decode(payload, list[AccountSpec]))
        with self._stop_if_broken():
            outcomes, created = self.ledger.create_accounts(specs, now_micros())
        if created:
            self._append(AccountsCreated(created), len(specs))
        return encode(outcomes)

    def apply_orders(self, payload: bytes) -> bytes:
        self.log.check_writable()
        orders = _bounded(decode(payload, list[TransferOrder]))
        with self._stop_if_broken():
            outcomes, committed = self.ledger.apply_orders(orders, now_micros())
        if committed:
            self._append(TransfersCommitted(committed), len(orders))
        return encode(outcomes)

    def prepare(self, payload: bytes) -> bytes:
        self.log.check_writable()
        requests = _bounded(decode(payload, list[Prepare]))
        with self._stop_if_broken():
            votes, prepared = self.ledger.prepare(requests)
        if prepared:
            self._append(TxPrepared(prepared), len(requests))
        return encode(votes)

    def decide(self, payload: bytes) -> int:
        self.log.check_writable()
        decisions = _bounded(decode(payload, list[Decision]))
        with self._stop_if_broken():
            applied = self.ledger.decide(decisions)
        if applied:
            self._append(TxDecided(applied), len(decisions))
        return len(applied)

    # -- replication (backup side) --------------------------------------------------------

    def follow(self, payload: bytes) -> bytes:
        """Append the primary's record verbatim (same epoch and sequence), then apply it."""
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
        except Exception:
            log.critical("shard %d: backup log write failed; stopping", self.ledger.shard)
            os._exit(70)
        with self._stop_if_broken():
            self._replay(decode(shipped.payload, ShardRecord))
        self._after_append(started, 1)
        return b""

    def snapshot_payload(self) -> bytes:
        return encode(self.ledger.snapshot())

    @classmethod
    def install(
        cls, shard: int, shard_count: int, root: Path, install: Install, *, fsync: bool
    ) -> ShardService:
        """A backup built from its primary's snapshot: the old directory is wiped first.

        A replica never rejoins from its own (possibly stale or wiped) files: it always
        starts from the surviving copy's state.
        """
        shutil.rmtree(root, ignore_errors=True)
        (root / "snapshots").mkdir(parents=True)
        write_snapshot(root / "snapshots", install.sequence, install.snapshot, fsync=fsync)
        return cls(
            shard,
            shard_count,
            root.parent,
            fsync=fsync,
            epoch=install.epoch,
            replicated=True,
            root=root,
            wal_floor=install.sequence,
        )

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
        self.log.detach(self.log.epoch)
        self._wal.close()


def _bounded(items: list[Any]) -> list[Any]:
    if len(items) > MAX_BATCH:
        raise ValueError(f"batch of {len(items)} exceeds MAX_BATCH={MAX_BATCH}")
    return items


WRITE_METHODS = frozenset({"create_accounts", "apply_orders", "prepare", "decide"})
READ_METHODS = frozenset(
    {"balances", "account", "transfer", "history", "in_doubt", "currency_sums", "stats"}
)
"""Everything a client needs is served on the direct channel; these need a primary."""


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=8)  # type: ignore[call-overload]
class ShardActor:
    """Ray shell around ShardService: one copy (single node) or one replica of two.

    Ray calls and the direct channel's threads take one lock, so the service still
    runs one request at a time and no read sees a change that is not durable (on
    both replicas, when replicated).

    With ``replica`` set (the cluster), the actor is a primary or a backup of its
    shard, heartbeats to the controller, serves reads only under a lease, and is
    fenced by epoch; its files live in the node's own data directory.
    """

    def __init__(
        self,
        shard: int,
        shard_count: int,
        data_dir: str,
        fsync: bool = True,
        replica: ReplicaSpec | None = None,
    ) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        self._lock = threading.Lock()
        self._shard = shard
        self._shard_count = shard_count
        self._fsync = fsync
        self._replica = replica
        if replica is None:
            self._role = Role.PRIMARY
            self._lease = Lease(forever=True)
            self._root = Path(data_dir) / f"shard-{shard}"
            self._service: ShardService | None = ShardService(
                shard, shard_count, Path(data_dir), fsync=fsync
            )
        else:
            self._role = Role(replica.role)
            self._lease = Lease(forever=False)
            self._root = replica_root(replica.name)
            self._service = None
            if self._role is Role.PRIMARY:
                # Only when the cluster is first created: later primaries are promoted backups.
                self._service = ShardService(
                    shard,
                    shard_count,
                    self._root.parent,
                    fsync=fsync,
                    epoch=replica.epoch,
                    replicated=True,
                    root=self._root,
                )
        host = ray.util.get_node_ip_address() if replica is not None else "127.0.0.1"
        self._channel = ChannelServer(self._dispatch, host=host)
        self._epoch = replica.epoch if replica is not None else SINGLE_NODE_EPOCH
        self._routes = b""
        self._receiver = InstallReceiver()
        if replica is not None:
            self._heartbeat = start_heartbeat(replica, self._report, self._on_answer)

    # -- roles -----------------------------------------------------------------------------

    def _report(self) -> HeartbeatReport:
        return report_of(self._replica, str(self._role), self._epoch, self._log())

    def _log(self) -> ReplicatedLog | None:
        return self._service.log if self._service is not None else None

    def _on_answer(self, asked_at: float, answer: HeartbeatAnswer) -> None:
        if answer.routes:
            self._routes = answer.routes
        if answer.fence:
            self.fence()
        elif answer.lease and self._role is Role.PRIMARY:
            self._lease.extend_from(asked_at)

    def _primary(self) -> ShardService:
        if self._role is not Role.PRIMARY or self._service is None:
            raise NotPrimary(f"shard {self._shard}: this replica is {self._role}")
        return self._service

    def _leased(self) -> ShardService:
        """The primary, while its lease holds: only one primary acts at a time.

        (Even without this check a replaced primary could not make a write durable on
        two machines, since its backup refuses its epoch; the lease keeps it from
        touching its own log at all.)
        """
        service = self._primary()
        if not self._lease.valid():
            raise NotPrimary(f"shard {self._shard}: no lease from the controller")
        return service

    def _readable(self) -> ShardService:
        service = self._leased()
        if service.log.broken:
            raise NotPrimary(f"shard {self._shard}: waiting for a new backup")
        return service

    def _dispatch(self, method: str, payload: bytes) -> bytes:
        with self._lock:
            if method in WRITE_METHODS:
                result = getattr(self._leased(), method)(payload)
            elif method in READ_METHODS:
                result = _read(self._readable(), method, payload)
                # Checked again after the read: a pause in between (GC, SIGSTOP) must not
                # let a deposed primary answer after its lease ran out.
                if not self._lease.valid():
                    raise NotPrimary(f"shard {self._shard}: lease ran out during the read")
            elif method == "replicate":
                result = self._backup().follow(payload)
            elif method in INSTALL_METHODS:
                self._backup_role()
                install = self._receiver.receive(method, payload, self._epoch)
                result = self._install(install) if install is not None else b""
            elif method == "routes":
                if self._role is Role.FENCED:
                    raise NotPrimary("fenced: this replica's routes are stale")
                result = self._routes
            else:
                raise ValueError(f"{method!r} is not served on the channel")
        return result if isinstance(result, bytes) else encode(result)

    def _backup(self) -> ShardService:
        if self._role is not Role.BACKUP or self._service is None:
            raise NotPrimary(f"shard {self._shard}: this replica is {self._role}, not a backup")
        return self._service

    def _backup_role(self) -> None:
        if self._role is not Role.BACKUP:
            raise NotPrimary(f"shard {self._shard}: this replica is {self._role}, not a backup")

    def _install(self, install: Install) -> bytes:
        if self._role is not Role.BACKUP or install.epoch != self._epoch:
            raise NotPrimary(
                f"install of epoch {install.epoch} refused by a {self._role} at {self._epoch}"
            )
        if self._service is not None:
            self._service.close()
        self._service = None
        self._service = ShardService.install(
            self._shard, self._shard_count, self._root, install, fsync=self._fsync
        )
        log.info("shard %d: backup installed at sequence %d", self._shard, install.sequence)
        return b""

    def promote(self, epoch: int) -> bool:
        """Backup → primary at ``epoch``; records of any older epoch are refused from now."""
        with self._lock:
            if self._role is not Role.BACKUP or self._service is None or epoch <= self._epoch:
                return False
            self._epoch = epoch
            self._service.log.detach(epoch)
            self._role = Role.PRIMARY
            log.warning("shard %d: promoted to primary at epoch %d", self._shard, epoch)
            return True

    def attach_backup(self, epoch: int, address: ChannelAddress) -> int:
        """Make the backup at ``address`` (already at ``epoch``) this primary's, from a snapshot."""
        with self._lock:
            service = self._primary()
            if epoch < self._epoch:
                raise NotPrimary(f"attach of epoch {epoch} refused at epoch {self._epoch}")
            self._epoch = epoch
            started = time.perf_counter()
            sequence = service.log.attach(epoch, address, service.snapshot_payload())
            log.info(
                "shard %d: backup attached at epoch %d, sequence %d, in %.3f s",
                self._shard,
                epoch,
                sequence,
                time.perf_counter() - started,
            )
            return sequence

    def fence(self) -> bool:
        """Stop serving anything: a newer epoch exists elsewhere."""
        self._lease.revoke()
        with self._lock:
            if self._role is not Role.FENCED:
                log.warning("shard %d: fenced at epoch %d", self._shard, self._epoch)
            self._role = Role.FENCED
            if self._service is not None:
                self._service.log.detach(self._epoch)
        return True

    def replica_status(self) -> ReplicaStatus:
        return status_of(str(self._role), self._epoch, self._log(), lease=self._lease.valid())

    def state_bytes(self) -> bytes:
        """The full in-memory state, encoded: equal bytes mean equal replicas."""
        with self._lock:
            return self._service.snapshot_payload() if self._service else b""

    # -- Ray-call interface ------------------------------------------------------------------

    def ready(self) -> int:
        return self._shard

    def channel_address(self) -> ChannelAddress:
        return self._channel.address

    def call(self, method: str, payload: bytes) -> bytes:
        return self._dispatch(method, payload)

    def create_accounts(self, payload: bytes) -> bytes:
        return self._dispatch("create_accounts", payload)

    def apply_orders(self, payload: bytes) -> bytes:
        return self._dispatch("apply_orders", payload)

    def prepare(self, payload: bytes) -> bytes:
        return self._dispatch("prepare", payload)

    def decide(self, payload: bytes) -> int:
        return decode(self._dispatch("decide", payload), int)

    def balances(self, payload: bytes) -> bytes:
        return self._dispatch("balances", payload)

    def account(self, account_id: str) -> bytes:
        return self._dispatch("account", encode(account_id))

    def transfer(self, transfer_id: str) -> bytes:
        return self._dispatch("transfer", encode(transfer_id))

    def history(self, account_id: str, limit: int, cursor: int | None) -> bytes:
        return self._dispatch("history", encode((account_id, limit, cursor)))

    def in_doubt(self) -> list[str]:
        return decode(self._dispatch("in_doubt", b""), list[str])

    def currency_sums(self) -> dict[str, int]:
        return decode(self._dispatch("currency_sums", b""), dict[str, int])

    def all_balances(self) -> dict[str, int]:
        with self._lock:
            return self._readable().all_balances()

    def check_invariants(self) -> bool:
        with self._lock:
            service = self._service
            return service.check_invariants() if service is not None else True

    def stats(self) -> bytes:
        return self._dispatch("stats", b"")

    def write_snapshot(self) -> int:
        with self._lock:
            return self._primary().write_snapshot()


def _read(service: ShardService, method: str, payload: bytes) -> bytes | Any:
    """Reads on the channel: payloads are the msgpack of the Ray method's arguments."""
    if method == "balances":
        return service.balances(payload)
    if method == "account":
        return service.account(decode(payload, str))
    if method == "transfer":
        return service.transfer(decode(payload, str))
    if method == "history":
        account_id, limit, cursor = decode(payload, tuple[str, int, int | None])
        return service.history(account_id, limit, cursor)
    if method == "in_doubt":
        return service.in_doubt()
    if method == "currency_sums":
        return service.currency_sums()
    return service.current_stats()
