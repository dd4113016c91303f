"""Start a recorded local cluster again from its disks, or remove it for good.

``tokpay cluster up`` on a directory that holds a cluster comes here: whatever is not
running (Redis, the head, workers, the gateway) is started again with the names, ports
and data dirs saved in DATA_DIR/cluster.json, and the controller (restarted by Ray with
the head, its shard map reloaded from Redis) resumes every group from the copy its
replicas' proofs say is complete (tokpay.actors.copies). Running parts are left alone,
which is also how a single dead node comes back.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tokpay.cluster.deploy import deploy
from tokpay.cluster.errors import ClusterError
from tokpay.cluster.gateway import GATEWAY_SERVICE, start_cluster_gateway
from tokpay.cluster.local import LocalCluster
from tokpay.cluster.status import processes

Say = Callable[[str], None]


@dataclass
class Restarted:
    """What ``restart_cluster`` started and how long until the ledger served again."""

    started: list[str] = field(default_factory=list)
    seconds_to_serving: float = 0.0


def restart_cluster(cluster: LocalCluster, say: Say, *, recover: bool = False) -> Restarted:
    """Start what is down, let the controller resume every group, start the gateway.

    Returns once every group has a primary and an in-sync backup and the gateway
    answers (the time from the call to then is ``seconds_to_serving``). ``recover``:
    the cluster state (Redis) was lost; rebuild the shard map from the replicas' disks.
    Raises ClusterError with the controller's reason if the ledger cannot resume.
    """
    began = time.monotonic()
    result = Restarted()
    say("starting what is not running (Redis, nodes) ...")
    result.started = cluster.restart()
    settings = cluster.settings
    say(f"started {', '.join(result.started) or 'nothing'}; resuming the ledger from the disks ...")
    try:
        deploy(
            cluster.ray_address,
            cluster.node_names,
            int(settings["shards"]),
            bool(settings.get("fsync", True)),
            cluster.auth_token_path,
            recover=recover,
            node_ip=cluster.driver_node_ip,
        )
    except Exception as error:
        # A refusal from the controller reaches us wrapped in Ray's task error.
        raise ClusterError(str(getattr(error, "cause", None) or error)) from None
    if cluster.driver_node in result.started and cluster.service_alive(GATEWAY_SERVICE):
        # The gateway is a Ray driver attached to that node's raylet, which died; a driver
        # never moves to another raylet, so the old gateway can reach no replica again.
        say(
            f"{cluster.driver_node} was restarted: restarting the gateway, whose Ray driver was on it ..."
        )
        cluster.kill_service(GATEWAY_SERVICE)
    if not cluster.service_alive(GATEWAY_SERVICE):
        say("starting the gateway ...")
        start_cluster_gateway(cluster)
        result.started.append(GATEWAY_SERVICE)
    result.seconds_to_serving = time.monotonic() - began
    return result


def destroy_cluster(data_dir: Path) -> None:
    """Remove a stopped cluster's directory (state, every node's disk, Redis, logs)."""
    cluster = LocalCluster.load(data_dir)
    running = [name for name, pid in processes(cluster).items() if pid is not None]
    if running:
        raise ClusterError(
            f"the cluster in {data_dir} is running ({', '.join(running)}): "
            f"`tokpay cluster down --data-dir {data_dir}` first"
        )
    cluster.down()  # removes the Ray temp link, stops nothing (nothing runs)
    shutil.rmtree(cluster.data_dir)
