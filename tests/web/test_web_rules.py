"""The web app's plain rules without a browser: spreadsheet-safe cells, look-alike addresses,
bounded recent recipients, and a transaction list that reads the ledger page by page."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

from tokpay.ledger.model import AccountSpec, HistoryPage
from tokpay.ledger.routing import topup_order
from tokpay.ledger.shard_ledger import ShardLedger
from tokpay.store.shard_store import ShardStore
from tokpay.web import history
from tokpay.web.dashboard import spreadsheet_safe
from tokpay.web.people import MAX_CONTACTS, PeopleStore, looks_like, skeleton
from tokpay.web.store import User, WebStore
from tokpay.web.wallet import normalise_email

T = TypeVar("T")


def test_spreadsheet_safe_quotes_every_formula_start() -> None:
    for payload in ("=1+1", "+1", "-1+2", "@SUM(A1)", "\t=1", "\r=1", "-", "-12.5e3"):
        assert spreadsheet_safe(payload) == "'" + payload, repr(payload)
    for plain in ("Lunch", "a=b", "12.50", "-12.50", "0.01", ""):
        assert spreadsheet_safe(plain) == plain, repr(plain)


def test_look_alike_addresses_share_a_skeleton() -> None:
    friend = "alice@example.com"
    cyrillic = "\u0430lice@example.com"  # CYRILLIC SMALL LETTER A
    fullwidth = "alice@ex\uff41mple.com"  # FULLWIDTH LATIN SMALL LETTER A
    assert skeleton(cyrillic) == skeleton(friend) == skeleton(fullwidth)
    assert looks_like(cyrillic, [friend, "bob@example.com"]) == friend
    assert looks_like(fullwidth, [friend]) == friend
    assert looks_like(friend, [friend]) is None  # the same address is not a look-alike
    assert looks_like("alicia@example.com", [friend]) is None


def test_recent_recipients_are_bounded_and_newest_first(tmp_path: Path) -> None:
    WebStore(tmp_path / "web.sqlite3")
    people = PeopleStore(tmp_path / "web.sqlite3")
    for n in range(MAX_CONTACTS + 5):
        people.remember("u_1", [f"p{n}@example.com"])
    people.remember("u_1", ["p0@example.com"])  # paid again: back on top
    contacts = people.contacts("u_1")
    assert len(contacts) == MAX_CONTACTS
    assert contacts[0] == "p0@example.com" and "p1@example.com" not in contacts
    assert people.contacts("u_2") == []


def _run(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` on a loop of its own thread (Playwright's sync API may hold this one's)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, work).result()


class CountingLedger:
    """The ledger client's ``history`` over a real single-shard ledger, counting reads."""

    shard_count = 1

    def __init__(self, ledger: ShardLedger) -> None:
        self.ledger = ledger
        self.items_read = 0

    async def history(self, account_id: str, limit: int, cursor: int | None) -> HistoryPage:
        page = self.ledger.history_page(account_id, limit, cursor)
        self.items_read += len(page.items)
        return page


def test_the_list_reads_one_page_not_the_whole_history(tmp_path: Path) -> None:
    # History as a shard keeps it: on its store, read back page by page.
    shard_store = ShardStore(tmp_path / "shard", 0, 1)
    ledger = ShardLedger(0, 1, disk=shard_store)
    user = User("u_long", "long@example.com", "w_long")
    ledger.create_accounts([AccountSpec(id=user.account_id, currency="USD", owner=user.id)], 1)
    orders = [topup_order(f"top_{n:06d}", user.account_id, 1 + n, "USD", 1) for n in range(3_000)]
    ledger.apply_orders(orders, 1_000_000)
    shard_store.write(1, ledger.take_pending())
    assert shard_store.count("history") == 6_000  # each top-up: the user and the funding account
    counting = CountingLedger(ledger)
    store = WebStore(tmp_path / "web.sqlite3")

    page = _run(history.list_page(counting, store, user, history.ListQuery()))  # type: ignore[arg-type]
    assert [e.effect for e in page.entries] == list(range(3_000, 2_990, -1))
    assert page.older == 2_990
    assert counting.items_read == 1 + history.PAGE_SIZE, counting.items_read

    counting.items_read = 0
    older = history.ListQuery.parse("topup", "", str(page.older))
    second = _run(history.list_page(counting, store, user, older))  # type: ignore[arg-type]
    assert [e.effect for e in second.entries] == list(range(2_990, 2_980, -1))
    # A search that matches nothing stops at its bound and offers to look further back.
    counting.items_read = 0
    nothing = history.ListQuery.parse("all", "no such note", "")
    missed = _run(history.list_page(counting, store, user, nothing))  # type: ignore[arg-type]
    assert missed.entries == [] and missed.older == 3_000 - history.MAX_SCANNED_PER_PAGE
    assert counting.items_read <= history.MAX_SCANNED_PER_PAGE + 1
    shard_store.close()


def test_day_headings() -> None:
    today = date(2026, 12, 1)
    assert history.day_heading(today, today) == "Today"
    assert history.day_heading(date(2026, 11, 30), today) == "Yesterday"
    assert history.day_heading(date(2026, 11, 2), today) == "Monday 2 November"
    assert history.day_heading(date(2025, 11, 2), today) == "2 November 2025"
    # One transfer near midnight UTC falls on the next day in Tokyo.
    entry = history.Entry(
        "t", "topup", 1, ("Added money",), "", datetime(2026, 11, 30, 20, tzinfo=UTC)
    )
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert history.by_day([entry], history.zone_named("Asia/Tokyo"), now)[0][0] == "Today"
    assert history.by_day([entry], history.zone_named("UTC"), now)[0][0] == "Yesterday"
    assert history.zone_named("../../etc/passwd").key == "UTC"
    assert history.zone_named("Not/AZone").key == "UTC"


def test_international_domains_are_compared_in_unicode() -> None:
    # A browser's email field sends the punycode spelling of what was typed.
    assert normalise_email(" Bob@XN--XAMPLE-2OF.com ") == "bob@\u0435xample.com"
    assert normalise_email("bob@xn--broken-.com") == "bob@xn--broken-.com"
    assert normalise_email("Bob@Example.com") == "bob@example.com"


def test_an_unexpected_error_is_a_page_on_the_web_and_json_on_the_api(tmp_path: Path) -> None:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from starlette.testclient import TestClient

    from tokpay.settings import Settings
    from tokpay.web.context import WebContext
    from tokpay.web.errors import install_error_pages

    app = FastAPI()

    @app.exception_handler(Exception)
    async def api_error(request: Any, error: Exception) -> JSONResponse:
        return JSONResponse({"code": "internal_error"}, status_code=500)

    web = WebContext(Settings(data_dir=tmp_path), lambda: None)  # type: ignore[arg-type,return-value]
    install_error_pages(app, web, ("/v1",))

    @app.get("/broken")
    @app.get("/v1/broken")
    async def broken() -> None:
        raise RuntimeError("a bug")

    client = TestClient(app, raise_server_exceptions=False)
    page = client.get("/broken")
    assert page.status_code == 500 and "Something went wrong" in page.text
    assert "RuntimeError" not in page.text and "a bug" not in page.text
    assert client.get("/v1/broken").json() == {"code": "internal_error"}
