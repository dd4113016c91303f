"""The signed-in user's transfers, read from the ledger page by page with its cursor.

A page of the transaction list reads only as many ledger history pages as it needs
(one, unless a filter or search skips items); nothing reads the whole history on
every render. Times are shown in one time zone, the browser's when it told us.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tokpay.client.ledger import LedgerClient
from tokpay.ledger.errors import ErrorCode, LedgerError
from tokpay.ledger.limits import MAX_PAGE_SIZE
from tokpay.ledger.model import Transfer, TransferKind
from tokpay.ledger.shard_ledger import effect_on
from tokpay.web.store import User, WebStore

PAGE_SIZE = 10
"""Transactions on one page of the list."""
MAX_SCANNED_PER_PAGE = 1_000
"""Ledger items one list page may read while a filter or search skips items."""
MAX_EXPORT_ITEMS = 2_000
"""Transactions in one CSV export (newest first)."""
MAX_CHART_ITEMS = MAX_PAGE_SIZE
"""The chart draws the balance over the newest ledger page of transfers."""
MAX_RECEIPT_SCAN = 2_000
"""Transfers walked back to find a receipt's balance after; older receipts omit it."""
FILTERS = {"all": "All", "sent": "Sent", "received": "Received", "topup": "Top-ups"}
MAX_QUERY_CHARS = 100
MAX_TRANSFER_ID_CHARS = 128
MAX_CURSOR_DIGITS = 12

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-/]{1,64}")


@dataclass(frozen=True)
class Entry:
    """One transfer as the user sees it."""

    transfer_id: str
    kind: str  # "topup", "sent" or "received"
    effect: int
    counterparties: tuple[str, ...]
    memo: str
    created_at: datetime

    def matches(self, kind: str, needle: str) -> bool:
        if kind != "all" and self.kind != kind:
            return False
        if not needle:
            return True
        return needle in self.memo.casefold() or any(
            needle in party.casefold() for party in self.counterparties
        )


@dataclass(frozen=True)
class ListQuery:
    """The list's state, all of it in the URL: filter, search text, ledger cursor."""

    kind: str = "all"
    text: str = ""
    before: int | None = None

    @classmethod
    def parse(cls, kind: str, text: str, before: str) -> ListQuery:
        cursor = int(before) if before.isascii() and before.isdigit() else None
        if len(before) > MAX_CURSOR_DIGITS:
            cursor = None
        return cls(kind if kind in FILTERS else "all", text.strip()[:MAX_QUERY_CHARS], cursor)

    @property
    def needle(self) -> str:
        return self.text.casefold()


@dataclass(frozen=True)
class ListPage:
    entries: list[Entry]
    older: int | None
    """The cursor of the next, older page; None at the oldest."""


def zone_named(name: str) -> ZoneInfo:
    """The browser's time zone from its cookie; UTC when absent or unknown."""
    if _ZONE_NAME.fullmatch(name) and ".." not in name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo("UTC")


def day_heading(day: date, today: date) -> str:
    if day == today:
        return "Today"
    if day == today - timedelta(days=1):
        return "Yesterday"
    if day.year == today.year:
        return f"{day:%A} {day.day} {day:%B}"
    return f"{day.day} {day:%B %Y}"


def by_day(entries: list[Entry], zone: ZoneInfo, now: datetime) -> list[tuple[str, list[Entry]]]:
    """Entries under headings "Today", "Yesterday", "Monday 30 November", in ``zone``."""
    today = now.astimezone(zone).date()
    groups: list[tuple[str, list[Entry]]] = []
    last: date | None = None
    for entry in entries:
        day = entry.created_at.astimezone(zone).date()
        if day != last:
            groups.append((day_heading(day, today), []))
            last = day
        groups[-1][1].append(entry)
    return groups


async def _walk(
    ledger: LedgerClient, user: User, before: int | None, limit: int, first: int = MAX_PAGE_SIZE
) -> AsyncIterator[list[tuple[Transfer, int, int]]]:
    """Ledger pages of the user's (transfer, effect, balance after), newest first, from ``before``;
    ``limit`` items in all at most. Pages start at ``first`` items and double."""
    cursor = before
    left = limit
    size = first
    while left > 0:
        try:
            page = await ledger.history(user.account_id, min(size, MAX_PAGE_SIZE, left), cursor)
        except LedgerError as error:
            if error.code != ErrorCode.INVALID_CURSOR:
                raise
            return
        left -= len(page.items)
        size *= 2
        yield page.items
        cursor = page.next_cursor
        if cursor is None:
            return


