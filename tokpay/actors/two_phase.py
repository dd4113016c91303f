"""The coordinator's side of two-phase commit, as plain functions over one batch.

``prepare_on`` asks one participant shard to hold funds for a group of transactions
(PREPARE) and records its votes; ``deliver`` sends commit and abort decisions to
participants, retrying, and says which transactions are not yet applied everywhere.
Both are bounded in time per shard: a shard that misses its deadline is marked in
``Unreachable`` and gets no more calls from client batches until a probe reaches it,
so one stopped shard holds up only the transactions that touch it.
Commits pass the read barrier (``read_barrier``) on their way out, and lookups spanning
shards are read here behind it. The outcome helpers turn votes into what the client is
told. ``CoordinatorService`` decides what is logged and when; this module only talks to
shards.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokpay.actors.batching import Batcher
from tokpay.actors.channel import NotPrimary
from tokpay.actors.protocol import decode, encode
from tokpay.actors.read_barrier import LookupAnswer, ReadBarrier, read_whole
from tokpay.actors.timing import (
    DECIDE_ATTEMPTS,
    DECIDE_BACKOFF_SECONDS,
    PREPARE_DEADLINE_SECONDS,
    PROBE_PAUSE_SECONDS,
    SHARD_CALL_TIMEOUT_SECONDS,
)
from tokpay.ledger.errors import ErrorCode, LedgerError
from tokpay.ledger.limits import MAX_BATCH, MAX_PENDING_PER_SHARD
from tokpay.ledger.model import (
    BalanceView,
    Decision,
    Prepare,
    Transfer,
    TransferOrder,
    TransferOutcome,
    Vote,
)

log = logging.getLogger("tokpay.coordinator")

ShardCall = Callable[[int, str, bytes], Awaitable[Any]]
"""(shard, method, payload) -> result: how the coordinator reaches a participant."""

PrepareCall = Callable[[int, list[Prepare]], Awaitable[list[Vote]]]
"""(shard, prepares) -> their votes, in order."""

DecideCall = Callable[[int, list[Decision]], Awaitable[None]]
"""(shard, decisions): returns once the shard applied them all."""

ShardProbe = Callable[[int], Awaitable[int]]
"""Settles one shard's in-doubt holds, returning how many it aborted; raises unless the
shard answered. The in-doubt sweep, and the probe of a shard marked unreachable."""


@dataclass
class PendingTx:
    """One cross-shard transfer in flight: its participants (debit shard first) and votes."""

    index: int
    txid: str
    transfer: Transfer
    shards: list[int]
    votes: dict[int, Vote] = field(default_factory=dict)

    def voted_yes(self) -> list[int]:
        """The shards holding funds for it: the only ones an abort has to reach."""
        return [s for s in self.shards if (v := self.votes.get(s)) is not None and v.ok]


class Unreachable:
    """Shards that missed a deadline, each probed in the background until it answers.

    While a shard is marked, client batches send it nothing: its transactions vote no at
    once instead of each batch waiting out the deadline again, which would hold up every
    transaction sharing a batch with one of them.
    """

    def __init__(self, probe: ShardProbe) -> None:
        self.probe = probe
        self._probes: dict[int, asyncio.Task[None]] = {}

    def __contains__(self, shard: object) -> bool:
        return shard in self._probes

    def __len__(self) -> int:
        return len(self._probes)

    def mark(self, shard: int) -> None:
        if shard not in self._probes:
            log.warning("shard %d missed its deadline; unreachable until it answers", shard)
            loop = asyncio.get_running_loop()
            self._probes[shard] = loop.create_task(self._until_back(shard))

    async def _until_back(self, shard: int) -> None:
        try:
            while True:
                try:
                    # A stopped process answers the waiting probe as soon as it runs
                    # again, so a long deadline does not delay noticing its return.
                    await asyncio.wait_for(self.probe(shard), SHARD_CALL_TIMEOUT_SECONDS)
                    log.info("shard %d answers again", shard)
                    return
                except Exception as error:
                    log.info("shard %d still unreachable: %r", shard, error)
                await asyncio.sleep(PROBE_PAUSE_SECONDS)
        finally:
            del self._probes[shard]


class Participants:
    """The coordinator's way to its participant shards: calls bounded in time, the shards
    that missed a deadline, and aborts sent without anyone waiting for them."""

    def __init__(self, call_shard: ShardCall, probe: ShardProbe) -> None:
        self.call = call_shard
        self.unreachable = Unreachable(probe)
        self.barrier = ReadBarrier()
        # Abort deliveries outlive the batch that started them; kept so none is collected.
        self._background: set[asyncio.Task[set[str]]] = set()
        self._batchers: dict[tuple[int, str], Batcher[Any, Any]] = {}

    def _batched(self, shard: int, method: str) -> Batcher[Any, Any]:
        """One shard's ``prepare`` (items: ``Prepare``, results: ``Vote``) or ``decide``
        (items: ``Decision``, results: None; all applied or the call raises) calls, one in
        flight at a time: the cross-shard batches in flight together (several per gateway)
        share each shard's calls, so a shard logs one record for all of them, not one each."""
        batcher = self._batchers.get((shard, method))
        if batcher is None:

            async def send(items: list[Any]) -> list[Any]:
                if shard in self.unreachable:
                    # Marked while these waited behind a call that ran out: they would only
                    # wait out the deadline again on a shard known not to answer.
                    raise TimeoutError(f"shard {shard} is not answering")
                raw = await self.call(shard, method, encode(items))
                if method == "prepare":
                    votes: list[Vote] = decode(raw, list[Vote])
                    return votes
                return [None] * len(items)

            batcher = Batcher(
                send, max_batch=MAX_BATCH, max_pending=MAX_PENDING_PER_SHARD, max_inflight=1
            )
            self._batchers[(shard, method)] = batcher
        return batcher

    async def prepare(self, by_shard: dict[int, list[PendingTx]], epoch: int, wait: float) -> None:
        await asyncio.gather(
            *(
                prepare_on(self._prepare_call, shard, group, epoch, self.unreachable, wait)
                for shard, group in by_shard.items()
            )
        )

    async def _prepare_call(self, shard: int, prepares: list[Prepare]) -> list[Vote]:
        """``prepare_on``'s call, through the shard's shared prepare batcher."""
        votes: list[Vote] = await self._batched(shard, "prepare").submit_many(prepares)
        return votes

    async def deliver(
        self, decisions: list[Decision], participants: Mapping[str, Sequence[int]], deadline: float
    ) -> set[str]:
        """Send decisions to their participants, retrying for at most ``deadline`` per shard;
        returns the txids not delivered everywhere. A commit's first delivery passes the read
        barrier; aborts and commits already on their way go at once, so a lookup waiting for
        one of those never waits for a delivery that waits for it."""
        now, first = self._split(decisions)
        failed = await asyncio.gather(
            self._send(now, participants, deadline),
            self._send_first(first, participants, deadline),
        )
        return failed[0] | failed[1]

    async def decide_on(
        self, shard: int, decisions: list[Decision], commits: Mapping[str, Sequence[int]]
    ) -> None:
        """Decisions for one shard's in-doubt holds (the sweep and the probe bound it in
        time); raises unless the shard applied them all."""
        now, first = self._split(decisions)
        await self._decide_chunks(shard, now)
        if first:
            await self.barrier.before_delivery({d.txid: commits[d.txid] for d in first})
            await self._decide_chunks(shard, first)

    async def lookup(self, lookups: list[list[str]], shard_count: int) -> list[LookupAnswer]:
        """Lookups spanning shards, answered in one pass behind the read barrier."""
        return await read_whole(
            self.barrier, lookups, shard_count, self.read_balances, self.unreachable
        )

    async def read_balances(self, shard: int, ids: list[str]) -> list[BalanceView | None]:
        """Balances on one shard for a lookup, within a prepare deadline; a shard that misses
        it is marked unreachable, as one that misses a vote is."""
        try:
            raw = await asyncio.wait_for(
                self.call(shard, "balances", encode(ids)), PREPARE_DEADLINE_SECONDS
            )
        except TimeoutError:
            self.unreachable.mark(shard)
            raise LedgerError(ErrorCode.UNAVAILABLE, "not answering; retry later") from None
        except NotPrimary as error:
            raise LedgerError(ErrorCode.UNAVAILABLE, str(error)) from error
        views: list[BalanceView | None] = decode(raw, list[BalanceView | None])
        return views

    def _split(self, decisions: list[Decision]) -> tuple[list[Decision], list[Decision]]:
        """(those that may go at once, commits never sent before)."""
        first = [d for d in decisions if d.commit and not self.barrier.is_torn(d.txid)]
        chosen = {d.txid for d in first}
        return [d for d in decisions if d.txid not in chosen], first

    async def _send_first(
        self, decisions: list[Decision], participants: Mapping[str, Sequence[int]], deadline: float
    ) -> set[str]:
        if not decisions:
            return set()
        await self.barrier.before_delivery({d.txid: participants[d.txid] for d in decisions})
        return await self._send(decisions, participants, deadline)

    async def _send(
        self, decisions: list[Decision], participants: Mapping[str, Sequence[int]], deadline: float
    ) -> set[str]:
        by_shard: dict[int, list[Decision]] = {}
        for decision in decisions:
            for shard in participants[decision.txid]:
                by_shard.setdefault(shard, []).append(decision)

        async def one(shard: int, group: list[Decision]) -> set[str]:
            lost = await _deliver_to(self._decide_call, shard, group, deadline, self.unreachable)
            # Each shard as it answers: lookups away from a stalled shard must not wait for it.
            self.barrier.confirmed(
                shard, [d.txid for d in group if d.commit and d.txid not in lost]
            )
            return lost

        failed = await asyncio.gather(*(one(s, group) for s, group in by_shard.items()))
        return {txid for shard_failures in failed for txid in shard_failures}

    async def _decide_call(self, shard: int, decisions: list[Decision]) -> None:
        """``_send_decisions``'s call, through the shard's shared decide batcher."""
        await self._batched(shard, "decide").submit_many(decisions)

    async def _decide_chunks(self, shard: int, decisions: list[Decision]) -> None:
        for start in range(0, len(decisions), MAX_BATCH):
            chunk = decisions[start : start + MAX_BATCH]
            await self.call(shard, "decide", encode(chunk))
            self.barrier.confirmed(shard, [d.txid for d in chunk if d.commit])

    async def settle(self, shard: int) -> int:
        """One sweep of ``shard``'s in-doubt holds, bounded in time; how many it aborted."""
        try:
            return await asyncio.wait_for(self.unreachable.probe(shard), SHARD_CALL_TIMEOUT_SECONDS)
        except TimeoutError:
            self.unreachable.mark(shard)
        except Exception as error:
            log.warning("in-doubt resolution on shard %d failed: %r", shard, error)
        return 0

    def abort_soon(self, aborts: list[PendingTx], epoch: int) -> None:
        """Release the holds of aborted transactions in the background.

        Presumed abort: nothing is logged and nothing needs to arrive. A hold whose abort
        is lost is found by the in-doubt sweep, or by the probe once its shard answers.
        """
        holding = {tx.txid: voted for tx in aborts if (voted := tx.voted_yes())}
        if not holding:
            return
        decisions = [Decision(txid, False, epoch) for txid in holding]
        task = asyncio.get_running_loop().create_task(
            self.deliver(decisions, holding, PREPARE_DEADLINE_SECONDS)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def prepare_on(
    call_shard: PrepareCall,
    shard: int,
    group: list[PendingTx],
    epoch: int,
    unreachable: Unreachable,
    wait: float,
) -> None:
    """PREPARE a group of transactions on one shard; records each vote on its transaction.

    A shard that is marked unreachable, or says nothing for ``PREPARE_DEADLINE_SECONDS``
    (or is still reconfiguring after ``wait``), votes no
    (``unavailable``) for every transaction of the group.
    """
    for start in range(0, len(group), MAX_BATCH):
        chunk = group[start : start + MAX_BATCH]
        if shard in unreachable:
            _vote_unavailable(shard, chunk, "shard not answering; retry later")
            continue
        prepares = [
            Prepare(txid=tx.txid, transfer=tx.transfer, coordinator_epoch=epoch) for tx in chunk
        ]
        try:
            # The shard's channel gives up after PREPARE_DEADLINE_SECONDS of silence; this
            # bounds the wait on one that keeps answering "not now" (reconfiguring).
            votes = await asyncio.wait_for(call_shard(shard, prepares), wait)
        except TimeoutError:
            unreachable.mark(shard)
            _vote_unavailable(shard, chunk, "shard did not vote in time; retry later")
            continue
        except Exception as error:
            log.warning("prepare on shard %d failed: %s", shard, error)
            _vote_unavailable(shard, chunk, "shard unavailable")
            continue
        for tx, vote in zip(chunk, votes, strict=True):
            # A vote counts only for the transaction it names.
            if vote.txid == tx.txid:
                tx.votes[shard] = vote


def _vote_unavailable(shard: int, chunk: list[PendingTx], detail: str) -> None:
    for tx in chunk:
        tx.votes[shard] = Vote(txid=tx.txid, ok=False, error=ErrorCode.UNAVAILABLE, detail=detail)


async def _deliver_to(
    call_shard: DecideCall,
    shard: int,
    decisions: list[Decision],
    deadline: float,
    unreachable: Unreachable,
) -> set[str]:
    if shard in unreachable:
        return {d.txid for d in decisions}
    try:
        return await asyncio.wait_for(_send_decisions(call_shard, shard, decisions), deadline)
    except TimeoutError:
        unreachable.mark(shard)
        # Which chunks landed is unknown: all of them are sent again (deciding twice is a no-op).
        return {d.txid for d in decisions}


async def _send_decisions(
    call_shard: DecideCall, shard: int, decisions: list[Decision]
) -> set[str]:
    for start in range(0, len(decisions), MAX_BATCH):
        chunk = decisions[start : start + MAX_BATCH]
        for attempt in range(DECIDE_ATTEMPTS):
            try:
                await call_shard(shard, chunk)
                break
            except TimeoutError:
                raise  # silent: the caller marks it unreachable
            except Exception as error:
                log.warning("decide on shard %d failed (try %d): %s", shard, attempt + 1, error)
                await asyncio.sleep(DECIDE_BACKOFF_SECONDS)
        else:
            return {d.txid for d in decisions[start:]}
    return set()


def refusal(tx: PendingTx) -> TransferOutcome:
    # Votes arrive debit shard first, so its reason (funds, conflict) wins.
    for shard in tx.shards:
        vote = tx.votes.get(shard)
        if vote is None:
            continue
        if vote.existing is not None:
            return TransferOutcome(transfer=vote.existing, replayed=True)
        if not vote.ok:
            return TransferOutcome(error=vote.error, detail=vote.detail)
    return unavailable("a participant did not vote")


def unavailable(detail: str) -> TransferOutcome:
    return TransferOutcome(error=ErrorCode.UNAVAILABLE, detail=detail)


def follow_outcome(order: TransferOrder, first: TransferOutcome) -> TransferOutcome:
    """Outcome for an order that arrived while the same id was in flight."""
    if first.transfer is not None:
        if first.transfer.order != order:
            return TransferOutcome(
                error=ErrorCode.TRANSFER_ID_CONFLICT,
                detail=f"transfer {order.id!r} exists with a different body",
            )
        return TransferOutcome(transfer=first.transfer, replayed=True)
    return first
