"""The money rules of one shard: idempotency, all-or-nothing, batch order, history, overdraft.

Also the participant side of two-phase commit as one shard sees it: holds, duplicate
prepares and decisions, and what a prepared transfer id blocks.
"""

from __future__ import annotations

import msgspec
import pytest

from tests.support.orders import account_specs, ids_on, pay, topup
from tokpay.ledger.errors import ErrorCode, InvariantViolation, LedgerError
from tokpay.ledger.limits import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, REFUSAL_MEMORY_SECONDS
from tokpay.ledger.model import (
    AccountOutcome,
    AccountSpec,
    BalanceView,
    Decision,
    Prepare,
    Transfer,
    TransferOrder,
    TransferOutcome,
    funding_account_id,
)
from tokpay.ledger.shard_ledger import ShardLedger, effect_on, home_of

T0 = 1_700_000_000_000_000
FUNDING_USD = funding_account_id("USD", 0)


def state_of(ledger: ShardLedger) -> bytes:
    """Balances, holds and the history and transfers waiting for the store, encoded
    (remembered refusals and holds' rows are left out: they change no balance)."""
    pending = ledger.pending
    return msgspec.msgpack.encode(
        (ledger.accounts, ledger.prepared, pending.transfers, pending.history)
    )


def history_ids(ledger: ShardLedger, account_id: str) -> list[str]:
    """Every transfer id in ``account_id``'s history, oldest first, read page by page."""
    ids: list[str] = []
    cursor: int | None = None
    while True:
        page = ledger.history_page(account_id, MAX_PAGE_SIZE, cursor)
        ids += [transfer.order.id for transfer, _, _ in page.items]
        if page.next_cursor is None:
            return ids[::-1]
        cursor = page.next_cursor


def balances(ledger: ShardLedger, *account_ids: str) -> list[int]:
    return [ledger.account(a).balance for a in account_ids]


def usd_total(ledger: ShardLedger) -> int:
    return sum(a.balance for a in ledger.accounts.values() if a.currency == "USD")


USERS = ("alice", "bob", "carol", "dave")


@pytest.fixture
def ledger() -> ShardLedger:
    """alice 1000, bob/carol/dave 0, all USD, on a one-shard ledger."""
    ledger = ShardLedger(0, 1)
    created, _ = ledger.create_accounts(account_specs(USERS, "USD"), T0)
    assert all(o.created for o in created)
    outcomes, _, _ = ledger.apply_orders([topup("alice", 1_000, id="seed")], T0)
    assert outcomes[0].error is None
    return ledger


# -- idempotency ----------------------------------------------------------------------------


def test_same_order_again_replays_the_original_transfer(ledger: ShardLedger) -> None:
    order = pay("alice", [("bob", 30), ("carol", 20)], id="pay-1", memo="rent")
    first, committed, _ = ledger.apply_orders([order], T0 + 10)
    assert first == [TransferOutcome(transfer=Transfer(order=order, created_at=T0 + 10))]
    assert committed == [Transfer(order=order, created_at=T0 + 10)]
    after_first = state_of(ledger)

    for later in (T0 + 20, T0 + 10**9):
        again, committed, _ = ledger.apply_orders([order], later)
        assert again == [TransferOutcome(transfer=first[0].transfer, replayed=True)]
        assert again[0].transfer is not None and again[0].transfer.created_at == T0 + 10
        assert committed == []
        assert state_of(ledger) == after_first
    assert balances(ledger, "alice", "bob", "carol") == [950, 30, 20]
    assert history_ids(ledger, "alice") == ["seed", "pay-1"]


def test_replay_within_one_batch(ledger: ShardLedger) -> None:
    order = pay("alice", [("bob", 100)], id="pay-1")
    outcomes, committed, _ = ledger.apply_orders([order, order, order], T0 + 5)
    transfer = Transfer(order=order, created_at=T0 + 5)
    assert outcomes == [
        TransferOutcome(transfer=transfer),
        TransferOutcome(transfer=transfer, replayed=True),
        TransferOutcome(transfer=transfer, replayed=True),
    ]
    assert committed == [transfer]
    assert balances(ledger, "alice", "bob") == [900, 100]
    assert history_ids(ledger, "bob") == ["pay-1"]


