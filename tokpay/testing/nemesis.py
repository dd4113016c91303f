"""The nemesis of the drills: pick a victim in a running local cluster, SIGKILL it, and
restart what a supervisor would.

It reads the cluster's state through ``tokpay cluster status --json`` in a child
process: this process never joins the cluster's Ray, so a dead head cannot wedge it.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokpay.cluster.gateway import GATEWAY_SERVICE, start_cluster_gateway
from tokpay.cluster.local import LocalCluster
from tokpay.cluster.status import healthy

TARGETS = ("primary", "backup", "coordinator", "gateway", "head")
HEALTHY_TIMEOUT_SECONDS = 180.0
STATUS_TIMEOUT_SECONDS = 120.0
HEAD_RESTART_DELAY_SECONDS = 2.0
GATEWAY_RESTART_DELAY_SECONDS = 1.0


def cluster_status_subprocess(data_dir: Path) -> dict[str, Any]:
    """``tokpay cluster status --json`` of the cluster in ``data_dir``, from a child process."""
    result = subprocess.run(
        [sys.executable, "-m", "tokpay.cli", "cluster", "status", "--json", "--data-dir",
         str(data_dir)],
        capture_output=True, text=True, timeout=STATUS_TIMEOUT_SECONDS, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"cluster status failed: {result.stderr[-2000:]}")
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def wait_cluster_healthy(data_dir: Path, timeout: float = HEALTHY_TIMEOUT_SECONDS) -> None:
    """Until every node, group and service of the cluster is healthy (or raise)."""
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
    """(kind, name) to kill for ``target`` (one of TARGETS): kind "node" or "service"."""
    if target == "gateway":
        return "service", GATEWAY_SERVICE
    head = next(n["node_id"] for n in status["nodes"] if n["role"] == "head")
    if target == "head":
        return "node", head
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


def kill_and_recover(
    cluster: LocalCluster, kind: str, name: str, *, head_down: float = HEAD_RESTART_DELAY_SECONDS
) -> tuple[Callable[[], str], Callable[[], None]]:
    """(kill, recover) for a drill. ``kill`` SIGKILLs the victim and restarts the gateway
    at once and the head ``head_down`` seconds later (a supervisor would), in the
    background while the load goes on; ``recover`` restarts other nodes only after the
    load (the ledger must fail over without them)."""
    restarted: list[threading.Timer] = []
    failed: list[Exception] = []

    def kill() -> str:
        if kind == "service":
            pid = cluster.services[name]
            cluster.kill_service(name)
            time.sleep(GATEWAY_RESTART_DELAY_SECONDS)
            start_cluster_gateway(cluster)
            return f"gateway (session {pid})"
        pid = cluster.nodes[name]["pid"]
        cluster.kill_node(name)
        if cluster.nodes[name]["role"] == "head":
            restarter = threading.Timer(head_down, restart_head)
            restarter.start()
            restarted.append(restarter)
            return f"node {name} (session {pid}; back after {head_down:.0f} s)"
        return f"node {name} (session {pid})"

    def restart_head() -> None:
        try:
            cluster.start_node(name)
        except Exception as error:  # raised again by recover(), on the drill's thread
            failed.append(error)

    def recover() -> None:
        for restarter in restarted:
            restarter.join()
        if failed:
            raise failed[0]
        if kind == "node" and not restarted:
            cluster.start_node(name)

    return kill, recover
