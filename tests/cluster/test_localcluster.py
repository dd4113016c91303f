"""A real 3-node local cluster: the head dies and comes back, a worker's actor never notices.

Each node is a process session of its own; killing one is a SIGKILL of its whole
session. The test process never joins the cluster's Ray (other tests run a private
Ray in it): every Ray call runs in a driver child process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tokpay.cluster.local import LocalCluster
from tokpay.cluster.sessions import session_pids

NODES = {"n0", "n1", "n2"}
DRIVER_TIMEOUT_SECONDS = 120
DEATH_NOTICE_TIMEOUT_SECONDS = 30.0

# A detached actor pinned to n1 that keeps a list, and reports where it runs.
DRIVER = r"""
import json, os, sys, time
import ray

ray.init(address=os.environ["TOKPAY_RAY_ADDRESS"], namespace="localcluster-test",
         log_to_driver=False, logging_level="WARNING")


@ray.remote
class Tally:
    def __init__(self):
        self.entries = []

    def add(self, entry):
        self.entries.append(entry)
        return list(self.entries)

    def where(self):
        return {"node": os.environ.get("TOKPAY_NODE_NAME"),
                "node_data_dir": os.environ.get("TOKPAY_NODE_DATA_DIR"),
                "pid": os.getpid(), "sid": os.getsid(0)}


if sys.argv[1] == "create":
    tally = Tally.options(name="tally", lifetime="detached", num_cpus=0,
                          resources={"tokpay_node_n1": 1}).remote()
    entry = "before"
else:
    deadline = time.monotonic() + 30
    while True:
        try:
            tally = ray.get_actor("tally")
            break
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    entry = "after"
out = {"entries": ray.get(tally.add.remote(entry), timeout=60)}
out.update(ray.get(tally.where.remote(), timeout=60))
print(json.dumps(out))
"""


def run_driver(cluster: LocalCluster, command: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, command],
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT_SECONDS,
        env=cluster.child_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path / "cluster", nodes=len(NODES))
    try:
        started = time.monotonic()
        cluster.up()
        print(f"up() of {len(NODES)} nodes: {time.monotonic() - started:.1f} s")
        yield cluster
    finally:
        cluster.down()


@pytest.mark.timeout(300)
def test_head_restart_keeps_detached_actor_on_worker(cluster: LocalCluster) -> None:
    assert cluster.nodes_alive_in_ray() == NODES
    sessions = {cluster.nodes[name]["pid"] for name in NODES} | {cluster.redis["pid"]}
    loaded = LocalCluster.load(cluster.data_dir)
    assert (loaded.nodes, loaded.ray_address) == (cluster.nodes, cluster.ray_address)

    created = run_driver(cluster, "create")
    n1 = cluster.nodes["n1"]
    assert created["entries"] == ["before"]
    # The actor's worker process belongs to n1's machine and sees n1's identity and disk.
    assert created["node"] == "n1"
    assert created["node_data_dir"] == n1["data_dir"]
    assert created["sid"] == n1["pid"]

    old_head = cluster.nodes["n0"]["pid"]
    assert old_head is not None
    cluster.kill_node("n0")
    assert session_pids(old_head) == []
    assert not cluster.node_alive("n0")
    assert cluster.node_running("n1") and cluster.node_running("n2")

    restarted = time.monotonic()
    cluster.start_node("n0")
    found = run_driver(cluster, "lookup")
    print(f"head restart until the named actor answered: {time.monotonic() - restarted:.1f} s")
    sessions.add(cluster.nodes["n0"]["pid"])
    assert cluster.nodes["n0"]["pid"] != old_head
    # The same process, with its state: nothing was restarted or replayed.
    assert found["entries"] == ["before", "after"]
    assert (found["pid"], found["node"]) == (created["pid"], "n1")

    killed = time.monotonic()
    cluster.kill_node("n2")
    assert not cluster.node_alive("n2")
    while "n2" in cluster.nodes_alive_in_ray():
        assert time.monotonic() - killed < DEATH_NOTICE_TIMEOUT_SECONDS, "GCS never noticed n2"
        time.sleep(0.2)
    print(f"GCS declared n2 dead after {time.monotonic() - killed:.1f} s")
    assert cluster.nodes_alive_in_ray() == {"n0", "n1"}

    cluster.down()
    leftovers = {sid: session_pids(sid) for sid in sessions if sid is not None}
    assert all(not pids for pids in leftovers.values()), leftovers
    assert not cluster.node_running("n1")