def test_replay_wins_over_insufficient_funds(ledger: ShardLedger) -> None:
    """A retry of an applied order is answered from memory, not re-checked against balances."""
    order = pay("alice", [("bob", 1_000)], id="all-in")
    first, _, _ = ledger.apply_orders([order], T0 + 1)
    assert ledger.account("alice").balance == 0
    again, committed, _ = ledger.apply_orders([order], T0 + 2)
    assert again[0].replayed and again[0].transfer == first[0].transfer and committed == []


def test_topup_replays_too(ledger: ShardLedger) -> None:
    order = topup("bob", 77, id="tu-bob")
    first, _, _ = ledger.apply_orders([order], T0 + 1)
    again, committed, _ = ledger.apply_orders([order], T0 + 2)
    assert again == [TransferOutcome(transfer=first[0].transfer, replayed=True)]
    assert committed == []
    assert balances(ledger, "bob", FUNDING_USD) == [77, -1_077]


def test_refused_order_is_remembered_for_a_day(ledger: ShardLedger) -> None:
    """A retry of a refused body gets the same refusal, even once it would fit; after
    REFUSAL_MEMORY_SECONDS it is judged again. Another body under the id is a conflict."""
    order = pay("bob", [("carol", 50)], id="pay-bob")
    refused, _, marks = ledger.apply_orders([order], T0 + 1)
    assert refused[0].error == ErrorCode.INSUFFICIENT_FUNDS
    assert [(m.id, m.code, m.at) for m in marks] == [("pay-bob", "insufficient_funds", T0 + 1)]
    assert ledger.transfer("pay-bob") is None
    ledger.apply_orders([pay("alice", [("bob", 50)], id="fund-bob")], T0 + 2)
    retried, committed, marks = ledger.apply_orders([order], T0 + 3)
    assert retried[0].error == ErrorCode.INSUFFICIENT_FUNDS and committed == marks == []
    other = pay("bob", [("carol", 1)], id="pay-bob")
    outcomes, committed, _ = ledger.apply_orders([other], T0 + 4)
    assert outcomes[0].error == ErrorCode.TRANSFER_ID_CONFLICT and committed == []
    later = T0 + 1 + REFUSAL_MEMORY_SECONDS * 1_000_000
    retried, committed, _ = ledger.apply_orders([order], later)
    assert retried == [TransferOutcome(transfer=Transfer(order=order, created_at=later))]
    assert len(committed) == 1
    assert balances(ledger, "bob", "carol") == [0, 50]


def test_conflict_in_the_same_batch(ledger: ShardLedger) -> None:
    first = pay("alice", [("bob", 10)], id="dup")
    second = pay("alice", [("bob", 11)], id="dup")
    outcomes, committed, _ = ledger.apply_orders([first, second, first], T0 + 1)
    assert outcomes[0].transfer is not None and not outcomes[0].replayed
    assert outcomes[1].error == ErrorCode.TRANSFER_ID_CONFLICT
    assert outcomes[2].replayed and outcomes[2].transfer == outcomes[0].transfer
    assert [t.order for t in committed] == [first]
    assert balances(ledger, "alice", "bob") == [990, 10]


def test_account_create_is_idempotent(ledger: ShardLedger) -> None:
    spec = AccountSpec(id="erin", currency="EUR", owner="erin@example.com")
    first, created = ledger.create_accounts([spec, spec], T0 + 1)
    assert first[0].created and first[0].account is not None
    assert first[1] == AccountOutcome(account=first[0].account, created=False)
    assert [a.id for a in created] == ["erin"]
    again, created = ledger.create_accounts([spec], T0 + 99)
    assert again == [AccountOutcome(account=first[0].account, created=False)]
    assert again[0].account is not None and again[0].account.created_at == T0 + 1
    assert created == []


