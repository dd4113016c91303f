"""Transfer ids bound to one body forever and everywhere, refusals remembered for a
window, and the bounds on what a shard keeps in memory.

Ledgers here write to real stores and are reopened from them, so what is checked is
what a restarted shard still knows, not only what one process remembers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tokpay.ledger.shard_ledger as shard_ledger_module
from tests.support.orders import account_specs, ids_on, pay, topup
from tests.support.services import apply_orders, create_accounts
from tokpay.actors.protocol import decode, encode
from tokpay.actors.shard import ShardService
from tokpay.client.ledger import claim_home
from tokpay.ledger.errors import HTTP_STATUS, ErrorCode
from tokpay.ledger.limits import REFUSAL_MEMORY_SECONDS
from tokpay.ledger.model import Decision, Prepare, Transfer, TransferOrder, TransferOutcome, Vote
from tokpay.ledger.routing import shard_of
from tokpay.ledger.shard_ledger import ShardLedger, home_of
from tokpay.store.shard_store import ShardStore

T0 = 1_700_000_000_000_000
DAY = REFUSAL_MEMORY_SECONDS * 1_000_000


class Shards:
    """``count`` ledgers on real stores in ``root``; ``flush`` writes what they changed."""

    def __init__(self, root: Path, count: int) -> None:
        self.root = root
        self.count = count
        self.sequence = 0
        self.stores = [ShardStore(root / str(s), s, count) for s in range(count)]
        self.ledgers = [ShardLedger(s, count, disk=self.stores[s]) for s in range(count)]

    def flush(self) -> None:
        self.sequence += 1
        for store, ledger in zip(self.stores, self.ledgers, strict=True):
            store.write(self.sequence, ledger.take_pending())

    def reopen(self) -> None:
        """Close every store and load the ledgers back from them, as a restart does."""
        self.flush()
        for shard, store in enumerate(self.stores):
            store.close()
            self.stores[shard] = ShardStore(self.root / str(shard), shard, self.count)
            ledger = ShardLedger(shard, self.count, disk=self.stores[shard])
            ledger.load(list(self.stores[shard].accounts()), list(self.stores[shard].prepared()))
            self.ledgers[shard] = ledger

    def submit(self, order: TransferOrder, now: int) -> Any:
        """As the client does: claim at the id's home where needed, then apply (one shard)."""
        shards = {shard_of(a, self.count) for a in order.accounts()}
        assert len(shards) == 1
        home = claim_home(order, shards, self.count)
        if home is not None:
            (claimed,), _ = self.ledgers[home].claim([order])
            if claimed.error is not None:
                self.flush()
                return claimed
        (outcome,), _, _ = self.ledgers[shards.pop()].apply_orders([order], now)
        self.flush()
        return outcome

    def close(self) -> None:
        for store in self.stores:
            store.close()


@pytest.fixture
def shards(tmp_path: Path) -> Any:
    shards = Shards(tmp_path, 2)
    yield shards
    shards.close()


def seed(shards: Shards) -> tuple[list[str], list[str]]:
    """Two funded accounts on each shard."""
    on = [ids_on(s, shards.count, 2, f"u{s}") for s in range(shards.count)]
    for shard, users in enumerate(on):
        shards.ledgers[shard].create_accounts(account_specs(users), T0)
        for user in users:
            order = topup(user, 1_000, id=f"top-{user}", shard_count=shards.count)
            assert shards.submit(order, T0).error is None
    return on[0], on[1]


def test_an_id_binds_one_body_even_on_disjoint_shards(shards: Shards) -> None:
    (a0, b0), (a1, b1) = seed(shards)
    taken = ids_on(1, shards.count, 1, "tid")[0]
    assert home_of(taken, shards.count) == 1
    first = pay(a0, [(b0, 10)], id=taken)  # lives on shard 0, claimed at shard 1
    committed = shards.submit(first, T0 + 1)
    assert committed.error is None
    shards.reopen()
    # Another body under the id, touching only the id's home: a conflict there.
    disjoint = pay(a1, [(b1, 10)], id=taken)
    assert shards.submit(disjoint, T0 + 2).error == ErrorCode.TRANSFER_ID_CONFLICT
    # Another body on the first body's own shard: refused at the claim, before it.
    changed = pay(a0, [(b0, 11)], id=taken)
    assert shards.submit(changed, T0 + 3).error == ErrorCode.TRANSFER_ID_CONFLICT
    # The first body again, any time later: the original, once.
    again = shards.submit(first, T0 + 10 * DAY)
    assert again.replayed and again.transfer == committed.transfer
    balances = [shards.ledgers[s].accounts[a].balance for s, a in ((0, a0), (0, b0), (1, a1))]
    assert balances == [990, 1_010, 1_000]
    assert HTTP_STATUS[ErrorCode.TRANSFER_ID_CONFLICT] == 409


