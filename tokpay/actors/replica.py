"""What a replica (shard or coordinator copy) and the controller say to each other."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import ray

from tokpay.actors.naming import CONTROLLER_NAME, NAMESPACE
from tokpay.actors.replication import Heartbeat, ReplicatedLog

HEARTBEAT_TIMEOUT_SECONDS = 0.5

NODE_DATA_DIR_ENV = "TOKPAY_NODE_DATA_DIR"
"""Set on every node (``cluster/*.sh``): the node's own disk, as on a separate machine."""


class ReplicaSpec(msgspec.Struct, frozen=True):
    """How the controller creates a replica: its unique name, epoch and first role."""

    name: str
    epoch: int
    role: str


class HeartbeatReport(msgspec.Struct, frozen=True):
    name: str
    epoch: int
    role: str
    sequence: int
    broken: bool


class HeartbeatAnswer(msgspec.Struct, frozen=True):
    epoch: int
    lease: bool = False
    fence: bool = False
    routes: bytes = b""
    """The controller's routes (encoded ``dict[str, Route]``): every replica can tell a
    client where the primaries are, so clients need no Ray call to find them."""


class ReplicaStatus(msgspec.Struct, frozen=True):
    role: str
    epoch: int
    sequence: int
    lease: bool
    broken: str | None
    pid: int
    installed: bool = False
    """A backup that has received its primary's snapshot (it follows the log)."""


def replica_root(name: str) -> Path:
    """Where replica ``name`` keeps its log and snapshots on this node."""
    base = os.environ.get(NODE_DATA_DIR_ENV)
    if not base:
        raise RuntimeError(f"{NODE_DATA_DIR_ENV} is not set on this node (see cluster/)")
    return Path(base) / "replicas" / name


def start_heartbeat(
    spec: ReplicaSpec,
    report: Callable[[], HeartbeatReport],
    on_answer: Callable[[float, HeartbeatAnswer], None],
) -> Heartbeat:
    controller: list[Any] = []

    def send() -> HeartbeatAnswer:
        if not controller:
            controller.append(ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE))
        try:
            answer: HeartbeatAnswer = ray.get(
                controller[0].heartbeat.remote(report()), timeout=HEARTBEAT_TIMEOUT_SECONDS
            )
        except Exception:
            controller.clear()
            raise
        return answer

    return Heartbeat(send, on_answer)


def report_of(
    spec: ReplicaSpec | None, role: str, epoch: int, log: ReplicatedLog | None
) -> HeartbeatReport:
    """What a replica (shard or coordinator copy) tells the controller about itself."""
    return HeartbeatReport(
        name=spec.name if spec else "",
        epoch=epoch,
        role=role,
        sequence=log.last_sequence if log else 0,
        broken=bool(log and log.broken),
    )


def status_of(role: str, epoch: int, log: ReplicatedLog | None, *, lease: bool) -> ReplicaStatus:
    return ReplicaStatus(
        role=role,
        epoch=epoch,
        sequence=log.last_sequence if log else 0,
        lease=lease,
        broken=log.broken if log else None,
        pid=os.getpid(),
        installed=log is not None,
    )
