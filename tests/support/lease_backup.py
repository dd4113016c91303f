"""A shard backup in a process of its own, for tests that stop it (SIGSTOP) for real.

``python -m tests.support.lease_backup ROOT EPOCH`` opens a backup replica host over
ROOT behind a channel, as ``ShardActor`` runs one (``ReplicaHost.serve_locked``),
prints its channel address as one JSON line and serves until its stdin closes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tokpay.actors.channel import ChannelServer
from tokpay.actors.protocol import ReplicaSpec
from tokpay.actors.replica_host import ReplicaHost
from tokpay.actors.shard import ShardService

SHARD = 0
SHARD_COUNT = 2


def main(root: Path, epoch: int) -> None:
    host = ReplicaHost(
        f"backup {root.name}",
        ReplicaSpec(name=root.name, epoch=epoch, role="backup"),
        root,
        lambda options: ShardService(SHARD, SHARD_COUNT, root.parent, **options),
        service_class=ShardService,
        fsync=True,
    )
    server = ChannelServer(host.serve_locked)
    address, port, token = server.address
    print(json.dumps([address, port, token.hex()]), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
