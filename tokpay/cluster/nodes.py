"""How each process of a local cluster is started: its script, its record, its
environment, and the files the nodes share (the auth token, the short Ray temp link).

The scripts (head.sh, worker.sh, redis.sh) are the ones an operator runs on real
machines; they ship inside the package (``tokpay/cluster/scripts``), so an installed
``tokpay`` runs a cluster from any directory.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sys
from importlib.resources import files
from pathlib import Path

from tokpay.actors.naming import node_resource
from tokpay.cluster import netns
from tokpay.cluster.errors import ClusterError
from tokpay.cluster.state import ClusterStateFile, NodeRecord, RedisRecord, Role

HEAD_NAME = "n0"
DRIVERS_NAME = "drivers"
"""The Ray node of a --netns cluster's root namespace (role ``drivers``). A Ray driver
must attach to a raylet on its own address (Ray's workers call their owner back there),
so the gateway and the CLI in the root namespace attach to this one, at
netns.BRIDGE_ADDRESS; it offers no CPU and the controller places nothing on it."""
LOOPBACK = "127.0.0.1"
NODE_CPUS = 2
OBJECT_STORE_BYTES = 100 * 1024 * 1024
STORAGE_NAMESPACE = "tokpay"
RAY_TEMP_ROOT = Path("/tmp")
"""Ray puts Unix sockets under its temp dir and their paths may not exceed 107 bytes, so
the nodes' temp dirs are reached through a short link here into DATA_DIR/ray."""


def script(name: str) -> Path:
    """One of the per-machine scripts, shipped as package data. It must be a file on
    disk, since a node's session runs it."""
    resource = files("tokpay.cluster") / "scripts" / name
    if not isinstance(resource, Path) or not resource.is_file():
        raise ClusterError(f"{name} is not installed as a file with tokpay ({resource})")
    return resource


def node_name(index: int) -> str:
    return f"n{index}"


def inherited_env() -> dict[str, str]:
    """This process's environment, for a child that must not find another Ray cluster.

    A RAY_ADDRESS of the caller would point `ray start` elsewhere, and a RAY_AUTH_TOKEN
    would win over the cluster's token file.
    """
    return {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}


def head_host(netns_on: bool) -> str:
    """The address of the head (Redis and the GCS bind it; workers and drivers dial it)."""
    return netns.node_address(0) if netns_on else LOOPBACK


def redis_record(data_dir: Path, logs_dir: Path, port: int, netns_on: bool = False) -> RedisRecord:
    redis_dir = data_dir / "redis"
    argv = ["bash", str(script("redis.sh")), str(redis_dir), str(port)]
    if netns_on:
        # On the head's machine, bound to its address, with a password.
        password = f"TOKPAY_REDIS_PASSWORD_FILE={redis_password_file(data_dir)}"
        argv = netns.exec_argv(0, ["env", f"TOKPAY_REDIS_BIND={head_host(True)}", password, *argv])
    return RedisRecord(
        pid=None,
        pid_start=None,
        argv=argv,
        log=str(logs_dir / "redis.log"),
        port=port,
        data_dir=str(redis_dir),
    )


def node_record(
    name: str,
    data_dir: Path,
    logs_dir: Path,
    link: Path,
    gcs_port: int,
    redis_port: int,
    netns_on: bool = False,
) -> NodeRecord:
    """Node ``name``'s record. In a --netns cluster node n<i> runs in its namespace with
    its own address, and ``drivers`` in the root namespace on the bridge's, with no CPU."""
    host = head_host(netns_on)
    role: Role = "head" if name == HEAD_NAME else "drivers" if name == DRIVERS_NAME else "worker"
    if role == "head":
        argv = ["bash", str(script("head.sh")), f"{host}:{redis_port}", name]
    else:
        argv = ["bash", str(script("worker.sh")), f"{host}:{gcs_port}", name]
    if role == "drivers":
        argv = ["env", f"TOKPAY_NODE_IP={netns.BRIDGE_ADDRESS}", "TOKPAY_NUM_CPUS=0", *argv]
    elif netns_on:
        index = netns.node_index(name)
        password = f"TOKPAY_REDIS_PASSWORD_FILE={redis_password_file(data_dir)}"
        placed = ["env", f"TOKPAY_NODE_IP={netns.node_address(index)}", password, *argv]
        argv = netns.exec_argv(index, placed)
    return NodeRecord(
        pid=None,
        pid_start=None,
        argv=argv,
        log=str(logs_dir / f"{name}.log"),
        name=name,
        role=role,
        resource=node_resource(name),
        data_dir=str(data_dir / "nodes" / name),
        ray_temp_dir=str(link / name),
    )


def node_env(state: ClusterStateFile, record: NodeRecord, data_dir: Path) -> dict[str, str]:
    """A node script's whole environment: ours, then the variables its header documents."""
    ray_bin = Path(sys.executable).parent / "ray"
    return inherited_env() | {
        "TOKPAY_DATA_DIR": str(data_dir),
        "TOKPAY_RAY_TEMP_DIR": record["ray_temp_dir"],
        "TOKPAY_RAY_BIN": str(ray_bin) if ray_bin.exists() else "ray",
        "TOKPAY_NUM_CPUS": str(NODE_CPUS),
        "TOKPAY_OBJECT_STORE_BYTES": str(OBJECT_STORE_BYTES),
        "TOKPAY_GCS_PORT": str(state["gcs_port"]),
        "TOKPAY_RAY_CLIENT_PORT": str(state["ray_client_port"]),
        "TOKPAY_STORAGE_NAMESPACE": STORAGE_NAMESPACE,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": state["auth_token_path"],
    }


def ensure_auth_token(data_dir: Path) -> Path:
    """The cluster's own Ray auth token (made once, readable by this user only)."""
    return _ensure_secret(data_dir / "auth_token")


def redis_password_file(data_dir: Path) -> Path:
    """A --netns cluster's Redis password: Redis refuses clients beyond loopback without
    one (protected mode), and the head's address is not loopback."""
    return _ensure_secret(data_dir / "redis_password")


def _ensure_secret(path: Path) -> Path:
    """A random secret in ``path`` (made once, readable by this user only)."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as secret_file:
            secret_file.write(secrets.token_hex(32))
    return path


def link_ray_temp_dir(data_dir: Path) -> Path:
    """A short path in RAY_TEMP_ROOT that links to DATA_DIR/ray (made once)."""
    target = data_dir / "ray"
    target.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    link = RAY_TEMP_ROOT / f"tokpay-{digest}"
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return link
    if link.exists() or link.is_symlink():
        raise ClusterError(f"{link} exists and is not a link to {target}")
    link.symlink_to(target, target_is_directory=True)
    return link