# -- all or nothing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "code"),
    [
        pytest.param(
            pay("alice", [("bob", 1), ("carol", 2), ("ghost", 3)], id="m"),
            ErrorCode.ACCOUNT_NOT_FOUND,
            id="last leg missing",
        ),
        pytest.param(
            pay("alice", [("bob", 1), ("erin", 2), ("carol", 3)], id="m"),
            ErrorCode.CURRENCY_MISMATCH,
            id="middle leg other currency",
        ),
        pytest.param(
            pay("alice", [("bob", 400), ("carol", 400), ("dave", 201)], id="m"),
            ErrorCode.INSUFFICIENT_FUNDS,
            id="total one over balance",
        ),
    ],
)
def test_multi_leg_transfer_applies_all_legs_or_none(
    ledger: ShardLedger, order: TransferOrder, code: ErrorCode
) -> None:
    ledger.create_accounts([AccountSpec(id="erin", currency="EUR", owner="e")], T0)
    before = state_of(ledger)
    outcomes, committed, marks = ledger.apply_orders([order], T0 + 1)
    assert outcomes[0].error == code and committed == []
    assert [m.code for m in marks] == [code]
    assert state_of(ledger) == before

    # The same legs that fit the balance exactly go through together.
    exact = pay("alice", [("bob", 400), ("carol", 400), ("dave", 200)], id="exact")
    outcomes, committed, _ = ledger.apply_orders([exact], T0 + 2)
    assert outcomes[0].error is None
    assert balances(ledger, *USERS) == [0, 400, 400, 200]
    for account_id in ("alice", "bob", "carol", "dave"):
        assert history_ids(ledger, account_id)[-1] == "exact"
    assert usd_total(ledger) == 0


# -- batch order -----------------------------------------------------------------------------


def test_later_orders_in_a_batch_see_earlier_effects(ledger: ShardLedger) -> None:
    orders = [
        pay("bob", [("carol", 100)], id="too-early"),  # bob has nothing yet
        pay("alice", [("bob", 100)], id="a-b"),
        pay("bob", [("carol", 100)], id="b-c"),  # paid from what a-b just brought
        pay("carol", [("dave", 60)], id="c-d"),
        pay("carol", [("dave", 60)], id="c-d-2"),  # carol has 40 left
        topup("carol", 20, id="tu-c"),
        pay("carol", [("dave", 60)], id="c-d-3"),  # 40 + 20 is exactly enough
    ]
    outcomes, committed, _ = ledger.apply_orders(orders, T0 + 1)
    assert [o.error for o in outcomes] == [
        ErrorCode.INSUFFICIENT_FUNDS,
        None,
        None,
        None,
        ErrorCode.INSUFFICIENT_FUNDS,
        None,
        None,
    ]
    assert [t.order.id for t in committed] == ["a-b", "b-c", "c-d", "tu-c", "c-d-3"]
    assert balances(ledger, *USERS) == [900, 0, 0, 120]
    assert usd_total(ledger) == 0
    ledger.check_invariants()


def test_batch_drains_an_account_exactly_once(ledger: ShardLedger) -> None:
    orders = [pay("alice", [("bob", 400)], id=f"p{i}") for i in range(4)]
    outcomes, committed, _ = ledger.apply_orders(orders, T0 + 1)
    assert [o.error for o in outcomes] == [
        None,
        None,
        ErrorCode.INSUFFICIENT_FUNDS,
        ErrorCode.INSUFFICIENT_FUNDS,
    ]
    assert len(committed) == 2
    assert balances(ledger, "alice", "bob") == [200, 800]


# -- history ----------------------------------------------------------------------------------


