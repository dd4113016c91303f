"""How the time from `cluster up` to serving grows with the ledger's history (issue 11).

On a running `tokpay cluster up` (its --data-dir), in rounds: load more transfers through
the cluster's own shard channels (a child process joins the cluster's Ray as a driver,
batches of cross- and single-shard transfers), then cut the power (SIGKILL of every
process of the cluster in one sweep, as `tokpay drill --target all` does), start it again
with `tokpay cluster up` and time it until it serves; then audit the sum of balances
through the gateway. Prints one line per round and writes the table as JSON.

    python bench/restart_growth.py --data-dir /tmp/c --rounds 0,200000,800000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

LOADER = "loader"
LOAD_BATCH = 1000
LOAD_INFLIGHT = 8
ACCOUNTS = 2000


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="a running cluster's dir")
    parser.add_argument(
        "--rounds",
        default="0,200000,800000",
        help="transfers to add before each power cut, comma-separated (0: cut at once)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/restart-growth.json"))
    parser.add_argument(LOADER, nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


async def load(count: int) -> None:
    """In the child: join the cluster's Ray and commit ``count`` transfers, batched."""
    import logging

    import ray

    from tokpay.actors.naming import CONTROLLER_NAME, NAMESPACE
    from tokpay.client.ledger import LedgerClient
    from tokpay.ledger.model import (
        AccountSpec,
        Credit,
        TransferKind,
        TransferOrder,
        funding_account_id,
    )
    from tokpay.ledger.routing import shard_of

    ray.init(namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
    controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    shard_count = await controller.shard_count.remote()
    client = LedgerClient.for_cluster(shard_count)
    run = f"{time.time_ns():x}"
    users = [f"rg-{run}-{i}" for i in range(ACCOUNTS)]
    await asyncio.gather(
        *(client.create_account(AccountSpec(id=u, currency="USD", owner=u)) for u in users)
    )
    await asyncio.gather(
        *(
            client.submit(
                TransferOrder(
                    id=f"rg-{run}-top-{u}",
                    debit=funding_account_id("USD", shard_of(u, shard_count)),
                    credits=(Credit(u, 10**9),),
                    currency="USD",
                    kind=TransferKind.TOPUP,
                )
            )
            for u in users
        )
    )
    rng = random.Random(7)
    done = 0
    started = time.monotonic()
    next_line = started + 10
    semaphore = asyncio.Semaphore(LOAD_INFLIGHT)

    async def batch(first: int) -> None:
        nonlocal done, next_line
        async with semaphore:
            orders = []
            for n in range(first, min(first + LOAD_BATCH, count)):
                payer, payee = rng.sample(users, 2)
                orders.append(
                    TransferOrder(
                        id=f"rg-{run}-{n}",
                        debit=payer,
                        credits=(Credit(payee, 1),),
                        currency="USD",
                    )
                )
            outcomes = await asyncio.gather(*(client.submit(o) for o in orders))
            done += sum(1 for o in outcomes if o.transfer is not None)
            if time.monotonic() > next_line:
                next_line += 10
                rate = done / (time.monotonic() - started)
                print(f"  loaded {done:,}/{count:,} ({rate:,.0f}/s)", flush=True)

    await asyncio.gather(*(batch(first) for first in range(0, count, LOAD_BATCH)))
    print(f"  loaded {done:,} in {time.monotonic() - started:.0f} s", flush=True)


def run_loader(data_dir: Path, count: int) -> None:
    from tokpay.cluster.local import LocalCluster

    cluster = LocalCluster.load(data_dir)
    env = cluster.child_env({"RAY_ADDRESS": cluster.ray_address})
    subprocess.run(
        [sys.executable, __file__, "--data-dir", str(data_dir), LOADER, "--count", str(count)],
        env=env,
        check=True,
        timeout=3600,
    )


def sum_of_balances(port: int) -> int:
    deadline = time.monotonic() + 120
    while True:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/v1/ledger/summary", timeout=30)
            if response.status_code == 200:
                currencies = response.json()["currencies"].values()
                return sum(c["sum_of_balances"] for c in currencies)
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the ledger summary did not answer within 120 s")
        time.sleep(1)


def main() -> None:
    args = parse()
    if args.loader == LOADER:
        asyncio.run(load(args.count))
        return
    from tokpay.cluster.local import LocalCluster
    from tokpay.testing.powercut import bring_back, cut_power

    rows: list[dict[str, Any]] = []
    history = 0
    for add in (int(x) for x in args.rounds.split(",")):
        if add:
            print(f"round: loading {add:,} transfers", flush=True)
            run_loader(args.data_dir, add)
            history += add
        cluster = LocalCluster.load(args.data_dir)
        killed = cut_power(cluster)
        seconds = bring_back("up", args.data_dir)
        port = int(LocalCluster.load(args.data_dir).settings["port"])
        total = sum_of_balances(port)
        row = {"history": history, "killed": killed, "up_to_serving_s": round(seconds, 1)}
        row["sum_of_balances"] = total
        rows.append(row)
        print(
            f"history +{history:,}: {killed} processes cut; serving {seconds:.1f} s after "
            f"`cluster up`; sum of balances {total}",
            flush=True,
        )
        if total != 0:
            raise SystemExit("sum of balances is not zero")
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
