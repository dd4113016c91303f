"""Names: under which TokPay's actors register, and the replica groups of a cluster."""

NAMESPACE = "tokpay"


def shard_actor_name(shard: int) -> str:
    return f"tokpay-shard-{shard}"


COORDINATOR_NAME = "tokpay-coordinator"

CONTROLLER_NAME = "tokpay-controller"
"""The detached controller of a replicated cluster (absent in the single-node default)."""

NODE_RESOURCE_PREFIX = "tokpay_node_"
"""Each node offers ``tokpay_node_<name>`` (cluster/*.sh); replicas are pinned with it."""


def node_resource(node: str) -> str:
    return f"{NODE_RESOURCE_PREFIX}{node}"


COORDINATOR_GROUP = "coordinator"
"""The replica group of the coordinator; shard ``n``'s group is ``shard_group(n)``."""


def shard_group(shard: int) -> str:
    return f"shard-{shard}"


def replica_groups(shard_count: int) -> dict[str, int | None]:
    """Every replica group of a ledger: group name -> its shard (None: the coordinator).

    Built from the shard count, so nobody parses a shard number back out of a name.
    """
    groups: dict[str, int | None] = {shard_group(s): s for s in range(shard_count)}
    groups[COORDINATOR_GROUP] = None
    return groups
