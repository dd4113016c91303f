"""A commit decision that reached only some shards: retries must never claim more.

Runs the real ShardService and CoordinatorService on real files, with a shard
caller that can make one shard unreachable for ``decide``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import tokpay.actors.two_phase as two_phase_module
from tokpay.actors.coordinator import CoordinatorService
from tokpay.actors.protocol import decode, encode
from tokpay.actors.shard import ShardService
from tokpay.ledger.errors import ErrorCode
from tokpay.ledger.model import (
    AccountSpec,
    BalanceView,
    Credit,
    TransferKind,
    TransferOrder,
    TransferOutcome,
    funding_account_id,
)
from tokpay.ledger.routing import shard_of


@pytest.mark.parametrize("unreachable", [0, 1], ids=["debit-shard", "credit-shard"])
def test_retry_during_partial_delivery_is_never_a_false_ack_or_conflict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unreachable: int
) -> None:
    monkeypatch.setattr(two_phase_module, "DECIDE_ATTEMPTS", 2)
    monkeypatch.setattr(two_phase_module, "DECIDE_BACKOFF_SECONDS", 0)
    shards = [ShardService(i, 2, tmp_path, fsync=False) for i in range(2)]
    payer = next(f"u{n}" for n in range(100) if shard_of(f"u{n}", 2) == 0)
    payee = next(f"u{n}" for n in range(100) if shard_of(f"u{n}", 2) == 1)
    shards[0].create_accounts(encode([AccountSpec(id=payer, currency="USD", owner="o")]))
    shards[1].create_accounts(encode([AccountSpec(id=payee, currency="USD", owner="o")]))
    seed = TransferOrder(
        id="seed",
        debit=funding_account_id("USD", 0),
        credits=(Credit(payer, 100),),
        currency="USD",
        kind=TransferKind.TOPUP,
    )
    shards[0].apply_orders(encode([seed]))
    blocked: set[int] = {unreachable}

    async def call(shard: int, method: str, payload: bytes) -> object:
        if method == "decide" and shard in blocked:
            raise OSError("shard unreachable")
        if method == "in_doubt":
            return shards[shard].in_doubt()
        return getattr(shards[shard], method)(payload)

    def balances() -> tuple[int, int]:
        views = [
            decode(s.balances(encode([payer, payee])), list[BalanceView | None]) for s in shards
        ]
        return views[0][0].balance, views[1][1].balance  # type: ignore[union-attr]

    async def scenario() -> None:
        coordinator = CoordinatorService(2, tmp_path, call, fsync=False)
        order = TransferOrder(id="X", debit=payer, credits=(Credit(payee, 10),), currency="USD")
        first = decode(await coordinator.submit(encode([order])), list[TransferOutcome])[0]
        assert first.error == ErrorCode.UNAVAILABLE  # committed, not yet applied everywhere
        retry = decode(await coordinator.submit(encode([order])), list[TransferOutcome])[0]
        # Neither "already done" while a leg is missing, nor "id taken" for the same body.
        assert retry.error == ErrorCode.UNAVAILABLE, retry
        blocked.clear()
        for _ in range(3):  # the shard is back: a retry or two settles it
            settled = decode(await coordinator.submit(encode([order])), list[TransferOutcome])[0]
            if settled.transfer is not None:
                break
            assert settled.error == ErrorCode.UNAVAILABLE
        assert settled.transfer is not None and settled.replayed
        assert balances() == (90, 10)
        assert shards[0].in_doubt() == [] and shards[1].in_doubt() == []
        again = decode(await coordinator.submit(encode([order])), list[TransferOutcome])[0]
        assert again.replayed and balances() == (90, 10)
        assert sum(sum(s.currency_sums().values()) for s in shards) == 0

    asyncio.run(scenario())
