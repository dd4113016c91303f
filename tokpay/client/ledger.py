"""The one place that calls TokPay's actors: routing, batching, retries, time-outs.

``LedgerClient`` is asynchronous and coalesces concurrent requests per shard (the
gateway uses it); ``SyncLedgerClient`` serves scripts that already hold lists and
sends them in per-shard chunks. Every state-changing call carries ids (transfer,
account, 2PC), so repeating one after a lost reply is safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

from tokpay.actors.batching import Batcher
from tokpay.actors.channel import ActorChannel
from tokpay.actors.deploy import LedgerHandles, connect_ledger, use_loopback_ray
from tokpay.actors.directory import ControllerDirectory, Directory, NamedActorDirectory
from tokpay.actors.naming import (
    CONTROLLER_NAME,
    COORDINATOR_GROUP,
    COORDINATOR_NAME,
    NAMESPACE,
    shard_group,
)
from tokpay.actors.protocol import ChannelAddress, HistoryReply, ShardStats, decode, encode
from tokpay.actors.read_barrier import LookupAnswer
from tokpay.actors.timing import CHANNEL_REQUEST_TIMEOUT_SECONDS, CROSS_BATCH_TIMEOUT_SECONDS
from tokpay.ledger.errors import ErrorCode, LedgerError
from tokpay.ledger.limits import (
    MAX_BATCH,
    MAX_CONCURRENT_LOOKUPS,
    MAX_INFLIGHT_BATCHES,
    MAX_INFLIGHT_CROSS_BATCHES,
    MAX_INFLIGHT_LOOKUP_BATCHES,
    MAX_LOOKUP_IDS,
    MAX_LOOKUPS_PER_BATCH,
    MAX_PENDING_PER_SHARD,
)
from tokpay.ledger.model import (
    Account,
    AccountOutcome,
    AccountSpec,
    BalanceView,
    HistoryPage,
    Transfer,
    TransferOrder,
    TransferOutcome,
)
from tokpay.ledger.routing import shard_of
from tokpay.ledger.shard_ledger import home_of

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost"})
CALL_ATTEMPTS = 5
RETRY_BACKOFF_SECONDS = 0.2
CALL_TIMEOUT_SECONDS = 30.0
_RETRYABLE = (RayActorError, ActorUnavailableError, ActorDiedError)

T = TypeVar("T")

ShardWrite = tuple[bool, TransferOrder]
"""One item of a shard's write batch: (True, order) claims the order's id there, (False,
order) applies the order there."""


class LedgerClient:
    """Asynchronous client on the direct channels, found through a ``Directory``.

    ``LedgerClient(handles)`` serves the single-node default (actors by name);
    ``LedgerClient.for_cluster(n)`` a replicated cluster (routes from the controller,
    looked up again after any failure, so a failover is a reconnect and a retry).
    """

    def __init__(
        self,
        handles: LedgerHandles | None = None,
        *,
        directory: Directory | None = None,
        shard_count: int | None = None,
        read_barrier: bool = True,
    ) -> None:
        """``read_barrier=False`` is internal, for the benchmark and the test that show what
        the barrier costs and prevents: lookups spanning shards then read each shard
        directly and may show a transfer on one shard and not yet on another. The product
        never sets it."""
        self.handles = handles
        self._read_barrier = read_barrier
        if handles is not None:
            shard_count = handles.shard_count
        if shard_count is None:
            raise ValueError("give handles or a shard count")
        self.shard_count = shard_count
        self.directory: Directory = directory or NamedActorDirectory(shard_count)
        # One connection per shard for reads, one for writes and one for the rest, so a
        # read never queues behind another batch's fsync (nor a history page).
        self._read_channels = [self._channel(shard_group(s)) for s in range(shard_count)]
        self._write_channels = [self._channel(shard_group(s)) for s in range(shard_count)]
        self._misc_channels = [self._channel(shard_group(s)) for s in range(shard_count)]
        self._coordinator_channel = self._channel(COORDINATOR_GROUP)
        # One connection per cross-shard batch in flight: a channel answers one call at a time.
        self._cross_channels = [
            self._channel(COORDINATOR_GROUP) for _ in range(MAX_INFLIGHT_CROSS_BATCHES)
        ]
        self._reads = [self._batcher(self._read_batch(s)) for s in range(shard_count)]
        # Claims of ids homed on a shard and orders on its accounts share one batch: one
        # call and one log record per flush, not one of each.
        self._writes = [self._batcher(self._write_batch(s)) for s in range(shard_count)]
        self._cross = self._batcher(self._cross_batch, MAX_INFLIGHT_CROSS_BATCHES)
        self._lookup_channels = [
            self._channel(COORDINATOR_GROUP) for _ in range(MAX_INFLIGHT_LOOKUP_BATCHES)
        ]
        self._spanning: Batcher[list[str], LookupAnswer] = Batcher(
            self._spanning_batch,
            max_batch=MAX_LOOKUPS_PER_BATCH,
            max_pending=MAX_CONCURRENT_LOOKUPS,
            max_inflight=MAX_INFLIGHT_LOOKUP_BATCHES,
        )
        self._lookups = 0
        self.batch_observer: Any = None

    @classmethod
    def for_cluster(cls, shard_count: int) -> LedgerClient:
        return cls(directory=ControllerDirectory(), shard_count=shard_count)

    def _batcher(self, send: Any, max_inflight: int = MAX_INFLIGHT_BATCHES) -> Batcher[Any, Any]:
        return Batcher(
            send,
            max_batch=MAX_BATCH,
            max_pending=MAX_PENDING_PER_SHARD,
            max_inflight=max_inflight,
            on_batch=self._observe,
        )

    def _observe(self, size: int) -> None:
        if self.batch_observer is not None:
            self.batch_observer(size)

    def _channel(self, group: str) -> ActorChannel:
        directory = self.directory

        async def lookup() -> ChannelAddress:
            return await directory.address(group)

        return ActorChannel(lookup)

    async def _misc(self, shard: int, method: str, payload: bytes = b"") -> bytes:
        return await self._misc_channels[shard].call(method, payload)

    def _read_batch(self, shard: int) -> Any:
        channel = self._read_channels[shard]

        async def send(ids: list[str]) -> list[BalanceView | None]:
            return decode(await channel.call("balances", encode(ids)), list[BalanceView | None])

        return send

    def _write_batch(self, shard: int) -> Any:
        channel = self._write_channels[shard]

        async def send(writes: list[ShardWrite]) -> list[TransferOutcome]:
            claims = [order for claim, order in writes if claim]
            orders = [order for claim, order in writes if not claim]
            raw = await channel.call("claim_and_apply", encode((claims, orders)))
            claimed, applied = decode(raw, tuple[list[TransferOutcome], list[TransferOutcome]])
            if (len(claimed), len(applied)) != (len(claims), len(orders)):
                raise ValueError(
                    f"{len(claimed)}+{len(applied)} outcomes for {len(claims)}+{len(orders)}"
                )
            answers = iter(claimed), iter(applied)
            return [next(answers[0] if claim else answers[1]) for claim, _ in writes]

        return send

    async def _cross_batch(self, orders: list[TransferOrder]) -> list[TransferOutcome]:
        raw = await _on_free_channel(
            self._cross_channels, "submit", encode(orders), CROSS_BATCH_TIMEOUT_SECONDS
        )
        return decode(raw, list[TransferOutcome])

    # -- reads ---------------------------------------------------------------------------

    async def balance(self, account_id: str) -> BalanceView | None:
        result: BalanceView | None = await self._reads[
            shard_of(account_id, self.shard_count)
        ].submit(account_id)
        return result

    async def balances(self, account_ids: Sequence[str]) -> list[BalanceView | None]:
        if len(account_ids) > MAX_LOOKUP_IDS:
            raise LedgerError(ErrorCode.TOO_MANY_IDS, f"at most {MAX_LOOKUP_IDS} ids per lookup")
        if self._lookups >= MAX_CONCURRENT_LOOKUPS:
            raise LedgerError(
                ErrorCode.OVERLOADED,
                f"more than {MAX_CONCURRENT_LOOKUPS} batched lookups are in progress; retry later",
            )
        self._lookups += 1
        try:
            return await self._lookup(account_ids)
        finally:
            self._lookups -= 1

    async def _lookup(self, account_ids: Sequence[str]) -> list[BalanceView | None]:
        """One shard applies a decision atomically, so a lookup on one shard reads it
        directly; one spanning shards goes through the coordinator's read barrier, which
        never shows a transfer applied on one shard and not yet on another."""
        groups = group_by_shard(account_ids, lambda a: a, self.shard_count)
        if len(groups) > 1 and self._read_barrier:
            answer = await self._spanning.submit(list(account_ids))
            if answer.views is None:
                raise LedgerError(ErrorCode(answer.error or ErrorCode.UNAVAILABLE), answer.detail)
            return answer.views
        out: list[BalanceView | None] = [None] * len(account_ids)

        async def one(shard: int, indexed: list[tuple[int, str]]) -> None:
            views = decode(
                await self._read_channels[shard].call("balances", encode([a for _, a in indexed])),
                list[BalanceView | None],
            )
            for (index, _), view in zip(indexed, views, strict=True):
                out[index] = view

        await asyncio.gather(*(one(s, g) for s, g in groups.items()))
        return out

    async def _spanning_batch(self, lookups: list[list[str]]) -> list[LookupAnswer]:
        raw = await _on_free_channel(self._lookup_channels, "lookup", encode(lookups))
        return decode(raw, list[LookupAnswer])

    async def account(self, account_id: str) -> Account | None:
        raw = await self._misc(
            shard_of(account_id, self.shard_count), "account", encode(account_id)
        )
        return decode(raw, Account) if raw else None

    async def transfer(self, transfer_id: str) -> Transfer | None:
        raws = await asyncio.gather(
            *(self._misc(s, "transfer", encode(transfer_id)) for s in range(self.shard_count))
        )
        for raw in raws:
            if raw:
                found: Transfer = decode(raw, Transfer)
                return found
        return None

    async def history(self, account_id: str, limit: int, cursor: int | None) -> HistoryPage:
        raw = await self._misc(
            shard_of(account_id, self.shard_count), "history", encode((account_id, limit, cursor))
        )
        reply: HistoryReply = decode(raw, HistoryReply)
        if reply.page is None:
            raise LedgerError(ErrorCode(reply.error or ErrorCode.UNAVAILABLE), reply.detail)
        return reply.page

    # -- writes --------------------------------------------------------------------------

    async def create_account(self, spec: AccountSpec) -> AccountOutcome:
        raw = await self._misc(
            shard_of(spec.id, self.shard_count), "create_accounts", encode([spec])
        )
        outcome: AccountOutcome = decode(raw, list[AccountOutcome])[0]
        return outcome

    async def submit(self, order: TransferOrder) -> TransferOutcome:
        shards = {shard_of(a, self.shard_count) for a in order.accounts()}
        home = claim_home(order, shards, self.shard_count)
        if home is not None:
            claim: TransferOutcome = await self._writes[home].submit((True, order))
            if claim.error is not None:
                return claim
        if len(shards) == 1:
            result: TransferOutcome = await self._writes[shards.pop()].submit((False, order))
        else:
            result = await self._cross.submit(order)
        return result

    # -- operations ----------------------------------------------------------------------

    async def shard_stats(self) -> list[ShardStats]:
        raws = await asyncio.gather(*(self._misc(s, "stats") for s in range(self.shard_count)))
        return [decode(raw, ShardStats) for raw in raws]

    async def currency_sums(self) -> dict[str, int]:
        """Sum of all balances per currency across shards: zero, or the ledger is broken."""
        sums: dict[str, int] = {}
        raws = await asyncio.gather(
            *(self._misc(s, "currency_sums") for s in range(self.shard_count))
        )
        for shard_sums in (decode(raw, dict[str, int]) for raw in raws):
            for currency, amount in shard_sums.items():
                sums[currency] = sums.get(currency, 0) + amount
        return sums

    async def coordinator_stats(self) -> dict[str, int]:
        raw = await self._coordinator_channel.call("stats", b"")
        return decode(raw, dict[str, int])


async def _on_free_channel(
    channels: list[ActorChannel],
    method: str,
    payload: bytes,
    timeout: float = CHANNEL_REQUEST_TIMEOUT_SECONDS,
) -> bytes:
    """A call on one of ``channels``, which answer one call at a time each: the batcher in
    front runs no more sends at once than there are channels, so one is always free."""
    channel = channels.pop()
    try:
        return await channel.call(method, payload, timeout=timeout)
    finally:
        channels.append(channel)


def claim_home(order: TransferOrder, shards: set[int], shard_count: int) -> int | None:
    """The shard to claim ``order``'s id at before sending it on, or None.

    An id is bound to one body at its home shard (``home_of``). An order that touches
    the id's home is bound there anyway (checked by the single-shard apply, or claimed
    by the home's prepare); any other order claims first.
    """
    home = home_of(order.id, shard_count)
    return None if home in shards else home


def group_by_shard(
    items: Sequence[T], key: Any, shard_count: int
) -> dict[int, list[tuple[int, T]]]:
    """Items by owning shard, each with its position in ``items``."""
    groups: dict[int, list[tuple[int, T]]] = {}
    for index, item in enumerate(items):
        groups.setdefault(shard_of(key(item), shard_count), []).append((index, item))
    return groups


class SyncLedgerClient:
    """Blocking client for Ray client scripts: lists in, lists out, chunked per shard."""

    def __init__(self, handles: LedgerHandles) -> None:
        self.handles = handles
        self.shard_count = handles.shard_count

    def balances(self, account_ids: Sequence[str]) -> list[BalanceView | None]:
        groups = group_by_shard(account_ids, lambda a: a, self.shard_count)
        return self._scatter(
            groups,
            len(account_ids),
            self._on_shard("balances"),
            list[BalanceView | None],
        )

    def create_accounts(self, specs: Sequence[AccountSpec]) -> list[AccountOutcome]:
        groups = group_by_shard(specs, lambda s: s.id, self.shard_count)
        return self._scatter(
            groups,
            len(specs),
            self._on_shard("create_accounts"),
            list[AccountOutcome],
        )

    def submit_many(self, orders: Sequence[TransferOrder]) -> list[TransferOutcome]:
        """Submit orders: ids claimed at their home shard where needed, then single-shard
        ones straight to their shard, the rest via 2PC."""
        local: list[tuple[int, TransferOrder]] = []
        cross: list[tuple[int, TransferOrder]] = []
        claims: dict[int, list[tuple[int, TransferOrder]]] = {}
        touched = [{shard_of(a, self.shard_count) for a in o.accounts()} for o in orders]
        for index, (order, shards) in enumerate(zip(orders, touched, strict=True)):
            home = claim_home(order, shards, self.shard_count)
            if home is not None:
                claims.setdefault(home, []).append((index, order))
        refused = self._scatter(
            claims, len(orders), self._on_shard("claim_ids"), list[TransferOutcome]
        )
        for index, (order, shards) in enumerate(zip(orders, touched, strict=True)):
            if refused[index] is not None and refused[index].error is not None:
                continue
            (local if len(shards) == 1 else cross).append((index, order))
        groups: dict[int, list[tuple[int, TransferOrder]]] = {}
        for index, order in local:
            groups.setdefault(shard_of(order.debit, self.shard_count), []).append((index, order))
        out = self._scatter(
            groups,
            len(orders),
            self._on_shard("apply_orders"),
            list[TransferOutcome],
        )
        for index, outcome in enumerate(refused):
            if outcome is not None and outcome.error is not None:
                out[index] = outcome
        if cross:
            cross_out = self._scatter(
                {-1: cross},
                len(orders),
                lambda _, payload: self.handles.coordinator.submit.remote(payload),
                list[TransferOutcome],
            )
            for index, _ in cross:
                out[index] = cross_out[index]
        return out

    def _on_shard(self, method: str) -> Callable[[int, bytes], Any]:
        """(shard, payload) -> the Ray call of ``method`` on that shard."""
        return lambda shard, payload: self.handles.shards[shard].call.remote(method, payload)

    def _scatter(
        self,
        groups: dict[int, list[tuple[int, Any]]],
        size: int,
        call: Callable[[int, bytes], Any],
        kind: Any,
    ) -> list[Any]:
        calls = []
        for shard, indexed in groups.items():
            for start in range(0, len(indexed), MAX_BATCH):
                chunk = indexed[start : start + MAX_BATCH]
                calls.append((chunk, call(shard, encode([item for _, item in chunk]))))
        out: list[Any] = [None] * size
        for (chunk, _), raw in zip(calls, _get([ref for _, ref in calls]), strict=True):
            for (index, _), result in zip(chunk, decode(raw, kind), strict=True):
                out[index] = result
        return out

    def currency_sums(self) -> dict[str, int]:
        sums: dict[str, int] = {}
        refs = [s.call.remote("currency_sums", b"") for s in self.handles.shards]
        for raw in _get(refs):
            for currency, amount in decode(raw, dict[str, int]).items():
                sums[currency] = sums.get(currency, 0) + amount
        return sums


def _get(refs: list[Any]) -> list[Any]:
    try:
        return list(ray.get(refs, timeout=CALL_TIMEOUT_SECONDS))
    except GetTimeoutError as error:
        raise LedgerError(ErrorCode.UNAVAILABLE, "ledger call timed out") from error
    except _RETRYABLE as error:
        raise LedgerError(ErrorCode.UNAVAILABLE, f"ledger unavailable: {error}") from error


def connect(address: str = "auto", *, loopback: bool | None = None) -> SyncLedgerClient:
    """Attach this process to a running TokPay cluster and return a blocking client.

    In a replicated cluster the handles are the primaries at the time of the call;
    after a failover, connect again (the gateway's client follows failovers itself).
    ``loopback``: whether the cluster's Ray lives on 127.0.0.1 only, as the single-node
    ``tokpay serve`` does; by default, whether ``address`` is a loopback address. (A
    ``tokpay cluster up`` cluster runs on the machine's network address: give that.)
    """
    if not ray.is_initialized():
        host = address.removeprefix("ray://").rsplit(":", 1)[0]
        if host in LOOPBACK_HOSTS if loopback is None else loopback:
            use_loopback_ray()
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
    try:
        controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        controller = None
    if controller is not None:
        routes: dict[str, Any] = ray.get(  # type: ignore[assignment]
            controller.routes.remote(), timeout=CALL_TIMEOUT_SECONDS
        )
        primaries = {
            group: ray.get_actor(r.primary, namespace=NAMESPACE)
            for group, r in routes.items()
            if r.primary
        }
        count = len(routes) - 1
        return SyncLedgerClient(
            LedgerHandles(
                shards=[primaries[shard_group(s)] for s in range(count)],
                coordinator=primaries[COORDINATOR_GROUP],
            )
        )
    coordinator = ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)
    shard_count = cast(int, ray.get(coordinator.shard_count.remote(), timeout=CALL_TIMEOUT_SECONDS))
    return SyncLedgerClient(connect_ledger(shard_count))
