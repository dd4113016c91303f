"""``tokpay cluster up|status|down`` and ``tokpay drill``: a local multi-node cluster.

Each Ray node runs in its own process session with its own data directory, standing
for a separate machine (``cluster/*.sh`` are the per-machine scripts; see
cluster/README.md for real machines). TokPay on top: a controller (detached), every
shard and the coordinator as a primary and a backup on different nodes, and the HTTP
gateway in a session of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from tokpay.localcluster import LocalCluster
from tokpay.localserver import wait_healthy

console = Console()
cluster_app = typer.Typer(
    help="A local multi-node TokPay cluster: every node its own process session and disk.",
    no_args_is_help=True,
)

DEFAULT_DATA_DIR = Path("var/cluster")
GATEWAY_SERVICE = "gateway"
READY_TIMEOUT_SECONDS = 300.0
HEALTHY_TIMEOUT_SECONDS = 180.0
TARGETS = ("primary", "backup", "coordinator", "gateway", "head")

DataDir = Annotated[Path, typer.Option(help="The cluster's directory (state, node disks, logs).")]


def _attach(cluster: LocalCluster) -> Any:
    """Join the cluster as a Ray driver; returns the ray module."""
    os.environ.update(cluster.driver_env())
    import ray

    from tokpay.actors.naming import NAMESPACE

    if not ray.is_initialized():
        ray.init(
            address=cluster.ray_address,
            namespace=NAMESPACE,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    return ray


def gateway_command(port: int, workers: int) -> list[str]:
    return [
        sys.executable, "-m", "tokpay.cli", "gateway",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip


def gateway_env(cluster: LocalCluster) -> dict[str, str]:
    metrics = cluster.data_dir / "gateway-metrics"
    metrics.mkdir(parents=True, exist_ok=True)
    for stale in metrics.glob("*.db"):
        stale.unlink()
    return cluster.driver_env() | {
        "TOKPAY_RAY_ADDRESS": cluster.ray_address,
        "TOKPAY_DATA_DIR": str(cluster.data_dir / "gateway"),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
    }


def start_gateway(cluster: LocalCluster) -> None:
    port = int(cluster.settings["port"])
    workers = int(cluster.settings["workers"])
    cluster.spawn_service(GATEWAY_SERVICE, gateway_command(port, workers), gateway_env(cluster))
    wait_healthy_gateway(f"http://127.0.0.1:{port}")


def wait_healthy_gateway(url: str, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    if not wait_healthy(url, timeout):
        raise RuntimeError(f"the gateway at {url} is not healthy after {timeout:.0f} s")


def deploy(address: str, nodes: list[str], shards: int, fsync: bool) -> Any:
    """Start (or find) the controller and wait until every group has a primary and a backup.

    ``nodes[0]`` is the head: the controller lives there (with the GCS it keeps its
    state in, so it comes back with the head).
    """
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    from tokpay.actors.controller import Controller
    from tokpay.actors.naming import CONTROLLER_NAME, NAMESPACE, node_resource

    if not ray.is_initialized():
        ray.init(
            address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING
        )
    controller = Controller.options(  # type: ignore[attr-defined]
        name=CONTROLLER_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        resources={node_resource(nodes[0]): 1},
    ).remote(shards, nodes, fsync)
    return ray.get(controller.bootstrap.remote(), timeout=READY_TIMEOUT_SECONDS)


@cluster_app.command("deploy")
def deploy_command(
    address: Annotated[str, typer.Option(help="The head's GCS address, host:port.")],
    nodes: Annotated[
        str, typer.Option(help="Node names, head first, comma-separated (e.g. n0,n1,n2).")
    ],
    shards: Annotated[int, typer.Option(help="Shards (each a primary and a backup).")] = 4,
    fsync: Annotated[bool, typer.Option(help="fsync every log batch on both copies.")] = True,
) -> None:
    """On real machines: create TokPay on nodes started with cluster/head.sh and
    worker.sh.

    Starts the controller (detached, on the head), which places every shard's
    and the coordinator's primary and backup on different nodes and waits
    until all are in sync. Safe to run again: it finds the running controller.
    Then run `TOKPAY_RAY_ADDRESS=ADDRESS tokpay gateway` on each gateway
    machine.
    """
    names = [n.strip() for n in nodes.split(",") if n.strip()]
    if len(names) < 2:
        console.print("[red]replication needs at least 2 nodes[/red]")
        raise typer.Exit(2)
    deploy(address, names, shards, fsync)
    console.print(f"TokPay deployed on {', '.join(names)}: {shards} shards, replication factor 2")


@cluster_app.command("up")
def up(
    nodes: Annotated[int, typer.Option(help="Ray nodes (a head and workers), at least 2.")] = 3,
    port: Annotated[int, typer.Option(help="Port of the HTTP gateway.")] = 8000,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    shards: Annotated[int, typer.Option(help="Shards (each a primary and a backup).")] = 4,
    workers: Annotated[int, typer.Option(help="Gateway processes.")] = 2,
    fsync: Annotated[bool, typer.Option(help="fsync every log batch on both copies.")] = True,
) -> None:
    """Start Redis (GCS fault tolerance), the Ray nodes, TokPay and its gateway.

    Every node is a separate process session with its own disk under
    DATA_DIR/nodes; the head keeps Ray's cluster state in Redis (fsync on
    every write), so killing and restarting the head loses nothing.
    Replication factor 2: a shard's primary and backup are always on different
    nodes.
    """
    if nodes < 2:
        console.print("[red]replication needs at least 2 nodes[/red]")
        raise typer.Exit(2)
    data_dir = data_dir.resolve()
    if (data_dir / "cluster.json").exists():
        console.print(
            f"[red]{data_dir} already holds a cluster; `tokpay cluster down --data-dir "
            f"{data_dir}` first (a new cluster needs a new directory).[/red]"
        )
        raise typer.Exit(2)
    cluster = LocalCluster(data_dir, nodes=nodes)
    cluster.settings.update({"port": port, "workers": workers, "shards": shards})
    started = time.monotonic()
    with console.status(f"Starting Redis and {nodes} Ray nodes ..."):
        cluster.up()
    try:
        with console.status(f"Creating the controller, {shards} shards and the coordinator ..."):
            os.environ.update(cluster.driver_env())
            deploy(cluster.ray_address, cluster.node_names, shards, fsync)
        with console.status("Starting the gateway ..."):
            start_gateway(cluster)
    except Exception:
        console.print_exception()
        console.print("[red]start-up failed; stopping what was started[/red]")
        cluster.down()
        raise typer.Exit(1) from None
    console.print(f"Cluster up in {time.monotonic() - started:.1f} s")
    _print_status(_status(cluster))
    console.print(f"Gateway: http://127.0.0.1:{port}  (docs at /docs)")


def _status(cluster: LocalCluster) -> dict[str, Any]:
    ray = _attach(cluster)
    from tokpay.actors.naming import CONTROLLER_NAME, NAMESPACE

    controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    status = ray.get(controller.status.remote(), timeout=30)
    nodes = []
    for name in cluster.node_names:
        node = cluster.nodes[name]
        nodes.append(
            {
                "node_id": name,
                "pid": node["pid"],
                "role": node["role"],
                "alive": bool(status.nodes.get(name)) and cluster.node_running(name),
                "primaries": [
                    g.group for g in status.groups if g.primary and g.primary.node == name
                ],
                "backups": [g.group for g in status.groups if g.backup and g.backup.node == name],
            }
        )
    groups = [
        {
            "group": g.group,
            "epoch": g.epoch,
            "primary": g.primary and {"name": g.primary.name, "node": g.primary.node,
                                       "alive": g.primary.alive, "sequence": g.primary.sequence},
            "backup": g.backup and {"name": g.backup.name, "node": g.backup.node,
                                     "alive": g.backup.alive, "sequence": g.backup.sequence},
            "backup_in_sync": g.backup_ready,
            "replication_lag": g.lag,
        }
        for g in status.groups
    ]  # fmt: skip
    services = {
        name: {"pid": pid, "alive": cluster.service_alive(name)}
        for name, pid in cluster.services.items()
    }
    return {
        "nodes": nodes,
        "groups": groups,
        "services": services,
        "failovers": status.failovers,
        "backup_rebuilds": status.rebuilds,
        "gcs_address": cluster.ray_address,
    }


def _print_status(status: dict[str, Any]) -> None:
    nodes = Table(title="Nodes")
    for column in ("node", "pid", "role", "alive", "primaries", "backups"):
        nodes.add_column(column)
    for node in status["nodes"]:
        nodes.add_row(
            node["node_id"],
            str(node["pid"]),
            node["role"],
            "yes" if node["alive"] else "[red]no[/red]",
            ", ".join(node["primaries"]),
            ", ".join(node["backups"]),
        )
    console.print(nodes)
    groups = Table(title="Shards and coordinator")
    for column in ("group", "epoch", "primary", "backup", "in sync", "lag (records)"):
        groups.add_column(column)
    for g in status["groups"]:
        primary, backup = g["primary"], g["backup"]
        groups.add_row(
            g["group"],
            str(g["epoch"]),
            f"{primary['node']} ({primary['name']})" if primary else "[red]none[/red]",
            f"{backup['node']} ({backup['name']})" if backup else "[red]none[/red]",
            "yes" if g["backup_in_sync"] else "[yellow]no[/yellow]",
            "-" if g["replication_lag"] is None else str(g["replication_lag"]),
        )
    console.print(groups)
    console.print(
        f"failovers: {status['failovers']}, backup rebuilds: {status['backup_rebuilds']}, "
        "services: " + ", ".join(f"{n} pid {s['pid']}" for n, s in status["services"].items())
    )


@cluster_app.command("status")
def status(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Nodes, shards, epochs, primaries, backups and replication lag."""
    cluster = LocalCluster.load(data_dir.resolve())
    result = _status(cluster)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        _print_status(result)


