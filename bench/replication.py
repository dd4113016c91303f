"""Replication cost: the single-copy server and a 3-node replicated cluster, same run.

1. ``tokpay serve`` (one copy, fsync on): ceiling ``GET /livez``, single balance reads,
   transfers (1 -> 1..3 legs, ~30% cross-shard), each with wrk.
2. ``tokpay cluster up --nodes 3`` (every shard and the coordinator a primary and a
   backup on different nodes, both fsync every batch): the same three runs.

Prints both and the ratios replicated/single (the brief's target: transfers >= 5K/s
and >= 0.7x the single-copy figure). These machines are shared and noisy: compare the
ratios from one run, not lone numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress
from run_all import (  # bench/ is on sys.path when run as a script
    lua_reads,
    lua_transfers,
    wrk,
    wrk_arguments,
)

from tokpay.cluster.ports import free_port
from tokpay.ledger.routing import shard_of
from tokpay.testing.localserver import LocalServer

console = Console(stderr=True)
SEED_CONCURRENCY = 32


async def seed(url: str, per_shard: int, shards: int) -> dict[int, list[str]]:
    """Open and fund accounts through the HTTP API (the same way for both setups)."""
    by_shard: dict[int, list[str]] = {s: [] for s in range(shards)}
    n = 0
    while min(len(v) for v in by_shard.values()) < per_shard:
        account = f"r{n}"
        n += 1
        if len(by_shard[shard_of(account, shards)]) < per_shard:
            by_shard[shard_of(account, shards)].append(account)
    names = [a for accounts in by_shard.values() for a in accounts]
    gate = asyncio.Semaphore(SEED_CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def one(account: str) -> None:
            async with gate:
                body = {"id": account, "currency": "USD", "owner": f"{account}@bench.example"}
                response = await http.post("/v1/accounts", json=body)
                response.raise_for_status()
                topup = {"id": f"seed-{account}", "account": account, "amount": 10**11}
                response = await http.post("/v1/topups", json=topup | {"currency": "USD"})
                response.raise_for_status()

        await asyncio.gather(*(one(a) for a in names))
    return by_shard


def measure(
    url: str, by_shard: dict[int, list[str]], connections: int, seconds: int
) -> dict[str, Any]:
    names = [a for accounts in by_shard.values() for a in accounts]
    out = {
        "ceiling": wrk(url, "/livez", None, connections, seconds),
        "reads": wrk(url, "/", lua_reads(names), connections, seconds),
        "transfers": wrk(url, "/", lua_transfers(by_shard, 0.3, None), connections, seconds),
    }
    summary = httpx.get(f"{url}/v1/ledger/summary", timeout=30).json()
    out["sum_of_balances"] = {c: v["sum_of_balances"] for c, v in summary["currencies"].items()}
    return out


def tokpay(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tokpay.cli", *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.exit(f"tokpay {' '.join(args)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def main() -> None:
    args = wrk_arguments(__doc__, accounts_per_shard=500, nodes={"type": int, "default": 3})
    work = Path(tempfile.mkdtemp(prefix="tokpay-bench-repl-"))
    results: dict[str, Any] = {}
    c, s = args.connections, args.seconds
    with Progress(console=console) as progress:
        task = progress.add_task("single copy: starting", total=6)
        server = LocalServer(work / "single", shards=args.shards, workers=args.workers)
        server.start()
        progress.advance(task)
        try:
            progress.update(task, description="single copy: seeding")
            by_shard = asyncio.run(seed(server.url, args.accounts_per_shard, args.shards))
            progress.advance(task)
            progress.update(task, description="single copy: ceiling, reads, transfers")
            results["single"] = measure(server.url, by_shard, c, s)
            progress.advance(task)
        finally:
            server.stop()
        data_dir = work / "cluster"
        port = free_port()
        progress.update(task, description=f"replicated: cluster up ({args.nodes} nodes)")
        tokpay(
            "cluster", "up", "--nodes", str(args.nodes), "--port", str(port),
            "--data-dir", str(data_dir), "--shards", str(args.shards),
            "--workers", str(args.workers),
        )  # fmt: skip
        progress.advance(task)
        try:
            url = f"http://127.0.0.1:{port}"
            progress.update(task, description="replicated: seeding")
            by_shard = asyncio.run(seed(url, args.accounts_per_shard, args.shards))
            progress.advance(task)
            progress.update(task, description="replicated: ceiling, reads, transfers")
            results["replicated"] = measure(url, by_shard, c, s)
            progress.advance(task)
        finally:
            tokpay("cluster", "down", "--data-dir", str(data_dir))
            shutil.rmtree(work, ignore_errors=True)
    print_table(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def print_table(r: dict[str, Any], args: argparse.Namespace) -> None:
    single, repl = r["single"], r["replicated"]
    print(
        f"shards {args.shards}, gateway workers {args.workers}, wrk -c{args.connections} "
        f"-d{args.seconds}s; replicated = {args.nodes} nodes, primary + backup per shard\n"
    )
    print(
        "| scenario | single copy /s | replicated /s | replicated / single | p99 single / repl. (ms) |"
    )
    print("|---|---|---|---|---|")
    for key, label in (
        ("ceiling", "ceiling GET /livez"),
        ("reads", "single balance reads"),
        ("transfers", "transfers, ~30% cross-shard"),
    ):
        a, b = single[key], repl[key]
        print(
            f"| {label} | {a['rate']:,.0f} | {b['rate']:,.0f} | {b['rate'] / a['rate']:.2f}x "
            f"| {a['p99_ms']:.1f} / {b['p99_ms']:.1f} |"
        )
    errors = {k: (single[k]["non_2xx"], repl[k]["non_2xx"]) for k in ("reads", "transfers")}
    print(f"\nnon-2xx (single, replicated): {errors}")
    print(
        f"sum of balances: single {single['sum_of_balances']}, replicated {repl['sum_of_balances']}"
    )


if __name__ == "__main__":
    main()
