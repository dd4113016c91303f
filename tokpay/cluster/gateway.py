"""The HTTP gateway as a child process: its command line, its health wait, and the
gateway service of a local cluster.

The gateway always runs in a process of its own that never initialised Ray: servers
fork their workers, and a fork of a Ray driver is not a working driver.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import httpx

from tokpay.cluster.errors import ClusterError
from tokpay.cluster.local import LocalCluster
from tokpay.cluster.nodes import LOOPBACK

GATEWAY_SERVICE = "gateway"
FACTORY = "tokpay.cluster.gateway_app:app_from_environment"
"""The netns gateway's app (named, not imported: that module imports Ray)."""
GCS_RECONNECT_TIMEOUT_S = "600"
"""Default seconds a gateway waits for a restarted GCS (as the nodes do, common.sh)."""
READY_TIMEOUT_SECONDS = 300.0


def gateway_argv(host: str, port: int, workers: int, server: str = "granian") -> list[str]:
    """``tokpay gateway`` with these options, run by this Python."""
    return [
        sys.executable, "-m", "tokpay.cli", "gateway",
        "--host", host, "--port", str(port), "--workers", str(workers), "--server", server,
    ]  # fmt: skip


def netns_gateway_argv(port: int, workers: int) -> list[str]:
    """A --netns cluster's gateway: granian, as ``tokpay gateway`` runs it, on the app
    that attaches through the drivers' node (tokpay.cluster.gateway_app)."""
    return [
        sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
        "--host", LOOPBACK, "--port", str(port), "--workers", str(workers),
        "--no-access-log", FACTORY,
    ]  # fmt: skip


def wait_healthy(url: str, timeout: float, *, check: Callable[[], None] = lambda: None) -> bool:
    """Poll ``url``/healthz until it answers 200 (True) or ``timeout`` passes (False).

    ``check`` runs before each try and may raise (say, the server process has exited).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check()
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


def start_cluster_gateway(cluster: LocalCluster) -> None:
    """Spawn the cluster's gateway service (port and workers from its settings); wait
    until it is healthy."""
    port = int(cluster.settings["port"])
    workers = int(cluster.settings["workers"])
    metrics = cluster.data_dir / "gateway-metrics"
    metrics.mkdir(parents=True, exist_ok=True)
    for stale in metrics.glob("*.db"):
        stale.unlink()
    env = {
        "TOKPAY_RAY_ADDRESS": cluster.ray_address,
        "TOKPAY_DATA_DIR": str(cluster.data_dir / "gateway"),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        # What `tokpay gateway` tells its server's workers (the netns argv skips it).
        "TOKPAY_BIND_HOST": LOOPBACK,
        # The gateway is a Ray driver: like the nodes (cluster/scripts/common.sh), it waits
        # this long for a restarted GCS instead of Ray's 60 s, then exits. It serves from
        # the replicas' channels meanwhile: a head down for minutes must not end it.
        "RAY_gcs_rpc_server_reconnect_timeout_s": os.environ.get(
            "TOKPAY_GCS_RECONNECT_TIMEOUT_S", GCS_RECONNECT_TIMEOUT_S
        ),
    }
    if cluster.netns:
        argv = netns_gateway_argv(port, workers)
    else:
        argv = gateway_argv(LOOPBACK, port, workers)
    cluster.spawn_service(GATEWAY_SERVICE, argv, env)
    url = f"http://{LOOPBACK}:{port}"
    if not wait_healthy(url, READY_TIMEOUT_SECONDS):
        raise ClusterError(
            f"the gateway at {url} is not healthy after {READY_TIMEOUT_SECONDS:.0f} s"
        )
