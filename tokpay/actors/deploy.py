"""Start TokPay's actors on a Ray cluster, or find the ones already running.

The data directory remembers its shard count; starting on it with another count
is refused, since routing by hash would send accounts to the wrong shard.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from tokpay.actors.coordinator_actor import CoordinatorActor
from tokpay.actors.naming import COORDINATOR_NAME, NAMESPACE, shard_actor_name
from tokpay.actors.shard import ShardActor

log = logging.getLogger("tokpay.deploy")

LOOPBACK_RAY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch for multi-machine clusters (named for the platforms where it is off by default).
At "0" Ray's node address is 127.0.0.1, and Ray then binds every server it starts, its metrics
exporters included, to loopback. A driver of such a Ray (the gateway, a client script) needs
it too, or it looks for its node under the machine's network address and waits forever."""

META_FILE = "tokpay.json"
READY_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class LedgerHandles:
    shards: list[Any]
    coordinator: Any

    @property
    def shard_count(self) -> int:
        return len(self.shards)


def use_loopback_ray() -> None:
    """Run (or join) a Ray that lives on 127.0.0.1 only: the single-node default.

    Otherwise Ray listens on every interface: its Prometheus exporter, the dashboard's and
    the autoscaler's metrics servers and its gRPC servers. Ray's own processes and the
    gateway inherit the variable; Ray read it in this process at import, so its constant
    is set here as well (Ray 2.60 has no public option for this).
    """
    from ray._private import ray_constants

    os.environ[LOOPBACK_RAY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def read_shard_count(data_dir: Path, requested: int | None) -> int:
    """Shard count stored in ``data_dir``; records ``requested`` on first start."""
    meta = data_dir / META_FILE
    if meta.exists():
        stored = int(json.loads(meta.read_text())["shards"])
        if requested is not None and requested != stored:
            raise ValueError(
                f"{data_dir} holds a ledger with {stored} shards; cannot start it with {requested}"
            )
        return stored
    count = requested if requested is not None else 4
    if not 1 <= count <= 256:
        raise ValueError("shards must be in 1..256")
    data_dir.mkdir(parents=True, exist_ok=True)
    temp = meta.with_suffix(".tmp")
    temp.write_text(json.dumps({"shards": count}))
    temp.replace(meta)
    return count


def start_ledger(data_dir: Path, shard_count: int, *, fsync: bool = True) -> LedgerHandles:
    """Create (or reattach to) the shard and coordinator actors and wait until recovered."""
    data_dir = data_dir.resolve()
    shards = [
        ShardActor.options(  # type: ignore[attr-defined]
            name=shard_actor_name(index), namespace=NAMESPACE, get_if_exists=True
        ).remote(index, shard_count, str(data_dir), fsync)
        for index in range(shard_count)
    ]
    ray.get([s.ready.remote() for s in shards], timeout=READY_TIMEOUT_SECONDS)
    coordinator = CoordinatorActor.options(  # type: ignore[attr-defined]
        name=COORDINATOR_NAME, namespace=NAMESPACE, get_if_exists=True
    ).remote(shard_count, str(data_dir), fsync)
    recovered = ray.get(coordinator.start.remote(), timeout=READY_TIMEOUT_SECONDS)
    log.info("ledger ready: %d shards, coordinator %s", shard_count, recovered)
    return LedgerHandles(shards=shards, coordinator=coordinator)


def connect_ledger(shard_count: int) -> LedgerHandles:
    """Handles to running actors, from any process attached to the cluster."""
    shards = [ray.get_actor(shard_actor_name(i), namespace=NAMESPACE) for i in range(shard_count)]
    return LedgerHandles(
        shards=shards, coordinator=ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)
    )
