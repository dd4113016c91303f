"""Drills that take down more than one machine and bring the cluster back with
``cluster up``: a power cut of every process (``all``), both nodes of one group
(``pair``), a power cut that also loses the cluster state (``state``: Redis's
data wiped, then ``cluster recover``), and the head machine lost for good
(``head-lost``: the head and Redis killed, their disks deleted, the other nodes left
serving for ``HEAD_LOST_SECONDS``; then, as an operator replaces the head, everything
is stopped and ``cluster recover`` starts a new head on an empty disk and rebuilds the
map from the other nodes' disks).

Each kill is one sweep of SIGKILL over every process of the chosen sessions, so none
of them sees another go first. The cluster is then started again the way an operator
would (tokpay.cluster.restart), while the drill's load keeps retrying.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokpay.cluster import sessions
from tokpay.cluster.local import LocalCluster

RESTART_TARGETS = ("all", "pair", "state", "head-lost")
RESTART_RESUME_WAIT_SECONDS = 300.0
"""Writes must resume within this after a power cut: the whole cluster starts again."""
COMMAND_TIMEOUT_SECONDS = 600.0
PAIR_DOWN_SECONDS = 5.0
"""How long both nodes of a group stay down before ``cluster up`` brings them back."""
HEAD_LOST_SECONDS = 10.0
"""How long the other nodes run on without the head before it is replaced."""


def choose_pair(status: dict[str, Any]) -> tuple[str, list[str]]:
    """A shard group and its two nodes, workers if any group has both on workers."""
    head = next(n["node_id"] for n in status["nodes"] if n["role"] == "head")
    groups = [g for g in status["groups"] if g["primary"] and g["backup"]]
    on_workers = [g for g in groups if head not in (g["primary"]["node"], g["backup"]["node"])]
    g = (on_workers or groups)[0]
    return g["group"], [g["primary"]["node"], g["backup"]["node"]]


def cut_power(cluster: LocalCluster, nodes: list[str] | None = None) -> int:
    """SIGKILL, in one sweep, every process of ``nodes`` (None: of the whole cluster:
    Redis, every node, every service); then reap them. Returns how many were killed."""
    records: list[sessions.ProcessRecord] = [cluster.nodes[n] for n in nodes or cluster.node_names]
    if nodes is None:
        records += [cluster.redis, *cluster.service_records.values()]
    victims = [pid for record in records for pid in sessions.session_members(record)]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for name in nodes or cluster.node_names:
        cluster.kill_node(name)
    if nodes is None:
        sessions.kill_session(cluster.redis)
        for name in cluster.service_records:
            cluster.kill_service(name)
    return len(victims)


def lose_head(cluster: LocalCluster) -> int:
    """The head machine is gone for good: SIGKILL its node and Redis (which runs on it),
    then delete both their disks. Returns how many processes were killed."""
    head = cluster.head_name
    killed = len(sessions.session_members(cluster.redis)) + cut_power(cluster, [head])
    sessions.kill_session(cluster.redis)
    wipe_cluster_state(cluster)
    shutil.rmtree(cluster.nodes[head]["data_dir"])
    return killed


def wipe_cluster_state(cluster: LocalCluster) -> None:
    """Lose Redis's data (the GCS tables and TokPay's shard map), as with its disk."""
    directory = Path(cluster.redis["data_dir"])
    shutil.rmtree(directory)
    directory.mkdir()


def cluster_command(command: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """``tokpay cluster COMMAND --data-dir DATA_DIR`` in a child process, as an operator
    runs it (this process never joins the cluster's Ray: a dead head cannot wedge it)."""
    return subprocess.run(
        [sys.executable, "-m", "tokpay.cli", "cluster", command, "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS, check=False,
    )  # fmt: skip


def bring_back(command: str, data_dir: Path) -> float:
    """Run ``cluster up`` or ``cluster recover``; the seconds until it returned serving."""
    started = time.monotonic()
    result = cluster_command(command, data_dir)
    if result.returncode != 0:
        raise RuntimeError(
            f"`cluster {command}` failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return time.monotonic() - started


def restart_kill(
    cluster: LocalCluster, target: str, nodes: list[str], timings: dict[str, float]
) -> Callable[[], str]:
    """The kill of a restart drill: cut the power, bring the cluster back, record in
    ``timings["restart"]`` the seconds from `cluster up` (or `recover`) to serving."""

    def kill() -> str:
        # What runs now: an earlier restart (a child process) recorded new sessions.
        running = LocalCluster.load(cluster.data_dir)
        if target == "head-lost":
            killed = lose_head(running)
            time.sleep(HEAD_LOST_SECONDS)
            # The replacement: Ray's raylets cannot join a new GCS, so every node stops
            # and starts again around a new, empty head; the map comes from the disks.
            stopped = cluster_command("down", cluster.data_dir)
            if stopped.returncode != 0:
                raise RuntimeError(
                    f"`cluster down` failed:\n{stopped.stdout[-3000:]}{stopped.stderr[-3000:]}"
                )
            timings["restart"] = bring_back("recover", cluster.data_dir)
            return (
                f"head {running.head_name} lost with its disk and Redis ({killed} processes); "
                f"serving {timings['restart']:.1f} s after recover"
            )
        killed = cut_power(running, nodes or None)
        if target == "pair":
            time.sleep(PAIR_DOWN_SECONDS)
        if target == "state":
            wipe_cluster_state(cluster)
            refused = cluster_command("up", cluster.data_dir)
            if refused.returncode == 0 or "cluster recover" not in " ".join(refused.stdout.split()):
                raise RuntimeError(
                    f"`cluster up` did not refuse a lost cluster state:\n{refused.stdout[-3000:]}"
                )
        timings["restart"] = bring_back("recover" if target == "state" else "up", cluster.data_dir)
        what = f"nodes {', '.join(nodes)}" if nodes else "every process"
        return f"{what} ({killed} processes); serving {timings['restart']:.1f} s after up"

    return kill
