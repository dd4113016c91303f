"""Two-phase commit for transfers whose accounts live on more than one shard.

Presumed abort: participants durably log PREPARED (funds held) before voting yes;
the coordinator durably logs only commit decisions, then tells every participant
and answers the client once all of them applied it. A transaction the coordinator
has no commit record of is aborted by recovery. PREPARE and COMMIT travel batched:
one call per participant shard per incoming batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from tokpay.actors.channel import ActorChannel, AsyncChannelServer, ChannelAddress, NotPrimary
from tokpay.actors.directory import (
    ControllerDirectory,
    Directory,
    NamedActorDirectory,
    shard_group,
)
from tokpay.actors.protocol import (
    CoordinatorCommit,
    CoordinatorDone,
    CoordinatorRecord,
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
    ReplicatedLog,
    ReplicationFailed,
    Role,
    ShippedRecord,
)
from tokpay.ledger.errors import ErrorCode, LedgerError, check
from tokpay.ledger.limits import MAX_BATCH
from tokpay.ledger.model import Decision, Prepare, Transfer, TransferOrder, TransferOutcome, Vote
from tokpay.ledger.routing import shard_of
from tokpay.wal import (
    SequenceGap,
    WalFatalIOError,
    WriteAheadLog,
    read_latest_snapshot,
    write_snapshot,
)

log = logging.getLogger("tokpay.coordinator")

COORDINATOR_EPOCH = 1
DECIDE_ATTEMPTS = 10
"""Tries to deliver a decision before leaving it to the periodic sweep."""
DECIDE_BACKOFF_SECONDS = 0.5
SWEEP_INTERVAL_SECONDS = 2.0
SHARD_CALL_TIMEOUT_SECONDS = 10.0
SNAPSHOT_EVERY_RECORDS = 20_000

ShardCall = Callable[[int, str, bytes], Awaitable[Any]]
"""(shard, method, payload) -> result: how the coordinator reaches a participant."""


@dataclass
class _Tx:
    index: int
    txid: str
    transfer: Transfer
    shards: list[int]
    votes: dict[int, Vote] = field(default_factory=dict)


class CoordinatorService:
    def __init__(
        self,
        shard_count: int,
        data_dir: Path,
        call_shard: ShardCall,
        *,
        fsync: bool = True,
        epoch: int = COORDINATOR_EPOCH,
        replicated: bool = False,
        root: Path | None = None,
        wal_floor: int = 0,
    ) -> None:
        self._shard_count = shard_count
        self._call_shard = call_shard
        root = root if root is not None else data_dir / "coordinator"
        self._snapshot_dir = root / "snapshots"
        self._snapshot_dir.mkdir(parents=True, exist_ok=True)
        self._wal = WriteAheadLog.open(root / "wal", fsync=fsync, floor=wal_floor)
        self.log = ReplicatedLog(self._wal, epoch, required=replicated)
        # Commit decisions not yet applied by every participant: txid -> participant shards.
        self.pending_commits: dict[str, list[int]] = {}
        snapshot_sequence = 0
        found = read_latest_snapshot(self._snapshot_dir)
        if found is not None:
            snapshot_sequence, payload = found
            self.pending_commits = decode(payload, dict[str, list[int]])
        check(
            self._wal.last_sequence >= snapshot_sequence,
            f"coordinator log ends at {self._wal.last_sequence}, before its snapshot at "
            f"{snapshot_sequence}; refusing to start on a lost or replaced log",
        )
        for record in self._wal.records(after_sequence=snapshot_sequence):
            self._replay(decode(record.payload, CoordinatorRecord))
        self._records_since_snapshot = 0
        self._inflight_txids: set[str] = set()
        self._inflight_orders: dict[str, tuple[TransferOrder, asyncio.Future[TransferOutcome]]] = {}
        self._recovered = False
        # asyncio.Lock binds to a loop only when first used, so it can be made here.
        self._recovery_lock = asyncio.Lock()
        self.committed = 0
        self.aborted = 0
        log.info(
            "coordinator recovered: %d commit decisions to re-deliver", len(self.pending_commits)
        )

    def _replay(self, record: CoordinatorRecord) -> None:
        if isinstance(record, CoordinatorCommit):
            for txid, shards in zip(record.txids, record.participants, strict=True):
                self.pending_commits[txid] = shards
        else:
            for txid in record.txids:
                self.pending_commits.pop(txid, None)

    def _append(self, record: CoordinatorRecord) -> None:
        """Durable here and on the backup, or ``ReplicationFailed``.

        After a failure nothing is delivered from memory (``can_act`` is False) until a
        new backup is installed from this state or the backup is promoted instead.
        """
        try:
            self.log.append(encode(record))
        except ReplicationFailed:
            raise
        except WalFatalIOError:
            log.critical("coordinator: log write failed; stopping", exc_info=True)
            os._exit(70)
        self._after_append()

    def _after_append(self) -> None:
        self._records_since_snapshot += 1
        if self._records_since_snapshot >= SNAPSHOT_EVERY_RECORDS:
            sequence = self._wal.last_sequence
            write_snapshot(self._snapshot_dir, sequence, encode(self.pending_commits))
            self._wal.truncate_before(sequence + 1)
            self._records_since_snapshot = 0

    # -- public --------------------------------------------------------------------------

    async def submit(self, payload: bytes) -> bytes:
        self.log.check_writable()
        await self.ensure_recovered()
        orders = decode(payload, list[TransferOrder])
        if len(orders) > MAX_BATCH:
            raise ValueError(f"batch of {len(orders)} exceeds MAX_BATCH={MAX_BATCH}")
        return encode(await self._submit(orders))

    async def ensure_recovered(self) -> None:
        if self._recovered:
            return
        async with self._recovery_lock:
            if not self._recovered:
                await self.resolve_in_doubt()
                self._recovered = True

    def can_act(self) -> bool:
        """Whether decisions may go out: every logged commit is on both replicas."""
        try:
            self.log.check_writable()
        except NotPrimary:
            return False
        return True

    def follow(self, payload: bytes) -> bytes:
        """Backup: append the primary's record verbatim, then apply it."""
        shipped = decode(payload, ShippedRecord)
        if shipped.epoch != self.log.epoch:
            raise NotPrimary(f"record of epoch {shipped.epoch} refused at {self.log.epoch}")
        try:
            self._wal.append(shipped.epoch, shipped.payload, sequence=shipped.sequence)
        except SequenceGap as error:
            raise NotPrimary(f"out of order: {error}") from error
        except WalFatalIOError:
            log.critical("coordinator backup: log write failed; stopping", exc_info=True)
            os._exit(70)
        self._replay(decode(shipped.payload, CoordinatorRecord))
        self._after_append()
        return b""

    def snapshot_payload(self) -> bytes:
        return encode(self.pending_commits)

    def close(self) -> None:
        self.log.detach(self.log.epoch)
        self._wal.close()

    async def resolve_in_doubt(self) -> dict[str, int]:
        """Re-deliver logged commits and abort every in-doubt transaction without one."""
        if not self.can_act():
            return {"redelivered": 0, "aborted": 0}
        redelivered = await self._redeliver_pending()
        aborted = 0
        for shard in range(self._shard_count):
            # Each shard on its own, bounded in time: one unreachable shard must not
            # keep the others' holds frozen. The next sweep retries it.
            try:
                txids: list[str] = await asyncio.wait_for(
                    self._call_shard(shard, "in_doubt", b""), SHARD_CALL_TIMEOUT_SECONDS
                )
                decisions = [
                    Decision(t, t in self.pending_commits, self.log.epoch)
                    for t in txids
                    if t not in self._inflight_txids
                ]
                for start in range(0, len(decisions), MAX_BATCH):
                    chunk = encode(decisions[start : start + MAX_BATCH])
                    await asyncio.wait_for(
                        self._call_shard(shard, "decide", chunk), SHARD_CALL_TIMEOUT_SECONDS
                    )
                aborted += sum(1 for d in decisions if not d.commit)
            except Exception as error:
                log.warning("in-doubt resolution on shard %d failed: %r", shard, error)
        if redelivered or aborted:
            log.info(
                "in-doubt resolution: %d commits re-delivered, %d aborted", redelivered, aborted
            )
        return {"redelivered": redelivered, "aborted": aborted}

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_SECONDS)
            try:
                await self.resolve_in_doubt()
            except Exception:
                log.warning("in-doubt sweep failed; will retry", exc_info=True)

    # -- the protocol ----------------------------------------------------------------------

    async def _submit(self, orders: list[TransferOrder]) -> list[TransferOutcome]:
        loop = asyncio.get_running_loop()
        outcomes: list[TransferOutcome | None] = [None] * len(orders)
        waiters: list[tuple[int, TransferOrder, asyncio.Future[TransferOutcome]]] = []
        txs: list[_Tx] = []
        now = time.time_ns() // 1_000
        for index, order in enumerate(orders):
            # No validation pass here: the gateway validated at the edge, and every
            # participant validates again before it votes (a refusal comes back as a vote).
            running = self._inflight_orders.get(order.id)
            if running is not None:
                waiters.append((index, order, running[1]))
                continue
            self._inflight_orders[order.id] = (order, loop.create_future())
            txid = uuid.uuid4().hex
            self._inflight_txids.add(txid)
            debit_shard = shard_of(order.debit, self._shard_count)
            others = {shard_of(a, self._shard_count) for a in order.accounts()} - {debit_shard}
            txs.append(
                _Tx(
                    index,
                    txid,
                    Transfer(order=order, created_at=now),
                    [debit_shard, *sorted(others)],
                )
            )
        try:
            await self._run(txs, outcomes)
        finally:
            for tx in txs:
                self._inflight_txids.discard(tx.txid)
                _, future = self._inflight_orders.pop(tx.transfer.order.id)
                result = outcomes[tx.index]
                if not future.done():
                    if result is None:
                        future.set_exception(
                            LedgerError(ErrorCode.UNAVAILABLE, "coordinator failed")
                        )
                    else:
                        future.set_result(result)
        for index, order, future in waiters:
            outcomes[index] = _follow(order, await future)
        return [o if o is not None else _unavailable("no outcome") for o in outcomes]

    async def _run(self, txs: list[_Tx], outcomes: list[TransferOutcome | None]) -> None:
        if not txs:
            return
        by_shard: dict[int, list[_Tx]] = {}
        for tx in txs:
            for shard in tx.shards:
                by_shard.setdefault(shard, []).append(tx)
        await asyncio.gather(*(self._prepare_on(shard, group) for shard, group in by_shard.items()))

        commits: list[_Tx] = []
        aborts: list[_Tx] = []
        for tx in txs:
            if len(tx.votes) == len(tx.shards) and all(v.ok for v in tx.votes.values()):
                commits.append(tx)
            else:
                aborts.append(tx)
                outcomes[tx.index] = _refusal(tx)
        if commits:
            # The in-memory map changes first so a snapshot taken by _append includes it.
            for tx in commits:
                self.pending_commits[tx.txid] = tx.shards
            try:
                self._append(
                    CoordinatorCommit(
                        txids=[tx.txid for tx in commits],
                        participants=[tx.shards for tx in commits],
                    )
                )
            except ReplicationFailed:
                # Not durable on two machines: send nothing. The participants keep the
                # holds until a new backup carries this decision or a promoted backup
                # (which never saw it) aborts them.
                for tx in txs:
                    if outcomes[tx.index] is None:
                        outcomes[tx.index] = _unavailable("the coordinator lost its backup; retry")
                return
        epoch = self.log.epoch
        decisions = [Decision(tx.txid, True, epoch) for tx in commits] + [
            Decision(tx.txid, False, epoch) for tx in aborts
        ]
        participants = {tx.txid: tx.shards for tx in txs}
        undelivered = await self._deliver(decisions, participants)
        done = [tx.txid for tx in commits if tx.txid not in undelivered]
        for tx in commits:
            if tx.txid in undelivered:
                outcomes[tx.index] = _unavailable(
                    "the transfer committed but a participant has not applied it yet; "
                    "retry with the same id"
                )
            else:
                outcomes[tx.index] = TransferOutcome(transfer=tx.transfer)
        if done:
            # If this record is lost, recovery merely re-sends decisions already applied.
            for txid in done:
                self.pending_commits.pop(txid, None)
            with contextlib.suppress(ReplicationFailed):
                self._append(CoordinatorDone(txids=done))
        self.committed += len(done)
        self.aborted += len(aborts)
        await self._confirm_replays(aborts, outcomes)

    async def _confirm_replays(
        self, aborts: list[_Tx], outcomes: list[TransferOutcome | None]
    ) -> None:
        """Answer "already committed" only once every logged commit reached every shard.

        The debit shard knowing a transfer does not mean its credits were applied: an
        earlier attempt's decision may still be undelivered to a credit shard. Reads
        after an acknowledgement must see all legs, so deliver first, else ask to retry.
        """
        replays = [tx for tx in aborts if (o := outcomes[tx.index]) is not None and o.replayed]
        waiting = [
            tx
            for tx in aborts
            if (o := outcomes[tx.index]) is not None and o.error == ErrorCode.UNAVAILABLE
        ]
        if not replays and not waiting:
            return
        # A retry of a transfer that is mid-commit: push the logged decisions out now
        # rather than at the next sweep, so the client's following retry settles.
        await self._redeliver_pending()
        if not replays:
            return
        if any(t not in self._inflight_txids for t in self.pending_commits):
            for tx in replays:
                outcomes[tx.index] = _unavailable(
                    "the transfer committed and is still being applied; retry with the same id"
                )

    async def _redeliver_pending(self) -> int:
        if not self.can_act():
            return 0
        pending = {t: s for t, s in self.pending_commits.items() if t not in self._inflight_txids}
        if not pending:
            return 0
        undelivered = await self._deliver(
            [Decision(t, True, self.log.epoch) for t in pending], pending
        )
        # Delivered everywhere: forget it, or every sweep and restart re-sends it forever.
        done = [t for t in pending if t not in undelivered]
        if done:
            for txid in done:
                self.pending_commits.pop(txid, None)
            with contextlib.suppress(ReplicationFailed):
                self._append(CoordinatorDone(txids=done))
        return len(done)

    async def _prepare_on(self, shard: int, group: list[_Tx]) -> None:
        for start in range(0, len(group), MAX_BATCH):
            chunk = group[start : start + MAX_BATCH]
            payload = encode(
                [
                    Prepare(txid=tx.txid, transfer=tx.transfer, coordinator_epoch=self.log.epoch)
                    for tx in chunk
                ]
            )
            try:
                votes = decode(await self._call_shard(shard, "prepare", payload), list[Vote])
            except Exception as error:
                log.warning("prepare on shard %d failed: %s", shard, error)
                votes = [
                    Vote(
                        txid=tx.txid,
                        ok=False,
                        error=ErrorCode.UNAVAILABLE,
                        detail="shard unavailable",
                    )
                    for tx in chunk
                ]
            for tx, vote in zip(chunk, votes, strict=True):
                # A vote counts only for the transaction it names.
                if vote.txid == tx.txid:
                    tx.votes[shard] = vote

    async def _deliver(
        self, decisions: list[Decision], participants: dict[str, list[int]]
    ) -> set[str]:
        """Send decisions to every participant, retrying; returns txids not fully delivered."""
        by_shard: dict[int, list[Decision]] = {}
        for decision in decisions:
            for shard in participants[decision.txid]:
                by_shard.setdefault(shard, []).append(decision)
        failed = await asyncio.gather(
            *(self._deliver_to(shard, group) for shard, group in by_shard.items())
        )
        return {txid for shard_failures in failed for txid in shard_failures}

    async def _deliver_to(self, shard: int, decisions: list[Decision]) -> set[str]:
        for start in range(0, len(decisions), MAX_BATCH):
            chunk = decisions[start : start + MAX_BATCH]
            for attempt in range(DECIDE_ATTEMPTS):
                try:
                    await self._call_shard(shard, "decide", encode(chunk))
                    break
                except Exception as error:
                    log.warning("decide on shard %d failed (try %d): %s", shard, attempt + 1, error)
                    await asyncio.sleep(DECIDE_BACKOFF_SECONDS)
            else:
                return {d.txid for d in decisions[start:]}
        return set()