def _make_history(ledger: ShardLedger, count: int) -> list[str]:
    """``count`` transfers touching alice, alternating directions; returns their ids in order."""
    ids = []
    for i in range(count):
        order = (
            pay("alice", [("bob", i % 5 + 1)], id=f"h{i}")
            if i % 3
            else pay("bob", [("alice", 1), ("carol", 1)], id=f"h{i}")
        )
        if i % 3 == 0:
            ledger.apply_orders([pay("alice", [("bob", 2)], id=f"fund{i}")], T0 + 2 * i)
            ids.append(f"fund{i}")
        outcomes, _, _ = ledger.apply_orders([order], T0 + 2 * i + 1)
        assert outcomes[0].error is None, outcomes[0]
        ids.append(order.id)
    return ["seed", *ids]


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 10, 50, MAX_PAGE_SIZE])
def test_history_pages_walk_everything_once_newest_first(ledger: ShardLedger, limit: int) -> None:
    expected = _make_history(ledger, 25)
    assert history_ids(ledger, "alice") == expected
    seen: list[str] = []
    cursor: int | None = None
    pages = 0
    while True:
        page = ledger.history_page("alice", limit, cursor)
        pages += 1
        assert 1 <= len(page.items) <= limit
        for transfer, effect, _ in page.items:
            assert effect == effect_on(transfer, "alice")
            assert ledger.transfer(transfer.order.id) == transfer
        seen.extend(t.order.id for t, _, _ in page.items)
        if page.next_cursor is None:
            break
        assert len(page.items) == limit
        cursor = page.next_cursor
    assert seen == list(reversed(expected))
    assert pages == -(-len(expected) // limit)
    # Signed effects add up to the balance.
    total = sum(effect for _, effect, _ in ledger.history_page("alice", MAX_PAGE_SIZE).items)
    assert total == ledger.account("alice").balance


def test_history_effects_are_signed(ledger: ShardLedger) -> None:
    ledger.apply_orders([pay("alice", [("bob", 30), ("carol", 5)], id="x")], T0 + 1)
    assert [(t.order.id, e) for t, e, _ in ledger.history_page("alice").items] == [
        ("x", -35),
        ("seed", 1_000),
    ]
    assert [(t.order.id, e) for t, e, _ in ledger.history_page("bob").items] == [("x", 30)]
    assert [(t.order.id, e) for t, e, _ in ledger.history_page(FUNDING_USD).items] == [
        ("seed", -1_000)
    ]


def test_history_cursor_is_stable_while_new_transfers_arrive(ledger: ShardLedger) -> None:
    expected = _make_history(ledger, 9)
    first = ledger.history_page("alice", 4)
    assert first.next_cursor is not None
    newer = [pay("alice", [("dave", 1)], id=f"new{i}") for i in range(5)]
    outcomes, _, _ = ledger.apply_orders(newer, T0 + 10**6)
    assert all(o.error is None for o in outcomes)
    seen = [t.order.id for t, _, _ in first.items]
    cursor: int | None = first.next_cursor
    while cursor is not None:
        page = ledger.history_page("alice", 4, cursor)
        seen.extend(t.order.id for t, _, _ in page.items)
        cursor = page.next_cursor
    assert seen == list(reversed(expected))
    newest = ledger.history_page("alice", 5)
    assert [t.order.id for t, _, _ in newest.items] == [f"new{i}" for i in reversed(range(5))]


def test_history_default_page_size_and_empty_history(ledger: ShardLedger) -> None:
    _make_history(ledger, 60)
    page = ledger.history_page("alice")
    assert len(page.items) == DEFAULT_PAGE_SIZE and page.next_cursor is not None
    empty = ledger.history_page("dave")
    assert empty.items == [] and empty.next_cursor is None


@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE_SIZE + 1, 10**9])
def test_history_invalid_limit(ledger: ShardLedger, limit: int) -> None:
    with pytest.raises(LedgerError) as raised:
        ledger.history_page("alice", limit)
    assert raised.value.code == ErrorCode.INVALID_LIMIT and raised.value.status == 422


def test_history_invalid_cursor(ledger: ShardLedger) -> None:
    _make_history(ledger, 3)
    size = len(history_ids(ledger, "alice"))
    for cursor in (-1, size + 1, 10**9):
        with pytest.raises(LedgerError) as raised:
            ledger.history_page("alice", 10, cursor)
        assert raised.value.code == ErrorCode.INVALID_CURSOR and raised.value.status == 422
    with pytest.raises(LedgerError) as raised:
        ledger.history_page("dave", 10, 1)
    assert raised.value.code == ErrorCode.INVALID_CURSOR
    # The full length is a valid cursor: it means "from the newest".
    assert ledger.history_page("alice", 10, size) == ledger.history_page("alice", 10)


def test_history_of_unknown_account(ledger: ShardLedger) -> None:
    with pytest.raises(LedgerError) as raised:
        ledger.history_page("ghost")
    assert raised.value.code == ErrorCode.ACCOUNT_NOT_FOUND and raised.value.status == 404


def test_reads(ledger: ShardLedger) -> None:
    assert ledger.balances(["alice", "ghost", FUNDING_USD]) == [
        BalanceView("alice", 1_000, "USD"),
        None,
        BalanceView(FUNDING_USD, -1_000, "USD"),
    ]
    assert ledger.transfer("nope") is None
    with pytest.raises(LedgerError) as raised:
        ledger.account("ghost")
    assert raised.value.code == ErrorCode.ACCOUNT_NOT_FOUND


# -- overdraft -----------------------------------------------------------------------------------


def test_user_accounts_never_go_below_zero(ledger: ShardLedger) -> None:
    outcomes, _, _ = ledger.apply_orders(
        [pay("alice", [("bob", 1_000)], id="all"), pay("alice", [("bob", 1)], id="one-more")],
        T0 + 1,
    )
    assert [o.error for o in outcomes] == [None, ErrorCode.INSUFFICIENT_FUNDS]
    assert balances(ledger, "alice", "bob") == [0, 1_000]
    ledger.check_invariants()


