"""Lookups spanning shards see whole transfers: the coordinator's read barrier.

Commit decisions reach a transfer's participants in parallel, so for a moment one shard
shows its leg and another does not. Every cross-shard commit is delivered by the
coordinator, so it knows which commits may be applied on some participants and not on
others ("torn"): from the moment their first delivery starts until every participant
confirmed applying them (and, after a replay or a promotion, every commit its log still
holds). A lookup of accounts on shards S is blocked by a torn commit with two or more
participants in S, one of which has not confirmed it, and reads only when nothing blocks
it. A commit not yet sent anywhere is applied nowhere, so it blocks no lookup; instead its
first delivery waits for the conflicting lookups that began before it, and lookups that
begin after it wait for it. Each side waits only for the other side's earlier arrivals, so
neither starves and no wait is circular; both are bounded (``LOOKUP_WAIT_SECONDS``,
``DELIVERY_WAIT_SECONDS``). A delivery out of patience goes ahead and spoils the lookups
already reading, which then answer 503 rather than a torn view. Holds (prepared,
undecided) are never in a balance, so prepares need no barrier.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Container, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from tokpay.actors.timing import DELIVERY_WAIT_SECONDS, LOOKUP_WAIT_SECONDS
from tokpay.ledger.errors import ErrorCode, LedgerError
from tokpay.ledger.limits import MAX_BATCH, MAX_LOOKUP_IDS, MAX_LOOKUPS_PER_BATCH
from tokpay.ledger.model import BalanceView
from tokpay.ledger.routing import shard_of

log = logging.getLogger("tokpay.coordinator")

Shards = frozenset[int]
ShardRead = Callable[[int, list[str]], Awaitable[list[BalanceView | None]]]
"""(shard, ids) -> their balances, bounded in time; raises ``LedgerError`` if it cannot."""


class LookupAnswer(msgspec.Struct, frozen=True, array_like=True):
    """One spanning lookup's answer: balances in request order, or why there are none."""

    views: list[BalanceView | None] | None = None
    error: str | None = None
    detail: str = ""


@dataclass(eq=False)
class _Lookup:
    ticket: int
    shards: Shards
    admitted: bool = False
    refusal: str | None = None


@dataclass(eq=False)
class _Delivery:
    ticket: int
    participants: frozenset[Shards]
    """The participant sets of its commits that no delivery has reached yet."""


def _conflict(lookup: Shards, participants: Shards) -> bool:
    return len(lookup & participants) >= 2


