"""Questions to a local cluster's Redis and Ray GCS, asked without importing Ray here.

The GCS node table is read by a child process (``python -m tokpay.cluster.probes
ADDRESS``), so the caller may be a Ray driver of another cluster, and a dead head cannot
wedge it. Redis is asked over a plain socket for the pid that serves a port.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import Any

import msgspec

from tokpay.actors.naming import NODE_RESOURCE_PREFIX
from tokpay.cluster.ports import port_open

PROBE_TIMEOUT_SECONDS = 20.0
PROBE_RPC_TIMEOUT_SECONDS = 10.0


class RayNode(msgspec.Struct):
    """One entry of the GCS node table, as the probe child process reports it."""

    names: list[str]
    alive: bool
    start_time_ms: int


def ray_node_table(gcs_address: str, env: dict[str, str]) -> list[RayNode] | None:
    """The GCS's node table, or None if the GCS does not answer.

    ``env`` is the child's whole environment: it must let a driver attach (auth token).
    """
    host, port = gcs_address.rsplit(":", 1)
    if not port_open(int(port), host):
        return None
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tokpay.cluster.probes", gcs_address],
            capture_output=True,
            timeout=PROBE_TIMEOUT_SECONDS,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    if result.returncode != 0 or not result.stdout.strip():
        return None
    return msgspec.json.decode(result.stdout.splitlines()[-1], type=list[RayNode])


def redis_server_pid(host: str, port: int, password: str | None = None) -> int | None:
    """The pid of the Redis serving on ``host``:``port`` (from INFO), or None if none
    answers."""
    auth = b"" if password is None else f"AUTH {password}\r\n".encode()
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(auth + b"INFO server\r\n")
            reply = b""
            while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return None
    for line in reply.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.removeprefix("process_id:"))
    return None


def _print_ray_node_table(address: str) -> None:
    """Child-process side of ``ray_node_table``: the GCS node table as JSON on stdout."""
    from ray._raylet import GcsClient  # type: ignore[attr-defined]
    from ray.core.generated.gcs_pb2 import GcsNodeInfo  # type: ignore[attr-defined]

    infos = GcsClient(address=address).get_all_node_info(timeout=PROBE_RPC_TIMEOUT_SECONDS)
    table: list[dict[str, Any]] = []
    for info in infos.values():
        names = [
            resource.removeprefix(NODE_RESOURCE_PREFIX)
            for resource in info.resources_total
            if resource.startswith(NODE_RESOURCE_PREFIX)
        ]
        table.append(
            {
                "names": names,
                "alive": info.state == GcsNodeInfo.ALIVE,
                "start_time_ms": info.start_time_ms,
            }
        )
    print(json.dumps(table))


if __name__ == "__main__":
    _print_ray_node_table(sys.argv[1])
