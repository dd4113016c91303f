"""A commit decision that reached only some shards: retries must never claim more.

Runs the real ShardService and CoordinatorService on real files, with a shard
caller that can make one shard unreachable for ``decide``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import tokpay.actors.two_phase as two_phase_module
from tests.support.orders import ids_on, pay, topup
from tests.support.services import InProcessShards, apply_orders, create_accounts
from tokpay.actors.coordinator import CoordinatorService
from tokpay.actors.protocol import decode, encode
from tokpay.actors.shard import ShardService
from tokpay.ledger.errors import ErrorCode
from tokpay.ledger.model import BalanceView, TransferOutcome


@pytest.mark.parametrize("unreachable", [0, 1], ids=["debit-shard", "credit-shard"])
def test_retry_during_partial_delivery_is_never_a_false_ack_or_conflict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unreachable: int
) -> None:
    monkeypatch.setattr(two_phase_module, "DECIDE_ATTEMPTS", 2)
    monkeypatch.setattr(two_phase_module, "DECIDE_BACKOFF_SECONDS", 0)
    shards = [ShardService(i, 2, tmp_path, fsync=False) for i in range(2)]
    (payer,) = ids_on(0, 2, 1, "u")
    (payee,) = ids_on(1, 2, 1, "u")
    create_accounts(shards[0], [payer])
    create_accounts(shards[1], [payee])
    apply_orders(shards[0], [topup(payer, 100, id="seed", shard_count=2)])
    caller = InProcessShards(shards, unreachable={unreachable})

    def balances() -> tuple[int, int]:
        views = [
            decode(s.balances(encode([payer, payee])), list[BalanceView | None]) for s in shards
        ]
        return views[0][0].balance, views[1][1].balance  # type: ignore[union-attr]

    async def scenario() -> None:
        coordinator = CoordinatorService(2, tmp_path, caller, fsync=False)
        order = pay(payer, [(payee, 10)], id="X")
        first = decode(await coordinator.submit(encode([order])), list[TransferOutcome])[0]
        assert first.error == ErrorCode.UNAVAILABLE  # committed, not yet applied everywhere
        retry = decode(await coordinator.submit(encode([order])), list[TransferOutcome])[0]
        # Neither "already done" while a leg is missing, nor "id taken" for the same body.
        assert retry.error == ErrorCode.UNAVAILABLE, retry
        caller.unreachable.clear()
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
