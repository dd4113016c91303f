"""Steady load on a running replicated cluster: no lease lost, no failover, nothing lost.

``bench/soak.py`` drives the single node, which has no leases. This bench drives a cluster
started with ``tokpay cluster up``: the drills' load (``tokpay.testing.drill.run_drill``,
with nothing killed) for ``--minutes``. Then it checks what the cluster itself says:

- the controller's failover and backup-rebuild counts, and every group's epoch, did not
  move (a false failover or a needless rebuild would move them);
- no replica logged a lease lapse (``lease lapsed``) during the run; heartbeat or lease
  threads that ran late (``ran ... late``) are counted and reported;
- the drill's own audit: nothing lost or applied twice, the sum of balances zero, no
  stale or non-linearizable read in the clients' history.

It exits 1 when any of these fails. Example::

    tokpay cluster up --netns --nodes 3 --shards 4 --port 19410 --data-dir /tmp/n13
    python bench/cluster_soak.py --data-dir /tmp/n13 --minutes 10 --json /tmp/soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from tokpay.cluster.local import LocalCluster
from tokpay.testing.drill import HistoryOptions, run_drill
from tokpay.testing.nemesis import cluster_status_subprocess, wait_cluster_healthy

LAPSE = "lease lapsed"
LATE = "ran "
LATE_TAIL = "late (CPU starved?)"


def log_counts(data_dir: Path) -> dict[str, int]:
    """Lease lapses and late threads logged so far by every Ray worker of the cluster."""
    counts = {"lease_lapses": 0, "late_threads": 0}
    # session_latest is a link to one of the session directories: each file once.
    paths = {p.resolve() for p in (data_dir / "ray").glob("*/session_*/logs/worker-*.err")}
    for path in sorted(paths):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        counts["lease_lapses"] += text.count(LAPSE)
        counts["late_threads"] += sum(
            1 for line in text.splitlines() if LATE in line and line.endswith(LATE_TAIL)
        )
    return counts


def config(status: dict[str, Any]) -> dict[str, Any]:
    return {
        "failovers": status["failovers"],
        "backup_rebuilds": status["backup_rebuilds"],
        "epochs": {g["group"]: g["epoch"] for g in status["groups"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="the running cluster's")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to load (10)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    data_dir = args.data_dir.resolve()
    cluster = LocalCluster.load(data_dir)
    url = f"http://127.0.0.1:{int(cluster.settings['port'])}"
    shards = int(cluster.settings["shards"])
    wait_cluster_healthy(data_dir)
    before, logs_before = config(cluster_status_subprocess(data_dir)), log_counts(data_dir)
    last = [0.0]

    def progress(phase: str, load: Any) -> None:
        now = time.monotonic()
        if now - last[0] >= 30:
            last[0] = now
            print(
                f"{time.strftime('%H:%M:%S')} {phase}: {len(load.acked):,} acknowledged", flush=True
            )

    seconds = args.minutes * 60
    report = asyncio.run(
        run_drill(
            url, shards, "soak", lambda: "nothing (a soak)", lambda: None,
            before_seconds=5.0, after_seconds=seconds, resume_wait=seconds + 60,
            progress=progress, history=HistoryOptions(),
        )
    )  # fmt: skip
    after, logs_after = config(cluster_status_subprocess(data_dir)), log_counts(data_dir)
    lapses = logs_after["lease_lapses"] - logs_before["lease_lapses"]
    late = logs_after["late_threads"] - logs_before["late_threads"]
    result = {
        "minutes": args.minutes,
        "acknowledged": report.acknowledged,
        "writes_per_s": report.rates["after"].writes if "after" in report.rates else None,
        "lost": report.lost,
        "doubled": report.doubled,
        "sum_of_balances": report.sum_of_balances,
        "stale_reads": report.history.stale_reads if report.history else None,
        "nonlinearizable_reads": report.history.nonlinearizable_reads if report.history else None,
        "longest_write_gap_s": report.write_outage_seconds,
        "failovers": after["failovers"] - before["failovers"],
        "backup_rebuilds": after["backup_rebuilds"] - before["backup_rebuilds"],
        "epochs_moved": sorted(
            g for g, e in after["epochs"].items() if before["epochs"].get(g) != e
        ),
        "lease_lapses": lapses,
        "late_threads": late,
        "drill_passed": report.ok,
    }
    ok = (
        report.ok
        and result["failovers"] == 0
        and result["backup_rebuilds"] == 0
        and not result["epochs_moved"]
        and lapses == 0
    )
    result["passed"] = ok
    print("\n| what | result |\n|---|---|")
    for key, value in result.items():
        print(f"| {key} | {value} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