def _refusal(tx: _Tx) -> TransferOutcome:
    # Votes arrive debit shard first, so its reason (funds, conflict) wins.
    for shard in tx.shards:
        vote = tx.votes.get(shard)
        if vote is None:
            continue
        if vote.existing is not None:
            return TransferOutcome(transfer=vote.existing, replayed=True)
        if not vote.ok:
            return TransferOutcome(error=vote.error, detail=vote.detail)
    return _unavailable("a participant did not vote")


def _unavailable(detail: str) -> TransferOutcome:
    return TransferOutcome(error=ErrorCode.UNAVAILABLE, detail=detail)


def _follow(order: TransferOrder, first: TransferOutcome) -> TransferOutcome:
    """Outcome for an order that arrived while the same id was in flight."""
    if first.transfer is not None:
        if first.transfer.order != order:
            return TransferOutcome(
                error=ErrorCode.TRANSFER_ID_CONFLICT,
                detail=f"transfer {order.id!r} exists with a different body",
            )
        return TransferOutcome(transfer=first.transfer, replayed=True)
    return first


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=64)  # type: ignore[call-overload]
class CoordinatorActor:
    """Async Ray shell around CoordinatorService; one copy, or one replica of two.

    Shards are reached on their direct channels, found through ``directory``: by
    actor name on a single node, through the controller's routes in a cluster.
    """

    def __init__(
        self,
        shard_count: int,
        data_dir: str,
        fsync: bool = True,
        replica: ReplicaSpec | None = None,
    ) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        self._channels: dict[int, ActorChannel] = {}
        self._shard_count = shard_count
        self._fsync = fsync
        self._replica = replica
        self._directory: Directory = (
            NamedActorDirectory(shard_count) if replica is None else ControllerDirectory()
        )
        self._sweeper: asyncio.Task[None] | None = None
        self._service: CoordinatorService | None = None
        self._routes = b""
        self._receiver = InstallReceiver()
        if replica is None:
            self._role = Role.PRIMARY
            self._epoch = COORDINATOR_EPOCH
            self._root = Path(data_dir) / "coordinator"
            self._service = CoordinatorService(shard_count, Path(data_dir), self._call, fsync=fsync)
        else:
            self._role = Role(replica.role)
            self._epoch = replica.epoch
            self._root = replica_root(replica.name)
            if self._role is Role.PRIMARY:
                self._service = self._new_service(replica.epoch)
        self._host = ray.util.get_node_ip_address() if replica is not None else "127.0.0.1"
        self._channel_server = AsyncChannelServer(self._dispatch)
        if replica is not None:
            self._heartbeat = start_heartbeat(replica, self._report, self._on_answer)
        if self._role is Role.PRIMARY:
            # After a Ray restart nobody else calls start(): recovery and the in-doubt
            # sweep must not wait for the next cross-shard transfer to begin.
            ray.get_runtime_context().current_actor.start.remote()

    def _new_service(self, epoch: int, wal_floor: int = 0) -> CoordinatorService:
        return CoordinatorService(
            self._shard_count,
            self._root.parent,
            self._call,
            fsync=self._fsync,
            epoch=epoch,
            replicated=True,
            root=self._root,
            wal_floor=wal_floor,
        )

    # -- roles -----------------------------------------------------------------------------

    def _report(self) -> HeartbeatReport:
        log = self._service.log if self._service is not None else None
        return report_of(self._replica, str(self._role), self._epoch, log)

    def _on_answer(self, asked_at: float, answer: HeartbeatAnswer) -> None:
        if answer.routes:
            self._routes = answer.routes
        if answer.fence:
            self._fence()

    def _fence(self) -> None:
        if self._role is not Role.FENCED:
            log.warning("coordinator fenced at epoch %d", self._epoch)
        self._role = Role.FENCED
        if self._service is not None:
            self._service.log.detach(self._epoch)

    def _primary(self) -> CoordinatorService:
        if self._role is not Role.PRIMARY or self._service is None:
            raise NotPrimary(f"this coordinator replica is {self._role}")
        return self._service

    async def _dispatch(self, method: str, payload: bytes) -> bytes:
        if method == "submit":
            return await self.submit(payload)
        if method == "replicate":
            if self._role is not Role.BACKUP or self._service is None:
                raise NotPrimary(f"this coordinator replica is {self._role}, not a backup")
            return self._service.follow(payload)
        if method in INSTALL_METHODS:
            if self._role is not Role.BACKUP:
                raise NotPrimary(f"this coordinator replica is {self._role}, not a backup")
            install = self._receiver.receive(method, payload, self._epoch)
            return self._install(install) if install is not None else b""
        if method == "stats":
            return encode(await self.stats())
        if method == "routes":
            if self._role is Role.FENCED:
                raise NotPrimary("fenced: this replica's routes are stale")
            return self._routes
        raise ValueError(f"{method!r} is not served on the channel")

    def _install(self, install: Install) -> bytes:
        if self._role is not Role.BACKUP or install.epoch != self._epoch:
            raise NotPrimary(f"install of epoch {install.epoch} refused at {self._epoch}")
        if self._service is not None:
            self._service.close()
            self._service = None
        shutil.rmtree(self._root, ignore_errors=True)
        (self._root / "snapshots").mkdir(parents=True)
        write_snapshot(
            self._root / "snapshots", install.sequence, install.snapshot, fsync=self._fsync
        )
        self._service = self._new_service(install.epoch, wal_floor=install.sequence)
        log.info("coordinator backup installed at sequence %d", install.sequence)
        return b""

    async def promote(self, epoch: int) -> bool:
        if self._role is not Role.BACKUP or self._service is None or epoch <= self._epoch:
            return False
        self._epoch = epoch
        self._service.log.detach(epoch)
        self._role = Role.PRIMARY
        log.warning("coordinator promoted to primary at epoch %d", epoch)
        return True

    async def attach_backup(self, epoch: int, address: ChannelAddress) -> int:
        service = self._primary()
        if epoch < self._epoch:
            raise NotPrimary(f"attach of epoch {epoch} refused at epoch {self._epoch}")
        self._epoch = epoch
        sequence = service.log.attach(epoch, address, service.snapshot_payload())
        log.info("coordinator backup attached at epoch %d, sequence %d", epoch, sequence)
        # Decisions held back while the log was broken can go out now.
        await self.start()
        return sequence

    async def fence(self) -> bool:
        self._fence()
        return True

    async def replica_status(self) -> ReplicaStatus:
        log = self._service.log if self._service is not None else None
        return status_of(str(self._role), self._epoch, log, lease=self._role is Role.PRIMARY)

    async def ready(self) -> bool:
        return True

    # -- the service -------------------------------------------------------------------------

    async def channel_address(self) -> ChannelAddress:
        """Where gateways submit cross-shard batches (and a primary ships its records)."""
        if self._role is Role.PRIMARY:
            await self.start()
        return await self._channel_server.start(self._host)

    async def _call(self, shard: int, method: str, payload: bytes) -> Any:
        channel = self._channels.get(shard)
        if channel is None:
            directory = self._directory
            group = shard_group(shard)

            async def lookup() -> ChannelAddress:
                return await directory.address(group)

            channel = self._channels[shard] = ActorChannel(lookup)
        raw = await channel.call(method, payload)
        return decode(raw, list[str]) if method == "in_doubt" else raw

    async def start(self) -> dict[str, int]:
        service = self._primary()
        await service.ensure_recovered()
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(service.sweep_forever())
        return {"pending_commits": len(service.pending_commits)}

    async def submit(self, payload: bytes) -> bytes:
        service = self._primary()
        if self._sweeper is None:
            await self.start()
        return await service.submit(payload)

    async def resolve_in_doubt(self) -> dict[str, int]:
        return await self._primary().resolve_in_doubt()

    async def shard_count(self) -> int:
        return self._shard_count

    async def stats(self) -> dict[str, int]:
        service = self._primary()
        return {
            "committed": service.committed,
            "aborted": service.aborted,
            "pending_commits": len(service.pending_commits),
        }
