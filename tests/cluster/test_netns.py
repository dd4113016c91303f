"""A 3-node cluster with every node in its own network namespace (`cluster up --netns`):
real per-node addresses, replicas bound to them, a transfer served through the gateway.

Needs root and `ip netns` (fails, saying why, where the machine lacks them). The
namespaces, veths and bridge are removed by `cluster down`, also when the test fails.
The partition drills themselves (`tokpay drill --target partition`, several leases
under load) are runs of the CLI with their figures in bench/RESULTS.md, not a test.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tokpay.cluster import netns
from tokpay.cluster.local import LocalCluster
from tokpay.cluster.sessions import session_pids
from tokpay.testing.nemesis import wait_cluster_healthy

RAY_PORT = 19320
"""Redis and Ray Client take the two after it."""
GATEWAY_PORT = 19330
SHARDS = 4


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokpay.cli", *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    # Namespaces are part of the product here (`cluster up --netns`): a machine without
    # them fails this test with the reason, it is not skipped.
    netns.require_support()
    data_dir = Path(f"/tmp/netns-test-{secrets.token_hex(3)}")
    up = cli(
        "cluster", "up", "--netns", "--nodes", "3", "--port", str(GATEWAY_PORT),
        "--ray-port", str(RAY_PORT), "--data-dir", str(data_dir), "--shards", str(SHARDS),
        "--workers", "1",
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        yield LocalCluster.load(data_dir)
    finally:
        down = cli("cluster", "down", "--data-dir", str(data_dir))
        leftovers = [
            pid
            for node in LocalCluster.load(data_dir).nodes.values()
            if node["pid"] is not None
            for pid in session_pids(node["pid"])
        ]
        network_left = netns.leftovers()
        shutil.rmtree(data_dir, ignore_errors=True)
        assert down.returncode == 0, down.stderr[-2000:]
        assert leftovers == [], f"processes left running: {leftovers}"
        assert network_left == [], f"namespaces or links left: {network_left}"


def replicas(cluster: LocalCluster, group: str) -> dict[str, Any]:
    """The group's primary and backup (node, channel address), asked from a driver child
    that attaches through the drivers' node (TOKPAY_RAY_NODE_IP in its environment)."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.cluster.probe", str(cluster.data_dir), "replicas", group],
        capture_output=True, text=True, timeout=120, check=False, env=cluster.child_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


@pytest.mark.timeout(300)
def test_netns_cluster_binds_node_addresses_and_serves(
    cluster: LocalCluster,
) -> None:
    assert cluster.ray_address == f"{netns.node_address(0)}:{RAY_PORT}"
    url = f"http://127.0.0.1:{GATEWAY_PORT}"
    with httpx.Client(base_url=url, timeout=30) as http:
        for account in ("netns-a", "netns-b"):
            body = {"id": account, "currency": "USD", "owner": f"{account}@x.example"}
            assert http.post("/v1/accounts", json=body).status_code == 201
        topup = {"id": "netns-top", "account": "netns-a", "amount": 500, "currency": "USD"}
        assert http.post("/v1/topups", json=topup).status_code == 201
        transfer = {
            "id": "netns-t1",
            "from": "netns-a",
            "to": [{"account": "netns-b", "amount": 120}],
            "currency": "USD",
        }
        assert http.post("/v1/transfers", json=transfer).status_code == 201
        assert http.get("/v1/accounts/netns-b/balance").json()["balance"] == 120

    # Every replica's channel listens on its own node's address, as on separate machines.
    groups = [f"shard-{s}" for s in range(SHARDS)] + ["coordinator"]
    wait_cluster_healthy(cluster.data_dir)
    for group in groups:
        found = replicas(cluster, group)
        for role in ("primary", "backup"):
            member = found[role]
            assert member["address"] is not None, (group, role, member)
            host = member["address"][0]
            assert host == cluster.node_ip(member["node"]), (group, role, member)
            assert host.startswith(netns.SUBNET_PREFIX) and host not in ("0.0.0.0", "127.0.0.1")
