"""``tokpay drill``: failover drills on a running ``tokpay cluster up``, with live
progress and the reports (the drill itself is tokpay.testing.drill)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live

from tokpay.cli.cluster import DEFAULT_DATA_DIR, DataDir
from tokpay.cluster.errors import ClusterError
from tokpay.cluster.local import LocalCluster
from tokpay.testing.drill import HistoryOptions, drill_cluster
from tokpay.testing.history import HISTORY_CAP_BYTES, HistoryFull
from tokpay.testing.nemesis import HEAD_RESTART_DELAY_SECONDS, TARGETS, wait_cluster_healthy
from tokpay.testing.partition import PARTITION_TARGETS, require_netns
from tokpay.testing.powercut import RESTART_TARGETS
from tokpay.testing.report import DrillReport, print_report, print_summary
from tokpay.testing.workload import DrillLoad

console = Console()
LIVE_REFRESH_PER_SECOND = 4


def drill(
    target: Annotated[
        str,
        typer.Option(
            help=f"What to SIGKILL: {', '.join(TARGETS)} or random; or, with `cluster up` "
            f"after: {', '.join(RESTART_TARGETS)}; or, on a `cluster up --netns`, a network "
            f"fault: {', '.join(PARTITION_TARGETS)}."
        ),
    ] = "primary",
    repeat: Annotated[
        int, typer.Option(help="Drills to run, each on a random target if --target random.")
    ] = 1,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    before: Annotated[float, typer.Option(help="Seconds of load before the kill.")] = 5.0,
    after: Annotated[float, typer.Option(help="Seconds of load after the kill.")] = 10.0,
    down: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Seconds a killed head stays down before it is started again (the load "
            "goes on meanwhile, and for at least this long).",
        ),
    ] = HEAD_RESTART_DELAY_SECONDS,
    report_json: Annotated[
        Path | None, typer.Option(help="Also write every drill's report here (JSON).")
    ] = None,
    history_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where each drill writes its clients' history (JSON lines); "
            "default: DATA_DIR/drill-history."
        ),
    ] = None,
    keep_history: Annotated[
        bool, typer.Option(help="Keep the history of a drill that passed too.")
    ] = False,
    history_cap_mb: Annotated[
        int,
        typer.Option(
            min=1, help="A history file larger than this fails the drill (never grows unseen)."
        ),
    ] = HISTORY_CAP_BYTES // 2**20,
) -> None:
    """Failover drill on a running `tokpay cluster up`: load, SIGKILL a target,
    audit.

    Runs transfers and balance reads through the gateway, kills the target (a
    shard primary's node, a backup's node, the coordinator's node, the
    gateway, or the head node), keeps the load going, restarts what was killed
    (the head and the gateway at once, as a supervisor would; other nodes
    after the load), then reports acknowledged transfers, lost (must be 0),
    applied twice (must be 0), the sum of balances (must be 0), reads that
    went backwards (must be 0), how long until writes succeeded again, and
    reads/writes per second before, during and after. Exits non-zero on any
    violation.

    Every operation the clients invoke (each transfer attempt, each balance
    read, with its times and what came back) goes to a history file, and a
    checker reads it against each account's order in the ledger: every
    acknowledged transfer held once, every unknown outcome resolved (by a
    retry or by looking the id up), no stale read (one that misses a transfer
    acknowledged before it began) and no non-linearizable read (a value no
    prefix of the account's history gives, or one going back before an
    earlier read). The history of a failed drill is kept and its path
    printed; a passing drill's is deleted unless --keep-history.

    Restart drills bring the cluster back with `cluster up` at once, while the
    load keeps retrying: `all` SIGKILLs every process of the cluster in one
    sweep (Redis and the gateway included: a power cut); `pair` both nodes of
    one group (back after 5 s); `state` cuts the power and wipes Redis's data,
    checks that `cluster up` refuses, then runs `cluster recover`;
    `head-lost` SIGKILLs the head and Redis and deletes their disks (the head
    machine is gone for good), lets the other nodes serve alone for 10 s, then
    replaces it: `cluster down`, and `cluster recover` starts a new head on an
    empty disk and rebuilds the map from the other nodes' disks. Their report
    adds the time from `cluster up` (or `recover`) to serving.

    Network drills (a `cluster up --netns` only) cut the node holding a shard
    primary off for 5 s, several leases, under the same load, then heal it:
    `partition` both ways (its cable down), `partition-oneway` inbound only
    (nftables in its namespace: it sends but hears nothing), `slow-link` delay
    and 5% loss on one shard's primary<->backup path (tc netem 200 ms; on a
    kernel without netem, 512 kbit/s with a 200 ms queue and nftables drops).
    The same audit follows; backwards reads are stale reads.
    """
    if target not in (*TARGETS, *RESTART_TARGETS, *PARTITION_TARGETS, "random"):
        choices = ", ".join((*TARGETS, *RESTART_TARGETS, *PARTITION_TARGETS))
        console.print(f"[red]--target must be one of {choices}, random[/red]")
        raise typer.Exit(2)
    data_dir = data_dir.resolve()
    history = HistoryOptions(
        (history_dir or data_dir / "drill-history").resolve(),
        history_cap_mb * 2**20,
        keep_history,
    )
    if target in PARTITION_TARGETS:
        try:
            require_netns(LocalCluster.load(data_dir))
        except ClusterError as error:
            console.print(f"[red]{error}[/red]")
            raise typer.Exit(2) from None
    reports = []
    for run in range(1, repeat + 1):
        # Read again each time: a restart drill's `cluster up` records new sessions.
        cluster = LocalCluster.load(data_dir)
        chosen = random.choice(TARGETS) if target == "random" else target
        what = chosen if chosen in PARTITION_TARGETS else f"kill the {chosen}"
        console.rule(f"Drill {run}/{repeat}: {what}")
        try:
            report = _drill_with_progress(cluster, chosen, before, after, history, down)
        except HistoryFull as full:
            console.print(f"[red]Drill stopped: {full} (raise --history-cap-mb)[/red]")
            raise typer.Exit(1) from full
        except ClusterError as error:
            console.print(f"[red]{error}[/red]")
            raise typer.Exit(2) from None
        reports.append(report)
        print_report(console, report)
        if report_json is not None:  # after every drill: a long series stopped early keeps its part
            report_json.write_text(json.dumps([r.as_dict() for r in reports], indent=2))
    print_summary(console, reports)
    wait_cluster_healthy(data_dir)
    if not all(r.ok for r in reports):
        raise typer.Exit(1)


def _drill_with_progress(
    cluster: LocalCluster,
    target: str,
    before: float,
    after: float,
    history: HistoryOptions,
    head_down: float,
) -> DrillReport:
    started = time.monotonic()
    with Live(console=console, refresh_per_second=LIVE_REFRESH_PER_SECOND) as live:

        def show(phase: str, load: DrillLoad) -> None:
            errors = sum(load.errors.values())
            live.update(
                f"[bold]{phase}[/bold]  t={time.monotonic() - started:5.1f}s  "
                f"acknowledged={len(load.acked)}  reads={len(load.reads)}  "
                f"retried errors={errors}  backwards reads={load.backwards}"
            )

        return drill_cluster(
            cluster,
            target,
            before_seconds=before,
            after_seconds=after,
            progress=show,
            history=history,
            head_down=head_down,
        )
