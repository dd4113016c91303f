"""Ids the web app makes are homed on the payer's shard, so its orders claim nowhere else."""

from __future__ import annotations

import pytest

from tokpay.client.ledger import claim_home
from tokpay.ledger.model import Credit, TransferKind, TransferOrder
from tokpay.ledger.routing import id_homed_with, shard_of, topup_order
from tokpay.ledger.shard_ledger import home_of
from tokpay.ledger.validation import is_valid_id


@pytest.mark.parametrize("shard_count", [1, 2, 4, 7])
def test_made_ids_are_homed_on_the_debited_accounts_shard(shard_count: int) -> None:
    for n in range(50):
        payer, payee = f"acct-{n}", f"acct-{n + 1000}"
        made = {id_homed_with("pay_", payer, shard_count) for _ in range(5)}
        assert len(made) == 5  # random, never repeated
        for transfer_id in made:
            assert transfer_id.startswith("pay_") and is_valid_id(transfer_id)
            assert home_of(transfer_id, shard_count) == shard_of(payer, shard_count)
            order = TransferOrder(
                id=transfer_id,
                debit=payer,
                credits=(Credit(payee, 1),),
                currency="USD",
                kind=TransferKind.PAYMENT,
            )
            shards = {shard_of(a, shard_count) for a in (payer, payee)}
            assert claim_home(order, shards, shard_count) is None  # no claim elsewhere
        top = topup_order(id_homed_with("top_", payer, shard_count), payer, 5, "USD", shard_count)
        assert claim_home(top, {shard_of(payer, shard_count)}, shard_count) is None


def test_random_ids_mostly_need_a_claim_elsewhere() -> None:
    """The saving is real: an id drawn without homing lands elsewhere 3 times in 4."""
    away = sum(home_of(f"pay_{n:024x}", 4) != shard_of("acct-1", 4) for n in range(4000))
    assert 2700 < away < 3300