def test_an_id_homed_elsewhere_is_checked_at_its_home_first(shards: Shards) -> None:
    (a0, b0), (a1, b1) = seed(shards)
    taken = ids_on(0, shards.count, 1, "tid")[0]
    assert shards.submit(pay(a1, [(b1, 5)], id=taken), T0 + 1).error is None
    shards.reopen()
    mark = shards.ledgers[0]._find_mark(taken)
    assert mark is not None and mark.code is None  # the claim, on shard 0's store
    assert shards.submit(pay(a0, [(b0, 5)], id=taken), T0 + 2).error == (
        ErrorCode.TRANSFER_ID_CONFLICT
    )
    assert shards.ledgers[0].transfer(taken) is None


def test_a_refusal_is_remembered_for_its_window_then_judged_again(shards: Shards) -> None:
    (a0, b0), _ = seed(shards)
    order = pay(b0, [(a0, 1_500)], id=ids_on(0, shards.count, 1, "r")[0])
    refused = shards.submit(order, T0 + 1)
    assert refused.error == ErrorCode.INSUFFICIENT_FUNDS
    shards.submit(pay(a0, [(b0, 1_000)], id="fund"), T0 + 2)  # now it would fit
    shards.reopen()
    # Within the window: the same answer, from the store, even though it would fit now.
    for later in (T0 + 3, T0 + DAY):
        retry = shards.submit(order, later)
        assert (retry.error, retry.transfer) == (ErrorCode.INSUFFICIENT_FUNDS, None)
        assert "refused before" in retry.detail
    # Another body under a refused id: a conflict, for good.
    other = pay(b0, [(a0, 1)], id=order.id)
    assert shards.submit(other, T0 + 2).error == ErrorCode.TRANSFER_ID_CONFLICT
    assert shards.submit(other, T0 + 5 * DAY).error == ErrorCode.TRANSFER_ID_CONFLICT
    # After the window the same body is judged again, and goes through.
    judged = shards.submit(order, T0 + 1 + DAY)
    assert judged.error is None and judged.transfer is not None
    assert shards.ledgers[0].accounts[b0].balance == 2_000 - 1_500


def test_a_refused_prepare_is_remembered_too(shards: Shards) -> None:
    (a0, _), (a1, _) = seed(shards)
    order = pay(a0, [(a1, 5_000)], id="cross")
    ledger = shards.ledgers[0]
    prepare = Prepare(txid="tx-1", transfer=Transfer(order=order, created_at=T0 + 1))
    (vote,), prepared, refused = ledger.prepare([prepare], T0 + 1)
    assert vote.error == ErrorCode.INSUFFICIENT_FUNDS and prepared == []
    assert [m.code for m in refused] == [ErrorCode.INSUFFICIENT_FUNDS]
    shards.reopen()
    ledger = shards.ledgers[0]
    # A second coordinator attempt after the restart: the answer comes from the store.
    retry = Prepare(txid="tx-2", transfer=prepare.transfer)
    (vote,), prepared, refused = ledger.prepare([retry], T0 + 2)
    assert (vote.error, prepared, refused) == (ErrorCode.INSUFFICIENT_FUNDS, [], [])


# -- bounds ------------------------------------------------------------------------------