@cluster_app.command("down")
def down(data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Stop everything `cluster up` started (and nothing else). Data stays on
    disk.
    """
    cluster = LocalCluster.load(data_dir.resolve())
    with console.status("Stopping the gateway, the nodes and Redis ..."):
        cluster.down()
    console.print("Cluster stopped.")


# -- drills --------------------------------------------------------------------------------


def cluster_status_subprocess(data_dir: Path) -> dict[str, Any]:
    """``cluster status --json`` in a child process: this process never joins Ray, so a
    dead head cannot wedge the drill itself."""
    result = subprocess.run(
        [sys.executable, "-m", "tokpay.cli", "cluster", "status", "--json", "--data-dir",
         str(data_dir)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"cluster status failed: {result.stderr[-2000:]}")
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def healthy(status: dict[str, Any]) -> bool:
    return (
        all(n["alive"] for n in status["nodes"])
        and all(g["backup_in_sync"] and g["primary"] and g["backup"] for g in status["groups"])
        and all(s["alive"] for s in status["services"].values())
    )


def wait_cluster_healthy(data_dir: Path, timeout: float = HEALTHY_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if healthy(cluster_status_subprocess(data_dir)):
                return
        except Exception as error:
            last = error
        time.sleep(1.0)
    raise RuntimeError(f"the cluster did not become healthy in {timeout:.0f} s ({last!r})")


def choose_victim(target: str, status: dict[str, Any]) -> tuple[str, str]:
    """(kind, name): kind "node" or "service"."""
    if target == "gateway":
        return "service", GATEWAY_SERVICE
    if target == "head":
        return "node", next(n["node_id"] for n in status["nodes"] if n["role"] == "head")
    head = next(n["node_id"] for n in status["nodes"] if n["role"] == "head")
    groups = status["groups"]
    role = "backup" if target == "backup" else "primary"
    if target == "coordinator":
        candidates = [g for g in groups if g["group"] == "coordinator"]
    else:
        candidates = [g for g in groups if g["group"] != "coordinator"]
    # A worker node when there is one: the head's own loss is the "head" drill.
    on_workers = [g for g in candidates if g[role]["node"] != head]
    g = random.choice(on_workers or candidates)
    return "node", g[role]["node"]


HEAD_RESTART_DELAY_SECONDS = 2.0
GATEWAY_RESTART_DELAY_SECONDS = 1.0


def drill(
    target: Annotated[
        str, typer.Option(help=f"What to SIGKILL: {', '.join(TARGETS)} or random.")
    ] = "primary",
    repeat: Annotated[
        int, typer.Option(help="Drills to run, each on a random target if --target random.")
    ] = 1,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    before: Annotated[float, typer.Option(help="Seconds of load before the kill.")] = 5.0,
    after: Annotated[float, typer.Option(help="Seconds of load after the kill.")] = 10.0,
    report_json: Annotated[
        Path | None, typer.Option(help="Also write every drill's report here (JSON).")
    ] = None,
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
    """
    if target not in (*TARGETS, "random"):
        console.print(f"[red]--target must be one of {', '.join(TARGETS)}, random[/red]")
        raise typer.Exit(2)
    data_dir = data_dir.resolve()
    cluster = LocalCluster.load(data_dir)
    port = int(cluster.settings["port"])
    shard_count = int(cluster.settings["shards"])
    url = f"http://127.0.0.1:{port}"
    reports = []
    for run in range(1, repeat + 1):
        chosen = random.choice(TARGETS) if target == "random" else target
        console.rule(f"Drill {run}/{repeat}: kill the {chosen}")
        wait_cluster_healthy(data_dir)
        kind, name = choose_victim(chosen, cluster_status_subprocess(data_dir))

        kill, recover = kill_and_recover(cluster, kind, name)
        report = _run_with_progress(url, shard_count, chosen, kill, recover, before, after)
        reports.append(report)
        _print_report(report)
    _print_summary(reports)
    if report_json is not None:
        report_json.write_text(json.dumps([_as_dict(r) for r in reports], indent=2))
    wait_cluster_healthy(data_dir)
    if not all(r.ok for r in reports):
        raise typer.Exit(1)


def kill_and_recover(cluster: LocalCluster, kind: str, name: str) -> tuple[Any, Any]:
    """SIGKILL the victim; restart the head and the gateway at once (a supervisor would),
    other nodes only after the load (the ledger must fail over without them)."""
    restarted: list[str] = []

    def kill() -> str:
        if kind == "service":
            pid = cluster.services[name]
            cluster.kill_service(name)
            time.sleep(GATEWAY_RESTART_DELAY_SECONDS)
            start_gateway(cluster)
            return f"gateway (session {pid})"
        pid = cluster.nodes[name]["pid"]
        cluster.kill_node(name)
        if cluster.nodes[name]["role"] == "head":
            time.sleep(HEAD_RESTART_DELAY_SECONDS)
            cluster.start_node(name)
            restarted.append(name)
        return f"node {name} (session {pid})"

    def recover() -> None:
        if kind == "node" and name not in restarted:
            cluster.start_node(name)

    return kill, recover


def _run_with_progress(
    url: str, shard_count: int, target: str, kill: Any, recover: Any, before: float, after: float
) -> Any:
    from tokpay.drill import DrillLoad, run_drill

    started = time.monotonic()
    with Live(console=console, refresh_per_second=4) as live:

        def show(phase: str, load: DrillLoad) -> None:
            errors = sum(load.errors.values())
            live.update(
                f"[bold]{phase}[/bold]  t={time.monotonic() - started:5.1f}s  "
                f"acknowledged={len(load.acked)}  reads={len(load.events.reads)}  "
                f"retried errors={errors}  backwards reads={load.backwards}"
            )

        return asyncio.run(
            run_drill(
                url,
                shard_count,
                target,
                kill,
                recover,
                before_seconds=before,
                after_seconds=after,
                progress=show,
            )
        )


def _as_dict(report: Any) -> dict[str, Any]:
    from dataclasses import asdict

    out: dict[str, Any] = asdict(report)
    out["ok"] = report.ok
    return out


def _print_report(report: Any) -> None:
    table = Table(show_header=False, title=f"Drill: {report.target} → killed {report.victim}")
    resume = report.write_resume_seconds
    table.add_row("acknowledged transfers", str(report.acknowledged))
    table.add_row("lost (must be 0)", str(report.lost))
    table.add_row("applied twice / balance off (must be 0)", str(report.doubled))
    table.add_row("sum of balances (must be 0)", str(report.sum_of_balances))
    table.add_row("reads went backwards (must be 0)", str(report.backwards_reads))
    table.add_row(
        "writes succeeded again after (first ack per shard)",
        "never" if resume is None else f"{resume:.2f} s",
    )
    outage = report.write_outage_seconds
    table.add_row(
        "longest write outage after the kill (any shard)",
        "-" if outage is None else f"{outage:.2f} s",
    )
    for phase, rates in report.rates.items():
        table.add_row(f"{phase}: reads/s, writes/s", f"{rates.reads:.0f}, {rates.writes:.0f}")
    table.add_row(
        "retried errors", ", ".join(f"{k}: {v}" for k, v in report.errors.items()) or "none"
    )
    table.add_row(
        "verdict",
        "[green]PASS[/green]" if report.ok else f"[red]FAIL: {'; '.join(report.violations)}[/red]",
    )
    console.print(table)


def _print_summary(reports: list[Any]) -> None:
    if len(reports) < 2:
        return
    table = Table(title=f"{len(reports)} drills")
    columns = (
        "#",
        "target",
        "acked",
        "lost",
        "doubled",
        "sum",
        "backwards",
        "resume s",
        "outage s",
    )
    for column in (*columns, "ok"):
        table.add_column(column)
    for index, r in enumerate(reports, 1):
        table.add_row(
            str(index), r.target, str(r.acknowledged), str(r.lost), str(r.doubled),
            str(r.sum_of_balances), str(r.backwards_reads),
            "-" if r.write_resume_seconds is None else f"{r.write_resume_seconds:.2f}",
            "-" if r.write_outage_seconds is None else f"{r.write_outage_seconds:.2f}",
            "PASS" if r.ok else "FAIL",
        )  # fmt: skip
    console.print(table)
    resumes = sorted(r.write_resume_seconds for r in reports if r.write_resume_seconds is not None)
    outages = sorted(r.write_outage_seconds for r in reports if r.write_outage_seconds is not None)
    if resumes and outages:
        console.print(
            f"passed {sum(r.ok for r in reports)}/{len(reports)}; write resume: median "
            f"{resumes[len(resumes) // 2]:.2f} s, max {resumes[-1]:.2f} s; longest outage: "
            f"median {outages[len(outages) // 2]:.2f} s, max {outages[-1]:.2f} s"
        )