def _entry(user: User, transfer: Transfer, effect: int, emails: dict[str, str]) -> Entry:
    order = transfer.order
    parties: tuple[str, ...]
    if order.kind == TransferKind.TOPUP:
        kind, parties = "topup", ("Added money",)
    elif order.debit == user.account_id:
        kind = "sent"
        parties = tuple(emails.get(c.account, "a closed wallet") for c in order.credits)
    else:
        kind, parties = "received", (emails.get(order.debit, "a closed wallet"),)
    created = _EPOCH + timedelta(microseconds=transfer.created_at)
    return Entry(order.id, kind, effect, parties, order.memo, created)


def _entries(store: WebStore, user: User, items: list[tuple[Transfer, int, int]]) -> list[Entry]:
    others = {a for t, _, _ in items for a in t.order.accounts() if a != user.account_id}
    emails = store.emails_of(others)
    return [_entry(user, transfer, effect, emails) for transfer, effect, _ in items]


async def list_page(
    ledger: LedgerClient, store: WebStore, user: User, query: ListQuery
) -> ListPage:
    """One page of matching entries and the cursor where the next page starts.

    A cursor is a position in the account's history, so the cursor below the last
    item read is known without reading further.
    """
    newest = await _newest_position(ledger, user)
    position = newest if query.before is None else min(query.before, newest)
    matched: list[Entry] = []
    scanned = 0
    async for items in _walk(ledger, user, position, MAX_SCANNED_PER_PAGE, PAGE_SIZE):
        for entry in _entries(store, user, items):
            scanned += 1
            if entry.matches(query.kind, query.needle):
                matched.append(entry)
                if len(matched) == PAGE_SIZE:
                    break
        if len(matched) == PAGE_SIZE:
            break
    older = position - scanned
    return ListPage(matched, older if older > 0 else None)


async def _newest_position(ledger: LedgerClient, user: User) -> int:
    """The number of transfers in the user's history (the cursor of the newest page)."""
    page = await ledger.history(user.account_id, 1, None)
    return (page.next_cursor or 0) + len(page.items)


async def export_entries(
    ledger: LedgerClient, store: WebStore, user: User, query: ListQuery
) -> list[Entry]:
    """The newest ``MAX_EXPORT_ITEMS`` transfers that match the list's filter and search."""
    out: list[Entry] = []
    async for items in _walk(ledger, user, None, MAX_EXPORT_ITEMS):
        out.extend(e for e in _entries(store, user, items) if e.matches(query.kind, query.needle))
    return out


async def chart_points(
    ledger: LedgerClient, user: User, balance: int
) -> list[tuple[datetime, int]]:
    """(time, balance after) over the newest ledger page, oldest first, ending now.

    Each history entry carries the balance after it, so nothing is recomputed."""
    points: list[tuple[datetime, int]] = []
    before = balance
    async for items in _walk(ledger, user, None, MAX_CHART_ITEMS):
        for transfer, effect, after in items:
            points.append((_EPOCH + timedelta(microseconds=transfer.created_at), after))
            before = after - effect
    if points:
        points.append((points[-1][0], before))
        points.reverse()
        points.append((datetime.now(UTC), balance))
    return points


@dataclass(frozen=True)
class Receipt:
    entry: Entry
    shares: list[tuple[str, int]]
    """(recipient email, amount) per credit of the transfer."""
    payer: str
    balance_after: int | None


async def receipt(
    ledger: LedgerClient, store: WebStore, user: User, transfer_id: str
) -> Receipt | None:
    """The transfer ``transfer_id`` if the user took part in it, else None (not found)."""
    if len(transfer_id) > MAX_TRANSFER_ID_CHARS or not transfer_id.isprintable():
        return None
    transfer = await ledger.transfer(transfer_id)
    if transfer is None or user.account_id not in transfer.order.accounts():
        return None
    order = transfer.order
    emails = store.emails_of(order.accounts())
    balance_after: int | None = None
    async for items in _walk(ledger, user, None, MAX_RECEIPT_SCAN):
        for item, _, after in items:
            if item.order.id == transfer_id:
                balance_after = after
                break
        if balance_after is not None:
            break
    effect = effect_on(transfer, user.account_id)
    entry = _entry(user, transfer, effect, emails)
    shares = [(emails.get(c.account, "a closed wallet"), c.amount) for c in order.credits]
    payer = "Added money" if order.kind == TransferKind.TOPUP else emails.get(order.debit, "")
    return Receipt(entry, shares, payer, balance_after)
