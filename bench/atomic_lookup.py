"""What the read barrier costs: the hot account's reads and transfers, barrier on and off.

One ledger (a private Ray on this machine, --shards shards, fsync on, data in a fresh
/tmp/atomic-* directory, deleted afterwards) and the gateway's own client in this process.
A hot account on shard 0 trades with --partners accounts on the other shards, so the sum
of the group never changes. Three kinds of load run together:

- writers: cross-shard transfers between the hot account and a partner, either way;
- lookers: lookups of the whole group (every shard), each checked against the group's sum;
- readers: single balance reads of the hot account (one shard: never through the barrier).

The run alternates phases of --phase seconds, "on" (lookups through the coordinator's read
barrier, as the product always does) and "off" (the client's internal ``read_barrier=False``:
each shard read directly, in parallel; for this comparison only), --rounds times each, so
the machine's noise falls on both alike. It prints a line every 2 s and then, per mode:
single reads/s, spanning lookups/s, cross-shard transfers/s, lookups refused (503) and
torn views (a group sum other than the constant).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

FUNDS = 10**9
CURRENCY = "USD"
PROGRESS_SECONDS = 2.0
OBJECT_STORE_BYTES = 150 * 1024 * 1024


@dataclass
class Counts:
    reads: int = 0
    lookups: int = 0
    refused: int = 0
    torn: int = 0
    transfers: int = 0
    seconds: float = 0.0

    def rates(self) -> dict[str, float]:
        per = max(self.seconds, 1e-9)
        return {
            "single_reads_per_s": self.reads / per,
            "lookups_per_s": self.lookups / per,
            "transfers_per_s": self.transfers / per,
        }


class Bench:
    """The group's accounts, the clients and what each phase counted."""

    def __init__(self, handles: Any, args: argparse.Namespace) -> None:
        from tokpay.client import LedgerClient
        from tokpay.ledger.routing import shard_of

        self.args = args
        names = (f"atomic-{n}" for n in itertools.count())
        self.hot = next(n for n in names if shard_of(n, args.shards) == 0)
        self.partners: list[str] = []
        while len(self.partners) < args.partners:
            name = next(names)
            # Round-robin over shards 1.. so every lookup spans every shard.
            if shard_of(name, args.shards) == 1 + len(self.partners) % (args.shards - 1):
                self.partners.append(name)
        self.group = [self.hot, *self.partners]
        self.writes = LedgerClient(handles)
        self.clients = {
            "on": LedgerClient(handles),
            "off": LedgerClient(handles, read_barrier=False),
        }
        self.counts = {mode: Counts() for mode in self.clients}
        self.mode = "on"
        self.stop = asyncio.Event()
        self._ids = (f"atomic-t{n}" for n in itertools.count())

    def open_accounts(self, handles: Any) -> None:
        from tokpay.client import SyncLedgerClient
        from tokpay.ledger.model import AccountSpec, Credit, TransferOrder, funding_account_id
        from tokpay.ledger.routing import shard_of

        sync = SyncLedgerClient(handles)
        specs = [AccountSpec(id=a, currency=CURRENCY, owner="bench") for a in self.group]
        assert all(o.created for o in sync.create_accounts(specs))
        topups = [
            TransferOrder(
                id=f"atomic-top-{a}",
                debit=funding_account_id(CURRENCY, shard_of(a, self.args.shards)),
                credits=(Credit(a, FUNDS),),
                currency=CURRENCY,
                kind="topup",
            )
            for a in self.group
        ]
        assert all(o.transfer is not None for o in sync.submit_many(topups))

    async def writer(self, seed: int) -> None:
        from tokpay.ledger.errors import LedgerError
        from tokpay.ledger.model import Credit, TransferOrder

        rng = random.Random(seed)
        while not self.stop.is_set():
            partner = rng.choice(self.partners)
            payer, payee = (self.hot, partner) if rng.random() < 0.5 else (partner, self.hot)
            order = TransferOrder(
                id=next(self._ids),
                debit=payer,
                credits=(Credit(payee, rng.randint(1, 9)),),
                currency=CURRENCY,
            )
            mode = self.mode
            try:
                ok = (await self.writes.submit(order)).error is None
            except LedgerError:
                ok = False
            self.counts[mode].transfers += ok

    async def looker(self) -> None:
        from tokpay.ledger.errors import LedgerError

        while not self.stop.is_set():
            mode = self.mode
            try:
                views = await self.clients[mode].balances(self.group)
            except LedgerError:
                self.counts[mode].refused += 1
                continue
            self.counts[mode].lookups += 1
            total = sum(v.balance for v in views if v is not None)
            self.counts[mode].torn += total != FUNDS * len(self.group)

    async def reader(self) -> None:
        while not self.stop.is_set():
            mode = self.mode
            await self.clients[mode].balance(self.hot)
            self.counts[mode].reads += 1

    async def run(self) -> None:
        args = self.args
        tasks = [self.writer(n) for n in range(args.writers)]
        tasks += [self.looker() for _ in range(args.lookers)]
        tasks += [self.reader() for _ in range(args.readers)]
        running = asyncio.gather(*tasks)
        began = time.monotonic()
        for round_index in range(args.rounds):
            for mode in ("on", "off") if round_index % 2 == 0 else ("off", "on"):
                self.mode = mode
                start = time.monotonic()
                while (left := start + args.phase - time.monotonic()) > 0:
                    await asyncio.sleep(min(PROGRESS_SECONDS, left))
                    self.progress(began)
                self.counts[mode].seconds += time.monotonic() - start
        self.stop.set()
        await running

    def progress(self, began: float) -> None:
        line = "  ".join(
            f"{mode}: {c.reads} reads {c.lookups} lookups {c.transfers} transfers {c.torn} torn"
            for mode, c in self.counts.items()
        )
        print(f"[{time.monotonic() - began:5.1f} s] phase {self.mode:3}  {line}", flush=True)


