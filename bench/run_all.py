"""Peak-load benchmark of one ``tokpay serve`` on this machine, with a same-run ceiling.

Starts the single-node server through the CLI on a fresh data directory, opens
accounts through the Ray client, then drives the gateway with wrk (C, so the
load generator costs little of the 2 cores it shares with the server):

- ceiling: ``GET /livez``, the same server answering without any ledger work;
- single balance reads: ``GET /v1/accounts/{id}/balance`` on random accounts;
- batched reads: ``POST /v1/balances/lookup`` with 1,000 ids per request, and
  the Ray client reading 100,000 balances in per-shard batches;
- transfers: 1 -> 1..3 legs, ~30% cross-shard, fsync on;
- hot account: the same but every transfer debits one account;
- latency at about half of peak: the same transfers, each connection paced so
  that together they offer half the peak rate just measured.

Prints a Markdown table; ``--json`` also writes the raw figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress

from tokpay.testing.localserver import LocalServer

HERE = Path(__file__).resolve().parent
console = Console(stderr=True)


def open_accounts(
    address: str, per_shard: int, shards: int, hot_balance: int
) -> dict[int, list[str]]:
    from tokpay.client import connect
    from tokpay.ledger.model import (
        AccountSpec,
        Credit,
        TransferKind,
        TransferOrder,
        funding_account_id,
    )
    from tokpay.ledger.routing import shard_of

    ledger = connect(address)
    by_shard: dict[int, list[str]] = {s: [] for s in range(shards)}
    n = 0
    while min(len(v) for v in by_shard.values()) < per_shard:
        account = f"b{n}"
        n += 1
        shard = shard_of(account, shards)
        if len(by_shard[shard]) < per_shard:
            by_shard[shard].append(account)
    names = [a for accounts in by_shard.values() for a in accounts]
    specs = [AccountSpec(id=a, currency="USD", owner=f"{a}@bench.example") for a in names]
    ledger.create_accounts(specs)
    topups = [
        TransferOrder(
            id=f"seed-{a}",
            debit=funding_account_id("USD", shard_of(a, shards)),
            credits=(Credit(a, hot_balance),),
            currency="USD",
            kind=TransferKind.TOPUP,
        )
        for a in names
    ]
    outcomes = ledger.submit_many(topups)
    refused = [o for o in outcomes if o.transfer is None]
    if refused:
        raise RuntimeError(f"seeding refused: {refused[:3]}")
    return by_shard


def ray_client_reads(address: str, names: list[str], total: int) -> float:
    from tokpay.client import connect

    ledger = connect(address)
    ids = [random.choice(names) for _ in range(total)]
    ledger.balances(ids[:1000])
    started = time.perf_counter()
    views = ledger.balances(ids)
    elapsed = time.perf_counter() - started
    if any(v is None for v in views):
        raise RuntimeError("a seeded account was not found")
    return total / elapsed


def lua_transfers(
    by_shard: dict[int, list[str]], cross_ratio: float, hot: str | None, delay_ms: int = 0
) -> str:
    shards_lua = ",".join(
        "{" + ",".join(f'"{a}"' for a in accounts) + "}" for accounts in by_shard.values()
    )
    hot_lua = f'"{hot}"' if hot else "nil"
    run = uuid.uuid4().hex[:6]
    return f"""