class ReadBarrier:
    """Which commits may show on some shards and not others, and who waits for whom."""

    def __init__(self) -> None:
        self._torn: dict[str, tuple[Shards, Shards]] = {}
        """txid -> (participants, those that have not confirmed applying it)."""
        # The same, counted by state: a lookup checks a few states, not every transaction.
        self._states: Counter[tuple[Shards, Shards]] = Counter()
        self._lookups: set[_Lookup] = set()
        self._deliveries: set[_Delivery] = set()
        self._tickets = itertools.count()
        self._change = asyncio.Event()

    # -- what the coordinator tells it -------------------------------------------------------

    def unknown(self, commits: Mapping[str, Sequence[int]]) -> None:
        """Commits this copy did not deliver (replayed, followed as a backup): they may be
        applied anywhere, so they count as torn until delivered everywhere."""
        for txid, shards in commits.items():
            self._set(txid, frozenset(shards), frozenset(shards))
        self._changed()

    def confirmed(self, shard: int, txids: Sequence[str]) -> None:
        """``shard`` answered a delivery of these commits: it has applied them."""
        for txid in txids:
            state = self._torn.get(txid)
            if state is not None:
                self._set(txid, state[0], state[1] - {shard})
        self._changed()

    def forget(self, txids: Sequence[str]) -> None:
        """Applied everywhere (the coordinator logged them done)."""
        for txid in txids:
            self._set(txid, frozenset(), frozenset())
        self._changed()

    def is_torn(self, txid: str) -> bool:
        return txid in self._torn

    async def before_delivery(self, commits: Mapping[str, Sequence[int]]) -> None:
        """Returns once these commits may go out: first deliveries wait for the earlier
        lookups they conflict with; from then on every one of them counts as torn."""
        fresh = {t: frozenset(s) for t, s in commits.items() if t not in self._torn}
        if not fresh:
            return
        delivery = _Delivery(next(self._tickets), frozenset(fresh.values()))
        self._deliveries.add(delivery)
        try:
            if not await self._until(lambda: not self._holding(delivery), DELIVERY_WAIT_SECONDS):
                for lookup in self._holding(delivery):
                    if lookup.admitted:
                        lookup.refusal = "a transfer among these shards could not wait; retry"
                log.warning("a commit delivery went ahead of lookups that held it too long")
        finally:
            self._deliveries.discard(delivery)
        for txid, shards in fresh.items():
            if txid not in self._torn:
                self._set(txid, shards, shards)
        self._changed()

    # -- lookups -----------------------------------------------------------------------------

    def enter(self, lookups: list[Shards]) -> list[_Lookup]:
        """Register a batch of lookups (one arrival): from now on they hold back the
        conflicting first deliveries that arrive later, until each one ``leave``s."""
        ticket = next(self._tickets)
        entries = [_Lookup(ticket, shards) for shards in lookups]
        self._lookups.update(entries)
        return entries

    def leave(self, entry: _Lookup) -> None:
        """``entry`` has read (or was refused). A delivery that could not wait for it has
        set its ``refusal`` by now."""
        if entry in self._lookups:
            self._lookups.discard(entry)
            self._changed()

    async def admit(
        self,
        entries: list[_Lookup],
        down: Container[int],
        admitted: Callable[[list[_Lookup]], None],
    ) -> None:
        """Hand the lookups to ``admitted`` as they may read, those admitted together in
        one group; refuse at once those spanning a shard in ``down``, and after
        ``LOOKUP_WAIT_SECONDS`` those still blocked."""
        deadline = time.monotonic() + LOOKUP_WAIT_SECONDS
        waiting = entries
        while True:
            group = []
            for entry in waiting:
                stopped = sorted(s for s in entry.shards if s in down)
                if stopped:
                    self._refuse(entry, f"shard {stopped[0]} is not answering; retry later")
                elif not self._blocked(entry):
                    entry.admitted = True
                    group.append(entry)
            if group:
                admitted(group)
            waiting = [e for e in waiting if not e.admitted and e.refusal is None]
            if not waiting:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for entry in waiting:
                    self._refuse(
                        entry, "a transfer among these accounts is still being applied; retry"
                    )
                return
            await self._wait(remaining)

    def _refuse(self, entry: _Lookup, detail: str) -> None:
        entry.refusal = detail
        self.leave(entry)

    def _blocked(self, lookup: _Lookup) -> bool:
        shards = lookup.shards
        if any(_conflict(shards, p) and u & shards for p, u in self._states):
            return True
        return any(
            d.ticket < lookup.ticket and any(_conflict(shards, p) for p in d.participants)
            for d in self._deliveries
        )

    def _holding(self, delivery: _Delivery) -> list[_Lookup]:
        return [
            lookup
            for lookup in self._lookups
            if lookup.ticket < delivery.ticket
            and any(_conflict(lookup.shards, p) for p in delivery.participants)
        ]

    # -- plumbing ----------------------------------------------------------------------------

    def _set(self, txid: str, participants: Shards, unconfirmed: Shards) -> None:
        old = self._torn.pop(txid, None)
        if old is not None:
            self._states[old] -= 1
            if not self._states[old]:
                del self._states[old]
        if unconfirmed:
            self._torn[txid] = (participants, unconfirmed)
            self._states[participants, unconfirmed] += 1

    def _changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._change.wait(), seconds)

    async def _until(self, ready: Callable[[], object], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await self._wait(remaining)
        return True


def check_lookups(lookups: list[list[str]]) -> None:
    if len(lookups) > MAX_LOOKUPS_PER_BATCH:
        raise ValueError(f"{len(lookups)} lookups exceed MAX_LOOKUPS_PER_BATCH")
    if any(len(ids) > MAX_LOOKUP_IDS for ids in lookups):
        raise ValueError(f"a lookup exceeds MAX_LOOKUP_IDS={MAX_LOOKUP_IDS}")


async def read_whole(
    barrier: ReadBarrier,
    lookups: list[list[str]],
    shard_count: int,
    read: ShardRead,
    down: Container[int],
) -> list[LookupAnswer]:
    """Answer a batch of lookups: those admitted together read each shard once, and each
    lookup leaves the barrier as soon as its own shards answered (a slow shard holds back
    only the deliveries that conflict with the lookups reading it)."""
    check_lookups(lookups)
    entries = barrier.enter([frozenset(shard_of(a, shard_count) for a in ids) for ids in lookups])
    answers: list[LookupAnswer | None] = [None] * len(lookups)
    index = {entry: n for n, entry in enumerate(entries)}
    groups: list[asyncio.Task[None]] = []

    async def read_group(group: list[_Lookup]) -> None:
        wanted: dict[int, set[str]] = {}
        for entry in group:
            for account_id in lookups[index[entry]]:
                wanted.setdefault(shard_of(account_id, shard_count), set()).add(account_id)
        shards = {
            s: asyncio.ensure_future(_read_shard(read, s, sorted(ids))) for s, ids in wanted.items()
        }

        async def one(entry: _Lookup) -> None:
            try:
                found = [await shards[s] for s in sorted(entry.shards)]
            finally:
                barrier.leave(entry)
            answers[index[entry]] = _answer(lookups[index[entry]], entry, found)

        try:
            await asyncio.gather(*(one(entry) for entry in group))
        finally:
            for task in shards.values():
                task.cancel()

    try:
        await barrier.admit(
            entries, down, lambda g: groups.append(asyncio.ensure_future(read_group(g)))
        )
        await asyncio.gather(*groups)
    finally:
        for task in groups:
            task.cancel()
        for entry in entries:
            barrier.leave(entry)
    return [
        a if a is not None else LookupAnswer(error=ErrorCode.UNAVAILABLE, detail=e.refusal or "")
        for a, e in zip(answers, entries, strict=True)
    ]


async def _read_shard(
    read: ShardRead, shard: int, ids: list[str]
) -> dict[str, BalanceView | None] | str:
    """The balances of ``ids`` on ``shard``, or why they could not be read."""
    found: dict[str, BalanceView | None] = {}
    try:
        for start in range(0, len(ids), MAX_BATCH):
            chunk = ids[start : start + MAX_BATCH]
            found.update(zip(chunk, await read(shard, chunk), strict=True))
    except LedgerError as error:
        return f"shard {shard}: {error.detail}"
    return found


def _answer(
    ids: list[str], entry: _Lookup, found: list[dict[str, BalanceView | None] | str]
) -> LookupAnswer:
    views: dict[str, BalanceView | None] = {}
    for shard_views in found:
        if isinstance(shard_views, str):
            return LookupAnswer(error=ErrorCode.UNAVAILABLE, detail=entry.refusal or shard_views)
        views.update(shard_views)
    if entry.refusal is not None:
        return LookupAnswer(error=ErrorCode.UNAVAILABLE, detail=entry.refusal)
    return LookupAnswer(views=[views[a] for a in ids])
