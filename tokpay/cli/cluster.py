"""``tokpay cluster up|status|down|deploy``: a local multi-node cluster, or TokPay on
real machines.

Each Ray node of a local cluster runs in its own process session with its own data
directory, standing for a separate machine (tokpay.cluster; its scripts are the
per-machine ones, see cluster/README.md for real machines). TokPay on top: a
controller (detached), every shard and the coordinator as a primary and a backup on
different nodes, and the HTTP gateway in a session of its own.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tokpay.cluster import netns
from tokpay.cluster.deploy import deploy
from tokpay.cluster.errors import ClusterError
from tokpay.cluster.gateway import start_cluster_gateway
from tokpay.cluster.local import LocalCluster
from tokpay.cluster.restart import destroy_cluster, restart_cluster
from tokpay.cluster.state import state_path
from tokpay.cluster.status import cluster_status

console = Console()
cluster_app = typer.Typer(
    help="A local multi-node TokPay cluster: every node its own process session and disk.",
    no_args_is_help=True,
)

DEFAULT_DATA_DIR = Path("var/cluster")
MIN_NODES = 2

DataDir = Annotated[Path, typer.Option(help="The cluster's directory (state, node disks, logs).")]
Shards = Annotated[int, typer.Option(help="Shards (each a primary and a backup).")]
Fsync = Annotated[bool, typer.Option(help="fsync every log batch on both copies.")]


def _refuse_too_few_nodes(count: int) -> None:
    if count < MIN_NODES:
        console.print(f"[red]replication needs at least {MIN_NODES} nodes[/red]")
        raise typer.Exit(2)


@cluster_app.command("deploy")
def deploy_command(
    address: Annotated[str, typer.Option(help="The head's GCS address, host:port.")],
    nodes: Annotated[
        str, typer.Option(help="Node names, head first, comma-separated (e.g. n0,n1,n2).")
    ],
    shards: Shards = 4,
    fsync: Fsync = True,
    recover: Annotated[
        bool, typer.Option(help="Redis's state was lost: rebuild the shard map from the disks.")
    ] = False,
) -> None:
    """On real machines: create TokPay on nodes started with cluster/head.sh and
    worker.sh (refused where replica data exists but the shard map is gone: then
    --recover rebuilds it from the replicas' proof files).

    Starts the controller (detached, on the head), which places every shard's
    and the coordinator's primary and backup on different nodes and waits
    until all are in sync. Safe to run again: it finds the running controller.
    Then run `TOKPAY_RAY_ADDRESS=ADDRESS tokpay gateway` on each gateway
    machine.
    """
    names = [n.strip() for n in nodes.split(",") if n.strip()]
    _refuse_too_few_nodes(len(names))
    deploy(address, names, shards, fsync, recover=recover)
    console.print(f"TokPay deployed on {', '.join(names)}: {shards} shards, replication factor 2")


@cluster_app.command("up")
def up(
    nodes: Annotated[int, typer.Option(help="Ray nodes (a head and workers), at least 2.")] = 3,
    port: Annotated[int, typer.Option(help="Port of the HTTP gateway.")] = 8000,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    shards: Shards = 4,
    workers: Annotated[int, typer.Option(help="Gateway processes.")] = 2,
    fsync: Fsync = True,
    ray_port: Annotated[
        int | None,
        typer.Option(
            help="GCS port; Redis takes the next one, Ray Client the one after. "
            "Default: free ports."
        ),
    ] = None,
    netns_on: Annotated[
        bool,
        typer.Option(
            "--netns",
            help="Each node in a network namespace of its own (tpn-n<i>, address "
            "10.77.0.<11+i> on the bridge tpn-br0 at 10.77.0.1), as on separate machines; "
            "needs root and `ip netns`. Saved: `cluster up` again keeps it.",
        ),
    ] = False,
) -> None:
    """Start Redis (GCS fault tolerance), the Ray nodes, TokPay and its gateway;
    or, on a directory that holds a cluster, start it again from its disks.

    Every node is a separate process session with its own disk under
    DATA_DIR/nodes; the head keeps Ray's cluster state in Redis (fsync on
    every write), so killing and restarting the head loses nothing.
    Replication factor 2: a shard's primary and backup are always on different
    nodes.

    Again on the same DATA_DIR (after `cluster down`, a power cut, a dead
    node): the same nodes, shards and ports as saved (other options are
    ignored); running parts are left alone, missing ones started, and every
    group resumes from the copy its replicas prove complete.

    With --netns every node gets its own network namespace and address; Redis
    and the GCS bind the head's, each node's replicas its own. The gateway and
    the CLI stay in the root namespace and reach the nodes over the bridge
    through a Ray node of their own (`drivers`, 10.77.0.1). `cluster down`
    removes the namespaces, veths and bridge; `tokpay drill --target
    partition|partition-oneway|slow-link` cuts or slows a node's link.
    """  # fmt: skip
    _refuse_too_few_nodes(nodes)
    data_dir = data_dir.resolve()
    if state_path(data_dir).exists():
        _up_again(data_dir)
        return
    ports = (ray_port, ray_port + 1, ray_port + 2) if ray_port else (None, None, None)
    if netns_on:
        _require_netns()
    cluster = LocalCluster(
        data_dir,
        nodes=nodes,
        gcs_port=ports[0],
        redis_port=ports[1],
        client_port=ports[2],
        netns_on=netns_on,
    )
    cluster.settings.update({"port": port, "workers": workers, "shards": shards, "fsync": fsync})
    started = time.monotonic()
    with console.status(f"Starting Redis and {nodes} Ray nodes ..."):
        try:
            cluster.up()
        except ClusterError as error:
            console.print(f"[red]{error}[/red]")
            raise typer.Exit(1) from None
    try:
        with console.status(f"Creating the controller, {shards} shards and the coordinator ..."):
            deploy(
                cluster.ray_address,
                cluster.node_names,
                shards,
                fsync,
                cluster.auth_token_path,
                node_ip=cluster.driver_node_ip,
            )
        with console.status("Starting the gateway ..."):
            start_cluster_gateway(cluster)
    except Exception:
        console.print_exception()
        console.print("[red]start-up failed; stopping what was started[/red]")
        cluster.down()
        raise typer.Exit(1) from None
    console.print(f"Cluster up in {time.monotonic() - started:.1f} s")
    _print_status(cluster_status(cluster))
    console.print(f"Gateway: http://127.0.0.1:{port}  (docs at /docs)")


def _require_netns() -> None:
    try:
        netns.require_support()
    except ClusterError as error:
        console.print(f"[red]--netns is not available here: {error}[/red]")
        raise typer.Exit(2) from None


def _up_again(data_dir: Path, *, recover: bool = False) -> None:
    cluster = LocalCluster.load(data_dir)
    if cluster.netns:
        _require_netns()
    with console.status("Starting the cluster again from its disks ...") as spinner:
        try:
            result = restart_cluster(cluster, lambda line: spinner.update(line), recover=recover)
        except (ClusterError, TimeoutError) as error:
            console.print(f"[red]{str(error).replace('DATA_DIR', str(data_dir))}[/red]")
            console.print(f"`tokpay cluster status --data-dir {data_dir}` says what is down.")
            raise typer.Exit(1) from None
    console.print(
        f"Cluster serving again {result.seconds_to_serving:.1f} s after `cluster up` "
        f"(started: {', '.join(result.started) or 'nothing, all was running'})"
    )
    _print_status(cluster_status(cluster))


def _print_status(status: dict[str, Any]) -> None:
    nodes = Table(title="Nodes")
    for column in ("node", "pid", "role", "alive", "primaries", "backups", "spares"):
        nodes.add_column(column)
    for node in status["nodes"]:
        nodes.add_row(
            node["node_id"],
            str(node["pid"]),
            node["role"],
            "yes" if node["alive"] else "[red]no[/red]",
            ", ".join(node["primaries"]),
            ", ".join(node["backups"]),
            ", ".join(node.get("spares", [])),
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
    for g in status["groups"]:
        if g.get("down"):
            console.print(f"[red]{g['down']}[/red]")
    if status.get("spares_missing"):
        waiting = ", ".join(status["spares_missing"])
        console.print(f"[yellow]spares being started for: {waiting}[/yellow]")
    if status.get("head_copies"):
        moving = ", ".join(status["head_copies"])
        console.print(f"[yellow]copies on the head, being moved to workers: {moving}[/yellow]")
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
    result = cluster_status(LocalCluster.load(data_dir.resolve()))
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        _print_status(result)


@cluster_app.command("down")
def down(data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Stop everything `cluster up` started (and nothing else). Data stays on
    disk: `cluster up` on the same directory starts it again.
    """
    data_dir = data_dir.resolve()
    cluster = LocalCluster.load(data_dir)
    with console.status("Stopping the gateway, the nodes and Redis ..."):
        cluster.down()
    console.print(
        f"Cluster stopped; its data is kept in {data_dir}.\n"
        f"Start it again: tokpay cluster up --data-dir {data_dir}\n"
        f"Remove it for good: tokpay cluster destroy --data-dir {data_dir} --yes"
    )


@cluster_app.command("recover")
def recover(data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """The cluster state (Redis) was lost: rebuild the shard map, epochs and placement
    from the replicas' own disks, and start the cluster.

    Every node must be running (or startable): each group resumes from the copy its
    replicas' proof files show holds every acknowledged transfer. If any group cannot
    be proven complete, nothing is changed and the groups are listed.
    """
    _up_again(data_dir.resolve(), recover=True)


@cluster_app.command("destroy")
def destroy(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete the ledger's data.")] = False,
) -> None:
    """Delete a stopped cluster's directory: every node's replicas (the ledger), Redis,
    logs. Refuses while anything of it runs, and without --yes.
    """
    data_dir = data_dir.resolve()
    if not yes:
        console.print(
            f"[red]This deletes every transfer of the ledger in {data_dir}. "
            "Run again with --yes to do it.[/red]"
        )
        raise typer.Exit(2)
    try:
        destroy_cluster(data_dir)
    except ClusterError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    console.print(f"Removed {data_dir}.")