local shards = {{{shards_lua}}}
local nshards = #shards
local hot = {hot_lua}
local cross = {cross_ratio}
local counter = 0
-- tid stays a global: setup() sets it in each thread after this chunk ran (a local here
-- would shadow it, every thread would be 0, and two threads would send the same ids).
tid = tid or 0
local threads = {{}}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  math.randomseed(os.time() + tid * 7919)
end
local function pick(list) return list[math.random(#list)] end
function delay() return {delay_ms} end
request = function()
  counter = counter + 1
  local home = math.random(nshards)
  local from = hot or pick(shards[home])
  local legs = math.random(3)
  local spread = math.random() < cross
  local parts = {{}}
  local used = {{[from] = true}}
  for i = 1, legs do
    local s = home
    if spread and i == 1 then s = (home % nshards) + 1 end
    local to = pick(shards[s])
    if not used[to] then
      used[to] = true
      table.insert(parts, string.format('{{"account":"%s","amount":%d}}', to, math.random(1, 100)))
    end
  end
  if #parts == 0 then
    local to = pick(shards[(home % nshards) + 1])
    table.insert(parts, string.format('{{"account":"%s","amount":1}}', to))
  end
  local body = string.format('{{"id":"{run}-%d-%d","from":"%s","to":[%s],"currency":"USD"}}',
    tid, counter, from, table.concat(parts, ","))
  return wrk.format("POST", "/v1/transfers", {{["Content-Type"] = "application/json"}}, body)
end
"""


def lua_reads(names: list[str]) -> str:
    return f"""
local names = {{{",".join(f'"{a}"' for a in names)}}}
request = function()
  return wrk.format("GET", "/v1/accounts/" .. names[math.random(#names)] .. "/balance")
end
"""


def lua_lookup(names: list[str]) -> str:
    body = json.dumps({"account_ids": [random.choice(names) for _ in range(1000)]})
    return f"""
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
"""


def wrk(url: str, path: str, script: str | None, connections: int, seconds: int) -> dict[str, Any]:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script is not None:
        script_file = Path(tempfile.mkstemp(suffix=".lua")[1])
        script_file.write_text(script)
        command += ["-s", str(script_file)]
    output = subprocess.run(
        [*command, url + path], capture_output=True, text=True, check=True
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)

    def latency(p: str) -> float:
        found = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", output)
        if found is None:
            return float("nan")
        value, unit = float(found.group(1)), found.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {
        "rate": rate,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "connections": connections,
    }


def wrk_arguments(
    description: str | None, accounts_per_shard: int, **more: dict[str, Any]
) -> argparse.Namespace:
    """The options every wrk benchmark here takes, plus ``more`` (name -> add_argument
    keywords); exits if wrk is not installed."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="gateway processes")
    parser.add_argument("--accounts-per-shard", type=int, default=accounts_per_shard)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    for name, keywords in more.items():
        parser.add_argument(f"--{name}", **keywords)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: run `make setup` (installs it from Debian)")
    return args


def main() -> None:
    args = wrk_arguments(__doc__, accounts_per_shard=1000)

    # The server's Ray cluster uses token authentication; a driver given an explicit
    # address presents the token only if told so before Ray is imported.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    work = Path(tempfile.mkdtemp(prefix="tokpay-bench-"))
    results: dict[str, dict[str, Any]] = {}
    steps = ["start", "seed", "ceiling", "reads", "lookup", "ray reads", "transfers", "hot", "half"]
    with Progress(console=console) as progress:
        task = progress.add_task("benchmark", total=len(steps))

        def step(name: str) -> None:
            progress.update(task, description=name)

        step("starting server")
        server = LocalServer(work / "data", shards=args.shards, workers=args.workers)
        server.start()
        progress.advance(task)
        try:
            step("seeding accounts")
            address = (work / "data" / "run" / "ray-address").read_text()
            by_shard = open_accounts(address, args.accounts_per_shard, args.shards, 10**11)
            names = [a for accounts in by_shard.values() for a in accounts]
            progress.advance(task)
            c, s = args.connections, args.seconds
            step("ceiling: GET /livez")
            results["ceiling"] = wrk(server.url, "/livez", None, c, s)
            progress.advance(task)
            step("single balance reads")
            results["reads"] = wrk(server.url, "/", lua_reads(names), c, s)
            progress.advance(task)
            step("batched lookups (1,000 ids)")
            results["lookup"] = wrk(server.url, "/v1/balances/lookup", lua_lookup(names), 8, s)
            results["lookup"]["balances_per_s"] = results["lookup"]["rate"] * 1000
            progress.advance(task)
            step("Ray client batched reads")
            results["ray_reads"] = {"rate": ray_client_reads(address, names, 200_000)}
            progress.advance(task)
            step("transfers, uniform")
            results["transfers"] = wrk(server.url, "/", lua_transfers(by_shard, 0.3, None), c, s)
            progress.advance(task)
            step("transfers, hot account")
            results["hot"] = wrk(server.url, "/", lua_transfers(by_shard, 0.3, names[0]), c, s)
            progress.advance(task)
            step("transfers, ~half load latency")
            # Open loop by pacing: each connection waits so that all together offer
            # about half of the peak rate just measured.
            pace_ms = int(c * 1000 / (results["transfers"]["rate"] / 2))
            half_script = lua_transfers(by_shard, 0.3, None, delay_ms=pace_ms)
            results["half"] = wrk(server.url, "/", half_script, c, s)
            progress.advance(task)
            summary = httpx.get(f"{server.url}/v1/ledger/summary", timeout=30).json()
            results["sum_of_balances"] = summary["currencies"]
        finally:
            server.stop()
            shutil.rmtree(work, ignore_errors=True)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def print_table(r: dict[str, Any]) -> None:
    ceiling = r["ceiling"]["rate"]
    rows = [
        ("ceiling: GET /livez (no ledger work)", r["ceiling"], "—"),
        ("single balance reads/s", r["reads"], f"{r['reads']['rate'] / ceiling:.2f}x ceiling"),
        (
            "batched: lookups/s x 1,000 ids",
            r["lookup"],
            f"{r['lookup']['balances_per_s']:,.0f} balances/s",
        ),
        ("transfers/s, 1→1..3 legs, ~30% cross-shard", r["transfers"], "fsync on"),
        (
            "transfers/s, hot account",
            r["hot"],
            f"{r['hot']['rate'] / r['transfers']['rate']:.2f}x uniform",
        ),
        (
            "transfers paced to about half of peak",
            r["half"],
            f"{r['half']['rate'] / r['transfers']['rate']:.2f}x peak",
        ),
    ]
    print("| scenario | rate | p50 ms | p99 ms | non-2xx | note |")
    print("|---|---:|---:|---:|---:|---|")
    for name, figures, note in rows:
        print(
            f"| {name} | {figures['rate']:,.0f} | {figures.get('p50_ms', float('nan')):.2f} | "
            f"{figures.get('p99_ms', float('nan')):.2f} | {figures.get('non_2xx', 0)} | {note} |"
        )
    print(
        f"| Ray client batched reads, balances/s | {r['ray_reads']['rate']:,.0f} | | | | 200,000 ids |"
    )
    print(f"\nsum of balances after the run: {r['sum_of_balances']}")


if __name__ == "__main__":
    main()
