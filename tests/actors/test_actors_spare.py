"""A spare replica process (``SPARE_ROLE``) on a real Ray: it opens nothing until it is
activated, then it is a backup at the given epoch, exactly as if it had been started as one.

The controller keeps one per group where the group's next backup would go, so a failover
attaches a running process instead of waiting for a Ray worker to start (seconds of CPU on
a small machine); tests/cluster/test_failover.py runs it on a real cluster.
"""

from __future__ import annotations

import json
from pathlib import Path

import ray

from tokpay.actors.coordinator_actor import CoordinatorActor
from tokpay.actors.protocol import SPARE_ROLE, ReplicaSpec
from tokpay.actors.replica_host import NODE_DATA_DIR_ENV
from tokpay.actors.shard import ShardActor


def test_a_spare_opens_nothing_until_activated_then_is_a_backup_at_that_epoch(
    ray_session: None, tmp_path: Path
) -> None:
    env = {"env_vars": {NODE_DATA_DIR_ENV: str(tmp_path)}}
    shard_spec = ReplicaSpec(name="tokpay-shard-1-g7", epoch=0, role=SPARE_ROLE, group="shard-1")
    coordinator_spec = ReplicaSpec(
        name="tokpay-coordinator-g8", epoch=0, role=SPARE_ROLE, group="coordinator"
    )
    shard = ShardActor.options(runtime_env=env).remote(1, 4, "", True, shard_spec)  # type: ignore[attr-defined]
    coordinator = CoordinatorActor.options(runtime_env=env).remote(4, "", True, coordinator_spec)  # type: ignore[attr-defined]
    try:
        assert ray.get(shard.ready.remote(), timeout=60) == 1
        assert ray.get(coordinator.ready.remote(), timeout=60) is True
        # Started and imported, but no directory, no proof, nothing a recovery could read.
        assert not (tmp_path / "replicas").exists()

        assert ray.get(shard.activate.remote(5), timeout=60) == 1
        assert ray.get(coordinator.activate.remote(6), timeout=60) is True
        assert ray.get(shard.activate.remote(5), timeout=60) == 1  # idempotent

        for actor, name, epoch in (
            (shard, "tokpay-shard-1-g7", 5),
            (coordinator, "tokpay-coordinator-g8", 6),
        ):
            status = ray.get(actor.replica_status.remote(), timeout=60)
            assert (status.role, status.epoch, status.installed) == ("backup", epoch, False)
            proof = json.loads((tmp_path / "replicas" / name / "replica.json").read_text())
            assert proof["member"] == name and proof["epoch"] == epoch
            assert ray.get(actor.channel_address.remote(), timeout=60)[1] > 0
    finally:
        for actor in (shard, coordinator):
            ray.kill(actor, no_restart=True)
