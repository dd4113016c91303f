"""Coalescing concurrent requests into bounded batches, one batcher per target.

Requests that arrive in the same event-loop turn travel together; while the
target is busy (``max_inflight`` batches out), new requests wait in a bounded
queue and leave in the next batch. So batches grow with load and latency stays
one round trip when idle. A full queue is an immediate ``overloaded`` error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from tokpay.ledger.errors import ErrorCode, LedgerError

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    def __init__(
        self,
        send: Callable[[list[Item]], Awaitable[list[Result]]],
        *,
        max_batch: int,
        max_pending: int,
        max_inflight: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._send = send
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._max_inflight = max_inflight
        self._on_batch = on_batch
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._inflight = 0
        self._scheduled = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def submit(self, item: Item) -> Result:
        if len(self._pending) >= self._max_pending:
            raise self._overloaded()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((item, future))
        self._schedule(loop)
        return await future

    async def submit_many(self, items: Sequence[Item]) -> list[Result]:
        """``submit`` for several items of one caller: all queued or none (the bound is
        checked once), their results in order."""
        if len(self._pending) + len(items) > self._max_pending:
            raise self._overloaded()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Result]] = [loop.create_future() for _ in items]
        self._pending.extend(zip(items, futures, strict=True))
        self._schedule(loop)
        return list(await asyncio.gather(*futures))

    def _overloaded(self) -> LedgerError:
        return LedgerError(
            ErrorCode.OVERLOADED,
            f"more than {self._max_pending} requests are waiting for this shard; retry later",
        )

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled and self._inflight < self._max_inflight:
            self._scheduled = True
            loop.call_soon(self._flush, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        while self._pending and self._inflight < self._max_inflight:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            self._inflight += 1
            loop.create_task(self._run(batch, loop))

    async def _run(
        self, batch: list[tuple[Item, asyncio.Future[Result]]], loop: asyncio.AbstractEventLoop
    ) -> None:
        try:
            if self._on_batch is not None:
                self._on_batch(len(batch))
            results = await self._send([item for item, _ in batch])
            # Checked before any waiter is answered: a short or long reply is misaligned,
            # so no result in it can be trusted to belong to its request.
            if len(results) != len(batch):
                raise ValueError(f"{len(results)} results for a batch of {len(batch)}")
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        except BaseException as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(error, Exception):
                raise
        finally:
            self._inflight -= 1
            if self._pending:
                self._schedule(loop)