def test_overdraft_accounts_may_go_negative(ledger: ShardLedger) -> None:
    spec = AccountSpec(id="credit-line", currency="USD", owner="bank", allow_overdraft=True)
    assert ledger.create_accounts([spec], T0)[0][0].created
    outcomes, _, _ = ledger.apply_orders(
        [
            pay("credit-line", [("bob", 500)], id="loan-1"),
            pay("credit-line", [("carol", 250), ("dave", 250)], id="loan-2"),
        ],
        T0 + 1,
    )
    assert [o.error for o in outcomes] == [None, None]
    assert balances(ledger, "credit-line", "bob", "carol", "dave") == [-1_000, 500, 250, 250]
    # The funding account is a system overdraft account, created by the first top-up.
    funding = ledger.account(FUNDING_USD)
    assert funding.allow_overdraft and funding.owner == "system" and funding.balance == -1_000
    assert usd_total(ledger) == 0
    ledger.check_invariants()


def test_check_invariants_stops_an_overdrawn_user_account(ledger: ShardLedger) -> None:
    ledger.accounts["bob"].balance = -1
    with pytest.raises(InvariantViolation, match="overdrawn"):
        ledger.check_invariants()


def test_check_invariants_stops_holds_that_disagree_with_prepared(ledger: ShardLedger) -> None:
    ledger.accounts["alice"].held_debit = 5
    with pytest.raises(InvariantViolation):
        ledger.check_invariants()


def test_wrong_shard_is_refused_without_stopping_the_shard() -> None:
    # A caller with a stale shard map gets a retryable refusal; the shard carries on.
    ledger = ShardLedger(0, 2)
    (foreign,) = ids_on(1, 2, 1, "u")
    outcomes, created = ledger.create_accounts(
        [AccountSpec(id=foreign, currency="USD", owner="o")], T0
    )
    assert outcomes[0].error == ErrorCode.UNAVAILABLE and created == []
    assert ledger.accounts == {}
    with pytest.raises(InvariantViolation):
        ShardLedger(2, 2)


# -- two-phase commit, one participant --------------------------------------------------------


def _prepare(ledger: ShardLedger, txid: str, order: TransferOrder) -> bool:
    votes, _, _ = ledger.prepare(
        [Prepare(txid=txid, transfer=Transfer(order=order, created_at=T0))], 0
    )
    return votes[0].ok


def test_held_funds_cannot_be_spent_twice(ledger: ShardLedger) -> None:
    assert _prepare(ledger, "tx-1", pay("alice", [("bob", 700)], id="p1"))
    alice = ledger.account("alice")
    assert (alice.balance, alice.held_debit) == (1_000, 700)
    assert ledger.account("bob").held_credit == 700
    # Reads show committed state only.
    assert ledger.balances(["alice", "bob"]) == [
        BalanceView("alice", 1_000, "USD"),
        BalanceView("bob", 0, "USD"),
    ]
    # Neither a second prepare nor a single-shard payment may use the held 700.
    assert not _prepare(ledger, "tx-2", pay("alice", [("carol", 301)], id="p2"))
    outcomes, _, _ = ledger.apply_orders([pay("alice", [("carol", 301)], id="p3")], T0)
    assert outcomes[0].error == ErrorCode.INSUFFICIENT_FUNDS
    # Held incoming credit is not spendable either.
    outcomes, _, _ = ledger.apply_orders([pay("bob", [("carol", 1)], id="p4")], T0)
    assert outcomes[0].error == ErrorCode.INSUFFICIENT_FUNDS
    # What is left is.
    outcomes, _, _ = ledger.apply_orders([pay("alice", [("carol", 300)], id="p5")], T0)
    assert outcomes[0].error is None
    ledger.check_invariants()

    assert ledger.decide([Decision("tx-1", True)]) == [Decision("tx-1", True)]
    assert balances(ledger, "alice", "bob", "carol") == [0, 700, 300]
    assert ledger.account("alice").held_debit == 0 and ledger.account("bob").held_credit == 0
    assert ledger.in_doubt() == []
    assert ledger.transfer("p1") == Transfer(
        order=pay("alice", [("bob", 700)], id="p1"), created_at=T0
    )
    ledger.check_invariants()


