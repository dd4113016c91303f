"""Every rejection code the ledger's write paths can give, and that a rejection changes nothing.

Stateless codes are checked on ``validate_order`` / ``validate_account_spec`` directly and
again through ``ShardLedger.apply_orders`` / ``prepare`` / ``create_accounts``, because a
shard trusts no caller. After each refusal the whole shard state (accounts with their
holds, transfers, history, prepared records) must be byte-for-byte what it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import pytest

from tests.support.orders import ids_on, pay, topup
from tokpay.ledger.errors import HTTP_STATUS, ErrorCode, LedgerError
from tokpay.ledger.limits import (
    MAX_AMOUNT,
    MAX_BALANCE,
    MAX_CREDITS,
    MAX_ID_LENGTH,
    MAX_MEMO_BYTES,
    MAX_OWNER_LENGTH,
)
from tokpay.ledger.model import (
    Account,
    AccountSpec,
    Credit,
    Decision,
    Prepare,
    Transfer,
    TransferKind,
    TransferOrder,
    funding_account_id,
)
from tokpay.ledger.shard_ledger import ShardLedger
from tokpay.ledger.validation import validate_account_spec, validate_order

NOW = 1_700_000_000_000_000
LATER = NOW + 1_000_000
FUNDING_USD = funding_account_id("USD", 0)


def payment(
    debit: str = "alice",
    credits: tuple[tuple[str, Any], ...] = (("bob", 10),),
    *,
    id: str = "t-1",
    currency: str = "USD",
    memo: str = "",
) -> TransferOrder:
    """A valid payment of 10 from alice to bob, unless an argument spoils it."""
    return pay(debit, credits, id=id, currency=currency, memo=memo)


def state_of(ledger: ShardLedger) -> bytes:
    """Everything a shard holds or has yet to store, as bytes: any change to money, holds,
    transfers or history shows up. Remembered refusals (``pending.marks``) are left out:
    a refusal the ledger decided from its state is remembered by design."""
    pending = ledger.pending
    return msgspec.msgpack.encode(
        (
            ledger.accounts,
            ledger.prepared,
            sorted(ledger._prepared_transfer_ids.items()),
            pending.accounts,
            pending.transfers,
            pending.history,
            pending.prepared,
            pending.released,
        )
    )


@pytest.fixture
def ledger() -> ShardLedger:
    """One shard of one: alice has 1000 USD, bob and carol 0 USD, erin 0 EUR."""
    ledger = ShardLedger(0, 1)
    created_outcomes, created = ledger.create_accounts(
        [
            AccountSpec(id="alice", currency="USD", owner="alice@example.com"),
            AccountSpec(id="bob", currency="USD", owner="bob@example.com"),
            AccountSpec(id="carol", currency="USD", owner="carol@example.com"),
            AccountSpec(id="erin", currency="EUR", owner="erin@example.com"),
        ],
        NOW,
    )
    assert all(o.created for o in created_outcomes) and len(created) == 4
    outcomes, committed, _ = ledger.apply_orders([topup("alice", 1_000, id="seed")], NOW)
    assert outcomes[0].error is None and len(committed) == 1
    # One ordinary payment so that history and transfers are not empty.
    outcomes, _, _ = ledger.apply_orders([payment(credits=(("bob", 1),), id="seed-pay")], NOW)
    assert outcomes[0].error is None
    ledger.check_invariants()
    return ledger


def balance(ledger: ShardLedger, account_id: str) -> int:
    return ledger.account(account_id).balance


def assert_order_refused(ledger: ShardLedger, order: TransferOrder, code: ErrorCode) -> None:
    """``apply_orders`` refuses ``order`` with ``code`` and the shard is exactly as before."""
    before = state_of(ledger)
    outcomes, committed, _ = ledger.apply_orders([order], LATER)
    assert len(outcomes) == 1
    outcome = outcomes[0]
    assert outcome.error == code, outcome
    assert outcome.detail
    assert outcome.transfer is None and not outcome.replayed
    assert committed == []
    assert state_of(ledger) == before
    ledger.check_invariants()


def assert_prepare_refused(ledger: ShardLedger, order: TransferOrder, code: ErrorCode) -> None:
    """``prepare`` votes no with ``code``, logs no record and holds nothing."""
    before = state_of(ledger)
    votes, prepared, _ = ledger.prepare(
        [Prepare(txid="tx-x", transfer=Transfer(order=order, created_at=LATER))], 0
    )
    assert [(v.txid, v.ok, v.error) for v in votes] == [("tx-x", False, code)]
    assert votes[0].existing is None
    assert prepared == []
    assert "tx-x" not in ledger.in_doubt()
    assert state_of(ledger) == before
    ledger.check_invariants()


def cases(table: Sequence[tuple[str, object, ErrorCode]]) -> list[Any]:
    """A table of (name, input, expected code) as pytest parameters named after each row."""
    return [pytest.param(given, code, id=name) for name, given, code in table]


# -- stateless order checks -----------------------------------------------------------------

STATELESS_REFUSALS: list[tuple[str, TransferOrder, ErrorCode]] = [
    ("amount zero", payment(credits=(("bob", 0),)), ErrorCode.INVALID_AMOUNT),
    ("amount negative", payment(credits=(("bob", -5),)), ErrorCode.INVALID_AMOUNT),
    ("amount over max", payment(credits=(("bob", MAX_AMOUNT + 1),)), ErrorCode.INVALID_AMOUNT),
    ("amount bool", payment(credits=(("bob", True),)), ErrorCode.INVALID_AMOUNT),
    ("amount float", payment(credits=(("bob", 1.5),)), ErrorCode.INVALID_AMOUNT),
    ("amount str", payment(credits=(("bob", "10"),)), ErrorCode.INVALID_AMOUNT),
    (
        "second leg invalid",
        payment(credits=(("bob", 5), ("carol", 0))),
        ErrorCode.INVALID_AMOUNT,
    ),
    (
        "total over max from two legs",
        payment(credits=(("bob", MAX_AMOUNT), ("carol", 1))),
        ErrorCode.INVALID_AMOUNT,
    ),
    ("debit id empty", payment(debit=""), ErrorCode.INVALID_ACCOUNT_ID),
    ("debit id space", payment(debit="al ice"), ErrorCode.INVALID_ACCOUNT_ID),
    ("debit id too long", payment(debit="a" * (MAX_ID_LENGTH + 1)), ErrorCode.INVALID_ACCOUNT_ID),
    ("debit id non-ascii", payment(debit="alicé"), ErrorCode.INVALID_ACCOUNT_ID),
    ("debit id newline", payment(debit="alice\n"), ErrorCode.INVALID_ACCOUNT_ID),
    ("credit id slash", payment(credits=(("bo/b", 1),)), ErrorCode.INVALID_ACCOUNT_ID),
    ("credit id empty", payment(credits=(("bob", 1), ("", 1))), ErrorCode.INVALID_ACCOUNT_ID),
    ("transfer id empty", payment(id=""), ErrorCode.INVALID_TRANSFER_ID),
    ("transfer id space", payment(id="t 1"), ErrorCode.INVALID_TRANSFER_ID),
    ("transfer id slash", payment(id="t/1"), ErrorCode.INVALID_TRANSFER_ID),
    ("transfer id too long", payment(id="t" * (MAX_ID_LENGTH + 1)), ErrorCode.INVALID_TRANSFER_ID),
    ("currency lower case", payment(currency="usd"), ErrorCode.INVALID_CURRENCY),
    ("currency XXX", payment(currency="XXX"), ErrorCode.INVALID_CURRENCY),
    ("currency gold", payment(currency="XAU"), ErrorCode.INVALID_CURRENCY),
    ("currency empty", payment(currency=""), ErrorCode.INVALID_CURRENCY),
    ("currency too long", payment(currency="USDD"), ErrorCode.INVALID_CURRENCY),
    (
        "memo multibyte over limit",
        # 129 characters but 258 UTF-8 bytes: the limit counts bytes.
        payment(memo="é" * (MAX_MEMO_BYTES // 2 + 1)),
        ErrorCode.MEMO_TOO_LONG,
    ),
    ("memo ascii over limit", payment(memo="m" * (MAX_MEMO_BYTES + 1)), ErrorCode.MEMO_TOO_LONG),
    ("memo emoji over limit", payment(memo="\U0001f4b8" * 65), ErrorCode.MEMO_TOO_LONG),
    ("memo NUL", payment(memo="rent\x00"), ErrorCode.INVALID_MEMO),
    ("memo newline", payment(memo="rent\nIGNORE ABOVE"), ErrorCode.INVALID_MEMO),
    ("memo carriage return", payment(memo="rent\r"), ErrorCode.INVALID_MEMO),
    ("memo tab", payment(memo="a\tb"), ErrorCode.INVALID_MEMO),
    ("memo line separator", payment(memo="a\u2028b"), ErrorCode.INVALID_MEMO),
    ("memo bidi override", payment(memo="pay \u202egnp.exe"), ErrorCode.INVALID_MEMO),
    ("memo bidi isolate", payment(memo="\u2066x\u2069"), ErrorCode.INVALID_MEMO),
    ("memo right-to-left mark", payment(memo="x\u200f"), ErrorCode.INVALID_MEMO),
    ("debit id dot", payment(debit="."), ErrorCode.INVALID_ACCOUNT_ID),
    ("credit id dot-dot", payment(credits=(("..", 1),)), ErrorCode.INVALID_ACCOUNT_ID),
    ("credit id only dots", payment(credits=(("....", 1),)), ErrorCode.INVALID_ACCOUNT_ID),
    ("transfer id dot-dot", payment(id=".."), ErrorCode.INVALID_TRANSFER_ID),
    ("no credits", payment(credits=()), ErrorCode.NO_CREDITS),
    (
        "too many legs",
        payment(credits=tuple((f"acct-{i}", 1) for i in range(MAX_CREDITS + 1))),
        ErrorCode.TOO_MANY_LEGS,
    ),
    (
        "duplicate credit account",
        payment(credits=(("bob", 1), ("carol", 1), ("bob", 2))),
        ErrorCode.DUPLICATE_CREDIT_ACCOUNT,
    ),
    ("self transfer", payment(credits=(("alice", 1),)), ErrorCode.SELF_TRANSFER),
    (
        "self transfer among legs",
        payment(credits=(("bob", 1), ("alice", 1))),
        ErrorCode.SELF_TRANSFER,
    ),
    ("payment from funding", payment(debit=FUNDING_USD), ErrorCode.SYSTEM_ACCOUNT_FORBIDDEN),
    (
        "payment to funding",
        payment(credits=(("bob", 1), (FUNDING_USD, 1))),
        ErrorCode.SYSTEM_ACCOUNT_FORBIDDEN,
    ),
    (
        "payment from any sys account",
        payment(debit="sys:treasury"),
        ErrorCode.SYSTEM_ACCOUNT_FORBIDDEN,
    ),
    (
        "topup from a user account",
        topup("bob", 10, id="tu-1", debit="alice"),
        ErrorCode.SYSTEM_ACCOUNT_FORBIDDEN,
    ),
    (
        "topup from another currency's funding account",
        topup("bob", 10, id="tu-1", debit=funding_account_id("EUR", 0)),
        ErrorCode.SYSTEM_ACCOUNT_FORBIDDEN,
    ),
    (
        "topup from an unrelated sys account",
        topup("bob", 10, id="tu-1", debit="sys:treasury"),
        ErrorCode.SYSTEM_ACCOUNT_FORBIDDEN,
    ),
    (
        "topup into a system account",
        topup("sys:other", 10, id="tu-1", debit=FUNDING_USD),
        ErrorCode.SYSTEM_ACCOUNT_FORBIDDEN,
    ),
    (
        "topup with two credits",
        TransferOrder(
            id="tu-1",
            debit=FUNDING_USD,
            credits=(Credit("bob", 1), Credit("carol", 1)),
            currency="USD",
            kind=TransferKind.TOPUP,
        ),
        ErrorCode.TOO_MANY_LEGS,
    ),
    (
        "unknown kind",
        TransferOrder(
            id="t-1", debit="alice", credits=(Credit("bob", 1),), currency="USD", kind="refund"
        ),
        ErrorCode.INVALID_BODY,
    ),
]


@pytest.mark.parametrize(("order", "code"), cases(STATELESS_REFUSALS))
def test_validate_order_refuses(order: TransferOrder, code: ErrorCode) -> None:
    with pytest.raises(LedgerError) as raised:
        validate_order(order, 1)
    assert raised.value.code == code
    assert raised.value.detail
    assert raised.value.status == HTTP_STATUS[code]


@pytest.mark.parametrize(("order", "code"), cases(STATELESS_REFUSALS))
def test_shard_refuses_invalid_order_and_changes_nothing(
    ledger: ShardLedger, order: TransferOrder, code: ErrorCode
) -> None:
    assert_order_refused(ledger, order, code)
    assert_prepare_refused(ledger, order, code)


def test_topup_from_another_shards_funding_account_is_refused() -> None:
    shard_count = 4
    (target,) = ids_on(2, shard_count, 1, "user")
    right = topup(target, 5, id="tu-1", shard_count=shard_count)
    assert right.debit == funding_account_id("USD", 2)
    validate_order(right, shard_count)
    for shard in (0, 1, 3):
        wrong = msgspec.structs.replace(right, debit=funding_account_id("USD", shard))
        with pytest.raises(LedgerError) as raised:
            validate_order(wrong, shard_count)
        assert raised.value.code == ErrorCode.SYSTEM_ACCOUNT_FORBIDDEN
        assert raised.value.status == 403


def test_limits_are_inclusive(ledger: ShardLedger) -> None:
    """The largest valid amount, id, memo and leg count are accepted, not refused."""
    validate_order(payment(credits=(("bob", MAX_AMOUNT),)), 1)
    validate_order(payment(credits=(("bob", MAX_AMOUNT - 1), ("carol", 1))), 1)
    validate_order(payment(id="t" * MAX_ID_LENGTH, debit="a" * MAX_ID_LENGTH), 1)
    validate_order(payment(id="A-z.0:9@y"), 1)
    validate_order(payment(memo="é" * (MAX_MEMO_BYTES // 2)), 1)
    validate_order(payment(memo="m" * MAX_MEMO_BYTES), 1)

    outcomes, committed, _ = ledger.apply_orders([topup("bob", MAX_AMOUNT, id="big")], LATER)
    assert outcomes[0].error is None and len(committed) == 1
    assert balance(ledger, "bob") == MAX_AMOUNT + 1

    memo = "é" * (MAX_MEMO_BYTES // 2)
    outcomes, _, _ = ledger.apply_orders(
        [payment(credits=(("carol", 1),), id="memo", memo=memo)], LATER
    )
    assert outcomes[0].error is None
    stored = ledger.transfer("memo")
    assert stored is not None and stored.order.memo == memo


def test_exactly_max_credits_is_accepted() -> None:
    ledger = ShardLedger(0, 1)
    payees = [f"payee-{i}" for i in range(MAX_CREDITS)]
    specs = [AccountSpec(id=p, currency="USD", owner="o") for p in ["payer", *payees]]
    assert all(o.created for o in ledger.create_accounts(specs, NOW)[0])
    ledger.apply_orders([topup("payer", 10 * MAX_CREDITS, id="seed")], NOW)

    order = payment("payer", tuple((p, 10) for p in payees), id="fan-out")
    outcomes, committed, _ = ledger.apply_orders([order], NOW)
    assert outcomes[0].error is None and [t.order for t in committed] == [order]
    assert balance(ledger, "payer") == 0
    assert all(balance(ledger, p) == 10 for p in payees)

    too_many = payment("payer", (*((p, 1) for p in payees), ("payer-extra", 1)), id="fan-out-2")
    assert len(too_many.credits) == MAX_CREDITS + 1
    assert_order_refused(ledger, too_many, ErrorCode.TOO_MANY_LEGS)


# -- stateful order checks -----------------------------------------------------------------


STATEFUL_REFUSALS: list[tuple[str, TransferOrder, ErrorCode]] = [
    ("debit missing", payment(debit="ghost"), ErrorCode.ACCOUNT_NOT_FOUND),
    (
        "one credit missing",
        payment(credits=(("bob", 1), ("ghost", 1))),
        ErrorCode.ACCOUNT_NOT_FOUND,
    ),
    ("topup target missing", topup("ghost", 5, id="tu"), ErrorCode.ACCOUNT_NOT_FOUND),
    ("credit in EUR", payment(credits=(("erin", 1),)), ErrorCode.CURRENCY_MISMATCH),
    (
        "credit in USD for a EUR order",
        payment(debit="erin", credits=(("alice", 1),), currency="EUR"),
        ErrorCode.CURRENCY_MISMATCH,
    ),
    (
        "debit and credit in USD for a EUR order",
        payment(credits=(("bob", 1),), currency="EUR"),
        ErrorCode.CURRENCY_MISMATCH,
    ),
    ("mixed currencies", payment(credits=(("bob", 1), ("erin", 1))), ErrorCode.CURRENCY_MISMATCH),
    ("USD topup into EUR", topup("erin", 5, id="tu"), ErrorCode.CURRENCY_MISMATCH),
    ("one over", payment(credits=(("bob", 1_000),)), ErrorCode.INSUFFICIENT_FUNDS),
    (
        "legs fit alone but not together",
        payment(credits=(("bob", 500), ("carol", 500))),
        ErrorCode.INSUFFICIENT_FUNDS,
    ),
    (
        "nearly empty account",
        payment(debit="bob", credits=(("carol", 2),)),
        ErrorCode.INSUFFICIENT_FUNDS,
    ),
]


@pytest.mark.parametrize(("order", "code"), cases(STATEFUL_REFUSALS))
def test_stateful_refusals_change_nothing(
    ledger: ShardLedger, order: TransferOrder, code: ErrorCode
) -> None:
    assert balance(ledger, "alice") == 999
    assert_order_refused(ledger, order, code)


def test_refused_topup_does_not_create_the_funding_account() -> None:
    ledger = ShardLedger(0, 1)
    ledger.create_accounts([AccountSpec(id="erin", currency="EUR", owner="e")], NOW)
    assert_order_refused(ledger, topup("ghost", 5, id="tu-1"), ErrorCode.ACCOUNT_NOT_FOUND)
    assert_order_refused(ledger, topup("erin", 5, id="tu-2"), ErrorCode.CURRENCY_MISMATCH)
    assert FUNDING_USD not in ledger.accounts
    assert_prepare_refused(ledger, topup("ghost", 5, id="tu-3"), ErrorCode.ACCOUNT_NOT_FOUND)
    assert FUNDING_USD not in ledger.accounts


def test_prepare_refuses_stateful_problems_and_holds_nothing(ledger: ShardLedger) -> None:
    # Each under its own id: a refused id answers its first refusal to any other body.
    assert_prepare_refused(ledger, payment(debit="ghost", id="s-1"), ErrorCode.ACCOUNT_NOT_FOUND)
    assert_prepare_refused(
        ledger, payment(credits=(("bob", 1), ("ghost", 1)), id="s-2"), ErrorCode.ACCOUNT_NOT_FOUND
    )
    assert_prepare_refused(
        ledger, payment(credits=(("erin", 1),), id="s-3"), ErrorCode.CURRENCY_MISMATCH
    )
    assert_prepare_refused(
        ledger,
        payment(credits=(("bob", 500), ("carol", 500)), id="s-4"),
        ErrorCode.INSUFFICIENT_FUNDS,
    )


def ledger_near_the_balance_limit(headroom: int) -> ShardLedger:
    """``rich`` holds ``headroom`` less than MAX_BALANCE, ``payer`` holds 100; both USD."""
    ledger = ShardLedger(0, 1)
    ledger.replay_accounts(
        [
            Account(id="rich", currency="USD", owner="r", balance=MAX_BALANCE - headroom),
            Account(id="payer", currency="USD", owner="p", balance=100),
        ]
    )
    return ledger


def test_balance_limit_exceeded_on_credit_changes_nothing() -> None:
    ledger = ledger_near_the_balance_limit(headroom=5)
    assert_order_refused(ledger, payment("payer", (("rich", 6),)), ErrorCode.BALANCE_LIMIT_EXCEEDED)
    assert_prepare_refused(
        ledger, payment("payer", (("rich", 6),)), ErrorCode.BALANCE_LIMIT_EXCEEDED
    )
    outcomes, _, _ = ledger.apply_orders([payment("payer", (("rich", 5),), id="t-2")], NOW)
    assert outcomes[0].error is None
    assert balance(ledger, "rich") == MAX_BALANCE


def test_held_credits_count_toward_the_balance_limit() -> None:
    ledger = ledger_near_the_balance_limit(headroom=10)
    first = payment("payer", (("rich", 6),), id="in-1")
    votes, prepared, _ = ledger.prepare(
        [Prepare(txid="tx-1", transfer=Transfer(order=first, created_at=NOW))], 0
    )
    assert votes[0].ok and len(prepared) == 1
    assert ledger.account("rich").held_credit == 6
    # 6 held + 6 more would pass the limit once both commit.
    second = payment("payer", (("rich", 6),), id="in-2")
    assert_order_refused(ledger, second, ErrorCode.BALANCE_LIMIT_EXCEEDED)
    assert_prepare_refused(ledger, second, ErrorCode.BALANCE_LIMIT_EXCEEDED)
    assert ledger.decide([Decision("tx-1", False)]) == [Decision("tx-1", False)]
    # The refused body keeps its refusal (remembered); the same legs under a new id fit now.
    assert_order_refused(ledger, second, ErrorCode.BALANCE_LIMIT_EXCEEDED)
    third = payment("payer", (("rich", 6),), id="in-3")
    outcomes, _, _ = ledger.apply_orders([third], NOW)
    assert outcomes[0].error is None


def test_transfer_id_conflicts_change_nothing(ledger: ShardLedger) -> None:
    original = payment(credits=(("bob", 10),), id="pay-1", memo="lunch")
    outcomes, _, _ = ledger.apply_orders([original], NOW)
    assert outcomes[0].error is None
    variants = [
        ("credits", payment(credits=(("bob", 11),), id="pay-1", memo="lunch")),
        ("memo", payment(credits=(("bob", 10),), id="pay-1", memo="dinner")),
        ("credits", payment(credits=(("carol", 10),), id="pay-1", memo="lunch")),
        ("credits", payment(credits=(("bob", 10), ("carol", 1)), id="pay-1", memo="lunch")),
        ("debit", payment("erin", (("bob", 10),), id="pay-1", currency="EUR")),
        ("debit", payment("bob", (("carol", 1),), id="pay-1", memo="lunch")),
        ("debit", topup("bob", 10, id="pay-1")),
    ]
    for field, variant in variants:
        assert_order_refused(ledger, variant, ErrorCode.TRANSFER_ID_CONFLICT)
        assert_prepare_refused(ledger, variant, ErrorCode.TRANSFER_ID_CONFLICT)
        outcomes, _, _ = ledger.apply_orders([variant], LATER)
        assert f"field {field!r} differs" in outcomes[0].detail
    # A conflict is refused even when the new body could never be paid.
    assert_order_refused(
        ledger, payment(credits=(("bob", 10**6),), id="pay-1"), ErrorCode.TRANSFER_ID_CONFLICT
    )
    # The original is untouched and still replays.
    outcomes, committed, _ = ledger.apply_orders([original], LATER)
    assert outcomes[0].replayed and outcomes[0].transfer == Transfer(order=original, created_at=NOW)
    assert committed == []


def test_transfer_id_conflict_with_a_prepared_transfer() -> None:
    ledger = ShardLedger(0, 1)
    ledger.create_accounts(
        [AccountSpec(id=a, currency="USD", owner="o") for a in ("alice", "bob")], NOW
    )
    ledger.apply_orders([topup("alice", 100, id="seed")], NOW)
    held = payment(credits=(("bob", 10),), id="pay-1")
    votes, prepared, _ = ledger.prepare(
        [Prepare(txid="tx-1", transfer=Transfer(order=held, created_at=NOW))], 0
    )
    assert votes[0].ok and len(prepared) == 1
    # Same id and body while in progress: retry later. Another body: a conflict.
    assert_order_refused(ledger, held, ErrorCode.UNAVAILABLE)
    assert_prepare_refused(ledger, held, ErrorCode.UNAVAILABLE)
    other = payment(credits=(("bob", 11),), id="pay-1")
    assert_order_refused(ledger, other, ErrorCode.TRANSFER_ID_CONFLICT)
    assert_prepare_refused(ledger, other, ErrorCode.TRANSFER_ID_CONFLICT)


# -- account specs -------------------------------------------------------------------------

SPEC_REFUSALS: list[tuple[str, AccountSpec, ErrorCode]] = [
    ("id empty", AccountSpec(id="", currency="USD", owner="o"), ErrorCode.INVALID_ACCOUNT_ID),
    ("id space", AccountSpec(id="a b", currency="USD", owner="o"), ErrorCode.INVALID_ACCOUNT_ID),
    (
        "id too long",
        AccountSpec(id="a" * (MAX_ID_LENGTH + 1), currency="USD", owner="o"),
        ErrorCode.INVALID_ACCOUNT_ID,
    ),
    (
        "sys prefix",
        AccountSpec(id="sys:mine", currency="USD", owner="o"),
        ErrorCode.SYSTEM_ACCOUNT_FORBIDDEN,
    ),
    (
        "funding id",
        AccountSpec(id=FUNDING_USD, currency="USD", owner="o", allow_overdraft=True),
        ErrorCode.SYSTEM_ACCOUNT_FORBIDDEN,
    ),
    ("currency lower", AccountSpec(id="a", currency="usd", owner="o"), ErrorCode.INVALID_CURRENCY),
    ("currency XXX", AccountSpec(id="a", currency="XXX", owner="o"), ErrorCode.INVALID_CURRENCY),
    ("owner empty", AccountSpec(id="a", currency="USD", owner=""), ErrorCode.INVALID_OWNER),
    ("owner leading", AccountSpec(id="a", currency="USD", owner=" o"), ErrorCode.INVALID_OWNER),
    ("owner trailing", AccountSpec(id="a", currency="USD", owner="o\t"), ErrorCode.INVALID_OWNER),
    ("owner blank", AccountSpec(id="a", currency="USD", owner="   "), ErrorCode.INVALID_OWNER),
    (
        "owner too long",
        AccountSpec(id="a", currency="USD", owner="o" * (MAX_OWNER_LENGTH + 1)),
        ErrorCode.INVALID_OWNER,
    ),
    ("owner NUL", AccountSpec(id="a", currency="USD", owner="o\x00p"), ErrorCode.INVALID_OWNER),
    ("owner newline", AccountSpec(id="a", currency="USD", owner="o\np"), ErrorCode.INVALID_OWNER),
    ("owner bidi", AccountSpec(id="a", currency="USD", owner="o\u202ep"), ErrorCode.INVALID_OWNER),
    ("owner DEL", AccountSpec(id="a", currency="USD", owner="o\x7fp"), ErrorCode.INVALID_OWNER),
    ("id dot", AccountSpec(id=".", currency="USD", owner="o"), ErrorCode.INVALID_ACCOUNT_ID),
    ("id dot-dot", AccountSpec(id="..", currency="USD", owner="o"), ErrorCode.INVALID_ACCOUNT_ID),
]


@pytest.mark.parametrize(
    "memo", ["", "Rent for June", "café ☕", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "שלום"]
)
def test_ordinary_memos_pass(memo: str) -> None:
    """Accents, emoji (joined by ZERO WIDTH JOINER) and right-to-left scripts are words."""
    validate_order(payment(memo=memo), 1)


@pytest.mark.parametrize("account_id", ["a.b", ".a", "a..", "...x", "user@example.com"])
def test_ids_with_dots_and_more_pass(account_id: str) -> None:
    validate_account_spec(AccountSpec(id=account_id, currency="USD", owner="o"))


@pytest.mark.parametrize(("spec", "code"), cases(SPEC_REFUSALS))
def test_account_spec_refusals_change_nothing(
    ledger: ShardLedger, spec: AccountSpec, code: ErrorCode
) -> None:
    with pytest.raises(LedgerError) as raised:
        validate_account_spec(spec)
    assert raised.value.code == code
    before = state_of(ledger)
    outcomes, created = ledger.create_accounts([spec], LATER)
    assert [(o.error, o.account, o.created) for o in outcomes] == [(code, None, False)]
    assert outcomes[0].detail
    assert created == []
    assert state_of(ledger) == before


def test_account_spec_limits_are_inclusive() -> None:
    validate_account_spec(
        AccountSpec(id="a" * MAX_ID_LENGTH, currency="JPY", owner="o" * MAX_OWNER_LENGTH)
    )
    validate_account_spec(AccountSpec(id="x.y_z".replace("_", "-"), currency="EUR", owner="a b"))


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(
            AccountSpec(id="alice", currency="EUR", owner="alice@example.com"), id="currency"
        ),
        pytest.param(
            AccountSpec(id="alice", currency="USD", owner="mallory@example.com"), id="owner"
        ),
        pytest.param(
            AccountSpec(
                id="alice", currency="USD", owner="alice@example.com", allow_overdraft=True
            ),
            id="flags",
        ),
    ],
)
def test_account_id_conflict_changes_nothing(ledger: ShardLedger, spec: AccountSpec) -> None:
    before = state_of(ledger)
    outcomes, created = ledger.create_accounts([spec], LATER)
    assert outcomes[0].error == ErrorCode.ACCOUNT_ID_CONFLICT and outcomes[0].account is None
    assert created == []
    assert state_of(ledger) == before
    assert ErrorCode.ACCOUNT_ID_CONFLICT.value == "account_id_conflict"
    assert HTTP_STATUS[ErrorCode.ACCOUNT_ID_CONFLICT] == 409


def test_bad_specs_in_a_batch_do_not_stop_good_ones() -> None:
    ledger = ShardLedger(0, 1)
    specs = [
        AccountSpec(id="ok-1", currency="USD", owner="o"),
        AccountSpec(id="sys:no", currency="USD", owner="o"),
        AccountSpec(id="ok-2", currency="EUR", owner="o"),
        AccountSpec(id="ok-1", currency="EUR", owner="o"),
        AccountSpec(id="ok-3", currency="usd", owner="o"),
    ]
    outcomes, created = ledger.create_accounts(specs, NOW)
    assert [o.error for o in outcomes] == [
        None,
        ErrorCode.SYSTEM_ACCOUNT_FORBIDDEN,
        None,
        ErrorCode.ACCOUNT_ID_CONFLICT,
        ErrorCode.INVALID_CURRENCY,
    ]
    assert [a.id for a in created] == ["ok-1", "ok-2"]
    assert sorted(ledger.accounts) == ["ok-1", "ok-2"]
    assert ledger.account("ok-1").currency == "USD"
    assert ledger.account("ok-1").created_at == NOW


def test_bad_orders_in_a_batch_do_not_stop_good_ones(ledger: ShardLedger) -> None:
    orders = [
        payment(credits=(("bob", 100),), id="good-1"),
        payment(credits=(("ghost", 1),), id="bad-1"),
        payment(credits=(("carol", 100), ("erin", 1)), id="bad-2"),
        payment(credits=(("carol", 100),), id="good-2"),
        payment(credits=(("carol", 10_000),), id="bad-3"),
    ]
    outcomes, committed, _ = ledger.apply_orders(orders, LATER)
    assert [o.error for o in outcomes] == [
        None,
        ErrorCode.ACCOUNT_NOT_FOUND,
        ErrorCode.CURRENCY_MISMATCH,
        None,
        ErrorCode.INSUFFICIENT_FUNDS,
    ]
    assert [t.order.id for t in committed] == ["good-1", "good-2"]
    assert (balance(ledger, "alice"), balance(ledger, "bob"), balance(ledger, "carol")) == (
        799,
        101,
        100,
    )
    assert balance(ledger, "erin") == 0
    for refused in ("bad-1", "bad-2", "bad-3"):
        assert ledger.transfer(refused) is None
    assert "ghost" not in ledger.accounts
