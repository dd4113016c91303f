"""Ask a running local cluster's actors something, from a child process.

The test process never joins the cluster's Ray (other tests run a private Ray in
it), so anything that needs a Ray call runs here: ``python -m tests.cluster.probe
DATA_DIR COMMAND GROUP`` prints JSON.

- ``replicas GROUP``: the primary's and backup's name, node, worker pid, role, epoch
  and channel address;
- ``named NAME``: one replica's role, epoch and lease, by actor name;
- ``state GROUP``: whether the primary's and the backup's full in-memory state are
  equal byte for byte (and their sizes and sequences).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from tokpay.cluster.deploy import join
from tokpay.cluster.local import LocalCluster


def main() -> None:
    data_dir, command, group = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    cluster = LocalCluster.load(data_dir)
    ray = join(cluster.ray_address, cluster.auth_token_path)
    from tokpay.actors.naming import CONTROLLER_NAME, NAMESPACE

    if command == "named":
        replica = ray.get(
            ray.get_actor(group, namespace=NAMESPACE).replica_status.remote(), timeout=30
        )
        print(json.dumps({"role": replica.role, "epoch": replica.epoch, "lease": replica.lease}))
        return
    controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    status = ray.get(controller.status.remote(), timeout=30)
    (g,) = [g for g in status.groups if g.group == group]
    routes = ray.get(controller.routes.remote(), timeout=30)
    out: dict[str, Any] = {"epoch": g.epoch, "backup_in_sync": g.backup_ready}
    for role in ("primary", "backup"):
        member = getattr(g, role)
        if member is None:
            out[role] = None
            continue
        handle = ray.get_actor(member.name, namespace=NAMESPACE)
        replica = ray.get(handle.replica_status.remote(), timeout=30)
        entry: dict[str, Any] = {
            "name": member.name,
            "node": member.node,
            "pid": replica.pid,
            "role": replica.role,
            "epoch": replica.epoch,
            "sequence": replica.sequence,
            "address": list(ray.get(handle.channel_address.remote(), timeout=30)),
        }
        if command == "state":
            state = ray.get(handle.state_bytes.remote(), timeout=60)
            entry["state_sha256"] = hashlib.sha256(state).hexdigest()
            entry["state_bytes"] = len(state)
        out[role] = entry
    out["route"] = routes[group].primary
    for role in ("primary", "backup"):
        if out.get(role) and "address" in out[role]:
            host, port, token = out[role]["address"]
            out[role]["address"] = [host, port, token.hex()]
    print(json.dumps(out))
    ray.shutdown()


if __name__ == "__main__":
    main()