def test_abort_releases_holds_and_leaves_no_trace(ledger: ShardLedger) -> None:
    before = state_of(ledger)
    assert _prepare(ledger, "tx-1", pay("alice", [("bob", 700)], id="p1"))
    assert ledger.in_doubt() == ["tx-1"]
    assert ledger.decide([Decision("tx-1", False)]) == [Decision("tx-1", False)]
    assert state_of(ledger) == before
    # The hold never reached the store, so the store is left only a delete of it.
    assert ledger.pending.prepared == {} and ledger.pending.released == {"tx-1"}
    assert ledger.transfer("p1") is None
    # This shard is the id's home, so the hold claimed the id (the client sent no claim)
    # and it stays bound to its body: another body is a conflict, the same one goes ahead.
    assert home_of("p1", ledger.shard_count) == ledger.shard
    outcomes, _, _ = ledger.apply_orders([pay("alice", [("bob", 1_000)], id="p1")], T0)
    assert outcomes[0].error == ErrorCode.TRANSFER_ID_CONFLICT
    outcomes, _, _ = ledger.apply_orders([pay("alice", [("bob", 700)], id="p1")], T0)
    assert outcomes[0].error is None and outcomes[0].transfer is not None


def test_duplicate_prepare_and_decide_are_harmless(ledger: ShardLedger) -> None:
    order = pay("alice", [("bob", 600)], id="p1")
    request = Prepare(txid="tx-1", transfer=Transfer(order=order, created_at=T0))
    votes, prepared, _ = ledger.prepare([request, request], 0)
    assert [v.ok for v in votes] == [True, True] and len(prepared) == 1
    votes, prepared, _ = ledger.prepare([request], 0)
    assert votes[0].ok and prepared == []
    assert ledger.account("alice").held_debit == 600
    ledger.check_invariants()
    assert ledger.decide([Decision("tx-1", True), Decision("tx-1", True)]) == [
        Decision("tx-1", True)
    ]
    assert ledger.decide([Decision("tx-1", False), Decision("tx-unknown", True)]) == []
    assert balances(ledger, "alice", "bob") == [400, 600]
    # A late prepare of a transfer that has committed is answered with the transfer.
    votes, prepared, _ = ledger.prepare(
        [Prepare(txid="tx-9", transfer=Transfer(order=order, created_at=T0 + 5))], 0
    )
    assert votes[0].ok is False and votes[0].existing == Transfer(order=order, created_at=T0)
    assert prepared == [] and ledger.in_doubt() == []
    ledger.check_invariants()


def test_prepared_transfer_id_blocks_a_different_txid(ledger: ShardLedger) -> None:
    order = pay("alice", [("bob", 1)], id="p1")
    assert _prepare(ledger, "tx-1", order)
    votes, prepared, _ = ledger.prepare(
        [Prepare(txid="tx-2", transfer=Transfer(order=order, created_at=T0))], 0
    )
    assert votes[0].error == ErrorCode.UNAVAILABLE and prepared == []
    assert ledger.account("alice").held_debit == 1


def test_a_deposed_coordinator_cannot_abort_what_its_successor_prepared(
    ledger: ShardLedger,
) -> None:
    order = pay("alice", [("bob", 300)], id="p-fence")
    request = Prepare(
        txid="tx-new", transfer=Transfer(order=order, created_at=T0), coordinator_epoch=7
    )
    votes, _, _ = ledger.prepare([request], 0)
    assert votes[0].ok
    # The old coordinator (epoch 5), resumed after a pause, tries to abort it: ignored.
    assert ledger.decide([Decision("tx-new", False, 5)]) == []
    assert ledger.in_doubt() == ["tx-new"]
    assert ledger.account("alice").held_debit == 300
    # Its successor decides; a commit (logged on two machines first) from anyone applies.
    assert ledger.decide([Decision("tx-new", True, 7)]) == [Decision("tx-new", True, 7)]
    assert balances(ledger, "alice", "bob") == [700, 300]
    # A transaction the old coordinator prepared may be aborted by the new one.
    old = Prepare(
        txid="tx-old",
        transfer=Transfer(order=pay("alice", [("bob", 5)], id="p-old"), created_at=T0),
        coordinator_epoch=5,
    )
    assert ledger.prepare([old], 0)[0][0].ok
    assert ledger.decide([Decision("tx-old", False, 7)]) == [Decision("tx-old", False, 7)]
    assert ledger.in_doubt() == []
    ledger.check_invariants()
