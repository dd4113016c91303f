"""``tokpay cluster status --json``: what scripts and operators read about a local cluster.

The document's fields are a contract (tests/cluster/test_status_fields.py): ``nodes``
with ``node_id``, ``pid``, ``role``, ``address`` (a --netns cluster's, else null),
``alive``, ``primaries``, ``backups``; ``groups``
(with ``down``: why a group cannot serve, or null); ``head_copies``: groups with a
copy on the head still to be moved to a worker; ``spares_missing``: groups whose
spare process (started ahead of a failover) is not ready yet, and each node's ``spares``;
``services`` with pids;
``processes``: every process session of the cluster (each node, Redis, each service)
with its pid, null when it is not running, so a script can cut power to all of them.
Fields may be added, never renamed.
"""

from __future__ import annotations

from typing import Any

from tokpay.cluster.deploy import controller_status
from tokpay.cluster.local import LocalCluster
from tokpay.cluster.sessions import session_running


def cluster_status(cluster: LocalCluster) -> dict[str, Any]:
    """The status document: joins the cluster as a Ray driver to ask its controller."""
    status = controller_status(cluster.ray_address, cluster.auth_token_path, cluster.driver_node_ip)
    return status_document(cluster, status)


def status_document(cluster: LocalCluster, status: Any) -> dict[str, Any]:
    """The controller's ``status`` (ControllerStatus) and the sessions of ``cluster``,
    as one JSON-ready document."""
    nodes = []
    for name in cluster.node_names:
        node = cluster.nodes[name]
        nodes.append(
            {
                "node_id": name,
                "pid": node["pid"],
                "role": node["role"],
                "address": cluster.node_ip(name),
                "alive": bool(status.nodes.get(name)) and cluster.node_running(name),
                "primaries": [
                    g.group for g in status.groups if g.primary and g.primary.node == name
                ],
                "backups": [g.group for g in status.groups if g.backup and g.backup.node == name],
                "spares": sorted(g for g, n in getattr(status, "spares", {}).items() if n == name),
            }
        )
    groups = [
        {
            "group": g.group,
            "epoch": g.epoch,
            "primary": _member(g.primary),
            "backup": _member(g.backup),
            "backup_in_sync": g.backup_ready,
            "replication_lag": g.lag,
            "down": g.down,
        }
        for g in status.groups
    ]
    services = {
        name: {"pid": pid, "alive": cluster.service_alive(name)}
        for name, pid in cluster.services.items()
    }
    return {
        "nodes": nodes,
        "groups": groups,
        "services": services,
        # A controller started by an older TokPay has no such field.
        "head_copies": list(getattr(status, "head_copies", [])),
        "spares_missing": list(getattr(status, "spares_missing", [])),
        "failovers": status.failovers,
        "backup_rebuilds": status.rebuilds,
        "gcs_address": cluster.ray_address,
        "processes": processes(cluster),
    }


def processes(cluster: LocalCluster) -> dict[str, int | None]:
    """Every process session of the cluster by name (each node, ``redis``, each service)
    with its leader's pid; None when it is not running."""
    found: dict[str, int | None] = {}
    found["redis"] = cluster.redis["pid"] if session_running(cluster.redis) else None
    for name, node in cluster.nodes.items():
        found[name] = node["pid"] if cluster.node_running(name) else None
    for name, pid in cluster.services.items():
        found[name] = pid if cluster.service_alive(name) else None
    return found


def _member(member: Any) -> dict[str, Any] | None:
    if member is None:
        return None
    return {
        "name": member.name,
        "node": member.node,
        "alive": member.alive,
        "sequence": member.sequence,
    }


def healthy(status: dict[str, Any]) -> bool:
    """Every node alive, every group with an in-sync backup, (3 nodes or more) no copy
    left on the head and a spare ready where it can have one, every service alive."""
    return (
        all(n["alive"] for n in status["nodes"])
        and not status.get("head_copies")
        and not status.get("spares_missing")
        and all(g["backup_in_sync"] and g["primary"] and g["backup"] for g in status["groups"])
        and all(s["alive"] for s in status["services"].values())
    )
