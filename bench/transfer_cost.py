"""Where a transfer's CPU goes: the transfers step of ``bench/run_all.py``, with each
process's CPU time per transfer.

Starts ``tokpay serve`` (single node, fsync on), opens accounts, drives
``POST /v1/transfers`` (1 -> 1..3 legs, ~30% cross-shard) with wrk, and reads the
CPU time (user + system, through psutil) every process of the server's session
spent meanwhile, grouped as shards, coordinator, gateway (the ``tokpay serve``
process and its granian workers) and Ray's own processes, plus wrk's (from
``getrusage``). ``/metrics`` gives the shard batches and the gateway's batches per
transfer. The machine is
CPU-bound under this load, so the rate is about the CPU left over divided by the
CPU one transfer costs: the per-process figures say where a change must cut.

To weigh an older commit, copy this file and ``bench/run_all.py`` into a checkout of
it and run it there with ``PYTHONPATH`` set to that checkout, alternating with this
one (the figures are per transfer, so a noisy machine moves them less than rates).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families
from run_all import lua_transfers, open_accounts, wrk, wrk_arguments

from tokpay.cluster.sessions import session_pids
from tokpay.testing.localserver import LocalServer

KINDS = ("shards", "coordinator", "gateway", "ray", "wrk")


def kind_of(command: str) -> str:
    if "ShardActor" in command:
        return "shards"
    if "CoordinatorActor" in command:
        return "coordinator"
    if "raylet" in command or "gcs_server" in command or "/ray/" in command:
        return "ray"
    return "gateway"


def cpu_by_process(session: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of every process in ``session``, by kind."""
    found: dict[int, tuple[str, float]] = {}
    for pid in session_pids(session):
        try:
            process = psutil.Process(pid)
            times = process.cpu_times()
            found[pid] = (kind_of(" ".join(process.cmdline())), times.user + times.system)
        except psutil.Error:
            continue  # ended meanwhile
    return found


def sample_sums(page: str) -> dict[str, float]:
    """Every sample of a /metrics page, summed over its labels, by sample name."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def main() -> None:
    args = wrk_arguments(__doc__, accounts_per_shard=1000)
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    work = Path(tempfile.mkdtemp(prefix="tokpay-cost-"))
    server = LocalServer(work / "data", shards=args.shards, workers=args.workers)
    server.start()
    assert server.process is not None
    try:
        address = (work / "data" / "run" / "ray-address").read_text()
        by_shard = open_accounts(address, args.accounts_per_shard, args.shards, 10**11)
        before_metrics = sample_sums(httpx.get(f"{server.url}/metrics", timeout=30).text)
        before = cpu_by_process(server.process.pid)
        started = time.monotonic()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        run = wrk(
            server.url, "/", lua_transfers(by_shard, 0.3, None), args.connections, args.seconds
        )
        elapsed = time.monotonic() - started
        # wrk is the only child reaped meanwhile (the server is reaped when it stops).
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        wrk_cpu = reaped.ru_utime + reaped.ru_stime - children.ru_utime - children.ru_stime
        after = cpu_by_process(server.process.pid)
        after_metrics = sample_sums(httpx.get(f"{server.url}/metrics", timeout=30).text)
        summary = httpx.get(f"{server.url}/v1/ledger/summary", timeout=30).json()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    transfers = run["rate"] * args.seconds
    spent = dict.fromkeys(KINDS, 0.0)
    spent["wrk"] = wrk_cpu
    for pid, (kind, cpu) in after.items():
        spent[kind] += cpu - before.get(pid, (kind, 0.0))[1]
    result: dict[str, Any] = {
        "rate": run["rate"],
        "p99_ms": run["p99_ms"],
        "non_2xx": run["non_2xx"],
        "cpu_ms_per_transfer": {k: round(v / transfers * 1000, 3) for k, v in spent.items()},
        "cores_busy": round(sum(spent.values()) / elapsed, 2),
        "cores": os.cpu_count(),
        "sum_of_balances": summary["currencies"],
    }
    for name, key in (
        ("tokpay_shard_batches_total", "shard_batches_per_transfer"),
        ("tokpay_gateway_batch_items_count", "gateway_batches_per_transfer"),
        ("tokpay_gateway_batch_items_sum", "gateway_items_per_transfer"),
    ):
        grown = after_metrics.get(name, 0.0) - before_metrics.get(name, 0.0)
        result[key] = round(grown / transfers, 3)
    cost = result["cpu_ms_per_transfer"]
    print(
        f"{run['rate']:,.0f} transfers/s, {result['cores_busy']} cores busy; CPU ms per "
        + "transfer: "
        + ", ".join(f"{k} {cost[k]}" for k in KINDS)
        + f"; shard batches per transfer {result['shard_batches_per_transfer']}, gateway "
        f"batches {result['gateway_batches_per_transfer']} carrying "
        f"{result['gateway_items_per_transfer']} items; non-2xx {run['non_2xx']}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    unbalanced = {c: v for c, v in summary["currencies"].items() if v["sum_of_balances"] != 0}
    if unbalanced:
        sys.exit(f"the balances do not sum to zero after the run: {unbalanced}")


if __name__ == "__main__":
    main()
