"""How long the web app's dashboard takes to gather its data for a wallet with a long history.

Starts one ``tokpay serve`` (fsync on), gives one wallet ``--entries`` history entries
through the batched Ray client, then calls, in this process, what ``GET /dashboard`` and
``GET /chart.json`` call (the balance, the newest list page, the chart's points), and a
list page deep in the history, ``--repeat`` times each: p50/p99/max in milliseconds. Every
read goes to the shard's store on disk, so the figure must not depend on the history's
length. (Template rendering costs the same for any wallet and is left out.)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import bench_server

from tokpay.ledger.limits import MAX_BATCH
from tokpay.ledger.model import AccountSpec, Credit, TransferOrder, funding_account_id
from tokpay.ledger.routing import shard_of

CURRENCY = "USD"


def build(address: str, shards: int, entries: int) -> str:
    """A wallet with ``entries`` history entries (half received, half paid); its id."""
    from tokpay.client import connect  # imports Ray: after main() set its auth mode

    ledger = connect(address)
    wallet_id, friends = "dash-wallet", [f"dash-friend-{n}" for n in range(20)]
    everyone = [wallet_id, *friends]
    ledger.create_accounts([AccountSpec(id=a, currency=CURRENCY, owner="bench") for a in everyone])
    ledger.submit_many(
        [
            TransferOrder(
                id=f"dash-top-{a}",
                debit=funding_account_id(CURRENCY, shard_of(a, shards)),
                credits=(Credit(a, 10**10),),
                currency=CURRENCY,
                kind="topup",
            )
            for a in everyone
        ]
    )
    made = 1
    while made < entries:
        batch = []
        for n in range(made, min(entries, made + MAX_BATCH)):
            friend = friends[n % len(friends)]
            debit, credit = (wallet_id, friend) if n % 2 else (friend, wallet_id)
            batch.append(
                TransferOrder(
                    id=f"dash-{n}",
                    debit=debit,
                    credits=(Credit(credit, 1 + n % 97),),
                    currency=CURRENCY,
                    memo=f"note {n}",
                )
            )
        if any(o.transfer is None for o in ledger.submit_many(batch)):
            raise SystemExit("a transfer was refused while building the history")
        made += len(batch)
        if made % 20_000 < MAX_BATCH:
            print(f"history: {made:,} of {entries:,} entries", flush=True)
    return wallet_id


async def timed(call: Callable[[], Awaitable[Any]], repeat: int) -> dict[str, float]:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        seconds.append((time.perf_counter() - started) * 1000)
    seconds.sort()
    return {
        "p50_ms": statistics.median(seconds),
        "p99_ms": seconds[min(len(seconds) - 1, int(len(seconds) * 0.99))],
        "max_ms": seconds[-1],
    }


async def measure(shards: int, wallet_id: str, web_db: Path, repeat: int) -> dict[str, Any]:
    from tokpay.client import LedgerClient
    from tokpay.web import history, wallet
    from tokpay.web.store import User, WebStore

    ledger = LedgerClient(shard_count=shards)
    store = WebStore(web_db)
    user = User(id="bench", email="bench@example.com", account_id=wallet_id)
    newest = history.ListQuery.parse("all", "", "")
    account = await ledger.account(wallet_id)
    entries = 0 if account is None else account.entries
    deep = history.ListQuery.parse("all", "", str(entries // 2))

    async def dashboard() -> None:
        balance = await wallet.balance_of(ledger, user)
        await history.list_page(ledger, store, user, newest)
        await history.chart_points(ledger, user, balance)

    async def deep_page() -> None:
        await history.list_page(ledger, store, user, deep)

    await dashboard()  # warm the channels
    return {
        "entries": entries,
        "dashboard_data": await timed(dashboard, repeat),
        "list_page_at_half_depth": await timed(deep_page, repeat),
    }


def main() -> None:
    parser = bench_server.arguments(__doc__ or "")
    parser.add_argument("--entries", type=int, default=100_000, help="history entries (100,000)")
    parser.add_argument("--repeat", type=int, default=200, help="timed calls of each kind (200)")
    args = parser.parse_args()
    with bench_server.ledger_server("dashboard-history-", args.shards) as (work, address):
        wallet_id = build(address, args.shards, args.entries)
        figures = asyncio.run(measure(args.shards, wallet_id, work / "web" / "web.db", args.repeat))
        print(json.dumps(figures, indent=2))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