def test_a_full_shard_refuses_new_accounts_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard_ledger_module, "MAX_ACCOUNTS_PER_SHARD", 3)
    service = ShardService(0, 1, tmp_path)
    first = ids_on(0, 1, 3, "full")
    assert all(o.created for o in create_accounts(service, first))
    sequence = service.last_sequence
    outcomes = create_accounts(service, ["late-1", "late-2", first[0]])
    assert [o.error for o in outcomes] == [ErrorCode.SHARD_FULL, ErrorCode.SHARD_FULL, None]
    assert "MAX_ACCOUNTS_PER_SHARD=3" in outcomes[0].detail
    assert not outcomes[2].created  # an existing account's spec is still a replay
    assert service.last_sequence == sequence  # nothing logged
    assert sorted(service.all_balances()) == sorted(first)
    assert HTTP_STATUS[ErrorCode.SHARD_FULL] == 507
    service.close()
    reopened = ShardService(0, 1, tmp_path)
    assert sorted(reopened.all_balances()) == sorted(first)
    reopened.close()


def test_too_many_holds_vote_no_with_overloaded_and_hold_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard_ledger_module, "MAX_PREPARED_PER_SHARD", 2)
    service = ShardService(0, 2, tmp_path)
    payer = ids_on(0, 2, 1, "payer")[0]
    remote = ids_on(1, 2, 1, "remote")[0]
    create_accounts(service, [payer])
    apply_orders(service, [topup(payer, 100, id="top", shard_count=2)])

    def prepare(n: int) -> Vote:
        order = pay(payer, [(remote, 10)], id=f"x{n}")
        request = Prepare(txid=f"tx-{n}", transfer=Transfer(order=order, created_at=T0))
        (vote,) = decode(service.prepare(encode([request])), list[Vote])
        return vote

    assert prepare(1).ok and prepare(2).ok
    sequence = service.last_sequence
    held = service.ledger.accounts[payer].held_debit
    refused = prepare(3)
    assert (refused.ok, refused.error) == (False, ErrorCode.OVERLOADED)
    assert "MAX_PREPARED_PER_SHARD=2" in refused.detail
    assert service.last_sequence == sequence  # nothing logged, nothing remembered
    assert service.ledger.accounts[payer].held_debit == held == 20
    assert sorted(service.in_doubt()) == ["tx-1", "tx-2"]
    # Overloaded is not a decision: once a hold is decided the same transfer goes through.
    assert service.decide(encode([Decision("tx-1", True)])) == 1
    assert prepare(3).ok
    service.close()


def test_claims_and_orders_in_one_call_cost_one_record_and_survive_a_restart(
    tmp_path: Path,
) -> None:
    """The gateway's write call: claims of ids homed on shard 0 and orders on its accounts,
    one log record for both; the claims bind after a restart as a ``claim_ids`` call would."""
    service = ShardService(0, 2, tmp_path)
    a, b = ids_on(0, 2, 2, "u")
    create_accounts(service, [a, b])
    apply_orders(service, [topup(a, 100, id="top-a", shard_count=2)])
    x, y = ids_on(0, 2, 2, "tid")  # homed on shard 0
    _, z = ids_on(1, 2, 2, "tid")  # homed on shard 1
    c, d = ids_on(1, 2, 2, "v")
    claims = [pay(c, [(d, 5)], id=x), pay(c, [(d, 6)], id=y)]  # their orders live on shard 1
    orders = [pay(a, [(b, 7)], id=z), pay(a, [(b, 8)], id=x)]  # x: another body than claimed
    before = service.last_sequence
    claimed, applied = decode(
        service.claim_and_apply(encode((claims, orders))),
        tuple[list[TransferOutcome], list[TransferOutcome]],
    )
    assert [o.error for o in claimed] == [None, None]
    assert applied[0].transfer is not None and applied[0].transfer.order == orders[0]
    assert applied[1].error == ErrorCode.TRANSFER_ID_CONFLICT
    assert service.last_sequence == before + 1
    service.close()
    service = ShardService(0, 2, tmp_path)
    (again, other) = decode(
        service.claim_ids(encode([claims[0], pay(c, [(d, 9)], id=y)])), list[TransferOutcome]
    )
    assert again.error is None and other.error == ErrorCode.TRANSFER_ID_CONFLICT
    assert [service.ledger.accounts[u].balance for u in (a, b)] == [93, 7]
    service.close()
