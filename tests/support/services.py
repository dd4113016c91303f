"""Shard services driven in-process, without Ray: typed calls over their bytes API.

``ShardService`` speaks msgpack bytes as the actor does; these helpers encode the request
and decode the answer, and ``InProcessShards`` stands in for the coordinator's shard caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from tests.support.orders import CURRENCY, account_specs
from tokpay.actors.protocol import decode, encode
from tokpay.actors.shard import ShardService
from tokpay.ledger.model import Account, AccountOutcome, TransferOrder, TransferOutcome


def create_accounts(
    service: ShardService, account_ids: Iterable[str], currency: str = CURRENCY
) -> list[AccountOutcome]:
    raw = service.create_accounts(encode(account_specs(account_ids, currency)))
    outcomes: list[AccountOutcome] = decode(raw, list[AccountOutcome])
    return outcomes


def apply_orders(service: ShardService, orders: Sequence[TransferOrder]) -> list[TransferOutcome]:
    outcomes: list[TransferOutcome] = decode(
        service.apply_orders(encode(list(orders))), list[TransferOutcome]
    )
    return outcomes


def account_of(service: ShardService, account_id: str) -> Account:
    found: Account = decode(service.account(account_id), Account)
    return found


class InProcessShards:
    """The coordinator's shard caller over in-process services.

    ``decide`` fails for the shards in ``unreachable`` (a set the test may change while
    it runs), so a commit decision can reach only some of the participants.
    """

    def __init__(self, services: list[ShardService], unreachable: Iterable[int] = ()) -> None:
        self.services = services
        self.unreachable = set(unreachable)

    async def __call__(self, shard: int, method: str, payload: bytes) -> Any:
        await asyncio.sleep(0)
        if method == "decide" and shard in self.unreachable:
            raise ConnectionError(f"shard {shard} is unreachable")
        service = self.services[shard]
        if method == "in_doubt":
            return service.in_doubt()
        return getattr(service, method)(payload)