def summary(counts: dict[str, Counts]) -> str:
    on, off = counts["on"].rates(), counts["off"].rates()
    rows = [
        "| figure | barrier on | barrier off | on / off |",
        "|---|---:|---:|---:|",
    ]
    for key, label in (
        ("single_reads_per_s", "hot account single reads/s"),
        ("lookups_per_s", "lookups spanning every shard/s"),
        ("transfers_per_s", "cross-shard transfers/s (hot account)"),
    ):
        ratio = on[key] / off[key] if off[key] else float("nan")
        rows.append(f"| {label} | {on[key]:,.0f} | {off[key]:,.0f} | {ratio:.2f} |")
    for key, label in (("refused", "lookups refused (503)"), ("torn", "torn views seen")):
        rows.append(f"| {label} | {getattr(counts['on'], key)} | {getattr(counts['off'], key)} | |")
    return "\n".join(rows)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog="Example: python bench/atomic_lookup.py --phase 10 --rounds 2",
    )
    parser.add_argument("--shards", type=int, default=4, help="shards (4; at least 2)")
    parser.add_argument("--partners", type=int, default=6, help="hot account's partners (6)")
    parser.add_argument("--phase", type=float, default=10.0, help="seconds per phase (10)")
    parser.add_argument("--rounds", type=int, default=2, help="on+off phase pairs (2)")
    parser.add_argument("--writers", type=int, default=8, help="concurrent transfer writers (8)")
    parser.add_argument("--lookers", type=int, default=8, help="concurrent group lookups (8)")
    parser.add_argument("--readers", type=int, default=4, help="concurrent single reads (4)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.shards < 2:
        parser.error("--shards must be at least 2: a lookup has to span shards")
    return args


def main() -> None:
    args = arguments()
    import ray  # after --help: importing Ray takes seconds

    from tokpay.actors.deploy import start_ledger
    from tokpay.actors.naming import NAMESPACE

    work = Path(tempfile.mkdtemp(prefix="atomic-"))
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        namespace=NAMESPACE,
        log_to_driver=False,
    )
    try:
        handles = start_ledger(work / "data", args.shards)
        bench = Bench(handles, args)
        bench.open_accounts(handles)
        asyncio.run(bench.run())
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print(summary(bench.counts))
    if args.json:
        figures = {mode: {**asdict(c), **c.rates()} for mode, c in bench.counts.items()}
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, **figures}))


if __name__ == "__main__":
    main()
