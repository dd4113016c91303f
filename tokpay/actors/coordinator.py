"""Two-phase commit for transfers whose accounts live on more than one shard.

Presumed abort: participants durably log PREPARED (funds held) before voting yes;
the coordinator durably logs only commit decisions, then tells every participant
and answers the client once all of them applied it. A transaction the coordinator
has no commit record of is aborted by recovery. PREPARE and COMMIT travel batched:
one call per participant shard per incoming batch. Every wait on a shard while a client
waits is bounded: a silent shard by ``PREPARE_DEADLINE_SECONDS``, a reconfiguring one
(and the coordinator's own broken log) by ``RECONFIGURE_WAIT_SECONDS`` per batch. Aborts
are sent without waiting for them, and a shard that missed its deadline is left to a
background probe, so one unreachable shard stalls only the transactions that touch it.
The Ray actor around this state machine is ``coordinator_actor.CoordinatorActor``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from pathlib import Path
from typing import Unpack

from tokpay.actors.channel import NotPrimary
from tokpay.actors.protocol import (
    CoordinatorCommit,
    CoordinatorDone,
    CoordinatorRecord,
    decode,
    encode,
)
from tokpay.actors.replicated_service import LogOptions, ReplicatedService
from tokpay.actors.replication import ReplicationFailed
from tokpay.actors.timing import (
    PREPARE_DEADLINE_SECONDS,
    RECONFIGURE_WAIT_SECONDS,
    SHARD_CALL_TIMEOUT_SECONDS,
    SWEEP_INTERVAL_SECONDS,
)
from tokpay.actors.two_phase import (
    Participants,
    PendingTx,
    ShardCall,
    follow_outcome,
    refusal,
    unavailable,
)
from tokpay.ledger.errors import ErrorCode, LedgerError
from tokpay.ledger.limits import MAX_BATCH
from tokpay.ledger.model import Decision, Transfer, TransferOrder, TransferOutcome
from tokpay.ledger.routing import shard_of

log = logging.getLogger("tokpay.coordinator")

REPAIR_POLL_SECONDS = 0.05


class CoordinatorService(ReplicatedService):
    """The coordinator's state machine: commit decisions not yet applied everywhere."""

    label = "coordinator"

    def __init__(
        self,
        shard_count: int,
        data_dir: Path,
        call_shard: ShardCall,
        **options: Unpack[LogOptions],
    ) -> None:
        self._shard_count = shard_count
        self._call_shard = call_shard
        self._shards = Participants(call_shard, self._settle_shard)
        self._inflight_txids: set[str] = set()
        self._inflight_orders: dict[str, tuple[TransferOrder, asyncio.Future[TransferOutcome]]] = {}
        self._recovered = False
        # asyncio.Lock binds to a loop only when first used, so it can be made here.
        self._recovery_lock = asyncio.Lock()
        self.committed = 0
        self.aborted = 0
        super().__init__(data_dir / "coordinator", options)

    # -- the state machine ---------------------------------------------------------------

    def restore(self, snapshot: bytes | None) -> None:
        # Commit decisions not yet applied by every participant: txid -> participant shards.
        self.pending_commits: dict[str, list[int]] = (
            {} if snapshot is None else decode(snapshot, dict[str, list[int]])
        )
        self._shards.barrier.unknown(self.pending_commits)

    def apply_record(self, payload: bytes) -> None:
        record = decode(payload, CoordinatorRecord)
        # Replayed or followed: whoever delivered these, lookups treat them as torn until
        # this copy delivers them everywhere itself (``read_barrier``).
        if isinstance(record, CoordinatorCommit):
            commits = dict(zip(record.txids, record.participants, strict=True))
            self.pending_commits.update(commits)
            self._shards.barrier.unknown(commits)
        else:
            for txid in record.txids:
                self.pending_commits.pop(txid, None)
            self._shards.barrier.forget(record.txids)

    def snapshot_payload(self) -> bytes:
        return encode(self.pending_commits)

    def empty_record(self) -> bytes:
        return encode(CoordinatorDone(txids=[]))

    def recovered(self, snapshot_sequence: int, replayed: int) -> None:
        super().recovered(snapshot_sequence, replayed)
        log.info("coordinator: %d commit decisions to re-deliver", len(self.pending_commits))

    def _append(self, record: CoordinatorRecord) -> None:
        """Durable here and on the backup, or ``ReplicationFailed``.

        After a failure nothing is delivered from memory (``can_act`` is False) until a
        new backup is installed from this state or the backup is promoted instead.
        """
        self.append(encode(record), 1)

    # -- public --------------------------------------------------------------------------

    async def submit(self, payload: bytes) -> bytes:
        self.log.check_writable()
        await self.ensure_recovered()
        orders = decode(payload, list[TransferOrder])
        if len(orders) > MAX_BATCH:
            raise ValueError(f"batch of {len(orders)} exceeds MAX_BATCH={MAX_BATCH}")
        return encode(await self._submit(orders))

    async def lookup(self, payload: bytes) -> bytes:
        """Balances of lookups spanning shards, none showing a transfer half applied."""
        lookups = decode(payload, list[list[str]])
        return encode(await self._shards.lookup(lookups, self._shard_count))

    async def ensure_recovered(self) -> None:
        if self._recovered:
            return
        async with self._recovery_lock:
            if not self._recovered:
                await self.resolve_in_doubt()
                self._recovered = True

    @property
    def unreachable_shards(self) -> int:
        return len(self._shards.unreachable)

    def can_act(self) -> bool:
        """Whether decisions may go out: every logged commit is on both replicas."""
        try:
            self.log.check_writable()
        except NotPrimary:
            return False
        return True

    async def resolve_in_doubt(self) -> dict[str, int]:
        """Re-deliver logged commits and abort every in-doubt transaction without one."""
        if not self.can_act():
            return {"redelivered": 0, "aborted": 0}
        redelivered = await self._redeliver_pending(SHARD_CALL_TIMEOUT_SECONDS)
        # All shards at once, each bounded in time: one unreachable shard must not keep
        # the others' holds frozen. A shard already marked unreachable is its probe's.
        reachable = [s for s in range(self._shard_count) if s not in self._shards.unreachable]
        aborted = sum(await asyncio.gather(*(self._shards.settle(s) for s in reachable)))
        if redelivered or aborted:
            log.info(
                "in-doubt resolution: %d commits re-delivered, %d aborted", redelivered, aborted
            )
        return {"redelivered": redelivered, "aborted": aborted}

    async def _settle_shard(self, shard: int) -> int:
        """Decide every transaction ``shard`` holds in doubt and no batch is running:
        commit the logged ones, abort the rest. Returns how many were aborted; raises if
        the shard does not answer (so it also serves as the probe of an unreachable shard)."""
        txids: list[str] = await self._call_shard(shard, "in_doubt", b"")
        if not self.can_act():
            return 0
        decisions = [
            Decision(t, t in self.pending_commits, self.log.epoch)
            for t in txids
            if t not in self._inflight_txids
        ]
        commits = {d.txid: self.pending_commits[d.txid] for d in decisions if d.commit}
        await self._shards.decide_on(shard, decisions, commits)
        return sum(1 for d in decisions if not d.commit)

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
        txs: list[PendingTx] = []
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
                PendingTx(
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
            outcomes[index] = follow_outcome(order, await future)
        return [o if o is not None else unavailable("no outcome") for o in outcomes]

    async def _run(self, txs: list[PendingTx], outcomes: list[TransferOutcome | None]) -> None:
        if not txs:
            return
        by_shard: dict[int, list[PendingTx]] = {}
        for tx in txs:
            for shard in tx.shards:
                by_shard.setdefault(shard, []).append(tx)
        # What the batch may spend waiting out reconfigurations, in all (timing.py); each
        # wait on a shard still gets at least a silent shard's deadline.
        waits_until = time.monotonic() + RECONFIGURE_WAIT_SECONDS

        def wait_left() -> float:
            return max(PREPARE_DEADLINE_SECONDS, waits_until - time.monotonic())

        await self._shards.prepare(by_shard, self.log.epoch, wait_left())

        commits: list[PendingTx] = []
        aborts: list[PendingTx] = []
        for tx in txs:
            if len(tx.votes) == len(tx.shards) and all(v.ok for v in tx.votes.values()):
                commits.append(tx)
            else:
                aborts.append(tx)
                outcomes[tx.index] = refusal(tx)
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
                # Not durable on two machines: send nothing yet. The participants keep the
                # holds until a new backup carries this decision (the controller attaches
                # one within seconds: then it goes out, and the client is answered) or a
                # promoted backup, which never saw it, aborts them.
                if not await self._log_repaired(waits_until - time.monotonic()):
                    for tx in txs:
                        if outcomes[tx.index] is None:
                            outcomes[tx.index] = unavailable(
                                "the coordinator lost its backup; retry"
                            )
                    return
        epoch = self.log.epoch
        self._shards.abort_soon(aborts, epoch)
        undelivered = await self._shards.deliver(
            [Decision(tx.txid, True, epoch) for tx in commits],
            {tx.txid: tx.shards for tx in commits},
            wait_left(),
        )
        done = [tx.txid for tx in commits if tx.txid not in undelivered]
        for tx in commits:
            if tx.txid in undelivered:
                outcomes[tx.index] = unavailable(
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

    async def _log_repaired(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a new backup after the log broke; whether one came."""
        deadline = time.monotonic() + seconds
        while not self.can_act():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(REPAIR_POLL_SECONDS)
        return True

    async def _confirm_replays(
        self, aborts: list[PendingTx], outcomes: list[TransferOutcome | None]
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
        await self._redeliver_pending(PREPARE_DEADLINE_SECONDS)
        if not replays:
            return
        if any(t not in self._inflight_txids for t in self.pending_commits):
            for tx in replays:
                outcomes[tx.index] = unavailable(
                    "the transfer committed and is still being applied; retry with the same id"
                )

    async def _redeliver_pending(self, deadline: float) -> int:
        """Send the logged commits no running batch owns; returns how many reached every
        participant (``deadline`` bounds the wait for each shard)."""
        if not self.can_act():
            return 0
        pending = {t: s for t, s in self.pending_commits.items() if t not in self._inflight_txids}
        if not pending:
            return 0
        undelivered = await self._shards.deliver(
            [Decision(t, True, self.log.epoch) for t in pending], pending, deadline
        )
        # Delivered everywhere: forget it, or every sweep and restart re-sends it forever.
        done = [t for t in pending if t not in undelivered]
        if done:
            for txid in done:
                self.pending_commits.pop(txid, None)
            with contextlib.suppress(ReplicationFailed):
                self._append(CoordinatorDone(txids=done))
        return len(done)
