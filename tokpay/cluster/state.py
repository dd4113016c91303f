"""The cluster state file, DATA_DIR/cluster.json: what a local cluster started and where.

Another process (the CLI, a drill, a test) reads it to take the cluster over: kill and
restart its nodes, find its GCS address and auth token, and stop exactly what it lists.
It is rewritten atomically (temporary file, fsync, rename) after every change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, NotRequired, TypedDict

import msgspec

from tokpay.cluster.errors import ClusterError
from tokpay.cluster.sessions import ProcessRecord

STATE_FILE_NAME = "cluster.json"
STATE_VERSION = 1

Role = Literal["head", "worker", "drivers"]
"""``drivers``: the Ray node of a --netns cluster's root namespace, which the gateway and
the CLI's drivers attach to; it holds no replica (tokpay.cluster.netns)."""
SettingValue = str | int | float | bool


class RedisRecord(ProcessRecord):
    port: int
    data_dir: str


class NodeRecord(ProcessRecord):
    name: str
    role: Role
    resource: str
    data_dir: str
    ray_temp_dir: str


class ClusterStateFile(TypedDict):
    version: int
    gcs_address: str
    gcs_port: int
    ray_client_port: int
    auth_token_path: str
    ray_temp_link: str
    redis: RedisRecord
    nodes: dict[str, NodeRecord]
    services: dict[str, ProcessRecord]
    settings: dict[str, SettingValue]
    netns: NotRequired[bool]
    """Every node in a network namespace of its own (tokpay.cluster.netns); absent: no."""


def state_path(data_dir: Path) -> Path:
    return data_dir / STATE_FILE_NAME


def read_state(data_dir: Path) -> ClusterStateFile:
    path = state_path(data_dir)
    try:
        state = msgspec.json.decode(path.read_bytes(), type=ClusterStateFile)
    except FileNotFoundError:
        raise ClusterError(f"no cluster in {data_dir}: {path} does not exist") from None
    except msgspec.ValidationError as error:
        raise ClusterError(f"{path} is not a cluster state file: {error}") from None
    if state["version"] != STATE_VERSION:
        raise ClusterError(f"{path} has version {state['version']}, not {STATE_VERSION}")
    return state


def write_state(data_dir: Path, state: ClusterStateFile) -> None:
    data = msgspec.json.format(msgspec.json.encode(state), indent=2) + b"\n"
    _write_atomically(state_path(data_dir), data)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
