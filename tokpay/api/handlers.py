"""HTTP handlers as plain async functions: bytes and path parts in, status and bytes out.

Both the lean hot-path router and the FastAPI routes call these, so there is one
implementation of each endpoint and FastAPI's per-request machinery is paid only
where it is worth it. Every refusal is a LedgerError; ``problems.problem`` renders it.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec

from tokpay.api.metrics import render
from tokpay.api.problems import Reply
from tokpay.api.schemas import (
    AccountIn,
    AccountOut,
    BalanceOut,
    CurrencySumOut,
    HealthOut,
    HistoryItemOut,
    HistoryOut,
    LedgerSummaryOut,
    LegOut,
    LivenessOut,
    LookupIn,
    LookupItemOut,
    LookupOut,
    TopupIn,
    TransferIn,
    TransferOut,
)
from tokpay.client.ledger import LedgerClient
from tokpay.ledger.errors import ErrorCode, LedgerError
from tokpay.ledger.limits import DEFAULT_PAGE_SIZE, MAX_LOOKUP_IDS, MAX_PAGE_SIZE
from tokpay.ledger.model import (
    Account,
    AccountSpec,
    Credit,
    Transfer,
    TransferOrder,
    is_system_account,
)
from tokpay.ledger.routing import topup_order
from tokpay.ledger.validation import (
    is_valid_id,
    validate_account_id,
    validate_amount,
    validate_currency,
    validate_order,
)

T = TypeVar("T")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_json = msgspec.json.Encoder()
_decoders: dict[type, msgspec.json.Decoder[Any]] = {}

LIVENESS_BODY = _json.encode(LivenessOut("ok"))
"""``/livez``: this process answers; no ledger call is made."""


def iso_time(micros: int) -> str:
    # Integer arithmetic only: no float ever holds a timestamp or an amount.
    return (_EPOCH + timedelta(microseconds=micros)).isoformat().replace("+00:00", "Z")


def decode_body(body: bytes, kind: type[T]) -> T:
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        result: T = decoder.decode(body)
        return result
    except msgspec.ValidationError as error:
        message = str(error)
        code = ErrorCode.INVALID_AMOUNT if "amount`" in message else ErrorCode.INVALID_BODY
        raise LedgerError(code, message) from None
    except msgspec.DecodeError as error:
        raise LedgerError(ErrorCode.INVALID_BODY, f"body is not valid JSON: {error}") from None
    except UnicodeDecodeError:
        # msgspec checks UTF-8 only when it decodes a string's escapes or non-ASCII bytes.
        raise LedgerError(ErrorCode.INVALID_BODY, "body is not valid UTF-8") from None


def transfer_out(transfer: Transfer) -> TransferOut:
    order = transfer.order
    return TransferOut(
        id=order.id,
        status="committed",
        kind=order.kind,
        from_=order.debit,
        to=[LegOut(c.account, c.amount) for c in order.credits],
        amount=order.total,
        currency=order.currency,
        memo=order.memo,
        created_at=iso_time(transfer.created_at),
    )


def account_out(account: Account) -> AccountOut:
    # The public fields of the account, with its time written the way the API writes times.
    fields = msgspec.structs.asdict(account)
    return msgspec.convert({**fields, "created_at": iso_time(account.created_at)}, AccountOut)


def _encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(f"h{position}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        digits = raw[1:]
        if not raw.startswith("h") or not (digits.isascii() and digits.isdigit()) or len(raw) > 20:
            raise ValueError(raw)
        return int(raw[1:])
    except (ValueError, UnicodeDecodeError):
        raise LedgerError(
            ErrorCode.INVALID_CURSOR, "cursor is not one this server issued"
        ) from None


def _parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE_SIZE
    # isascii(): str.isdigit() also accepts digits like "²" that int() refuses.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise LedgerError(
            ErrorCode.INVALID_LIMIT, f"limit must be an integer in 1..{MAX_PAGE_SIZE}"
        )
    return int(raw)


class Handlers:
    """One method per operation; the first line of each docstring is its summary in /docs."""

    def __init__(self, ledger: LedgerClient) -> None:
        self.ledger = ledger

    async def create_account(self, body: bytes) -> Reply:
        """Open an account."""
        request = decode_body(body, AccountIn)
        account_id = request.id if request.id is not None else f"acc_{secrets.token_hex(12)}"
        # The request is the spec, with an id chosen here when the caller left it out.
        spec = msgspec.convert({**msgspec.structs.asdict(request), "id": account_id}, AccountSpec)
        outcome = await self.ledger.create_account(spec)
        if outcome.error is not None or outcome.account is None:
            raise LedgerError(ErrorCode(outcome.error or ErrorCode.UNAVAILABLE), outcome.detail)
        return (201 if outcome.created else 200), _json.encode(account_out(outcome.account))

    async def get_account(self, account_id: str) -> Reply:
        """An account with its balance."""
        validate_account_id(account_id)
        account = await self.ledger.account(account_id)
        if account is None:
            raise LedgerError(ErrorCode.ACCOUNT_NOT_FOUND, f"no account {account_id!r}")
        return 200, _json.encode(account_out(account))

    async def get_balance(self, account_id: str) -> Reply:
        """Committed balance of one account (hot path)."""
        validate_account_id(account_id)
        view = await self.ledger.balance(account_id)
        if view is None:
            raise LedgerError(ErrorCode.ACCOUNT_NOT_FOUND, f"no account {account_id!r}")
        return 200, _json.encode(BalanceOut(view.account_id, view.balance, view.currency))

    async def lookup(self, body: bytes) -> Reply:
        """Balances of many accounts in one call, in request order."""
        request = decode_body(body, LookupIn)
        ids = request.account_ids
        if len(ids) > MAX_LOOKUP_IDS:
            raise LedgerError(ErrorCode.TOO_MANY_IDS, f"at most {MAX_LOOKUP_IDS} ids per lookup")
        valid = [i for i in ids if is_valid_id(i)]
        views = dict(zip(valid, await self.ledger.balances(valid), strict=True)) if valid else {}
        items = []
        for account_id in ids:
            if not is_valid_id(account_id):
                items.append(LookupItemOut(account_id, error=ErrorCode.INVALID_ACCOUNT_ID))
                continue
            view = views.get(account_id)
            if view is None:
                items.append(LookupItemOut(account_id, error=ErrorCode.ACCOUNT_NOT_FOUND))
            else:
                items.append(LookupItemOut(account_id, view.balance, view.currency))
        return 200, _json.encode(LookupOut(items))

    async def create_transfer(self, body: bytes) -> Reply:
        """Pay one or more accounts from one account (hot path)."""
        request = decode_body(body, TransferIn)
        order = TransferOrder(
            id=request.id,
            debit=request.from_,
            credits=tuple(Credit(leg.account, leg.amount) for leg in request.to),
            currency=request.currency,
            memo=request.memo,
        )
        return await self._submit(order)

    async def create_topup(self, body: bytes) -> Reply:
        """Add money to an account from its currency's funding account."""
        request = decode_body(body, TopupIn)
        validate_account_id(request.account)
        if is_system_account(request.account):
            raise LedgerError(
                ErrorCode.SYSTEM_ACCOUNT_FORBIDDEN, "system accounts cannot be topped up"
            )
        validate_currency(request.currency)
        validate_amount(request.amount, "amount")
        order = topup_order(
            request.id, request.account, request.amount, request.currency, self.ledger.shard_count
        )
        return await self._submit(order)

    async def _submit(self, order: TransferOrder) -> Reply:
        validate_order(order, self.ledger.shard_count)
        outcome = await self.ledger.submit(order)
        if outcome.transfer is None:
            raise LedgerError(ErrorCode(outcome.error or ErrorCode.UNAVAILABLE), outcome.detail)
        return (200 if outcome.replayed else 201), _json.encode(transfer_out(outcome.transfer))

    async def ledger_summary(self) -> Reply:
        """Sum of all balances per currency (double entry: always zero)."""
        sums = await self.ledger.currency_sums()
        currencies = {c: CurrencySumOut(v) for c, v in sorted(sums.items())}
        return 200, _json.encode(LedgerSummaryOut(currencies))

    async def healthz(self) -> Reply:
        """Liveness and ledger reachability."""
        stats = await self.ledger.shard_stats()
        return 200, _json.encode(HealthOut("ok", len(stats), sum(s.accounts for s in stats)))

    async def metrics(self) -> Reply:
        """Prometheus metrics.

        The text holds this gateway's counters, then the shards' and the coordinator's.
        """
        stats = await self.ledger.shard_stats()
        return 200, render(stats, await self.ledger.coordinator_stats())

    async def get_transfer(self, transfer_id: str) -> Reply:
        """One transfer."""
        if not is_valid_id(transfer_id):
            raise LedgerError(ErrorCode.INVALID_TRANSFER_ID, "not a valid transfer id")
        transfer = await self.ledger.transfer(transfer_id)
        if transfer is None:
            raise LedgerError(ErrorCode.TRANSFER_NOT_FOUND, f"no transfer {transfer_id!r}")
        return 200, _json.encode(transfer_out(transfer))

    async def list_transfers(self, account_id: str, query: Mapping[str, str]) -> Reply:
        """An account's transfers, newest first, with the signed effect on it."""
        validate_account_id(account_id)
        if is_system_account(account_id):
            # A funding account's history would list every wallet that was ever topped up.
            raise LedgerError(
                ErrorCode.SYSTEM_ACCOUNT_FORBIDDEN, "system accounts' history is not public"
            )
        limit = _parse_limit(query.get("limit"))
        raw_cursor = query.get("cursor")
        cursor = None if raw_cursor is None else _decode_cursor(raw_cursor)
        page = await self.ledger.history(account_id, limit, cursor)
        items = []
        for transfer, effect, balance_after in page.items:
            fields = msgspec.structs.asdict(transfer_out(transfer))
            items.append(HistoryItemOut(**fields, effect=effect, balance_after=balance_after))
        next_cursor = None if page.next_cursor is None else _encode_cursor(page.next_cursor)
        return 200, _json.encode(HistoryOut(items, next_cursor))
