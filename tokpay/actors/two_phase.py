"""The coordinator's side of two-phase commit, as plain functions over one batch.

``prepare_on`` asks one participant shard to hold funds for a group of transactions
(PREPARE) and records its votes; ``deliver`` sends commit and abort decisions to every
participant, retrying, and says which transactions are not yet applied everywhere.
The outcome helpers turn votes into what the client is told. ``CoordinatorService``
decides what is logged and when; this module only talks to shards.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tokpay.actors.protocol import decode, encode
from tokpay.actors.timing import DECIDE_ATTEMPTS, DECIDE_BACKOFF_SECONDS
from tokpay.ledger.errors import ErrorCode
from tokpay.ledger.limits import MAX_BATCH
from tokpay.ledger.model import Decision, Prepare, Transfer, TransferOrder, TransferOutcome, Vote

log = logging.getLogger("tokpay.coordinator")

ShardCall = Callable[[int, str, bytes], Awaitable[Any]]
"""(shard, method, payload) -> result: how the coordinator reaches a participant."""


@dataclass
class PendingTx:
    """One cross-shard transfer in flight: its participants (debit shard first) and votes."""

    index: int
    txid: str
    transfer: Transfer
    shards: list[int]
    votes: dict[int, Vote] = field(default_factory=dict)


async def prepare_on(call_shard: ShardCall, shard: int, group: list[PendingTx], epoch: int) -> None:
    """PREPARE a group of transactions on one shard; records each vote on its transaction."""
    for start in range(0, len(group), MAX_BATCH):
        chunk = group[start : start + MAX_BATCH]
        payload = encode(
            [Prepare(txid=tx.txid, transfer=tx.transfer, coordinator_epoch=epoch) for tx in chunk]
        )
        try:
            votes = decode(await call_shard(shard, "prepare", payload), list[Vote])
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


async def deliver(
    call_shard: ShardCall, decisions: list[Decision], participants: dict[str, list[int]]
) -> set[str]:
    """Send decisions to every participant, retrying; returns txids not fully delivered."""
    by_shard: dict[int, list[Decision]] = {}
    for decision in decisions:
        for shard in participants[decision.txid]:
            by_shard.setdefault(shard, []).append(decision)
    failed = await asyncio.gather(
        *(_deliver_to(call_shard, shard, group) for shard, group in by_shard.items())
    )
    return {txid for shard_failures in failed for txid in shard_failures}


async def _deliver_to(call_shard: ShardCall, shard: int, decisions: list[Decision]) -> set[str]:
    for start in range(0, len(decisions), MAX_BATCH):
        chunk = decisions[start : start + MAX_BATCH]
        for attempt in range(DECIDE_ATTEMPTS):
            try:
                await call_shard(shard, "decide", encode(chunk))
                break
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
